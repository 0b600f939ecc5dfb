"""Optimizers on `(param, grad)` pairs: SGD (optionally with momentum) and Adam;
and the learning-rate schedule, which owns the rate: an optimizer reads its rate from
its schedule at the start of every epoch (`begin_epoch`), and nothing else sets it.

An optimizer keeps its per-parameter state (velocities, moment estimates) in the
order of the pairs; `state(names)` / `load_state(arrays, names)` name it by the
parameters' qualified names so that a checkpoint can hold it and a resumed run
continues exactly.
"""

import functools

import numpy as np


def exponential_lr(lr, decay, epoch):
    """Learning rate at `epoch` (counted from 0): lr * decay**epoch."""
    return lr * decay ** epoch


def learning_rate(train_cfg, epoch):
    """The rate a config's `train` section gives `epoch` (from 0): its schedule, the one
    place the rate is decided (the optimizer and the PyTorch twin both read it here)."""
    return exponential_lr(train_cfg["lr"], train_cfg["lr_decay"], epoch)


class Optimizer:
    """What SGD and Adam share: the rate, read from `schedule` (a function of the epoch,
    or a number for a constant rate) when an epoch begins."""

    def __init__(self, schedule):
        self.schedule = schedule if callable(schedule) else (lambda epoch: schedule)
        self.lr = self.schedule(0)

    def begin_epoch(self, epoch):
        """Take the rate of `epoch` (counted from 0) from the schedule."""
        self.lr = self.schedule(epoch)


class SGD(Optimizer):
    """param -= lr * grad. With `momentum` m > 0 (heavy ball, as PyTorch's SGD):
    v = m * v + grad, then param -= lr * v.

    The pairs are re-read at every step, since layers replace their gradient arrays.
    """

    def __init__(self, lr, momentum=0.0):
        super().__init__(lr)
        self.momentum = momentum
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


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015): running means of the gradient (m) and of its square
    (v), bias-corrected; param -= lr * m_hat / (sqrt(v_hat) + eps)."""

    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
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
    """The optimizer of a config's `train` section, on its learning-rate schedule."""
    schedule = functools.partial(learning_rate, train_cfg)
    if train_cfg["optimizer"] == "adam":
        return Adam(schedule)
    return SGD(schedule, train_cfg["momentum"])
