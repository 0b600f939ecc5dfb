"""Data sets by name: readers on synthetic files in each published format (IDX .gz,
EMNIST's gzip.zip, CIFAR-10's binary tar.gz), and the download path against a local
HTTP server: good files, a damaged file, a dropped connection."""

import dataclasses
import functools
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun.cli import main
from cnnrun.data import datasets
from cnnrun.errors import CnnrunError
from idx import gz_bytes, idx_bytes, tar_gz_bytes, write_config, write_idx, zip_bytes

IDX = {"train-images-idx3-ubyte": "images", "train-labels-idx1-ubyte": "labels",
       "t10k-images-idx3-ubyte": "images", "t10k-labels-idx1-ubyte": "labels"}


def idx_set(rng, n_train=12, n_test=5, classes=10, size=28):
    """Arrays for the four IDX files: asymmetric images (to see a transposition), labels."""
    return {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size)),
            "train-labels-idx1-ubyte": rng.integers(0, classes, n_train),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size)),
            "t10k-labels-idx1-ubyte": rng.integers(0, classes, n_test)}


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_idx_data_sets_read_their_four_files_as_published(name, tmp_path, rng):
    arrays = idx_set(rng)
    for file, array in arrays.items():
        write_idx(tmp_path / file, array)
    data = datasets.load(str(tmp_path), name, named_by="--data-dir")
    x, labels = data["train"]
    assert x.shape == (12, 1, 28, 28) and x.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0] * 255, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data["test"][1], arrays["t10k-labels-idx1-ubyte"])
    assert len(datasets.class_names(name)) == 10


@pytest.mark.parametrize("split, classes", [("balanced", 47), ("letters", 26), ("digits", 10)])
@pytest.mark.parametrize("packed", [True, False])
def test_emnist_is_read_from_nists_zip_or_its_files_turned_back_and_letters_counted_from_zero(split, classes, packed,
                                                                                            tmp_path, rng):
    first = 1 if split == "letters" else 0
    arrays = idx_set(rng, classes=classes)
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"] + first
    arrays["t10k-labels-idx1-ubyte"] = arrays["t10k-labels-idx1-ubyte"] + first
    stored = {f"emnist-{split}-{name.replace('t10k', 'test')}": (a.transpose(0, 2, 1) if a.ndim == 3 else a)
              for name, a in arrays.items()}  # EMNIST stores its images transposed
    if packed:
        (tmp_path / "gzip.zip").write_bytes(zip_bytes({f"gzip/{n}.gz": gz_bytes(idx_bytes(a)) for n, a in stored.items()}))
    else:
        for n, a in stored.items():
            write_idx(tmp_path / n, a)
    data = datasets.load(str(tmp_path), f"emnist-{split}", named_by="--data-dir")
    np.testing.assert_array_equal(data["train"][0][:, 0] * 255, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data["test"][1], arrays["t10k-labels-idx1-ubyte"] - first)
    assert len(datasets.class_names(f"emnist-{split}")) == classes


def cifar_batch(rng, n):
    images, labels = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
    return images, labels, b"".join(bytes([label]) + image.tobytes() for image, label in zip(images, labels))


@pytest.mark.parametrize("packed", [True, False])
def test_cifar10_binary_batches_are_read_as_rgb_from_the_archive_or_its_folder(packed, tmp_path, rng):
    batches = {name: cifar_batch(rng, 3) for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]}
    members = {f"cifar-10-batches-bin/{name}": b[2] for name, b in batches.items()}
    if packed:
        (tmp_path / "cifar-10-binary.tar.gz").write_bytes(tar_gz_bytes(members))
    else:
        for member, data in members.items():
            os.makedirs(tmp_path / os.path.dirname(member), exist_ok=True)
            (tmp_path / member).write_bytes(data)
    data = datasets.load(str(tmp_path), "cifar10", named_by="--data-dir")
    x, labels = data["train"]
    assert x.shape == (15, 3, 32, 32)
    np.testing.assert_array_equal(x[3:6] * 255, batches["data_batch_2.bin"][0])  # the batches in order, RGB planes
    np.testing.assert_array_equal(labels[:3], batches["data_batch_1.bin"][1])
    np.testing.assert_array_equal(data["test"][0] * 255, batches["test_batch.bin"][0])


def test_a_truncated_cifar_batch_is_one_line(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(cifar_batch(rng, 2)[2][:-5])
    with pytest.raises(CnnrunError, match="not a whole number of CIFAR-10 records"):
        datasets.load(str(tmp_path), "cifar10", named_by="--data-dir")


class Dropping(http.server.SimpleHTTPRequestHandler):
    """Serves a file, but for names containing 'drop' sends half of it and closes."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        if "drop" not in os.path.basename(os.path.dirname(path)) or not os.path.isfile(path):
            return super().do_GET()
        data = open(path, "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Dropping, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def published(monkeypatch, root, name, folder, rng):
    """Fashion-MNIST-format files served from `root/folder`, `name` published with their MD5s there."""
    (root / folder).mkdir()
    checksums = {}
    for file, array in idx_set(rng).items():
        data = gz_bytes(idx_bytes(array))
        (root / folder / f"{file}.gz").write_bytes(data)
        checksums[f"{file}.gz"] = hashlib.md5(data).hexdigest()
    spec = dataclasses.replace(datasets.DATASETS[name], files=checksums)
    monkeypatch.setitem(datasets.DATASETS, name, spec)
    return checksums


def test_a_named_data_set_is_downloaded_checked_and_read(server, tmp_path, monkeypatch, rng):
    root, url = server
    published(monkeypatch, root, "fashion-mnist", "good", rng)
    target = tmp_path / "cache" / "fashion-mnist"
    data = datasets.load(str(target), "fashion-mnist", progress=False, mirrors=[f"{url}/good/"])
    assert data["train"][0].shape == (12, 1, 28, 28)
    assert sorted(os.listdir(target)) == sorted(f"{f}.gz" for f in IDX)


def test_a_damaged_download_leaves_nothing_behind_and_says_so(server, tmp_path, monkeypatch, rng):
    root, url = server
    checksums = published(monkeypatch, root, "kmnist", "damaged", rng)
    (root / "damaged" / "t10k-labels-idx1-ubyte.gz").write_bytes(gz_bytes(b"not the file"))
    target = tmp_path / "cache" / "kmnist"
    with pytest.raises(CnnrunError) as error:
        datasets.load(str(target), "kmnist", progress=False, mirrors=[f"{url}/damaged/"])
    assert "t10k-labels-idx1-ubyte.gz of kmnist, nothing was kept" in str(error.value)
    assert f"is not the published {checksums['t10k-labels-idx1-ubyte.gz']}" in str(error.value)
    assert not any(name.startswith(".download") for name in os.listdir(target))
    assert "t10k-labels-idx1-ubyte.gz" not in os.listdir(target)


def test_a_dropped_connection_leaves_nothing_behind_and_says_so(server, tmp_path, monkeypatch, rng):
    root, url = server
    published(monkeypatch, root, "fashion-mnist", "drop", rng)
    target = tmp_path / "cache" / "fashion-mnist"
    with pytest.raises(CnnrunError, match="the download stopped after .* bytes"):
        datasets.load(str(target), "fashion-mnist", progress=False, mirrors=[f"{url}/drop/"])
    assert not (tmp_path / "cache").exists()  # the folders it made are gone


@pytest.mark.slow
def test_train_on_a_named_data_set_and_eval_names_its_classes(tmp_path, rng):
    for file, array in idx_set(rng, n_train=64, n_test=16).items():
        write_idx(tmp_path / file, array)
    path = write_config(tmp_path / "fashion.yaml", data={"dataset": "fashion-mnist", "dir": None,
                                                         "train_limit": None, "test_limit": None},
                        train={"epochs": 1, "batch_size": 32, "lr": 0.1, "eval_every": 1})
    result = CliRunner().invoke(main, ["train", path, "--data-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["eval", "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    assert '"classes": ["T-shirt/top", "Trouser"' in result.output


def test_a_named_folder_missing_a_data_sets_files_is_one_line(tmp_path):
    with pytest.raises(CnnrunError, match="missing cifar-10-binary.tar.gz of cifar10; put the files there"):
        datasets.load(str(tmp_path), "cifar10", named_by="--data-dir")
