"""Stochastic gradient descent (optionally with momentum) and a per-epoch exponential
learning-rate decay."""

import numpy as np


def exponential_lr(lr, decay, epoch):
    """Learning rate at `epoch` (counted from 0): lr * decay**epoch."""
    return lr * decay ** epoch


class SGD:
    """SGD on a list of `(param, grad)` pairs: param -= lr * grad.

    With `momentum` m > 0 (heavy ball, as PyTorch's SGD): v = m * v + grad, then
    param -= lr * v, with one velocity `v` per parameter in the order of the pairs.
    The pairs are re-read at every step, since layers replace their gradient arrays.
    """

    def __init__(self, lr, momentum=0.0):
        self.lr, self.momentum = lr, momentum
        self.velocity = []  # filled at the first step; saved with checkpoints

    def step(self, pairs):
        if not self.momentum:
            for param, grad in pairs:
                param -= self.lr * grad
            return
        if not self.velocity:
            self.velocity = [np.zeros_like(param) for param, _ in pairs]
        for (param, grad), v in zip(pairs, self.velocity):
            v *= self.momentum
            v += grad
            param -= self.lr * v
