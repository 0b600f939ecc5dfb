"""Certified (IBP) training: its loss's gradient through the bounds against finite
differences, over the parts of a batch and on any number of threads; kappa and eps ramped
together per step; a run resumed in the middle of the ramps is exact; bad settings are
one line."""

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun import runner, runs
from cnnrun.cli import main
from cnnrun.config import validate
from cnnrun.errors import CnnrunError
from cnnrun.nn import Network
from cnnrun.nn.gradcheck import compare, sample_indices
from cnnrun.robustness import bounds
from helpers import interrupt_call
from idx import TINY_CONFIG, write_config

# Every kind IBP training passes, with padding, strides and odd sizes.
SPECS = [("normalize", {"mean": 0.3, "std": 0.4}), ("conv", {"filters": 3, "kernel": 3, "padding": 1, "stride": 2}),
         "relu", ("maxpool", {"kernel": 2, "stride": 1}), ("conv", {"filters": 4, "kernel": 2}), "tanh",
         ("avgpool", {"kernel": 2, "stride": 1}), "flatten", ("dense", {"units": 7}), "sigmoid",
         ("dense", {"units": 5}), "relu", ("dense", {"units": 4}), "softmax"]


def network(dtype=np.float64, threads=None):
    return Network(SPECS, (1, 9, 7), seed=1, dtype=dtype, threads=threads)


@pytest.mark.parametrize("n", [1, 5, 70])  # 70: two parts of the batch
def test_the_ibp_loss_gradient_matches_finite_differences(rng, n):
    net = network()
    x, labels = rng.random((n, 1, 9, 7)), rng.integers(0, 4, n)
    loss, worst, grads = bounds.ibp_loss_and_grads(net, x, labels, 0.05)
    assert worst.shape == (n, 4) and np.all(worst[np.arange(n), labels] == 0)
    assert set(grads) == set(net.named_parameters())
    for name, p in net.named_parameters().items():
        error = compare(grads[name], lambda: bounds.ibp_loss_and_grads(net, x, labels, 0.05)[0], p,
                        sample_indices(p.shape, 12, rng))
        assert error < 1e-5, name


def test_the_worst_case_logits_are_minus_the_ibp_margins(rng):
    net = network()
    x, labels = rng.random((9, 1, 9, 7)), rng.integers(0, 4, 9)
    _, worst, _ = bounds.ibp_loss_and_grads(net, x, labels, 0.03)
    np.testing.assert_allclose(worst, -bounds.ibp_margins(net, x, labels, 0.03), atol=1e-12)


def test_ibp_gradients_are_the_same_bits_on_one_thread_or_two(rng):
    x, labels = rng.random((130, 1, 9, 7)).astype(np.float32), rng.integers(0, 4, 130)
    one = bounds.ibp_loss_and_grads(network(np.float32, threads=1), x, labels, 0.1)
    two = bounds.ibp_loss_and_grads(network(np.float32, threads=2), x, labels, 0.1)
    assert one[0] == two[0] and all(np.array_equal(one[2][k], two[2][k]) for k in one[2])


def test_at_kappa_one_a_step_is_the_clean_step(rng):
    net = network()
    x, labels = rng.random((6, 1, 9, 7)), rng.integers(0, 4, 6)
    y = np.eye(4)[labels]
    loss, _, _ = net.loss_and_backward(x, y)
    clean = {k: v.copy() for k, v in net.named_gradients().items()}
    step_loss, _ = bounds.ibp_step(net, x, y, labels, 0.1, 1.0)
    assert step_loss == loss and all(np.array_equal(clean[k], v) for k, v in net.named_gradients().items())
    step_loss, _ = bounds.ibp_step(net, x, y, labels, 0.1, 0.25)
    worst_loss, _, grads = bounds.ibp_loss_and_grads(net, x, labels, 0.1)
    assert step_loss == pytest.approx(0.25 * loss + 0.75 * worst_loss)
    for k, v in net.named_gradients().items():
        np.testing.assert_allclose(v, 0.25 * clean[k] + 0.75 * grads[k], atol=1e-14)


def test_kappa_ramps_down_as_eps_ramps_up_at_every_step(rng, monkeypatch):
    settings = validate(dict(TINY_CONFIG, train=dict(TINY_CONFIG["train"], epochs=4, adversarial={
        "method": "ibp", "eps": 0.4, "kappa": 0.5, "eps_schedule": {"name": "piecewise", "points": [[0, 0], [2, 0.4]]}
    })))["train"]["adversarial"]
    seen = []
    monkeypatch.setattr(bounds, "ibp_step", lambda net, x, y, labels, eps, kappa: seen.append((eps, kappa)))
    step = bounds.ibp_trainer(settings, epoch=1, first_step=10, steps_per_epoch=10, epochs=4)
    for _ in range(3):
        step(None, None, None, None)
    assert np.allclose(seen, [(0.2, 0.75), (0.22, 0.725), (0.24, 0.7)])


@pytest.mark.slow
def test_an_ibp_run_resumed_in_the_middle_of_its_ramps_is_exact(setup, monkeypatch):
    model = {"input_shape": [1, 28, 28], "layers": [{"conv": {"filters": 3, "kernel": 4, "stride": 3}}, "relu",
                                                     "flatten", {"dense": {"units": 10}}, "softmax"]}
    path = write_config(setup["tmp"] / "ibp.yaml", name="ibp", model=model, train=dict(
        TINY_CONFIG["train"], epochs=4, eval_every=1, optimizer="adam", lr=0.01, adversarial={
            "method": "ibp", "eps": 0.2, "kappa": 0.5, "eps_schedule": {"name": "piecewise",
                                                                      "points": [[0, 0], [0.5, 0], [3.5, 0.2]]}}))
    args = ["--data-dir", setup["data"], "--quiet"]
    full_dir, part_dir = str(setup["tmp"] / "full"), str(setup["tmp"] / "part")
    assert CliRunner().invoke(main, ["train", path, *args, "--runs-dir", full_dir]).exit_code == 0
    real = interrupt_call(monkeypatch, runner, "train_epoch", 3)  # Ctrl-C in the third epoch: mid-ramp
    assert CliRunner().invoke(main, ["train", path, *args, "--runs-dir", part_dir]).exit_code == 130
    monkeypatch.setattr(runner, "train_epoch", real)
    (full,), (part,) = runs.list_runs(full_dir), runs.list_runs(part_dir)
    result = CliRunner().invoke(main, ["train", "--resume", part, "--quiet"])
    assert result.exit_code == 0, result.output
    a, b = runs.read_metrics(full), runs.read_metrics(part)
    assert [(r["train_loss"], r["test_loss"]) for r in a] == [(r["train_loss"], r["test_loss"]) for r in b]
    with open(f"{full}/weights.npz", "rb") as f, open(f"{part}/weights.npz", "rb") as g:
        assert f.read() == g.read()


def test_ibp_training_refuses_layers_it_cannot_bound_before_any_run_folder(setup):
    model = {"input_shape": [1, 28, 28], "layers": [{"conv": {"filters": 3, "kernel": 3}}, {"batch_norm": {}}, "relu",
                                                     "flatten", {"dense": {"units": 10}}, "softmax"]}
    path = write_config(setup["tmp"] / "bn.yaml", name="bn", model=model, train=dict(
        TINY_CONFIG["train"], adversarial={"method": "ibp", "eps": 0.1}))
    result = CliRunner().invoke(main, ["train", path, "--data-dir", setup["data"], "--runs-dir", setup["runs"]])
    assert result.exit_code == 1 and "layer 1 (batch_norm): IBP training bounds only" in result.output
    assert result.output.count("\n") == 1 and runs.list_runs(setup["runs"]) == []
    with pytest.raises(CnnrunError, match="kappa"):
        validate(dict(TINY_CONFIG, train=dict(TINY_CONFIG["train"], adversarial={"method": "ibp", "eps": 0.1,
                                                                                  "kappa": 1.5})))


@pytest.mark.slow
def test_a_trained_networks_bounds_hold_against_samples_and_attacks(setup):
    from cnnrun import api
    from cnnrun.robustness import attacks
    model = {"input_shape": [1, 28, 28], "layers": [{"conv": {"filters": 4, "kernel": 4, "stride": 2, "padding": 1}},
                                                     "relu", {"conv": {"filters": 6, "kernel": 4, "stride": 2}},
                                                     "relu", "flatten", {"dense": {"units": 20}}, "relu",
                                                     {"dense": {"units": 10}}, "softmax"]}
    path = write_config(setup["tmp"] / "trained.yaml", name="trained", model=model, train=dict(
        TINY_CONFIG["train"], epochs=20, eval_every=20, optimizer="adam", lr=0.003, lr_decay=1.0,
        adversarial={"method": "ibp", "eps": 0.05}))
    result = CliRunner().invoke(main, ["train", path, "--data-dir", setup["data"], "--runs-dir", setup["runs"], "-q"])
    assert result.exit_code == 0, result.output
    cfg, net = api.load_run(runs.list_runs(setup["runs"])[0])
    x, labels = api.load_data(cfg, setup["data"])["test"]
    x, labels = x[:40], labels[:40]
    eps = 0.05
    y = np.eye(10)[labels]
    found = [attacks.attack(net, x, y, method, eps, queries=200) for method in ("apgd-t", "square")]
    rng = np.random.default_rng(0)
    low, up = bounds.input_box(x, eps)
    found += [low + (up - low) * rng.random(x.shape) for _ in range(50)]
    certified = {}
    for method in ("ibp", "crown-ibp", "crown"):
        margins = bounds.margins(net, x, labels, eps, method)[0]
        certified[method] = bounds.certified(net, x, labels, margins).mean()
        for point in found:
            z = net.logits(point)
            assert np.all(z[np.arange(40), labels][:, None] - z >= margins - 1e-4)  # float32 sums
    assert certified["crown"] >= certified["ibp"] > 0.3, certified  # trained against its bounds: they certify
