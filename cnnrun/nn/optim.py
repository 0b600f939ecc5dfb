"""Stochastic gradient descent with a per-epoch exponential learning-rate decay."""


def exponential_lr(lr, decay, epoch):
    """Learning rate at `epoch` (counted from 0): lr * decay**epoch."""
    return lr * decay ** epoch


class SGD:
    """Plain SGD: param -= lr * grad, for a list of `(param, grad)` pairs.

    The pairs are re-read at every step, since layers replace their gradient arrays.
    """

    def __init__(self, lr):
        self.lr = lr

    def step(self, pairs):
        for param, grad in pairs:
            param -= self.lr * grad
