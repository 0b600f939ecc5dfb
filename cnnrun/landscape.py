"""The loss around a trained network's weights, as numbers (pictures in pages.py).

Two views (Goodfellow et al. 2015; Li et al. 2018, "Visualizing the Loss Landscape of
Neural Nets"):

    line    L(theta0 + a (theta1 - theta0))      from the initial weights (a = 0) to the
                                                 final ones (a = 1), and a little beyond
    plane   L(theta1 + a d1 + b d2)              through the final weights, along two random
                                                 directions d1, d2, each filter-normalised

A filter-normalised direction is Gaussian noise rescaled, filter by filter (each
convolution's output channel, each dense layer's output unit), to the norm of the
weights of that filter: a step of 1 along it changes every filter by as much as the
filter itself, so networks of different scale compare. Biases and normalisation
parameters (vectors) get no component (Li et al.'s `ignore biasbn`). Buffers (batch
norm's running statistics) stay those of the final weights throughout.
"""

import numpy as np

from cnnrun.training import evaluate


def filter_axes(name, shape):
    """The axes to take each filter's norm over for parameter `name` of `shape`: a conv
    weight `(F, C, kh, kw)` per output channel F, a dense weight `(D, units)` per unit;
    None for vectors (biases, batch norm's scale and shift), which get no direction."""
    if len(shape) < 2:
        return None
    kind = name.split(".")[-2]
    return (0,) if kind == "dense" else tuple(range(1, len(shape)))


def filter_normalised_direction(params, rng):
    """`{name: d}` for the parameters `params` (`{name: array}`): Gaussian noise, each
    filter rescaled to the norm of that filter of the parameter; zeros for vectors."""
    direction = {}
    for name, p in params.items():
        axes = filter_axes(name, p.shape)
        if axes is None:
            direction[name] = np.zeros(p.shape)
            continue
        d = rng.standard_normal(p.shape)
        d_norm = np.sqrt((d ** 2).sum(axis=axes, keepdims=True))
        p_norm = np.sqrt((p.astype(np.float64) ** 2).sum(axis=axes, keepdims=True))
        direction[name] = d * p_norm / np.maximum(d_norm, 1e-10)
    return direction


class Moved:
    """Context: the network's parameters set to `origin + sum_i c_i * directions[i]` by
    `move(c)`, and put back as they were on leaving."""

    def __init__(self, net, origin, directions):
        self.net, self.origin, self.directions = net, origin, directions
        self.params = net.named_parameters()

    def __enter__(self):
        self.saved = {name: p.copy() for name, p in self.params.items()}
        return self

    def move(self, coefficients):
        for name, p in self.params.items():
            value = self.origin[name].astype(np.float64)
            for c, d in zip(coefficients, self.directions):
                value = value + c * d[name]
            p[...] = value

    def __exit__(self, *exc):
        for name, p in self.params.items():
            p[...] = self.saved[name]


def loss_at(net, x, labels):
    """`(loss, accuracy)` of the network as it is, on images `x` with int labels."""
    loss, acc, _ = evaluate(net, x, labels)
    return loss, acc


def line(net, initial, x, labels, alphas, on_point=None):
    """`[(alpha, loss, accuracy), ...]` along `theta0 + alpha (theta1 - theta0)`, theta1 the
    network's weights, theta0 `initial` (`{name: array}`, e.g. a freshly built twin's)."""
    final = {name: p.copy() for name, p in net.named_parameters().items()}
    towards = {name: final[name].astype(np.float64) - initial[name] for name in final}
    rows = []
    with Moved(net, initial, [towards]) as moved:
        for a in alphas:
            moved.move([a])
            rows.append((float(a), *loss_at(net, x, labels)))
            if on_point:
                on_point()
    return rows


def plane(net, x, labels, coordinates, seed=0, on_point=None):
    """`(losses (n, n), accuracies (n, n), directions)`: the loss at `theta1 + a d1 + b d2`
    for every `a` (rows) and `b` (columns) in `coordinates`, d1 and d2 filter-normalised
    directions drawn from `seed` (a stream apart from the one the weights were drawn from)."""
    final = {name: p.copy() for name, p in net.named_parameters().items()}
    rng = np.random.default_rng([seed, 4])  # a stream of its own: default_rng(seed) drew the initial weights
    directions = [filter_normalised_direction(final, rng) for _ in range(2)]
    n = len(coordinates)
    losses, accs = np.zeros((n, n)), np.zeros((n, n))
    with Moved(net, final, directions) as moved:
        for i, a in enumerate(coordinates):
            for j, b in enumerate(coordinates):
                moved.move([a, b])
                losses[i, j], accs[i, j] = loss_at(net, x, labels)
                if on_point:
                    on_point()
    return losses, accs, directions
