"""Loss functions: pure functions of arrays."""

import numpy as np


def log_softmax(logits):
    """log(softmax(logits)) of each row `(N, K)`, with the row's max subtracted first
    (so logits of +-1e4 stay finite)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, y):
    """Mean categorical cross-entropy of softmax(logits) against one-hot `y`.

    logits, y: `(N, K)`. Returns `(loss, dlogits)`; the softmax and the
    cross-entropy gradients fuse to `(p - y) / N`.
    """
    log_p = log_softmax(logits)
    n = logits.shape[0]
    loss = -np.sum(y * log_p) / n
    dlogits = (np.exp(log_p) - y) / n
    return float(loss), dlogits


def softmax_cross_entropy_grad(logits, y, batch_size):
    """The `dlogits` of `softmax_cross_entropy` for rows `(n, K)` of a batch of
    `batch_size`, without the loss (a part of a batch computes only this)."""
    return (np.exp(log_softmax(logits)) - y) / batch_size


def accuracy(scores, labels):
    """Share of rows of `scores` `(N, K)` whose argmax equals `labels` `(N,)` (ints)."""
    return float(np.mean(scores.argmax(axis=1) == labels))


def one_hot(labels, k, dtype=np.float32):
    """Integer labels `(N,)` -> one-hot rows `(N, k)`."""
    return np.eye(k, dtype=dtype)[labels]


def cross_entropy_per_sample(logits, labels):
    """Cross-entropy of each row: logits `(N, K)`, integer labels `(N,)` ->
    `(losses (N,), gradient of their sum on the logits (N, K))`."""
    log_p = log_softmax(logits)
    rows = np.arange(len(labels))
    dlogits = np.exp(log_p)
    dlogits[rows, labels] -= 1.0
    return -log_p[rows, labels], dlogits


def dlr_targeted(logits, labels, targets):
    """Targeted Difference of Logits Ratio (Croce & Hein 2020), to be maximised:
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), with pi the classes by decreasing logit.
    Scale-invariant in the logits, so a saturated softmax does not hide the direction.
    Returns `(losses (N,), gradient of their sum on the logits (N, K))`; K >= 4."""
    rows = np.arange(len(labels))
    order = np.argsort(logits, axis=1)  # ascending: pi1 is order[:, -1]
    first, third, fourth = order[:, -1], order[:, -3], order[:, -4]
    margin = logits[rows, labels] - logits[rows, targets]
    scale = logits[rows, first] - 0.5 * (logits[rows, third] + logits[rows, fourth]) + 1e-12
    # d/dz of -margin / scale = -(e_y - e_t) / scale + margin / scale**2 * (e_pi1 - e_pi3 / 2 - e_pi4 / 2)
    dlogits = np.zeros_like(logits)
    np.add.at(dlogits, (rows, labels), -1.0 / scale)
    np.add.at(dlogits, (rows, targets), 1.0 / scale)
    ratio = margin / scale ** 2
    np.add.at(dlogits, (rows, first), ratio)
    np.add.at(dlogits, (rows, third), -0.5 * ratio)
    np.add.at(dlogits, (rows, fourth), -0.5 * ratio)
    return -margin / scale, dlogits


def trades_loss(z_clean, z_adv, y, beta):
    """TRADES (Zhang et al. 2019): mean over the batch of cross-entropy on the clean
    logits plus `beta` times KL(p || q), p = softmax(z_clean), q = softmax(z_adv).
    z_clean, z_adv, one-hot y: `(N, K)`. Returns `(loss, d/dz_clean, d/dz_adv)`.

    With a = log p - log q and KL = sum_k p_k a_k:
    - d KL / d z_adv = q - p (as cross-entropy against the soft target p);
    - d KL / d z_clean = p * (a - KL), through the softmax's Jacobian p_k (delta_kj - p_j)
      applied to d KL / d p_k = a_k + 1."""
    n = len(z_clean)
    log_p, log_q = log_softmax(z_clean), log_softmax(z_adv)
    p, q = np.exp(log_p), np.exp(log_q)
    a = log_p - log_q
    kl = np.sum(p * a, axis=1, keepdims=True)
    loss = (-np.sum(y * log_p) + beta * np.sum(kl)) / n
    d_clean = ((p - y) + beta * p * (a - kl)) / n
    d_adv = beta * (q - p) / n
    return float(loss), d_clean, d_adv


def kl_to_clean(z_clean, z_adv):
    """KL(softmax(z_clean) || softmax(z_adv)) of each row `(N,)`, and the gradient of their
    sum on z_adv `(N, K)`: q - p (TRADES's inner maximisation)."""
    log_p, log_q = log_softmax(z_clean), log_softmax(z_adv)
    p = np.exp(log_p)
    return np.sum(p * (log_p - log_q), axis=1), np.exp(log_q) - p
