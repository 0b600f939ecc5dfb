"""Optimizers on `(param, grad)` pairs: SGD (optionally with momentum) and Adam;
and the per-epoch exponential learning-rate decay.

An optimizer keeps its per-parameter state (velocities, moment estimates) in the
order of the pairs; `state(names)` / `load_state(arrays, names)` name it by the
parameters' qualified names so that a checkpoint can hold it and a resumed run
continues exactly.
"""

import numpy as np


def exponential_lr(lr, decay, epoch):
    """Learning rate at `epoch` (counted from 0): lr * decay**epoch."""
    return lr * decay ** epoch


class SGD:
    """param -= lr * grad. With `momentum` m > 0 (heavy ball, as PyTorch's SGD):
    v = m * v + grad, then param -= lr * v.

    The pairs are re-read at every step, since layers replace their gradient arrays.
    """

    def __init__(self, lr, momentum=0.0):
        self.lr, self.momentum = lr, momentum
        self.velocity = []  # one array per parameter, made at the first step

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

    def state(self, names):
        return {f"velocity.{name}": v for name, v in zip(names, self.velocity)}

    def load_state(self, arrays, names):
        if self.momentum:
            self.velocity = [arrays[f"velocity.{name}"] for name in names]


class Adam:
    """Adam (Kingma & Ba 2015): running means of the gradient (m) and of its square
    (v), bias-corrected; param -= lr * m_hat / (sqrt(v_hat) + eps)."""

    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m, self.v, self.t = [], [], 0  # moments per parameter, and steps taken

    def step(self, pairs):
        if not self.m:
            self.m = [np.zeros_like(param) for param, _ in pairs]
            self.v = [np.zeros_like(param) for param, _ in pairs]
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        correction1, correction2 = 1 - b1 ** self.t, 1 - b2 ** self.t  # bias corrections
        for (param, grad), m, v in zip(pairs, self.m, self.v):
            m *= b1
            m += (1 - b1) * grad
            v *= b2
            v += (1 - b2) * grad * grad
            param -= self.lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps)

    def state(self, names):
        arrays = {"adam.t": np.array(self.t)}
        arrays.update({f"adam.m.{name}": m for name, m in zip(names, self.m)})
        arrays.update({f"adam.v.{name}": v for name, v in zip(names, self.v)})
        return arrays

    def load_state(self, arrays, names):
        self.t = int(arrays["adam.t"])
        self.m = [arrays[f"adam.m.{name}"] for name in names]
        self.v = [arrays[f"adam.v.{name}"] for name in names]


def make_optimizer(train_cfg):
    """The optimizer of a config's `train` section."""
    if train_cfg["optimizer"] == "adam":
        return Adam(train_cfg["lr"])
    return SGD(train_cfg["lr"], train_cfg["momentum"])
