"""Data sets by name: where each is published, its checksums, its classes, and how its
files are read. `data.dataset` in a config names one; any other name means the four
MNIST-format IDX files in the data folder, read as they are (no download, no checksum).

    mnist, fashion-mnist, kmnist   four IDX files (.gz or not), 28x28 grey, 10 classes
    emnist-balanced / -letters / -digits
                                   NIST's gzip.zip (or the IDX files taken out of it);
                                   images stored transposed (turned back here); letters'
                                   labels 1-26 become 0-25
    cifar10                        the binary version, cifar-10-binary.tar.gz (or the
                                   folder it unpacks to): 32x32 RGB, 10 classes

Each is downloaded from its official location into the default cache when missing,
checked against its published MD5 (of the files as published: the .gz files, the zip,
the tar.gz; MNIST's of their content), and moved into place only whole.
"""

import os
import tarfile
import zipfile
from dataclasses import dataclass

import numpy as np

from cnnrun.data import mnist
from cnnrun.errors import CnnrunError

DIGITS = tuple(str(d) for d in range(10))
LETTERS = tuple(chr(ord("A") + i) for i in range(26))


@dataclass(frozen=True)
class Dataset:
    """One published data set: its files (`{file name: MD5 of the file as published}`), the
    addresses they are published at, its class names and image shape `(C, H, W)`."""
    name: str
    files: dict
    mirrors: tuple
    classes: tuple
    shape: tuple = (1, 28, 28)
    emnist_split: str = None


def _idx_files(md5s):
    return {f"{name}.gz": md5 for name, md5 in zip(mnist.FILES.values(), md5s)}


DATASETS = {d.name: d for d in (
    Dataset("mnist", {f"{name}.gz": None for name in mnist.FILES.values()}, tuple(mnist.MIRRORS), DIGITS),
    Dataset("fashion-mnist",
            _idx_files(("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot")),
    Dataset("kmnist",
            _idx_files(("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
                        "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134")),
            ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
    *(Dataset(f"emnist-{split}", {"gzip.zip": "58c8d27c78d21e728a6bc7b3cc06412e"},
              ("https://biometrics.nist.gov/cs_links/EMNIST/",), classes, emnist_split=split)
      for split, classes in (("balanced", DIGITS + LETTERS + tuple("abdefghnqrt")), ("letters", LETTERS),
                             ("digits", DIGITS))),
    Dataset("cifar10", {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
            ("https://www.cs.toronto.edu/~kriz/",),
            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"), (3, 32, 32)),
)}


def class_names(dataset, k=10):
    """The class names of `dataset`, or "0".."k-1" for a folder of IDX files."""
    return DATASETS[dataset].classes if dataset in DATASETS else tuple(str(i) for i in range(k))


def default_dir(dataset):
    """Where a named data set is downloaded when no folder is named: the cache (MNIST's as before)."""
    cache = mnist.default_cache_dir()
    return cache if dataset == "mnist" else os.path.join(os.path.dirname(cache), dataset)


def load(directory, dataset, train_limit=None, test_limit=None, progress=True, splits=("train", "test"),
         named_by=None, mirrors=None):
    """`{"train": (x, labels), "test": (x, labels)}` (the splits asked for) of `dataset` in
    `directory`, downloading it first if it is missing and nobody named the folder;
    x float32 `(N, C, H, W)` in [0, 1], labels int64 `(N,)`."""
    spec = DATASETS.get(dataset)
    if spec is None or dataset == "mnist":  # MNIST, or a folder of IDX files: as always
        return mnist.load(directory, dataset, train_limit, test_limit, progress=progress, splits=splits,
                          named_by=named_by, **({"mirrors": mirrors} if mirrors else {}))
    if named_by and not os.path.isdir(directory):
        raise CnnrunError(f"{directory}: no such folder (named by {named_by}); give the folder that holds "
                          f"{dataset}'s files, or leave it out to download {dataset} into {default_dir(dataset)}")
    if spec.emnist_split:
        arrays = _emnist(directory, spec, splits, named_by, mirrors, progress)
    elif dataset == "cifar10":
        arrays = _cifar10(directory, spec, splits, named_by, mirrors, progress)
    else:
        arrays = _idx(directory, spec, splits, named_by, mirrors, progress)
    data = {}
    for split, limit in (("train", train_limit), ("test", test_limit)):
        if split in arrays:
            images, labels = arrays[split]
            if len(images) != len(labels):
                raise CnnrunError(f"{directory}: {dataset} {split} has {len(images)} images but {len(labels)} labels")
            if labels.size and (labels.min() < 0 or labels.max() >= len(spec.classes)):
                raise CnnrunError(f"{directory}: {dataset} {split} has labels outside 0-{len(spec.classes) - 1}")
            data[split] = ((images[:limit].astype(np.float32) / 255.0), labels[:limit].astype(np.int64))
    return data


def _fetch(directory, spec, names, named_by, mirrors, progress):
    """Download the missing `names` of `spec`'s files into `directory`, unless the folder was
    named (then: one line saying what is missing)."""
    missing = [name for name in names if not os.path.isfile(os.path.join(directory, name))]
    if not missing:
        return
    if named_by:
        raise CnnrunError(f"{directory}: missing {', '.join(missing)} of {spec.name}; put the files there, "
                          f"or leave out the folder to download them into {default_dir(spec.name)}")
    mnist.download(directory, missing, mirrors=list(mirrors or spec.mirrors), checksums=spec.files,
                   progress=progress, archive=True, what=spec.name)


def _idx(directory, spec, splits, named_by, mirrors, progress):
    """Fashion-MNIST, KMNIST: four IDX files, .gz (as published) or unpacked."""
    wanted = {key: name for key, name in mnist.FILES.items() if key.split("_")[0] in splits}
    if any(mnist.find_file(directory, name) is None for name in wanted.values()):
        _fetch(directory, spec, [f"{name}.gz" for name in wanted.values()], named_by, mirrors, progress)
    arrays = {}
    for key, name in wanted.items():
        path = mnist.find_file(directory, name)
        arrays[key] = mnist.parse_idx(mnist.read_bytes(path), path, 3 if key.endswith("images") else 1)
    return {split: (arrays[f"{split}_images"][:, None], arrays[f"{split}_labels"]) for split in splits}


def _emnist(directory, spec, splits, named_by, mirrors, progress):
    """EMNIST: its IDX files (.gz or not) in the folder, or read from NIST's gzip.zip (whose
    folder `gzip/` holds them). Images are stored transposed; letters count from 1."""
    stem = f"emnist-{spec.emnist_split}"
    names = {(split, part): f"{stem}-{'train' if split == 'train' else 'test'}-{part}-idx{3 if part == 'images' else 1}-ubyte"
             for split in splits for part in ("images", "labels")}
    if all(mnist.find_file(directory, name) for name in names.values()):
        contents = {key: (mnist.read_bytes(mnist.find_file(directory, name)), mnist.find_file(directory, name))
                    for key, name in names.items()}
    else:
        _fetch(directory, spec, ["gzip.zip"], named_by, mirrors, progress)
        path = os.path.join(directory, "gzip.zip")
        try:
            with zipfile.ZipFile(path) as archive:
                contents = {key: (mnist.gunzip(archive.read(f"gzip/{name}.gz"), f"{path}:gzip/{name}.gz"),
                                  f"{path}:gzip/{name}.gz") for key, name in names.items()}
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            raise CnnrunError(f"{path}: not EMNIST's gzip.zip ({e}); delete it and download again") from None
    arrays = {}
    for split in splits:
        images = mnist.parse_idx(*contents[(split, "images")], 3).transpose(0, 2, 1)  # stored transposed
        labels = mnist.parse_idx(*contents[(split, "labels")], 1).astype(np.int64)
        if spec.emnist_split == "letters":
            labels = labels - 1  # 1-26 -> 0-25
        arrays[split] = (images[:, None], labels)
    return arrays


CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue planes of 32x32
CIFAR_MEMBERS = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}


def parse_cifar(content, path):
    """A CIFAR-10 binary batch -> `(images (N, 3, 32, 32) uint8, labels (N,))`."""
    if len(content) % CIFAR_RECORD:
        raise CnnrunError(f"{path}: {len(content)} bytes is not a whole number of CIFAR-10 records "
                          f"({CIFAR_RECORD} bytes each): truncated or not a CIFAR-10 binary batch")
    records = np.frombuffer(content, np.uint8).reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0]


def _cifar10(directory, spec, splits, named_by, mirrors, progress):
    """CIFAR-10's binary batches, from the folder cifar-10-batches-bin (as the archive
    unpacks) or straight from cifar-10-binary.tar.gz."""
    unpacked = os.path.join(directory, "cifar-10-batches-bin")
    needed = [name for split in splits for name in CIFAR_MEMBERS[split]]
    if all(os.path.isfile(os.path.join(unpacked, name)) for name in needed):
        contents = {}
        for name in needed:
            with open(os.path.join(unpacked, name), "rb") as f:
                contents[name] = (f.read(), os.path.join(unpacked, name))
    else:
        _fetch(directory, spec, ["cifar-10-binary.tar.gz"], named_by, mirrors, progress)
        path = os.path.join(directory, "cifar-10-binary.tar.gz")
        contents = {}
        try:
            with tarfile.open(path, "r:gz") as archive:
                for name in needed:
                    member = archive.extractfile(f"cifar-10-batches-bin/{name}")
                    contents[name] = (member.read(), f"{path}:{name}")
        except (tarfile.TarError, KeyError, OSError, EOFError, AttributeError) as e:
            raise CnnrunError(f"{path}: not CIFAR-10's binary archive ({e}); delete it and download again") from None
    arrays = {}
    for split in splits:
        parts = [parse_cifar(*contents[name]) for name in CIFAR_MEMBERS[split]]
        arrays[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return arrays
