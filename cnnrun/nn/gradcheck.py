"""Backward passes checked against central finite differences (use float64).

The error of a tensor is max |analytic - numeric| over the checked entries,
divided by the largest analytic or numeric magnitude of that tensor (at least
SCALE_FLOOR), so that entries that are zero by accident, or whole tensors whose
gradient is exactly zero (a conv bias before instance norm), compare sensibly.
"""

import numpy as np

from cnnrun.nn.losses import softmax_cross_entropy

STEP = 1e-6
TOLERANCE = 1e-5
SCALE_FLOOR = 1e-3  # gradients smaller than this are compared in absolute terms
KINK = 1e-2  # one-sided slopes further apart than this (relative): not differentiable there


def sample_indices(shape, count, rng):
    """Up to `count` distinct entries of an array of `shape`, as a list of index tuples."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= count else rng.choice(size, count, replace=False)
    return list(zip(*np.unravel_index(flat, shape)))


def perturbed(f, array, idx, step=STEP):
    """`(f(a + h), f(a - h))` for entry `idx` of `array`, which `f` reads; the entry is put back."""
    old = array[idx]
    array[idx] = old + step
    up = f()
    array[idx] = old - step
    down = f()
    array[idx] = old
    return up, down


def numeric_gradient(f, array, indices, step=STEP):
    """Central differences (f(a + h) - f(a - h)) / 2h of scalar `f()` for entries of `array`,
    which `f` reads; `array` is perturbed in place and restored.

    An entry where f has a kink within h (a max-pool window or a relu switching: the
    one-sided slopes disagree by more than KINK of their size) has no derivative to
    measure; it is NaN and left out of the comparison.
    """
    centre = f()
    grads = []
    for idx in indices:
        up, down = perturbed(f, array, idx, step)
        right, left = (up - centre) / step, (centre - down) / step
        kink = abs(right - left) > KINK * max(abs(right), abs(left), SCALE_FLOOR)
        grads.append(np.nan if kink else (up - down) / (2 * step))
    return np.array(grads)


def compare(analytic, f, array, indices):
    """Relative error between `analytic` (full gradient of `array`) and finite differences
    (NaN if every checked entry sits on a kink)."""
    numeric = numeric_gradient(f, array, indices)
    picked = np.array([analytic[idx] for idx in indices])
    smooth = ~np.isnan(numeric)
    if not smooth.any():
        return float("nan")
    scale = max(np.abs(analytic).max(), np.abs(numeric[smooth]).max(), SCALE_FLOOR)
    return float(np.abs(picked - numeric)[smooth].max() / scale)


def check_layer(layer, x, rng, samples=20):
    """Check one layer at input `x`: loss = sum(layer(x) * R) for a fixed random R.

    Returns `[(tensor_name, error), ...]` for each parameter and the input ("dx").
    """
    x = x.copy()
    upstream = rng.standard_normal(layer.forward(x).shape)
    dx = layer.backward(upstream)
    grads = {name: g.copy() for name, g in layer.grads.items()}

    def f():
        return float(np.sum(layer.forward(x) * upstream))

    rows = [(name, compare(grads[name], f, p, sample_indices(p.shape, samples, rng)))
            for name, p in layer.params.items()]
    rows.append(("dx", compare(dx, f, x, sample_indices(x.shape, samples, rng))))
    return rows


def check_network(net, x, y, rng, samples=20):
    """Check the whole network end to end on the cross-entropy loss against one-hot `y`.

    In training mode (batch norm on the batch's statistics, dropout drawing its masks, the
    same masks at every call: the noise is drawn afresh from one seed), the network's
    buffers as they were afterwards, and its mode too.
    Returns `[(qualified_name, error), ...]` for every parameter and the input ("input").
    """
    x = x.copy()
    buffers = {name: b.copy() for name, b in net.named_buffers().items()}
    was_training = net.training
    net.train(np.random.default_rng(0))
    _, _, dx = net.loss_and_backward(x, y, need_input_grad=True)
    grads = {name: g.copy() for name, g in net.named_gradients().items()}

    def f():
        net.train(np.random.default_rng(0))
        return softmax_cross_entropy(net.logits(x), y)[0]

    rows = [(name, compare(grads[name], f, p, sample_indices(p.shape, samples, rng)))
            for name, p in net.named_parameters().items()]
    rows.append(("input", compare(dx, f, x, sample_indices(x.shape, samples, rng))))
    for name, b in net.named_buffers().items():
        b[...] = buffers[name]
    if not was_training:
        net.eval()
    return rows


def check_all(net, x, y, rng, samples=20):
    """Every layer on its own, then the network end to end.

    A layer is checked at a random normal input of its input shape: its real
    input may hold exact ties (zeros after a ReLU, in a max-pool window) where
    the function has no derivative for finite differences to measure.
    Returns rows `(where, tensor, error)`; `where` is e.g. "3 conv" or "network".
    """
    rows = []
    for i, layer in enumerate(net.layers):
        inputs = rng.standard_normal((x.shape[0],) + net.shapes[i])
        for tensor, error in check_layer(layer, inputs, rng, samples):
            rows.append((f"{i} {layer.kind}", tensor, error))
    rows += [("network", tensor, error) for tensor, error in check_network(net, x, y, rng, samples)]
    return rows
