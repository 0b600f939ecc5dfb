"""cnnrun's APGD against the reference implementation: torchattacks 3.5.1 (Croce & Hein's
APGD) on the PyTorch twin of a network trained briefly on real MNIST, with the same weights.
torchattacks and PyTorch come with the [test] extra: this never skips."""

import numpy as np
import pytest
import torch
import torchattacks

from cnnrun import torch_twin
from cnnrun.robustness import attacks
from cnnrun.config import build_network, load_config
from helpers import briefly_trained

IMAGES = 300


@pytest.fixture(scope="module")
def trained():
    """net2 after one epoch on 10,000 real training images, and the first 300 test images."""
    return briefly_trained(load_config("configs/net2.yaml"), IMAGES)


def robust(net, x_adv, labels):
    """Per image: still classified right after the attack."""
    return net.logits(x_adv).argmax(axis=1) == labels


@pytest.mark.parametrize("eps", [0.1, 0.3])
@pytest.mark.slow
def test_apgd_ce_is_as_strong_as_torchattacks_apgd(trained, eps):
    net, x, labels = trained
    y = np.eye(10, dtype=np.float32)[labels]
    ours = robust(net, attacks.attack(net, x, y, "apgd-ce", eps, rng=np.random.default_rng(0)), labels).mean()

    model = torch_twin.twin(net).eval()
    reference = torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0)
    x_adv = reference(torch.from_numpy(x), torch.from_numpy(labels)).detach().numpy()
    assert np.abs(x_adv - x).max() <= eps + 1e-6
    theirs = robust(net, x_adv, labels).mean()

    clean = robust(net, x, labels).mean()
    assert clean > 0.85
    assert abs(ours - theirs) <= 0.02, f"eps {eps}: cnnrun {ours:.3f}, torchattacks {theirs:.3f}"
    if eps == 0.1:  # the attack must have had something to do
        assert 0.05 < theirs < clean - 0.1, f"eps 0.1 does not separate: clean {clean:.3f}, attacked {theirs:.3f}"


@pytest.mark.slow
def test_autoattack_is_no_weaker_than_pgd_on_any_image(trained):
    net, x, labels = trained
    x, labels = x[:150], labels[:150]  # the full suite's cost; 150 images hold both outcomes
    y = np.eye(10, dtype=np.float32)[labels]
    eps = 0.1
    by_pgd = robust(net, attacks.attack(net, x, y, "pgd", eps, rng=np.random.default_rng(0)), labels)
    by_autoattack = robust(net, attacks.attack(net, x, y, "autoattack", eps, rng=np.random.default_rng(0), queries=500), labels)
    assert 0 < by_autoattack.sum() < by_pgd.sum(), "the suite must break some images PGD leaves, not all"
    assert not np.any(by_autoattack & ~by_pgd), "an image survives autoattack but not PGD"


@pytest.mark.slow
def test_targeted_apgd_is_as_strong_as_torchattacks_apgdt(trained):
    """APGD-T on the DLR loss towards each of the 9 most likely other classes in turn,
    against torchattacks' APGDT with the same settings (100 steps, one restart each)."""
    net, x, labels = trained
    y = np.eye(10, dtype=np.float32)[labels]
    eps = 0.1
    ours = robust(net, attacks.attack(net, x, y, "apgd-t", eps, rng=np.random.default_rng(0)), labels).mean()
    model = torch_twin.twin(net).eval()
    reference = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=10, seed=0)
    x_adv = reference(torch.from_numpy(x), torch.from_numpy(labels)).detach().numpy()
    assert np.abs(x_adv - x).max() <= eps + 1e-6
    theirs = robust(net, x_adv, labels).mean()
    assert 0.05 < theirs < 0.95, f"eps {eps} does not separate: torchattacks {theirs:.3f}"
    assert abs(ours - theirs) <= 0.02, f"apgd-t at eps {eps}: cnnrun {ours:.3f}, torchattacks {theirs:.3f}"


@pytest.mark.slow
def test_targeted_apgd_uses_the_scale_invariant_dlr_loss_where_cross_entropy_saturates(trained):
    """Multiply the logits by 1,000: the softmax saturates, so cross-entropy's gradient is
    exactly zero in float32 on confident images and APGD-CE cannot move; the targeted DLR
    loss is a ratio of logit differences, unchanged by the scale, so APGD-T breaks as many
    images as on the plain network."""
    net, x, labels = trained
    x, labels = x[:100], labels[:100]
    y = np.eye(10, dtype=np.float32)[labels]
    hot = build_network(load_config("configs/net2.yaml"))
    for name, p in hot.named_parameters().items():
        p[...] = net.named_parameters()[name] * (1000.0 if name.startswith("9.dense") else 1.0)
    assert np.array_equal(hot.logits(x).argmax(axis=1), net.logits(x).argmax(axis=1))
    acc = {m: robust(hot, attacks.attack(hot, x, y, m, 0.1, targets=3, rng=np.random.default_rng(0)), labels).mean()
           for m in ("apgd-ce", "apgd-t")}
    plain_t = robust(net, attacks.attack(net, x, y, "apgd-t", 0.1, targets=3, rng=np.random.default_rng(0)),
                     labels).mean()
    assert acc["apgd-t"] <= plain_t + 0.03, (acc, plain_t)
    assert acc["apgd-ce"] >= acc["apgd-t"] + 0.2, acc
