"""The training loop of cnnrun/training.py on its own: what it reports while it runs, how
it stops when training diverges, and the gradients of its TRADES step."""

import numpy as np
import pytest

from cnnrun.config import build_network, validate
from cnnrun.nn import SGD, one_hot
from cnnrun.training import Diverged, epoch_rng, evaluate, train_epoch, trades_step
from idx import TINY_CONFIG


def tiny_net(dtype=np.float32):
    return build_network(validate(TINY_CONFIG), dtype=dtype)


def toy_set(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def test_on_batch_gets_the_running_mean_loss_and_accuracy_ending_at_the_epochs_figures():
    net, (x, labels) = tiny_net(), toy_set()
    calls = []
    loss, acc = train_epoch(net, SGD(0.05), x, labels, 32, epoch_rng(0, 0), on_batch=lambda *a: calls.append(a))
    assert len(calls) == 3 and calls[-1] == (loss, acc)
    # the first call is the first batch alone: its loss as the network computed it before the step
    first = epoch_rng(0, 0).permutation(len(x))[:32]
    again = tiny_net()
    first_loss, logits, _ = again.loss_and_backward(x[first], one_hot(labels[first], 10))
    assert calls[0][0] == pytest.approx(first_loss, rel=1e-6)
    assert calls[0][1] == pytest.approx(np.mean(logits.argmax(axis=1) == labels[first]))
    assert 0 <= acc <= 1 and all(0 <= a <= 1 for _, a in calls)


def test_a_nan_loss_stops_the_epoch_naming_the_batch_it_happened_in():
    net, (x, labels) = tiny_net(), toy_set()
    order = epoch_rng(0, 0).permutation(len(x))
    x[order[40]] = np.nan  # the second batch of 32 holds the NaN image
    with pytest.raises(Diverged) as caught:
        train_epoch(net, SGD(0.05), x, labels, 32, epoch_rng(0, 0))
    assert caught.value.batch == 1 and np.isnan(caught.value.loss)
    assert str(caught.value) == "batch 1: loss nan"


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_a_weight_that_overflows_with_a_finite_loss_stops_the_first_batch():
    net, (x, labels) = tiny_net(), toy_set()
    with pytest.raises(Diverged) as caught:
        train_epoch(net, SGD(1e39), x, labels, 32, epoch_rng(0, 0))  # float32 weights become inf
    assert caught.value.batch == 0
    assert str(caught.value) == "batch 0: loss finite, but a weight overflowed"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_trades_step_leaves_gradients_in_the_networks_dtype(dtype):
    net, (x, labels) = tiny_net(dtype), toy_set(8)
    x = x.astype(dtype)
    x_adv = np.clip(x + 0.1, 0, 1)
    loss, clean_logits = trades_step(net, x, x_adv, one_hot(labels, 10, dtype), 6.0)
    assert np.isfinite(loss) and clean_logits.shape == (8, 10)
    np.testing.assert_array_equal(clean_logits, net.logits(x))
    grads = [g for _, g in net.param_grad_pairs()]
    assert grads and all(g.dtype == dtype for g in grads)


def test_evaluate_gives_the_mean_loss_accuracy_and_probabilities_over_every_batch():
    net, (x, labels) = tiny_net(), toy_set(130)
    loss, acc, probs = evaluate(net, x, labels, batch_size=50)
    z = net.logits(x).astype(np.float64)
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-np.mean(log_p[np.arange(130), labels]), rel=1e-5)
    assert acc == np.mean(z.argmax(axis=1) == labels)
    np.testing.assert_allclose(probs, np.exp(log_p), rtol=1e-4, atol=1e-7)
