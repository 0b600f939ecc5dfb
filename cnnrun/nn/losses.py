"""Loss functions: pure functions of arrays."""

import numpy as np


def softmax_cross_entropy(logits, y):
    """Mean categorical cross-entropy of softmax(logits) against one-hot `y`.

    logits, y: `(N, K)`. Returns `(loss, dlogits)`. Computed from log-softmax
    (max subtracted), so logits of +-1e4 stay finite; the softmax and the
    cross-entropy gradients fuse to `(p - y) / N`.
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_sum
    n = logits.shape[0]
    loss = -np.sum(y * log_p) / n
    dlogits = (np.exp(log_p) - y) / n
    return float(loss), dlogits


def accuracy(scores, labels):
    """Share of rows of `scores` `(N, K)` whose argmax equals `labels` `(N,)` (ints)."""
    return float(np.mean(scores.argmax(axis=1) == labels))


def one_hot(labels, k, dtype=np.float32):
    """Integer labels `(N,)` -> one-hot rows `(N, k)`."""
    return np.eye(k, dtype=dtype)[labels]
