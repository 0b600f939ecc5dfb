"""Reading, checking and downloading IDX data."""

import functools
import gzip
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

from cnnrun.data import mnist
from cnnrun.errors import CnnrunError
from helpers import real_mnist_dir
from idx import idx_bytes, make_digits, write_idx


def test_loads_gzipped_and_plain_idx_files_scaled_to_unit_range(tmp_path):
    for compress in (True, False):
        d = make_digits(tmp_path / str(compress), n_train=20, n_test=7, compress=compress)
        data = mnist.load(str(d), dataset="digits", allow_download=False)
        x, y = data["train"]
        assert x.shape == (20, 1, 28, 28) and x.dtype == np.float32
        assert x.min() >= 0 and x.max() == 1.0 and y.dtype == np.int64
        assert data["test"][0].shape == (7, 1, 28, 28)


def test_limits_take_the_first_images(tmp_path):
    d = make_digits(tmp_path, n_train=20, n_test=7)
    full = mnist.load(str(d), dataset="digits")
    part = mnist.load(str(d), dataset="digits", train_limit=5, test_limit=3)
    np.testing.assert_array_equal(part["train"][0], full["train"][0][:5])
    assert len(part["test"][1]) == 3


def test_truncated_file_is_a_clear_error_naming_it(tmp_path):
    d = make_digits(tmp_path, n_train=20, n_test=7, compress=False)
    path = os.path.join(d, "train-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(500)
    with pytest.raises(CnnrunError, match="train-images-idx3-ubyte: 500 bytes, the header .*truncated"):
        mnist.load(str(d), dataset="digits")


def test_bad_magic_and_bad_gzip_and_label_range_are_clear_errors(tmp_path):
    d = make_digits(tmp_path / "a", n_train=4, n_test=4, compress=False)
    with open(os.path.join(d, "t10k-labels-idx1-ubyte"), "wb") as f:
        f.write(b"\x01\x02\x03\x04garbage")
    with pytest.raises(CnnrunError, match="t10k-labels-idx1-ubyte: not an IDX file"):
        mnist.load(str(d), dataset="digits")
    d = make_digits(tmp_path / "b", n_train=4, n_test=4)
    with open(os.path.join(d, "train-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(b"not gzip at all")
    with pytest.raises(CnnrunError, match="train-labels-idx1-ubyte.gz: cannot read"):
        mnist.load(str(d), dataset="digits")
    d = make_digits(tmp_path / "c", n_train=4, n_test=4, compress=False)
    write_idx(os.path.join(d, "train-labels-idx1-ubyte"), [1, 2, 12, 3], compress=False)
    with pytest.raises(CnnrunError, match="label 12 is outside 0-9"):
        mnist.load(str(d), dataset="digits")


def test_a_file_that_unpacks_to_more_than_half_the_memory_is_refused_without_unpacking_it_all(tmp_path, monkeypatch):
    d = make_digits(tmp_path, n_train=20, n_test=7)
    path = d / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:  # 4 MB of zeros in a few kB, as a damaged or hostile file may be
        f.write(bytes(4 << 20))
    monkeypatch.setattr(mnist, "available_memory", lambda: 2 << 20)
    with pytest.raises(CnnrunError, match=r"train-images-idx3-ubyte.gz: holds more than 1,048,576 bytes, half the"):
        mnist.load(str(d), dataset="digits", allow_download=False)


def test_mnist_checksums_reject_files_that_are_not_mnist(tmp_path):
    d = make_digits(tmp_path, n_train=4, n_test=4)
    with pytest.raises(CnnrunError, match="does not match the published MD5"):
        mnist.load(str(d), dataset="mnist", allow_download=False)


def test_missing_files_without_download_say_where_to_put_them(tmp_path):
    with pytest.raises(CnnrunError, match="missing train-images-idx3-ubyte.*--data-dir"):
        mnist.load(str(tmp_path), dataset="digits")


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNRUN_DATA_DIR", "/from/env")
    assert mnist.resolve_data_dir("/from/cli", "/from/config") == "/from/cli"
    assert mnist.resolve_data_dir(None, "/from/config") == "/from/env"
    monkeypatch.delenv("CNNRUN_DATA_DIR")
    assert mnist.resolve_data_dir(None, "/from/config") == "/from/config"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert mnist.resolve_data_dir(None, None) == os.path.join(str(tmp_path), "cnnrun", "mnist")


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server on 127.0.0.1 serving a folder the test fills."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def serve(root, name, content):
    with gzip.open(root / (name + ".gz"), "wb") as f:
        f.write(content)
    return hashlib.md5(content).hexdigest()


def test_download_fetches_verifies_and_moves_files_into_place(mirror, tmp_path):
    root, url = mirror
    content = idx_bytes(np.arange(6))
    checksums = {"train-labels-idx1-ubyte": serve(root, "train-labels-idx1-ubyte", content)}
    target = tmp_path / "data"
    mnist.download(str(target), ["train-labels-idx1-ubyte"], mirrors=["http://127.0.0.1:9/", url],
                   checksums=checksums, progress=False)  # the first mirror refuses: the second serves
    assert os.listdir(target) == ["train-labels-idx1-ubyte.gz"]
    assert mnist.read_bytes(str(target / "train-labels-idx1-ubyte.gz")) == content


def test_corrupt_or_missing_download_leaves_no_partial_file(mirror, tmp_path):
    root, url = mirror
    serve(root, "train-labels-idx1-ubyte", idx_bytes(np.arange(6)))
    target = tmp_path / "data"
    with pytest.raises(CnnrunError, match="could not download train-labels-idx1-ubyte.*MD5.*--data-dir"):
        mnist.download(str(target), ["train-labels-idx1-ubyte"], mirrors=[url],
                       checksums={"train-labels-idx1-ubyte": "0" * 32}, progress=False)
    assert not target.exists()  # nothing landed: the folder it made is gone too
    target.mkdir()
    with pytest.raises(CnnrunError, match="could not download t10k-labels-idx1-ubyte.*404"):
        mnist.download(str(target), ["t10k-labels-idx1-ubyte"], mirrors=[url], checksums={}, progress=False)
    assert os.listdir(target) == []  # a folder that was there stays, empty


def test_load_downloads_missing_mnist_files_from_a_mirror(mirror, tmp_path, monkeypatch):
    root, url = mirror
    d = make_digits(tmp_path / "made", n_train=8, n_test=4, compress=False)
    checksums = {}
    for name in mnist.FILES.values():
        with open(os.path.join(d, name), "rb") as f:
            checksums[name] = serve(root, name, f.read())
    monkeypatch.setattr(mnist, "MNIST_MD5", checksums)
    data = mnist.load(str(tmp_path / "cache"), dataset="mnist", mirrors=[url], progress=False)
    assert data["train"][0].shape == (8, 1, 28, 28)
    assert sorted(os.listdir(tmp_path / "cache")) == sorted(n + ".gz" for n in mnist.FILES.values())


def test_real_mnist_passes_its_checksums_and_has_the_standard_shape():
    data = mnist.load(real_mnist_dir(), dataset="mnist", allow_download=False)
    (x, y), (xt, yt) = data["train"], data["test"]
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert np.bincount(y).tolist()[:2] == [5923, 6742] and yt[:5].tolist() == [7, 2, 1, 0, 4]


def test_a_data_folder_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(CnnrunError, match="a-file: not a folder"):
        mnist.load(str(a_file), allow_download=True, progress=False)
    with pytest.raises(CnnrunError, match="a-file/mnist: cannot make the data folder"):
        mnist.load(str(a_file / "mnist"), allow_download=True, progress=False)
