"""What several test files share: the CLI on a tiny run's folder, its metrics, and real MNIST."""

import os

import pytest
from click.testing import CliRunner

from cnnrun import runs
from cnnrun.cli import main
from cnnrun.data import mnist


def cli(s, *args):
    """`cnnrun ARGS --runs-dir` the fixture's runs folder."""
    return CliRunner().invoke(main, [str(a) for a in args] + ["--runs-dir", s["runs"]])


def metrics_without_seconds(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in runs.read_metrics(run_dir)]


def real_mnist_dir():
    d = os.environ.get("CNNRUN_DATA_DIR")
    if d and all(mnist.find_file(d, n) for n in mnist.FILES.values()):
        return d
    if os.environ.get("CI"):
        pytest.fail(f"CI needs real MNIST in CNNRUN_DATA_DIR (got {d!r})")
    pytest.skip("real MNIST not found: set CNNRUN_DATA_DIR")


def briefly_trained(cfg, test_images):
    """The network of config `cfg` after one epoch of SGD (lr 0.05) on 10,000 real MNIST
    training images, and the first `test_images` test images: `(net, x, labels)`."""
    from cnnrun.config import build_network
    from cnnrun.nn import SGD
    from cnnrun.training import epoch_rng, train_epoch
    data = mnist.load(real_mnist_dir(), "mnist", train_limit=10000, test_limit=test_images, allow_download=False,
                      progress=False)
    (x, labels), (x_test, labels_test) = data["train"], data["test"]
    net = build_network(cfg)
    train_epoch(net, SGD(0.05), x, labels, 128, epoch_rng(0, 0))
    return net, x_test, labels_test


def interrupt_call(monkeypatch, module, name, call):
    """Make `module.name` raise KeyboardInterrupt at its `call`-th call (as Ctrl-C there),
    running the real function on every other; returns the real one."""
    real, calls = getattr(module, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    return real
