"""Batch norm and residual blocks: the whole batch's statistics although a batch runs in
parts on several threads, PyTorch's numbers in training and in evaluation, running
statistics that are buffers (saved, restored on resume, untouched by the optimizer and by
every attack), and one-line errors."""

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cnnrun import runner, runs, torch_twin
from cnnrun.cli import main
from cnnrun.config import build_network, load_config
from cnnrun.errors import CnnrunError
from cnnrun.nn import Network
from cnnrun.nn.losses import softmax_cross_entropy, softmax_cross_entropy_grad
from cnnrun.nn.optim import SGD
from cnnrun.robustness import attacks
from helpers import interrupt_call
from idx import write_config

# Every way batch norm and a block can sit: after a conv, inside a block's body and its
# shortcut, with an identity shortcut, and over vectors after a dense layer.
SPECS = [("conv", {"filters": 4, "kernel": 3, "padding": 1}), ("batch_norm", {}), "relu",
         ("residual", {"layers": [{"conv": {"filters": 4, "kernel": 3, "padding": 1}}, {"batch_norm": {}}, "relu"]}),
         ("residual", {"layers": [{"conv": {"filters": 8, "kernel": 3, "padding": 1, "stride": 2}},
                                  {"batch_norm": {"momentum": 0.3}}],
                       "shortcut": [{"conv": {"filters": 8, "kernel": 1, "stride": 2}}, {"batch_norm": {}}]}),
         "global_avgpool", ("dense", {"units": 5}), ("batch_norm", {"eps": 1e-3}), "relu", ("dense", {"units": 3}),
         "softmax"]
SHAPE = (1, 9, 9)


def batch(rng, n=130, dtype=np.float64):
    x = rng.standard_normal((n,) + SHAPE).astype(dtype)
    labels = rng.integers(0, 3, n)
    return x, labels, np.eye(3, dtype=dtype)[labels]


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_training_steps_equal_pytorchs_in_train_mode_though_the_batch_runs_in_parts(dtype, tolerance, rng):
    """Three steps of SGD on a batch of 130 (three parts, two threads): the same loss, input
    gradient, parameter gradients and running statistics as the twin in train mode."""
    net = Network(SPECS, SHAPE, seed=3, dtype=dtype, threads=2).train()
    model = torch_twin.twin(net).train()
    torch_sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd = SGD(0.1, momentum=0.9)
    for step in range(3):
        x, labels, y = batch(rng, dtype=dtype)
        loss, _, dx = net.loss_and_backward(x, y, need_input_grad=True)
        assert len(net.parts) == 3
        xt = torch.tensor(x, requires_grad=True)
        torch_loss = torch.nn.functional.cross_entropy(model(xt), torch.tensor(labels))
        torch_sgd.zero_grad()
        torch_loss.backward()
        assert loss == pytest.approx(torch_loss.item(), rel=tolerance, abs=tolerance)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=tolerance, atol=tolerance)
        theirs = torch_twin.gradients(model, net)
        for name, g in net.named_gradients().items():
            np.testing.assert_allclose(g, theirs[name], rtol=tolerance * 10, atol=tolerance * 10, err_msg=name)
        theirs = torch_twin.buffers(model, net)
        for name, b in net.named_buffers().items():
            np.testing.assert_allclose(b, theirs[name], rtol=tolerance, atol=tolerance, err_msg=name)
        sgd.step(net.param_grad_pairs())
        torch_sgd.step()
    net.eval()
    x, _, _ = batch(rng, 7, dtype)
    with torch.no_grad():
        np.testing.assert_allclose(net.logits(x), model.eval()(torch.tensor(x)).numpy(), rtol=tolerance * 10,
                                   atol=tolerance * 10)


def whole_batch(net, x, y):
    """Loss, input gradient, parameter gradients and buffers of one training step with the
    batch laid through the layers whole, by hand, on one copy of them."""
    layers = net.layers[:-1]
    for layer in net.named_layers():
        layer[1].training = True
    h = x
    for layer in layers:
        h = layer.forward(h)
    loss, _ = softmax_cross_entropy(h, y)
    g = softmax_cross_entropy_grad(h, y, len(x))
    for layer in reversed(layers):
        g = layer.backward(g)
    return loss, g, net.named_gradients(), net.named_buffers()


@pytest.mark.parametrize("n", [2, 63, 64, 65, 130, 200])
def test_the_parts_on_two_threads_see_the_statistics_of_the_whole_batch(n, rng):
    x, _, y = batch(rng, n)
    parted = Network(SPECS, SHAPE, seed=1, dtype=np.float64, threads=2).train()
    loss, _, dx = parted.loss_and_backward(x, y, need_input_grad=True)
    loss_1, dx_1, grads_1, buffers_1 = whole_batch(Network(SPECS, SHAPE, seed=1, dtype=np.float64), x, y)
    assert loss == pytest.approx(loss_1, rel=1e-12)
    np.testing.assert_allclose(dx, dx_1, rtol=1e-9, atol=1e-14)
    for name, g in parted.named_gradients().items():
        np.testing.assert_allclose(g, grads_1[name], rtol=1e-9, atol=1e-13, err_msg=name)
    for name, b in parted.named_buffers().items():
        np.testing.assert_allclose(b, buffers_1[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_the_reference_engine_and_the_fast_one_train_alike(rng):
    x, _, y = batch(rng)
    fast, ref = (Network(SPECS, SHAPE, seed=2, dtype=np.float64, threads=2, engine=e).train()
                 for e in ("fast", "reference"))
    (loss_a, _, dx_a), (loss_b, _, dx_b) = (n.loss_and_backward(x, y, need_input_grad=True) for n in (fast, ref))
    assert loss_a == pytest.approx(loss_b, rel=1e-12)
    np.testing.assert_allclose(dx_a, dx_b, rtol=1e-9, atol=1e-14)
    for name, g in fast.named_gradients().items():
        np.testing.assert_allclose(g, ref.named_gradients()[name], rtol=1e-9, atol=1e-13, err_msg=name)
    for name, b in fast.named_buffers().items():
        np.testing.assert_array_almost_equal(b, ref.named_buffers()[name], 14, err_msg=name)


def test_one_thread_or_two_give_the_same_numbers_bit_for_bit(rng):
    x, _, y = batch(rng)
    results = []
    for threads in (1, 2):
        net = Network(SPECS, SHAPE, seed=1, threads=threads).train()
        loss, _, dx = net.loss_and_backward(x.astype(np.float32), y.astype(np.float32), need_input_grad=True)
        results.append((loss, dx, net.named_gradients(), net.named_buffers()))
    (loss_1, dx_1, g_1, b_1), (loss_2, dx_2, g_2, b_2) = results
    assert loss_1 == loss_2
    np.testing.assert_array_equal(dx_1, dx_2)
    for name in g_1:
        np.testing.assert_array_equal(g_1[name], g_2[name], err_msg=name)
    for name in b_1:
        np.testing.assert_array_equal(b_1[name], b_2[name], err_msg=name)


def test_running_statistics_are_buffers_the_optimizer_never_sees(rng):
    net = Network(SPECS, SHAPE, seed=1).train()
    buffers = net.named_buffers()
    assert list(buffers) == ["1.batch_norm.running_mean", "1.batch_norm.running_var",
                             "3.residual.body.1.batch_norm.running_mean", "3.residual.body.1.batch_norm.running_var",
                             "4.residual.body.1.batch_norm.running_mean", "4.residual.body.1.batch_norm.running_var",
                             "4.residual.shortcut.1.batch_norm.running_mean",
                             "4.residual.shortcut.1.batch_norm.running_var",
                             "7.batch_norm.running_mean", "7.batch_norm.running_var"]
    x, _, y = batch(rng)
    net.loss_and_backward(x.astype(np.float32), y.astype(np.float32))
    pairs = net.param_grad_pairs()
    assert not any(p is b for p, _ in pairs for b in buffers.values())
    moved = {name: b.copy() for name, b in net.named_buffers().items()}
    assert all(not np.array_equal(b, 0) and not np.array_equal(b, 1) for b in moved.values())
    SGD(0.5).step(net.param_grad_pairs())
    for name, b in net.named_buffers().items():
        np.testing.assert_array_equal(b, moved[name], err_msg=name)


def test_buffers_are_saved_with_the_weights_and_loaded_back(tmp_path, rng):
    net = Network(SPECS, SHAPE, seed=1).train()
    x, _, y = batch(rng)
    net.loss_and_backward(x.astype(np.float32), y.astype(np.float32))
    net.save(tmp_path / "w.npz")
    other = Network(SPECS, SHAPE, seed=5)
    other.load(tmp_path / "w.npz")
    for name, b in net.named_buffers().items():
        np.testing.assert_array_equal(other.named_buffers()[name], b, err_msg=name)
    np.testing.assert_array_equal(other.eval().logits(x[:5].astype(np.float32)), net.eval().logits(x[:5].astype(np.float32)))
    with np.load(tmp_path / "w.npz") as data:
        arrays = {k: data[k] for k in data.files if k != "7.batch_norm.running_var"}
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(CnnrunError, match="7.batch_norm.running_var missing"):
        other.load(tmp_path / "short.npz")


def test_no_attack_changes_a_buffer_or_draws_dropout_even_on_a_network_left_in_training_mode(rng):
    specs = SPECS[:-2] + [("dropout", {"rate": 0.5}), ("dense", {"units": 4}), "softmax"]  # (APGD-T: 4 classes)
    net = Network(specs, SHAPE, seed=1, threads=2).train(np.random.default_rng(0))
    x = rng.random((20,) + SHAPE, dtype=np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 20)]
    net.loss_and_backward(x, y)  # running statistics away from their initial 0 and 1
    before = {name: b.copy() for name, b in net.named_buffers().items()}
    for method in attacks.METHODS:
        a = attacks.attack(net, x, y, method, 0.1, steps=2, queries=5, targets=2, rng=np.random.default_rng(0))
        b = attacks.attack(net, x, y, method, 0.1, steps=2, queries=5, targets=2, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(a, b, err_msg=method)
        for name, buffer in net.named_buffers().items():
            np.testing.assert_array_equal(buffer, before[name], err_msg=f"{method} changed {name}")
        assert net.training, method


@pytest.mark.parametrize("layers, message", [
    ([{"residual": {"layers": [{"conv": {"filters": 4, "kernel": 3}}]}}],
     "layer 0 (residual): input shape (1, 28, 28): the body gives (4, 26, 26) and the identity shortcut (1, 28, 28); "
     "they must be the same shape to be added"),
    ([{"residual": {"layers": [{"conv": {"filters": 4, "kernel": 3, "padding": 1}}],
                    "shortcut": [{"conv": {"filters": 4, "kernel": 1, "stride": 2}}]}}],
     "the body gives (4, 28, 28) and the shortcut (4, 14, 14)"),
    ([{"residual": {"layers": [{"conv": {"filters": 4, "kernel": 3, "padding": 1}}, "batch_normm"]}}],
     "model.layers[0].residual.layers[1]: unknown layer 'batch_normm'"),
    ([{"residual": {"layers": [{"batch_norm": {"momentum": 2}}]}}],
     "model.layers[0].residual.layers[0].batch_norm.momentum: expected a number in [0, 1], got 2"),
    ([{"residual": {"layers": []}}], "model.layers[0].residual.layers: expected a non-empty list of layers"),
    ([{"residual": {"layers": ["relu"], "shortcut": "none"}}],
     "model.layers[0].residual.shortcut: expected 'identity' or a non-empty list of layers, got 'none'"),
])
def test_a_block_that_does_not_fit_is_one_line_naming_it(setup, layers, message):
    path = write_config(setup["tmp"] / "bad.yaml", model={"input_shape": [1, 28, 28], "layers": layers + [
        "flatten", {"dense": {"units": 10}}, "softmax"]})
    result = CliRunner().invoke(main, ["train", path, "--data-dir", setup["data"], "--runs-dir", setup["runs"]])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert message in result.output


def test_batch_norm_over_vectors_refuses_a_last_batch_of_one_image_before_training(setup):
    path = write_config(setup["tmp"] / "bn.yaml", model={"input_shape": [1, 28, 28], "layers": [
        "flatten", {"dense": {"units": 8}}, {"batch_norm": {}}, "relu", {"dense": {"units": 10}}, "softmax"]},
        data={"dataset": "digits", "dir": None, "train_limit": 65, "test_limit": None})
    result = CliRunner().invoke(main, ["train", path, "--data-dir", setup["data"], "--runs-dir", setup["runs"]])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "batch_norm on (8,) needs at least 2 images in every training batch, and the last of 65 images in " \
           "batches of 32 holds 1" in result.output
    assert not runs.list_runs(setup["runs"])


BN_LAYERS = [{"conv": {"filters": 4, "kernel": 3, "stride": 2}}, {"batch_norm": {}}, "relu",
             {"residual": {"layers": [{"conv": {"filters": 4, "kernel": 3, "padding": 1}}, {"batch_norm": {}},
                                      "relu", {"dropout": {"rate": 0.2}}]}},
             "global_avgpool", {"dense": {"units": 10}}, "softmax"]


@pytest.mark.slow
def test_a_run_with_batch_norm_resumes_to_exactly_the_uninterrupted_result(setup, monkeypatch):
    path = write_config(setup["tmp"] / "bn.yaml", model={"input_shape": [1, 28, 28], "layers": BN_LAYERS})
    args = ["--data-dir", setup["data"], "--quiet"]
    result = CliRunner().invoke(main, ["train", path, *args, "--runs-dir", str(setup["tmp"] / "full")])
    assert result.exit_code == 0, result.output
    (full,) = runs.list_runs(str(setup["tmp"] / "full"))
    real = interrupt_call(monkeypatch, runner, "train_epoch", 3)  # Ctrl-C in the third epoch
    result = CliRunner().invoke(main, ["train", path, *args, "--runs-dir", str(setup["tmp"] / "part")])
    assert result.exit_code == 130
    (part,) = runs.list_runs(str(setup["tmp"] / "part"))
    monkeypatch.setattr(runner, "train_epoch", real)
    result = CliRunner().invoke(main, ["train", "--resume", part, "--quiet"])
    assert result.exit_code == 0, result.output
    assert [r["test_loss"] for r in runs.read_metrics(full)] == [r["test_loss"] for r in runs.read_metrics(part)]
    with np.load(os.path.join(full, "weights.npz")) as a, np.load(os.path.join(part, "weights.npz")) as b:
        assert sorted(a.files) == sorted(b.files) and "1.batch_norm.running_var" in a.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    result = CliRunner().invoke(main, ["eval", full, "--json"])
    assert result.exit_code == 0, result.output
    net = build_network(load_config(os.path.join(full, "config.yaml")))
    net.load(os.path.join(full, "weights.npz"))
    assert net.named_buffers()["1.batch_norm.running_var"].min() > 0


@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 4, 1), (6,)])
@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 130])
def test_batch_norm_trains_as_its_reference_for_every_batch_size_across_the_parts(n, shape, rng):
    """Batch sizes around the parts' boundaries (64 a part at most), one and several
    channels, odd sizes, images and vectors; a vector batch of one is refused, as PyTorch does."""
    specs = [("batch_norm", {"momentum": 0.3}), "flatten", ("dense", {"units": 3}), "softmax"]
    x = rng.standard_normal((n,) + shape)
    y = np.eye(3)[rng.integers(0, 3, n)]
    fast, ref = (Network(specs, shape, seed=1, dtype=np.float64, threads=2, engine=e).train()
                 for e in ("fast", "reference"))
    if n * int(np.prod(shape[1:])) < 2:
        with pytest.raises(CnnrunError, match="needs more than one value per channel"):
            fast.loss_and_backward(x, y)
        return
    (loss_a, _, dx_a), (loss_b, _, dx_b) = (net.loss_and_backward(x, y, need_input_grad=True) for net in (fast, ref))
    assert loss_a == pytest.approx(loss_b, rel=1e-12)
    np.testing.assert_allclose(dx_a, dx_b, rtol=1e-9, atol=1e-14)
    for name, g in fast.named_gradients().items():
        np.testing.assert_allclose(g, ref.named_gradients()[name], rtol=1e-9, atol=1e-13, err_msg=name)
    for name, b in fast.named_buffers().items():
        np.testing.assert_allclose(b, ref.named_buffers()[name], rtol=1e-12, atol=1e-15, err_msg=name)


class HandedMask(torch.nn.Module):
    """Dropout with a mask handed to it: x * mask (the mask already scaled by 1 / (1 - rate))."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


def test_dropout_in_training_equals_pytorch_given_the_same_masks(rng):
    specs = [("conv", {"filters": 3, "kernel": 3}), "relu", ("dropout", {"rate": 0.3}), "flatten",
             ("dense", {"units": 16}), "relu", ("dropout", {"rate": 0.5}), ("dense", {"units": 3}), "softmax"]
    net = Network(specs, SHAPE, seed=1, dtype=np.float64, threads=2).train(np.random.default_rng(0))
    x, labels, y = batch(rng)
    loss, _, dx = net.loss_and_backward(x, y, need_input_grad=True)
    model = torch_twin.twin(net).train()
    for i, layer in enumerate(net.layers):
        if layer.kind == "dropout":  # each part's mask, put together
            mask = np.concatenate([replica[i].cache for replica in net.replicas[:len(net.parts)]])
            assert 0.2 < (mask == 0).mean() < 0.6
            model[i] = HandedMask(torch.tensor(mask))
    xt = torch.tensor(x, requires_grad=True)
    torch_loss = torch.nn.functional.cross_entropy(model(xt), torch.tensor(labels))
    torch_loss.backward()
    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-15)
    theirs = torch_twin.gradients(model, net)
    for name, g in net.named_gradients().items():
        np.testing.assert_allclose(g, theirs[name], rtol=1e-10, atol=1e-14, err_msg=name)
