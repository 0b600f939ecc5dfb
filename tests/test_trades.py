"""TRADES adversarial training (Zhang et al. 2019): its loss's gradient by hand, checked by
finite differences in float64; its inner maximisation; and training with it."""

import numpy as np
import pytest

from cnnrun.robustness import attacks
from cnnrun.config import build_network, validate
from cnnrun.errors import CnnrunError
from cnnrun.data import mnist
from cnnrun.nn import SGD, Network, one_hot
from cnnrun.nn.gradcheck import numeric_gradient
from cnnrun.nn.losses import kl_to_clean, trades_loss
from cnnrun.training import epoch_rng, train_epoch, trades_step
from idx import TINY_CONFIG, make_digits


def central_differences(f, array):
    """d f() / d array, every entry, by gradcheck's central differences (NaN at a kink)."""
    return numeric_gradient(f, array, list(np.ndindex(array.shape))).reshape(array.shape)


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_trades_loss_gradient_on_both_logits_matches_finite_differences(beta):
    rng = np.random.default_rng(0)
    z_clean, z_adv = rng.standard_normal((6, 10)) * 3, rng.standard_normal((6, 10)) * 3
    y = np.eye(10)[rng.integers(0, 10, 6)]
    _, d_clean, d_adv = trades_loss(z_clean, z_adv, y, beta)
    loss = lambda: trades_loss(z_clean, z_adv, y, beta)[0]  # noqa: E731
    np.testing.assert_allclose(d_clean, central_differences(loss, z_clean), atol=1e-8)
    np.testing.assert_allclose(d_adv, central_differences(loss, z_adv), atol=1e-8)


def test_trades_loss_is_cross_entropy_when_the_outputs_agree_and_kl_is_its_definition():
    rng = np.random.default_rng(1)
    z, y = rng.standard_normal((4, 5)), np.eye(5)[[0, 3, 1, 4]]
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss, _, d_adv = trades_loss(z, z, y, 6.0)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(4), [0, 3, 1, 4]])))
    np.testing.assert_allclose(d_adv, 0, atol=1e-15)
    z2 = rng.standard_normal((4, 5))
    q = np.exp(z2) / np.exp(z2).sum(axis=1, keepdims=True)
    kl, grad = kl_to_clean(z, z2)
    np.testing.assert_allclose(kl, np.sum(p * np.log(p / q), axis=1))
    np.testing.assert_allclose(grad, central_differences(lambda: kl_to_clean(z, z2)[0].sum(), z2), atol=1e-8)


def test_trades_step_fills_every_parameter_gradient_of_the_trades_loss_as_finite_differences_do():
    """Clean and perturbed batch go through the network as one batch of 2N; the gradient
    it leaves on every parameter is the TRADES loss's, checked in float64."""
    rng = np.random.default_rng(2)
    net = Network([("conv", {"filters": 2, "kernel": 3, "stride": 2, "padding": 1}), ("relu", {}),
                   ("flatten", {}), ("dense", {"units": 4}), ("softmax", {})], (1, 7, 7), dtype=np.float64)
    x = rng.random((3, 1, 7, 7))
    x_adv = np.clip(x + rng.uniform(-0.3, 0.3, x.shape), 0, 1)
    y = np.eye(4)[[0, 2, 3]]

    def loss():
        return trades_loss(net.logits(x), net.logits(x_adv), y, 6.0)[0]

    trades_step(net, x, x_adv, y, 6.0)
    for name, grad in net.named_gradients().items():
        grad = grad.copy()
        np.testing.assert_allclose(grad, central_differences(loss, net.named_parameters()[name]), atol=1e-7,
                                   err_msg=name)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    make_digits(folder, n_train=512, n_test=200)
    data = mnist.load(str(folder), "digits", None, None, progress=False, allow_download=False)
    return data["train"], data["test"]


def test_trades_perturbation_stays_in_the_eps_ball_and_raises_the_kl_divergence_well_above_noise(digits):
    (x, labels), _ = digits
    net = build_network(validate(dict(TINY_CONFIG)))
    train_epoch(net, SGD(0.1), x, labels, 32, epoch_rng(0, 0))
    x = x[:100]
    x_adv = attacks.trades_adversary(net, x, 0.3, 10, 0.075, np.random.default_rng(0))
    assert x_adv.dtype == x.dtype and np.abs(x_adv - x).max() <= 0.3 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    noise = np.clip(x + np.random.default_rng(1).uniform(-0.3, 0.3, x.shape), 0, 1).astype(x.dtype)
    z = net.logits(x)
    kl_adv, kl_noise = kl_to_clean(z, net.logits(x_adv))[0].mean(), kl_to_clean(z, net.logits(noise))[0].mean()
    assert kl_adv > 3 * kl_noise + 0.1, (kl_adv, kl_noise)


def test_trades_perturbation_leaves_pixels_the_network_never_reads_at_their_random_start():
    """A 1x1 convolution of stride 2 never reads the odd rows and columns: their gradient
    is exactly 0, so the signed steps must not move them (a step of step_size / sign(0)
    would throw them to the edge of the eps-ball)."""
    net = Network([("conv", {"filters": 3, "kernel": 1, "stride": 2, "padding": 0}), ("relu", {}),
                   ("flatten", {}), ("dense", {"units": 4}), ("softmax", {})], (1, 7, 7), dtype=np.float32)
    x = np.random.default_rng(3).random((5, 1, 7, 7)).astype(np.float32) * 0.5 + 0.25
    x_adv = attacks.trades_adversary(net, x, 0.2, 5, 0.05, np.random.default_rng(0))
    unread = np.ones((7, 7), bool)
    unread[::2, ::2] = False
    start = np.clip(x + 0.001 * np.random.default_rng(0).standard_normal(x.shape), x - 0.2, x + 0.2)
    np.testing.assert_allclose(x_adv[..., unread], start[..., unread], atol=1e-6)
    assert np.abs(x_adv - x)[..., ~unread].max() > 0.1  # the read pixels did move


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trades_perturbation_keeps_the_input_dtype_and_the_box_with_and_without_steps(dtype):
    """Also with no step (the random start alone), on pixels at 0 and 1 as MNIST has."""
    net = Network([("flatten", {}), ("dense", {"units": 3}), ("softmax", {})], (1, 4, 4), dtype=np.float32)
    x = np.random.default_rng(4).random((8, 1, 4, 4)).astype(dtype)
    x[:, :, :2] = 0.0
    x[:, :, 3] = 1.0
    for steps in (0, 2):
        x_adv = attacks.trades_adversary(net, x, 0.1, steps, 0.05, np.random.default_rng(0))
        assert x_adv.dtype == dtype and x_adv.min() >= 0 and x_adv.max() <= 1, steps
        assert np.abs(x_adv - x).max() <= 0.1 + 1e-6


def test_trades_perturbation_leaves_the_networks_parameter_gradients_as_they_were():
    net = Network([("flatten", {}), ("dense", {"units": 3}), ("softmax", {})], (1, 4, 4), dtype=np.float32)
    net.logits(np.zeros((2, 1, 4, 4), np.float32))
    net.backward(np.ones((2, 3), np.float32))  # as a training step leaves them
    for grad in net.named_gradients().values():
        grad[...] = 7.0
    attacks.trades_adversary(net, np.full((2, 1, 4, 4), 0.5, np.float32), 0.1, 2, 0.05, np.random.default_rng(0))
    assert all(np.all(grad == 7.0) for grad in net.named_gradients().values())


def test_trades_training_makes_the_network_robust_under_pgd_on_a_toy_problem(digits):
    """As the PGD-training test: on the toy digits, four epochs of TRADES training hold
    under PGD-10 at eps 0.3, where training on the clean images alone does not."""
    (x, labels), (x_test, labels_test) = digits
    settings = validate(dict(TINY_CONFIG, train=dict(TINY_CONFIG["train"], adversarial=dict(
        method="trades", beta=6, eps=0.3, steps=5, step_size=0.1))))["train"]["adversarial"]
    robust = {}
    for name in ("clean", "trades"):
        net, optimizer = build_network(validate(dict(TINY_CONFIG))), SGD(0.1)
        for epoch in range(4):
            adversary = attacks.adversary(settings, epoch_rng(0, epoch, 1), epoch) if name == "trades" else None
            train_epoch(net, optimizer, x, labels, 32, epoch_rng(0, epoch), adversary=adversary,
                        trades_beta=6.0 if name == "trades" else None)
        x_adv = attacks.attack(net, x_test, one_hot(labels_test, 10), "pgd", 0.3, steps=10,
                               rng=np.random.default_rng(0))
        robust[name] = float(np.mean(net.logits(x_adv).argmax(axis=1) == labels_test))
    assert robust["trades"] > 0.8 and robust["clean"] < 0.3, robust


def test_a_trades_config_has_beta_6_by_default_and_refuses_a_negative_beta():
    config = dict(TINY_CONFIG, train=dict(TINY_CONFIG["train"], adversarial=dict(method="trades", eps=0.3)))
    assert validate(config)["train"]["adversarial"]["beta"] == 6.0
    config["train"]["adversarial"]["beta"] = -1
    with pytest.raises(CnnrunError, match="train.adversarial.beta"):
        validate(config)
