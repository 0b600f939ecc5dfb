"""Interval bound propagation (IBP, Gowal et al. 2018): bounds on every layer's output over
a whole box of inputs, and from them a certificate: a lower bound of each margin
z_y - z_k over the Linf ball around an image (intersected with [0, 1]). An image is
certified when it is classified correctly and every one of its lower bounds is above 0:
then no perturbation within eps changes its class.

Each layer maps a box `[lower, upper]` (arrays `(N, *shape)`) to a box holding all its
outputs (`BOUNDS`, by kind, the network in evaluation mode):
- affine layers (conv, dense, batch_norm in evaluation, normalize) through the box's
  centre and radius: centre' = layer(centre), radius' = |W| radius (no bias);
- monotone ones (relu, leaky_relu with slope >= 0, sigmoid, tanh, max-pool, average
  pools, flatten, reshape, dropout in evaluation): the layer of each end, exactly;
- a residual block: the sum of its branches' boxes.
Instance norm divides by a statistic of the same sample, and has no such bound here: it
is refused in one line. The last dense layer is folded into the margins (tighter than
bounding the logits). The plain interval arithmetic, layer by layer as its definition,
is in `reference_bounds`, which the tests hold these against.
"""

import numpy as np

from cnnrun.errors import CnnrunError
from cnnrun.nn.network import in_eval_mode


def _affine(layer, lower, upper):
    """conv or dense: centre through the layer, radius through |W| (no bias)."""
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    absolute = layer.replica()
    absolute.params = {"W": np.abs(layer.params["W"])}
    absolute.bias = False
    out_centre, out_radius = layer.replica().forward(centre), absolute.forward(radius)
    return out_centre - out_radius, out_centre + out_radius


def _per_channel_affine(scale, shift, lower, upper):
    """y = scale[c] * x + shift[c] per channel (scale of any sign)."""
    shape = (1, -1) + (1,) * (lower.ndim - 2)
    scale, shift = scale.reshape(shape), shift.reshape(shape)
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    return scale * centre + shift - np.abs(scale) * radius, scale * centre + shift + np.abs(scale) * radius


def _batch_norm(layer, lower, upper):
    b, c = layer.buffers, layer.in_shape[0]
    scale = 1 / np.sqrt(b["running_var"] + layer.eps)
    gamma, beta = (layer.params["gamma"], layer.params["beta"]) if layer.affine else (np.ones(c), np.zeros(c))
    return _per_channel_affine(gamma * scale, beta - gamma * scale * b["running_mean"], lower, upper)


def _monotone(layer, lower, upper):
    """A layer increasing in each input: its output at each end."""
    return layer.replica().forward(lower), layer.replica().forward(upper)


def _leaky_relu(layer, lower, upper):
    if layer.slope < 0:
        raise CnnrunError(f"leaky_relu with slope {layer.slope} < 0 is not monotone: no interval bound here")
    return _monotone(layer, lower, upper)


def _residual(layer, lower, upper):
    body, shortcut = (propagate(getattr(layer, branch), lower, upper) for branch in ("body", "shortcut"))
    return body[0] + shortcut[0], body[1] + shortcut[1]


def _refuse(why):
    def refuse(layer, lower, upper):
        raise CnnrunError(f"{layer.kind}: {why}")
    return refuse


# Layer kind -> `(layer, lower, upper) -> (lower, upper)` of its outputs: every kind in
# cnnrun.nn.network.LAYERS but softmax (the margins replace it).
BOUNDS = {
    "normalize": lambda layer, lower, upper: ((lower - layer.mean) / layer.std, (upper - layer.mean) / layer.std),
    "conv": _affine,
    "dense": _affine,
    "batch_norm": _batch_norm,
    "instance_norm": _refuse("divides by each sample's own spread; no sound interval bound that is not vacuous "
                             "is implemented (train with batch_norm to certify)"),
    "maxpool": _monotone, "avgpool": _monotone, "global_avgpool": _monotone,
    "relu": _monotone, "sigmoid": _monotone, "tanh": _monotone, "leaky_relu": _leaky_relu,
    "flatten": _monotone, "reshape": _monotone, "dropout": _monotone,
    "residual": _residual,
}


def propagate(layers, lower, upper):
    """The box of `layers`' outputs over the input box `[lower, upper]`."""
    for layer in layers:
        if layer.kind not in BOUNDS:
            raise CnnrunError(f"{layer.kind}: has no interval bound")
        lower, upper = BOUNDS[layer.kind](layer, lower, upper)
    return lower, upper


def input_box(x, eps):
    """The Linf ball of radius eps around images `x`, intersected with [0, 1]."""
    return np.clip(x - eps, 0, 1).astype(x.dtype), np.clip(x + eps, 0, 1).astype(x.dtype)


def margin_bounds(W, b, lower, upper, labels):
    """Lower bounds `(N, K)` of z_y - z_k = (W[:, y] - W[:, k]) . h + b_y - b_k over the box
    `[lower, upper]` `(N, D)` of the last dense layer's input h (the column of y itself: 0)."""
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    out = np.zeros((len(labels), W.shape[1]), lower.dtype)
    for y in np.unique(labels):  # one product per class, over all its images
        rows = labels == y
        difference = W[:, y:y + 1] - W                                   # (D, K)
        out[rows] = centre[rows] @ difference - radius[rows] @ np.abs(difference) + (b[y] - b if b is not None else 0)
    return out


@in_eval_mode
def ibp_margins(net, x, labels, eps):
    """IBP's lower bounds `(N, K)` of the margins z_y - z_k over the eps-ball around each
    image `x` `(N, C, H, W)` with label `labels` `(N,)`. The network ends in dense, softmax."""
    last = net.layers[-2]
    if last.kind != "dense":
        raise CnnrunError(f"certify needs the last layer before softmax to be dense (it is {last.kind}): its "
                          f"weights are folded into the margins")
    x = np.asarray(x, net.dtype)
    lower, upper = propagate(net.layers[:-2], *input_box(x, eps))
    return margin_bounds(last.params["W"], last.params.get("b"), lower, upper, labels)


@in_eval_mode
def certified(net, x, labels, margins):
    """Which images are certified: classified correctly, every other class's margin bound above 0."""
    others = np.ones_like(margins, bool)
    others[np.arange(len(labels)), labels] = False
    correct = net.logits(x).argmax(axis=1) == labels
    return correct & np.all(np.where(others, margins > 0, True), axis=1)


# --- the reference: interval arithmetic as its definition ----------------------------

def reference_bounds(layer, lower, upper):
    """A layer's output box by the definition of interval arithmetic, for the layers with
    weights: a weight w times [l, u] is [w l, w u] if w >= 0, else [w u, w l], and sums of
    intervals add their ends. So W+ (the positive weights) takes the lower ends to the lower
    bound and W- (the negative ones) the upper ends; the bias adds to both."""
    if layer.kind in ("conv", "dense"):
        W, b = layer.params["W"], layer.params.get("b")
        positive, negative = layer.replica(), layer.replica()
        positive.params, negative.params = {"W": np.maximum(W, 0)}, {"W": np.minimum(W, 0)}
        positive.bias = negative.bias = False
        bias = 0 if b is None else (b[:, None, None] if layer.kind == "conv" else b)
        return (positive.forward(lower) + negative.forward(upper) + bias,
                positive.forward(upper) + negative.forward(lower) + bias)
    return BOUNDS[layer.kind](layer, lower, upper)
