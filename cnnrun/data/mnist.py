"""MNIST (or any data set in MNIST's IDX format): find, download, verify, load.

Where the files live, first match wins: `--data-dir`, `$CNNRUN_DATA_DIR`, the
config's `data.dir`, then `$XDG_CACHE_HOME/cnnrun/mnist` (else `~/.cache/cnnrun/mnist`).
"""

import gzip
import hashlib
import http.client
import io
import os
import tempfile
import urllib.request

import numpy as np

from cnnrun.config import available_memory
from cnnrun.errors import CnnrunError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# MD5 of each file's uncompressed content, as published with MNIST.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
IDX_UBYTE = 0x08  # IDX element type code for unsigned bytes


def default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cnnrun", "mnist")


def data_source(cli_dir=None, config_dir=None, of_run=False):
    """`(data directory, what named it)` by precedence: the CLI option ("--data-dir"), the
    environment ("CNNRUN_DATA_DIR"), the config's `data.dir`, else the user cache (None:
    nobody named it, so it may be made and downloaded into). For a run's config
    (`of_run`), the folder the run recorded comes before the environment: a run is
    evaluated, attacked and resumed on the data it was trained on unless `--data-dir`
    says otherwise."""
    named = [(cli_dir, "--data-dir"), (os.environ.get("CNNRUN_DATA_DIR"), "CNNRUN_DATA_DIR"), (config_dir, "data.dir")]
    if of_run:
        named = [named[0], named[2], named[1]]
    for value, source in named:
        if value:
            return os.path.expanduser(value), source
    return default_cache_dir(), None


def resolve_data_dir(cli_dir=None, config_dir=None):
    """The data directory, by precedence: CLI option, environment, config, user cache."""
    return data_source(cli_dir, config_dir)[0]


def find_file(directory, name):
    """Path of `name` or `name.gz` in `directory`, or None."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_bytes(path):
    """A file's uncompressed content (gunzipped if it ends in .gz). A file that holds more
    than half the memory available is an error, found without unpacking more than that
    (a small damaged or hostile .gz can unpack to gigabytes)."""
    limit = (available_memory() or 1 << 40) // 2
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            content = f.read(limit + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise CnnrunError(f"{path}: cannot read ({e}); delete it and download again") from None
    if len(content) > limit:
        raise CnnrunError(f"{path}: holds more than {limit:,} bytes, half the memory available "
                          f"(a damaged file?); delete it and download again")
    return content


def gunzip(data, where):
    """The content of gzip bytes `data` (a member of an archive), with `read_bytes`'s limit."""
    limit = (available_memory() or 1 << 40) // 2
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            content = f.read(limit + 1)
    except (OSError, EOFError) as e:
        raise CnnrunError(f"{where}: cannot read ({e}); delete it and download again") from None
    if len(content) > limit:
        raise CnnrunError(f"{where}: holds more than {limit:,} bytes, half the memory available (a damaged file?)")
    return content


def parse_idx(content, path, dims):
    """IDX bytes -> uint8 array with `dims` dimensions, checking the header against the size."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] != IDX_UBYTE:
        raise CnnrunError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    if content[3] != dims:
        raise CnnrunError(f"{path}: expected {dims} dimensions, the header says {content[3]}")
    header = 4 + 4 * dims
    if len(content) < header:
        raise CnnrunError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    expected = header + int(np.prod(shape))
    if len(content) != expected:
        raise CnnrunError(f"{path}: {len(content)} bytes, the header {shape} needs {expected} "
                          f"(truncated or corrupt file)")
    return np.frombuffer(content, np.uint8, offset=header).reshape(shape)


def verify(content, name, path, checksums):
    """Check uncompressed content against its published MD5, if there is one."""
    want = (checksums or {}).get(name)
    if want and hashlib.md5(content).hexdigest() != want:
        raise CnnrunError(f"{path}: content does not match the published MD5 of {name} "
                          f"(corrupt or different file); delete it and download again")


def download(directory, names, mirrors=MIRRORS, checksums=MNIST_MD5, progress=True, archive=False, what="MNIST"):
    """Download `name.gz` for each name (with `archive`, the file `name` itself) from the
    first mirror that works, verify it (MNIST: the MD5 of its content; with `archive`: of
    the file as published) and move it into `directory` atomically. A failure leaves no
    partial file behind, nor a folder this call made."""
    from tqdm import tqdm

    made = []  # the folders this call creates, removed again if nothing lands in them
    parent = os.path.abspath(directory)
    while not os.path.exists(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise CnnrunError(f"{directory}: cannot make the data folder ({e.strerror or e})") from None
    try:
        _download_each(directory, names, mirrors, checksums, progress, tqdm, archive, what)
    except BaseException:
        for folder in made:  # innermost first; a folder holding anything else stays
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise


def _download_each(directory, names, mirrors, checksums, progress, tqdm, archive, what):
    for name in names:
        errors = []
        file_name = name if archive else name + ".gz"
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + file_name
            fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".part" + (".gz" if file_name.endswith(".gz") else ""),
                                       dir=directory)
            try:
                written, md5 = 0, hashlib.md5()
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=file_name, disable=not progress,
                              leave=False) as bar:
                        while chunk := response.read(1 << 16):
                            out.write(chunk)
                            md5.update(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
                if total is not None and written != total:
                    raise CnnrunError(f"the download stopped after {written:,} of {total:,} bytes")
                if archive:
                    want = (checksums or {}).get(name)
                    if want and md5.hexdigest() != want:
                        raise CnnrunError(f"its MD5 {md5.hexdigest()} is not the published {want} (damaged or "
                                          f"another file)")
                else:
                    verify(read_bytes(tmp), name, url, checksums)
                os.replace(tmp, os.path.join(directory, file_name))
                break
            except (OSError, CnnrunError, ValueError, http.client.HTTPException) as e:
                errors.append(f"{url}: {e}")
            finally:  # a failure, or Ctrl-C, leaves no partial file behind
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            files = ", ".join(FILES.values()) + ", .gz or not" if not archive else file_name
            raise CnnrunError(
                f"could not download {file_name} of {what}, nothing was kept ({'; '.join(errors)}). Put the files "
                f"({files}) in {directory}, or give the folder that holds them with --data-dir DIR")


def load(directory, dataset="mnist", train_limit=None, test_limit=None, num_classes=10,
         allow_download=True, progress=True, mirrors=MIRRORS, splits=("train", "test"), named_by=None):
    """Load the IDX files of `splits` from `directory` (downloading MNIST if missing).
    `named_by` says who named the folder ("--data-dir", "CNNRUN_DATA_DIR", "data.dir"):
    such a folder must exist (a typo is an error, never a new empty folder), while the
    default cache (None) is made when first needed.

    Returns `{"train": (x, labels), "test": (x, labels)}` (the splits asked for)
    with x float32 `(N, 1, H, W)` in [0, 1] and labels int64 `(N,)`.
    """
    checksums = MNIST_MD5 if dataset == "mnist" else None
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CnnrunError(f"{directory}: not a folder (the data folder: --data-dir, CNNRUN_DATA_DIR or data.dir)")
    if named_by and not os.path.exists(directory):
        raise CnnrunError(f"{directory}: no such folder (named by {named_by}); give the folder that holds the "
                          f"four MNIST files, or leave it out to download MNIST into {default_cache_dir()}")
    wanted = {key: name for key, name in FILES.items() if key.split("_")[0] in splits}
    missing = [name for name in wanted.values() if find_file(directory, name) is None]
    if missing:
        if not allow_download or dataset != "mnist":
            raise CnnrunError(f"{directory}: missing {', '.join(missing)} (.gz or not); "
                              f"put the files there or pass --data-dir DIR")
        download(directory, missing, mirrors=mirrors, checksums=checksums, progress=progress)
    arrays = {}
    for key, name in wanted.items():
        path = find_file(directory, name)
        content = read_bytes(path)
        verify(content, name, path, checksums)
        arrays[key] = parse_idx(content, path, 3 if key.endswith("images") else 1)
    data = {}
    for split, limit in (("train", train_limit), ("test", test_limit)):
        if split not in splits:
            continue
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise CnnrunError(f"{directory}: {split} has {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() >= num_classes:
            raise CnnrunError(f"{find_file(directory, FILES[split + '_labels'])}: "
                              f"label {labels.max()} is outside 0-{num_classes - 1}")
        images, labels = images[:limit], labels[:limit]
        data[split] = ((images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64))
    return data
