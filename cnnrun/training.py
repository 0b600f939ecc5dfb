"""The training loop's numeric parts: one epoch of training (any optimizer), and evaluation. No file I/O."""

import math

import numpy as np

from cnnrun.errors import CnnrunError
from cnnrun.nn.layers import walk

from cnnrun.nn import accuracy, one_hot, softmax_cross_entropy
from cnnrun.nn.losses import trades_loss


class Diverged(Exception):
    """The loss or a weight became NaN or infinite."""

    def __init__(self, batch, loss):
        super().__init__(f"batch {batch}: loss {loss}")
        self.batch, self.loss = batch, loss


def epoch_rng(seed, epoch, stream=0):
    """The random generator of one epoch (from 0): a function of seed and epoch only,
    so a run resumed at any epoch draws exactly what an uninterrupted run draws."""
    return np.random.default_rng([seed, epoch, stream])


def steps_per_epoch(n, batch_size):
    """Training steps in an epoch of `n` images: the last batch may be smaller."""
    return -(-n // batch_size)


def check_batches(net, n, batch_size):
    """A one-line error if a training batch of `n` images in batches of `batch_size` would hold
    a single value per channel for a batch_norm layer (one image, where the layer normalises
    vectors or 1x1 images): its batch variance would be 0/0."""
    smallest = n % batch_size or min(batch_size, n)
    for layer in walk(net.layers):
        if layer.kind == "batch_norm" and smallest * math.prod(layer.in_shape[1:]) < 2:
            raise CnnrunError(f"batch_norm on {layer.in_shape} needs at least 2 images in every training batch, "
                              f"and the last of {n} images in batches of {batch_size} holds {smallest}: "
                              f"change train.batch_size or data.train_limit")


def check_adversarial(net, settings):
    """One line before any training if `train.adversarial` cannot train this network
    (IBP training bounds only some layers)."""
    if settings and settings["method"] == "ibp":
        from cnnrun.robustness.bounds import check_ibp_trainable

        check_ibp_trainable(net)


def trades_step(net, x, x_adv, y, beta):
    """Forward and backward of the TRADES loss (`losses.trades_loss`) on the clean batch x
    and its x' `(N, C, H, W)`, both in one pass of 2N; fills the network's gradients.
    Returns `(loss, clean logits)`."""
    n = len(x)
    z = net.logits(np.concatenate([x, x_adv]))
    loss, d_clean, d_adv = trades_loss(z[:n], z[n:], y, beta)
    net.backward(np.concatenate([d_clean, d_adv]).astype(net.dtype), need_input_grad=False)
    return loss, z[:n]


def train_epoch(net, optimizer, x, labels, batch_size, rng, on_batch=None, adversary=None, trades_beta=None,
                noise=None, first_step=0, augment=None, certified=None):
    """One pass of `optimizer` (SGD or Adam) over `(x, labels)` in an order shuffled by `rng`,
    the network in training mode (dropout's draws from `noise`), back in evaluation mode
    after it; the adversary makes its examples in evaluation mode (every attack runs so:
    `network.in_eval_mode`).

    `adversary(net, x, y) -> x`, if given, replaces part of each batch by
    adversarial examples (adversarial training); loss and accuracy are then on
    the mixed batch. With `trades_beta`, the loss is TRADES's instead, on the clean
    batch and the adversary's x' (accuracy on the clean batch). `on_batch(loss, acc)` is called after every batch with running means.
    Before each step the optimizer takes its rate from its schedule (`begin_step`), the
    steps counted over the run from `first_step`, this epoch's first. `augment(x) -> x`, if
    given, transforms each batch first (data/augment.py). `certified(net, x, y, labels) ->
    (loss, logits)`, if given, is the step of certified training (robustness/bounds.py's
    `ibp_trainer`): it fills the gradients itself.
    Returns `(mean loss, accuracy)` over the epoch; raises `Diverged` on a NaN/inf loss or weight.
    """
    net.train(noise)
    try:
        return _train_epoch(net, optimizer, x, labels, batch_size, rng, on_batch, adversary, trades_beta, first_step,
                            augment, certified)
    finally:
        net.eval()


def _train_epoch(net, optimizer, x, labels, batch_size, rng, on_batch, adversary, trades_beta, first_step, augment,
                 certified):
    order = rng.permutation(len(x))
    k = net.output_shape[0]
    total_loss = total_correct = seen = 0
    for batch, start in enumerate(range(0, len(x), batch_size)):
        idx = order[start:start + batch_size]
        optimizer.begin_step(first_step + batch)
        xb, yb = x[idx], one_hot(labels[idx], k, net.dtype)
        if augment:
            xb = augment(xb)
        if certified:
            loss, logits = certified(net, xb, yb, labels[idx])
        elif adversary and trades_beta is not None:
            loss, logits = trades_step(net, xb, adversary(net, xb, yb), yb, trades_beta)
        else:
            if adversary:
                xb = adversary(net, xb, yb)
            loss, logits, _ = net.loss_and_backward(xb, yb)
        if not np.isfinite(loss):
            raise Diverged(batch, loss)
        pairs = net.param_grad_pairs()
        optimizer.step(pairs)
        if not all(np.isfinite(p).all() for p, _ in pairs):
            raise Diverged(batch, "finite, but a weight overflowed")
        total_loss += loss * len(idx)
        total_correct += int(np.sum(logits.argmax(axis=1) == labels[idx]))
        seen += len(idx)
        if on_batch:
            on_batch(total_loss / seen, total_correct / seen)
    return total_loss / seen, total_correct / seen


def evaluate(net, x, labels, batch_size=500):
    """`(mean cross-entropy, accuracy, probabilities (N, K))` on a labelled set, the
    network in evaluation mode."""
    net.eval()
    k = net.output_shape[0]
    losses, logits = [], []
    for i in range(0, len(x), batch_size):
        z = net.logits(x[i:i + batch_size])
        losses.append(softmax_cross_entropy(z, one_hot(labels[i:i + batch_size], k, z.dtype))[0] * len(z))
        logits.append(z)
    logits = np.concatenate(logits)
    probs = net.layers[-1].forward(logits)  # the final softmax
    return float(np.sum(losses) / len(x)), accuracy(logits, labels), probs
