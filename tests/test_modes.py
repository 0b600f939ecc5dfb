"""A network's train and eval modes, and dropout: active in training only, its masks
reproducible from the run's seed and epoch, the same on 1 thread or 2, exact on resume."""

import os

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun import runner, runs
from cnnrun.cli import main
from cnnrun.config import build_network, load_config
from cnnrun.nn import Network, reference
from cnnrun.nn.layers import Dropout
from cnnrun.robustness import attacks
from helpers import interrupt_call
from idx import TINY_CONFIG, write_config

DROPOUT_LAYERS = [{"conv": {"filters": 4, "kernel": 3, "stride": 2}}, "relu", {"dropout": {"rate": 0.3}},
                  "flatten", {"dense": {"units": 16}}, {"dropout": {"rate": 0.5}}, {"dense": {"units": 10}}, "softmax"]


def dropout_config(path, **changes):
    return write_config(path, model={"input_shape": [1, 28, 28], "layers": DROPOUT_LAYERS}, **changes)


def test_dropout_keeps_one_minus_rate_scaled_up_in_training_and_is_the_identity_in_evaluation(rng):
    layer = Dropout(rate=0.25)
    layer.build((4000,))
    x = rng.standard_normal((5, 4000)).astype(np.float32)
    assert layer.forward(x) is x  # a layer starts in evaluation mode
    layer.training, layer.rng = True, np.random.default_rng(0)
    y = layer.forward(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01 and y.dtype == np.float32
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(layer.backward(dy), np.where(kept, dy / 0.75, 0), rtol=1e-6)
    ref = reference.Dropout(rate=0.25)
    ref.build((4000,))
    ref.training, ref.rng = True, np.random.default_rng(0)
    np.testing.assert_array_equal(ref.forward(x), y)  # the same draws, the same mask
    np.testing.assert_array_equal(ref.backward(dy), layer.backward(dy))


def test_a_network_is_built_for_evaluation_and_train_turns_dropout_on_for_every_part(rng):
    net = Network([("dense", {"units": 8}), ("dropout", {"rate": 0.5}), ("dense", {"units": 3}), ("softmax", {})],
                  (6,), threads=2)
    x = rng.standard_normal((130, 6)).astype(np.float32)
    clean = net.logits(x)
    np.testing.assert_array_equal(net.logits(x), clean)  # evaluation: deterministic
    net.train(np.random.default_rng(1))
    noisy = net.logits(x)
    assert not np.allclose(noisy, clean) and all(r[1].training for r in net.replicas[:3])
    assert not np.array_equal(net.logits(x), noisy)  # each batch draws anew
    net.eval()
    np.testing.assert_array_equal(net.logits(x), clean)


def run_with_threads(setup, threads, monkeypatch, *extra):
    monkeypatch.setenv("CNNRUN_THREADS", str(threads))
    runs_dir = str(setup["tmp"] / f"runs-{threads}")
    result = CliRunner().invoke(main, ["train", setup["dropout"], "--data-dir", setup["data"], "--quiet",
                                       "--runs-dir", runs_dir, *extra])
    assert result.exit_code == 0, result.output
    return runs.list_runs(runs_dir)[-1]


@pytest.fixture
def dropout_setup(setup):
    setup["dropout"] = dropout_config(setup["tmp"] / "dropout.yaml")
    return setup


def weights(run_dir):
    with np.load(os.path.join(run_dir, "weights.npz")) as data:
        return {k: data[k] for k in data.files}


def test_a_run_with_dropout_gives_the_same_numbers_on_one_thread_or_two(dropout_setup, monkeypatch):
    one, two = (weights(run_with_threads(dropout_setup, t, monkeypatch)) for t in (1, 2))
    assert all(np.array_equal(one[k], two[k]) for k in one)
    other_seed = weights(run_with_threads(dropout_setup, 1, monkeypatch, "--seed", "1"))
    assert not all(np.array_equal(one[k], other_seed[k]) for k in one)


def test_a_run_with_dropout_resumes_to_exactly_the_uninterrupted_result(dropout_setup, monkeypatch):
    full = run_with_threads(dropout_setup, 2, monkeypatch)
    real = interrupt_call(monkeypatch, runner, "train_epoch", 3)  # Ctrl-C in the third epoch
    result = CliRunner().invoke(main, ["train", dropout_setup["dropout"], "--data-dir", dropout_setup["data"],
                                       "--quiet", "--runs-dir", str(dropout_setup["tmp"] / "part")])
    assert result.exit_code == 130
    (part,) = runs.list_runs(str(dropout_setup["tmp"] / "part"))
    monkeypatch.setattr(runner, "train_epoch", real)
    result = CliRunner().invoke(main, ["train", "--resume", part, "--quiet"])
    assert result.exit_code == 0, result.output
    assert [r["train_loss"] for r in runs.read_metrics(full)] == [r["train_loss"] for r in runs.read_metrics(part)]
    a, b = weights(full), weights(part)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_evaluation_and_every_attack_see_the_network_without_dropout(dropout_setup, rng):
    net = build_network(load_config(dropout_setup["dropout"]), batch_size=20)
    x = rng.random((20, 1, 28, 28), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 20)]
    net.train(np.random.default_rng(0))  # left in training mode: every attack runs it in evaluation mode
    for method in attacks.METHODS:
        a = attacks.attack(net, x, y, method, 0.1, steps=2, queries=5, targets=2, rng=np.random.default_rng(0))
        b = attacks.attack(net, x, y, method, 0.1, steps=2, queries=5, targets=2, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(a, b, err_msg=method)  # no dropout noise between two runs
        assert net.training, method  # and gives it back as it was


def test_a_dropout_rate_outside_zero_to_one_is_one_line(setup):
    for rate in (1, 1.5, -0.1, "half"):
        layers = [dict(layer) if isinstance(layer, dict) else layer for layer in TINY_CONFIG["model"]["layers"]]
        layers.insert(-1, {"dropout": {"rate": rate}})
        path = write_config(setup["tmp"] / "bad.yaml", model={"input_shape": [1, 28, 28], "layers": layers})
        result = CliRunner().invoke(main, ["train", path, "--data-dir", setup["data"], "--runs-dir", setup["runs"]])
        assert result.exit_code == 1 and result.output.count("\n") == 1
        assert f"dropout.rate: expected a number in [0, 1), got {rate!r}" in result.output
