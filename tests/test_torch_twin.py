"""The PyTorch twin of every shipped config, with the same weights, computes the same
logits, loss and parameter gradients as cnnrun (float32 tolerance). PyTorch comes
with the [bench] extra, which the [test] extra includes: this never skips."""

import os

import numpy as np
import pytest
import torch

from cnnrun import torch_twin
from cnnrun.config import build_network, load_config
from cnnrun.nn import one_hot
from cnnrun.sweep import is_spec_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.join("configs", name) for name in os.listdir(os.path.join(ROOT, "configs"))
                 if name.endswith(".yaml") and not is_spec_file(os.path.join(ROOT, "configs", name)))
BATCH = 70  # two parts of 35 (nn/parallel.py), so the sum of the parts' gradients is compared too


def test_every_network_config_is_covered():
    assert {"configs/net1.yaml", "configs/net2.yaml", "configs/net3.yaml", "configs/net4.yaml",
            "configs/robust-pgd.yaml", "configs/small-adv.yaml"} <= set(CONFIGS)


def _perturbed_network(path, seed=0):
    """The config's network with every parameter (biases, gamma and beta too) nudged
    off its initial value, so that a misplaced or transposed tensor shows."""
    net = build_network(load_config(os.path.join(ROOT, path)), batch_size=BATCH)
    rng = np.random.default_rng(seed)
    for p in net.named_parameters().values():
        p += (0.1 * rng.standard_normal(p.shape) * (np.abs(p).mean() + 0.1)).astype(p.dtype)
    return net


def _close(a, b, floor=0.0):
    """Equal to float32 rounding: within 1e-4 of b's largest value, or of `floor`
    (for gradients that are zero but for rounding, such as a bias before instance norm)."""
    return float(np.abs(a - b).max()) <= 1e-4 * max(float(np.abs(b).max()), floor)


@pytest.mark.parametrize("path", CONFIGS)
def test_torch_twin_gives_the_same_logits_loss_and_gradients(path):
    net = _perturbed_network(path)
    rng = np.random.default_rng(1)
    x = rng.random((BATCH,) + net.input_shape, dtype=np.float32)
    labels = rng.integers(0, 10, BATCH)
    loss, logits, dx = net.loss_and_backward(x, one_hot(labels, 10), need_input_grad=True)

    model = torch_twin.twin(net)
    xt = torch.tensor(x, requires_grad=True)
    logits_t = model(xt)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.tensor(labels))
    loss_t.backward()

    assert len(net.parts) == 2
    assert _close(logits, logits_t.detach().numpy())
    assert abs(loss - loss_t.item()) <= 1e-5 * max(1.0, abs(loss))
    assert _close(dx, xt.grad.numpy())
    grads, grads_t = net.named_gradients(), torch_twin.gradients(model, net)
    assert sorted(grads) == sorted(grads_t) and len(grads) >= 4
    largest = max(float(np.abs(g).max()) for g in grads_t.values())
    for name in grads:
        assert grads[name].shape == grads_t[name].shape, name
        assert _close(grads[name], grads_t[name], floor=0.1 * largest), name


def test_twin_gradients_differ_when_a_weight_differs():
    """The comparison above can fail: one changed weight changes the twin's gradients."""
    net = _perturbed_network("configs/net1.yaml")
    model = torch_twin.twin(net)
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    x = np.random.default_rng(1).random((8,) + net.input_shape, dtype=np.float32)
    labels = np.arange(8)
    net.loss_and_backward(x, one_hot(labels, 10))
    torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(labels)).backward()
    twin_grads = torch_twin.gradients(model, net)
    assert not all(_close(g, twin_grads[name]) for name, g in net.named_gradients().items())
