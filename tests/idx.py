"""Small IDX data sets made by the tests themselves."""

import gzip
import os

import numpy as np
import yaml

from cnnrun.data.mnist import FILES


def idx_bytes(array):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def write_idx(path, array, compress=True):
    data = idx_bytes(array)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def make_digits(directory, n_train=256, n_test=64, size=28, seed=0, compress=True):
    """A learnable toy set in MNIST format: class c is a bright square in cell c of a 4x3 grid."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    cell = size // 4
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, size, size))
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 4)
            images[i, r * cell:(r + 1) * cell, q * cell:(q + 1) * cell] = 255
        write_idx(os.path.join(directory, FILES[f"{split}_images"]), images, compress)
        write_idx(os.path.join(directory, FILES[f"{split}_labels"]), labels, compress)
    return directory


TINY_CONFIG = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "digits", "dir": None, "train_limit": None, "test_limit": None},
    "model": {"input_shape": [1, 28, 28], "layers": [
        {"conv": {"filters": 3, "kernel": 3, "stride": 2}}, {"instance_norm": {}}, "relu",
        {"maxpool": {"kernel": 3, "stride": 3}}, "flatten", {"dense": {"units": 10}}, "softmax"]},
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.1, "lr_decay": 0.9, "eval_every": 2,
              "loss": "categorical_crossentropy"},
}


def write_config(path, **changes):
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_CONFIG.items()}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return str(path)


def tar_gz_bytes(members):
    """A tar.gz holding `{name: bytes}`."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members):
    """A zip holding `{name: bytes}`."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def gz_bytes(data):
    import io

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as f:
        f.write(data)
    return buffer.getvalue()
