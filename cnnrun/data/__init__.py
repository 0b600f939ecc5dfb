"""Data sets: MNIST and anything else in its IDX format."""

from cnnrun.data import mnist


def load_data(config, data_dir=None, progress=True, splits=("train", "test")):
    """The splits a config trains and tests on, from `data_dir` or where the config's
    `data` section and the environment say (see `mnist.resolve_data_dir`)."""
    data = config["data"]
    directory = mnist.resolve_data_dir(data_dir, data["dir"])
    return mnist.load(directory, data["dataset"], data["train_limit"], data["test_limit"],
                      progress=progress, splits=splits)
