"""Data sets: MNIST, the others by name (datasets.py), and anything in MNIST's IDX format."""

import os

import numpy as np

from cnnrun.data import datasets, mnist
from cnnrun.errors import CnnrunError


def load_data(config, data_dir=None, progress=True, splits=("train", "test"), of_run=False):
    """The splits a config trains and tests on, from `data_dir` or where the config's
    `data` section and the environment say (see `mnist.data_source`; `of_run`: the config
    is a run folder's, whose recorded `data.dir` comes before the environment)."""
    data = config["data"]
    directory, named_by = mnist.data_source(data_dir, data["dir"], of_run)
    if named_by is None:  # the cache: each named data set in a folder of its own
        directory = datasets.default_dir(data["dataset"])
    loaded = datasets.load(directory, data["dataset"], data["train_limit"], data["test_limit"],
                           progress=progress, splits=splits, named_by=named_by)
    if data.get("validation") and "train" in loaded:
        loaded["train"], loaded["val"] = split_validation(*loaded["train"], data["validation"])
    return loaded


VALIDATION_SEED = 0  # the held-out images are the same for every run seed


def split_validation(x, labels, n):
    """`(x, labels)` -> `((x, labels) to train on, (x, labels) held out)`: `n` images drawn
    by a fixed seed (VALIDATION_SEED), the rest in their order."""
    if n >= len(x):
        raise CnnrunError(f"data.validation: {n} images held out of a training set of {len(x)} leaves none "
                          f"to train on")
    held = np.zeros(len(x), bool)
    held[np.random.default_rng(VALIDATION_SEED).permutation(len(x))[:n]] = True
    return (x[~held], labels[~held]), (x[held], labels[held])


def with_data_location(config, data_dir=None, of_run=False):
    """A copy of `config` whose `data.dir` is the absolute path of the folder its data is
    read from (`data_dir`, else as `load_data` finds it): a run folder's config.yaml then
    says where its data is, and every verb that reads the run finds it there."""
    directory, named_by = mnist.data_source(data_dir, config["data"]["dir"], of_run)
    directory = os.path.abspath(directory if named_by else datasets.default_dir(config["data"]["dataset"]))
    return {**config, "data": {**config["data"], "dir": directory}}


def check_data_fits(net, images, labels=None):
    """A one-line error unless `images` `(N, *input_shape)` are what `net` takes and every
    label is one of its classes (below the number of its outputs)."""
    shape = tuple(images.shape[1:])
    if shape != net.input_shape:
        raise CnnrunError(f"the data's images are {shape} but model.input_shape is {list(net.input_shape)}")
    classes = net.output_shape[0]
    if labels is not None and labels.size and labels.max() >= classes:
        raise CnnrunError(f"the data has labels 0-{labels.max()} but the network has {classes} outputs "
                          f"(the units of its last dense layer)")
