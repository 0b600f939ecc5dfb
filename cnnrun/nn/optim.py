"""Optimizers on `(param, grad)` pairs (SGD with momentum or Nesterov, Adam, AdamW,
RMSprop, each as PyTorch's: the same defaults and formulas), and the learning-rate
schedules, which own the rate: the optimizer reads its rate from its schedule before
every step (`begin_step`), and nothing else sets it.

A schedule is a pure function of (step, steps per epoch, settings), so a resumed run
takes exactly the rates an uninterrupted one does.

An optimizer keeps its per-parameter state (velocities, moment estimates) in the
order of the pairs; `state(names)` / `load_state(arrays, names)` name it by the
parameters' qualified names so that a checkpoint can hold it and a resumed run
continues exactly.
"""

import bisect
import functools
import math

import numpy as np

SCHEDULES = ("constant", "exponential", "step", "multistep", "cosine", "onecycle", "cyclic", "piecewise")


def exponential_lr(lr, decay, epoch):
    """Learning rate at `epoch` (counted from 0): lr * decay**epoch."""
    return lr * decay ** epoch


def cosine_between(start, end, fraction):
    """From `start` (fraction 0) to `end` (fraction 1) along half a cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def learning_rate(train_cfg, step, steps_per_epoch):
    """The rate a config's `train` section gives training step `step` (from 0, counted over
    the whole run) when an epoch has `steps_per_epoch` steps: the one place the rate is
    decided (the optimizer and the PyTorch twin both read it here).

    Without `schedule`, `lr * lr_decay ** epoch`. With one, by its name:
      constant     lr
      exponential  lr * gamma ** epoch
      step         lr * gamma ** (epoch // step_size)
      multistep    lr * gamma ** (the number of milestones <= epoch)
      cosine       a linear warm-up to lr over `warmup_epochs` (lr * (k + 1) / warm-up steps
                   at step k), then half a cosine from lr to `min_lr` at the last step
      onecycle     PyTorch's OneCycleLR: half a cosine from lr / div_factor up to lr at
                   `pct_start` of the run, then down to lr / div_factor / final_div_factor
      cyclic       triangular: linear from 0 up to lr at `peak_epoch`, then down to 0 at the end
      piecewise    linear between `points` [[epoch, rate], ...] (fractional epochs allowed);
                   the first rate before the first point, the last after the last
    Steps-based schedules are per step; the epoch-based ones change at epoch boundaries.
    """
    lr, settings, epoch = train_cfg["lr"], train_cfg.get("schedule"), step // steps_per_epoch
    if settings is None:
        return exponential_lr(lr, train_cfg["lr_decay"], epoch)
    name, total = settings["name"], train_cfg["epochs"] * steps_per_epoch
    if name == "constant":
        return lr
    if name == "exponential":
        return lr * settings["gamma"] ** epoch
    if name == "step":
        return lr * settings["gamma"] ** (epoch // settings["step_size"])
    if name == "multistep":
        return lr * settings["gamma"] ** bisect.bisect_right(settings["milestones"], epoch)
    if name == "cosine":
        warm = round(settings["warmup_epochs"] * steps_per_epoch)
        if step < warm:
            return lr * (step + 1) / warm
        return cosine_between(lr, settings["min_lr"], (step - warm) / max(total - warm, 1))
    if name == "onecycle":
        start = lr / settings["div_factor"]
        peak_step = settings["pct_start"] * total - 1
        if step <= peak_step:
            return cosine_between(start, lr, step / peak_step)
        return cosine_between(lr, start / settings["final_div_factor"], (step - peak_step) / (total - 1 - peak_step))
    if name == "cyclic":
        peak = settings["peak_epoch"] * steps_per_epoch
        return float(np.interp(step, [0, peak, total], [0, lr, 0]))
    if name == "piecewise":
        epochs, rates = zip(*settings["points"])
        return float(np.interp(step / steps_per_epoch, epochs, rates))
    raise ValueError(f"unknown schedule {name!r}")


class Optimizer:
    """What every optimizer shares: the rate, read from `schedule` (a function of the step,
    or a number for a constant rate) before each step; and weight decay, on the
    parameters `decays` marks (all, if None)."""

    def __init__(self, schedule, weight_decay=0.0, decays=None):
        self.schedule = schedule if callable(schedule) else (lambda step: schedule)
        self.lr = self.schedule(0)
        self.weight_decay, self.decays = weight_decay, decays

    def begin_step(self, step):
        """Take the rate of training step `step` (counted from 0 over the run) from the schedule."""
        self.lr = self.schedule(step)

    def _decayed(self, pairs):
        """`(param, grad, wd)` for each pair: wd the weight decay of that parameter."""
        decays = self.decays or [True] * len(pairs)
        return [(p, g, self.weight_decay if d else 0.0) for (p, g), d in zip(pairs, decays)]


class SGD(Optimizer):
    """param -= lr * grad, with coupled weight decay (grad += wd * param, as PyTorch's
    `weight_decay`). With `momentum` m > 0 (heavy ball, as PyTorch's SGD):
    v = m * v + grad, then param -= lr * v; with `nesterov`, param -= lr * (grad + m * v).

    The pairs are re-read at every step, since layers replace their gradient arrays.
    """

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0, decays=None):
        super().__init__(lr, weight_decay, decays)
        self.momentum, self.nesterov = momentum, nesterov
        self.velocity = []  # one array per parameter, made at the first step

    def step(self, pairs):
        if self.momentum and not self.velocity:
            self.velocity = [np.zeros_like(param) for param, _ in pairs]
        for index, (param, grad, wd) in enumerate(self._decayed(pairs)):
            if wd:
                grad = grad + wd * param
            if self.momentum:
                v = self.velocity[index]
                v *= self.momentum
                v += grad
                grad = grad + self.momentum * v if self.nesterov else v
            param -= self.lr * grad

    def state(self, names):
        return {f"velocity.{name}": v for name, v in zip(names, self.velocity)}

    def load_state(self, arrays, names):
        if self.momentum:
            self.velocity = [arrays[f"velocity.{name}"] for name in names]


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015): running means of the gradient (m) and of its square
    (v), bias-corrected; param -= lr * m_hat / (sqrt(v_hat) + eps). `weight_decay` is
    coupled (added to the gradient, as PyTorch's Adam); `decoupled` makes it AdamW
    (Loshchilov & Hutter 2019): param *= 1 - lr * wd before the Adam step."""

    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decays=None, decoupled=False):
        super().__init__(lr, weight_decay, decays)
        self.beta1, self.beta2, self.eps, self.decoupled = beta1, beta2, eps, decoupled
        self.m, self.v, self.t = [], [], 0  # moments per parameter, and steps taken

    def step(self, pairs):
        if not self.m:
            self.m = [np.zeros_like(param) for param, _ in pairs]
            self.v = [np.zeros_like(param) for param, _ in pairs]
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        correction1, correction2 = 1 - b1 ** self.t, 1 - b2 ** self.t  # bias corrections
        for (param, grad, wd), m, v in zip(self._decayed(pairs), self.m, self.v):
            if wd and self.decoupled:
                param *= 1 - self.lr * wd
            elif wd:
                grad = grad + wd * param
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


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton 2012), as PyTorch's: s = alpha * s + (1 - alpha) * grad^2,
    then param -= lr * grad / (sqrt(s) + eps); with `momentum` m > 0,
    b = m * b + grad / (sqrt(s) + eps) and param -= lr * b. Weight decay coupled."""

    def __init__(self, lr, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0, decays=None):
        super().__init__(lr, weight_decay, decays)
        self.alpha, self.eps, self.momentum = alpha, eps, momentum
        self.square, self.buffer = [], []

    def step(self, pairs):
        if not self.square:
            self.square = [np.zeros_like(param) for param, _ in pairs]
            self.buffer = [np.zeros_like(param) for param, _ in pairs] if self.momentum else []
        for index, (param, grad, wd) in enumerate(self._decayed(pairs)):
            if wd:
                grad = grad + wd * param
            s = self.square[index]
            s *= self.alpha
            s += (1 - self.alpha) * grad * grad
            step = grad / (np.sqrt(s) + self.eps)
            if self.momentum:
                b = self.buffer[index]
                b *= self.momentum
                b += step
                step = b
            param -= self.lr * step

    def state(self, names):
        arrays = {f"rmsprop.square.{name}": s for name, s in zip(names, self.square)}
        arrays.update({f"rmsprop.buffer.{name}": b for name, b in zip(names, self.buffer)})
        return arrays

    def load_state(self, arrays, names):
        self.square = [arrays[f"rmsprop.square.{name}"] for name in names]
        if self.momentum:
            self.buffer = [arrays[f"rmsprop.buffer.{name}"] for name in names]


def decays_of(train_cfg, names):
    """Which parameters (by qualified name) weight decay applies to: all, or with
    `weight_decay_params: weights` the weights of conv and dense layers only (no biases,
    no normalisation parameters)."""
    if train_cfg.get("weight_decay_params", "all") == "all":
        return None
    return [name.endswith(("conv.W", "dense.W")) for name in names]


def weight_decay_of(train_cfg):
    """The config's weight decay, or the optimizer's default as PyTorch's (0.01 for AdamW, else 0)."""
    wd = train_cfg.get("weight_decay")
    return (0.01 if train_cfg["optimizer"] == "adamw" else 0.0) if wd is None else wd


def make_optimizer(train_cfg, names=None, steps_per_epoch=1):
    """The optimizer of a config's `train` section, on its learning-rate schedule;
    `names` the parameters' qualified names (for which of them decay), and
    `steps_per_epoch` the training steps an epoch takes (the schedule's clock)."""
    schedule = functools.partial(learning_rate, train_cfg, steps_per_epoch=steps_per_epoch)
    kind, wd = train_cfg["optimizer"], weight_decay_of(train_cfg)
    decays = decays_of(train_cfg, names) if names is not None else None
    if kind in ("adam", "adamw"):
        return Adam(schedule, weight_decay=wd, decays=decays, decoupled=kind == "adamw")
    if kind == "rmsprop":
        return RMSprop(schedule, momentum=train_cfg["momentum"], weight_decay=wd, decays=decays)
    return SGD(schedule, train_cfg["momentum"], train_cfg.get("nesterov", False), weight_decay=wd, decays=decays)
