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


# --- CROWN: linear bounds propagated backward (Zhang et al. 2018) ----------------------
#
# A linear function of a layer's output, A . h + c (one row of A per bound wanted), is
# carried back through the layers to a linear function of an earlier box, where its
# minimum over the box is exact: sum(A+ lower + A- upper) + c.
# - An affine layer h = L(g) turns A . h into (A . L) g + A . L(0): its own backward pass
#   on A is A . L, since the input gradient of a sum weighted by A is exactly that.
# - A relu h = relu(g) with g in [l, u] lies between two lines: above the chord
#   u (g - l) / (u - l) and below 0 or g (whichever is nearer the curve: g if u > -l);
#   a row's positive entries take the lower line, its negative entries the upper one.
# - Any other layer (max-pool, sigmoid, tanh, leaky_relu, residual blocks) stops the
#   trip: the row is bounded over that layer's output box, which IBP gives (sound, looser).

CROWN_AFFINE = {"normalize", "conv", "dense", "batch_norm", "flatten", "reshape", "avgpool", "global_avgpool",
                "dropout"}


def _affine_back(layer, A):
    """Rows `A` `(R, *out_shape)` of a linear function of `layer`'s output, as rows of its
    input: `(A . L` `(R, *in_shape)`, `A . L(0)` `(R,)`)."""
    b = layer.params.get("b") if layer.kind in ("conv", "dense") else None
    if layer.kind == "dense":
        return A @ layer.params["W"].T, (A @ b if b is not None else np.zeros(len(A), A.dtype))
    column = layer.replica()
    if layer.kind == "conv":  # its input gradient needs only the weights and the kernels' plan for R rows
        column.cache = None, None, column.plan_for(len(A), A.itemsize)
        offset = A.sum(axis=(2, 3)) @ b if b is not None else np.zeros(len(A), A.dtype)
        return column.backward(A, need_dx=True, need_grads=False), offset
    offset = column.forward(np.zeros((len(A), *layer.in_shape), A.dtype))  # L(0): the bias, as an output
    return column.backward(A, need_dx=True, need_grads=False), (A * offset).reshape(len(A), -1).sum(axis=1)


def _relu_lines(lower, upper):
    """The relu's relaxation on `[lower, upper]`: `(lower slope, upper slope, upper intercept)`
    (the lower line passes through 0)."""
    active, unstable = lower >= 0, (lower < 0) & (upper > 0)
    chord = np.where(unstable, upper / np.where(unstable, upper - lower, 1), active.astype(lower.dtype))
    return np.where(unstable, (upper > -lower).astype(lower.dtype), active.astype(lower.dtype)), chord, \
        np.where(unstable, -chord * lower, 0)


def relaxations(layers, boxes):
    """Each relu's lines `_relu_lines(*box)` on its input box `boxes[j]`, None for the other layers."""
    return [_relu_lines(*box) if layer.kind == "relu" else None for layer, box in zip(layers, boxes)]


def crown_back(layers, lines, A, c):
    """The rows `A` `(N, R, *out_shape)`, `c` `(N, R)` of a linear lower bound of the last
    of `layers`' output, carried back to `layers[0]`'s input: `(A, c)` there. `lines[j]` is
    the relaxation of `layers[j]` if it is a relu (`relaxations`)."""
    n, r = A.shape[:2]
    for layer, line in zip(reversed(layers), reversed(lines)):
        if layer.kind == "relu":
            slope_low, slope_up, intercept = (v[:, None] for v in line)
            positive, negative = np.maximum(A, 0), np.minimum(A, 0)
            c = c + (negative * intercept).reshape(n, r, -1).sum(axis=2)
            A = positive * slope_low + negative * slope_up
        else:
            flat, offset = _affine_back(layer, A.reshape(n * r, *A.shape[2:]))
            A, c = flat.reshape(n, r, *flat.shape[1:]), c + offset.reshape(n, r)
    return A, c


def concretize(A, c, lower, upper):
    """The minimum of `A . x + c` over the box `[lower, upper]` `(N, *shape)`: `(N, R)`."""
    n, r = A.shape[:2]
    flat = A.reshape(n, r, -1)
    return (np.einsum("nrd,nd->nr", np.maximum(flat, 0), lower.reshape(n, -1))
            + np.einsum("nrd,nd->nr", np.minimum(flat, 0), upper.reshape(n, -1)) + c)


CROWN_BUDGET = 2 ** 25  # values of the largest array of rows carried back at once (128 MiB in float32)


def crown_box(layers, lines, domain, box):
    """The box `box` `(N, *shape)` of the last of `layers`' outputs, tightened by CROWN over
    the input box `domain`: each unstable neuron's (lower < 0 < upper) lower bound, and its
    upper one as minus the lower bound of its negation. A stable neuron's relu is exact
    whatever its bounds, so only the unstable ones are carried back: one row per (image,
    neuron) pair, as many pairs at a time as CROWN_BUDGET allows."""
    lower, upper = (end.reshape(len(end), -1).copy() for end in box)
    images, neurons = np.nonzero((lower < 0) & (upper > 0))
    widest = max(int(np.prod(layer.in_shape)) for layer in layers)
    pairs = max(1, CROWN_BUDGET // (2 * widest))
    for start in range(0, len(images), pairs):
        image, neuron = images[start:start + pairs], neurons[start:start + pairs]
        m = len(image)
        A = np.zeros((2 * m, lower.shape[1]), lower.dtype)
        A[np.arange(m), neuron], A[np.arange(m, 2 * m), neuron] = 1, -1   # rows h_i and -h_i
        rows = np.concatenate([image, image])
        mine = [None if line is None else tuple(v[rows] for v in line) for line in lines]   # each row's image's
        A, c = crown_back(layers, mine, A.reshape(2 * m, 1, *box[0].shape[1:]), np.zeros((2 * m, 1), lower.dtype))
        bound = concretize(A, c, domain[0][rows], domain[1][rows])[:, 0]
        lower[image, neuron] = np.maximum(lower[image, neuron], bound[:m])
        upper[image, neuron] = np.minimum(upper[image, neuron], -bound[m:])
    return lower.reshape(box[0].shape), upper.reshape(box[0].shape)


@in_eval_mode
def crown_margins(net, x, labels, eps, intermediate="crown"):
    """CROWN's lower bounds `(N, K)` of the margins z_y - z_k over the eps-ball around each
    image, as `ibp_margins`. Each relu's input box comes from IBP, tightened by CROWN
    (`intermediate="crown"`, when a relu lies between it and the last layer CROWN could
    not pass; else IBP's box is already that of one affine stretch) or not
    (`intermediate="ibp"`: CROWN-IBP's bound, Zhang et al. 2020). Returns `(margins,
    names of the layers that fell back to IBP)`."""
    last = net.layers[-2]
    if last.kind != "dense":
        raise CnnrunError(f"certify needs the last layer before softmax to be dense (it is {last.kind}): its "
                          f"weights are folded into the margins")
    layers = net.layers[:-2]
    x = np.asarray(x, net.dtype)
    boxes, lines, start, fallback = [input_box(x, eps)], [], 0, []   # each layer's input box, relu's lines
    for index, layer in enumerate(layers):
        if layer.kind not in BOUNDS:
            raise CnnrunError(f"{layer.kind}: has no bound")
        if (layer.kind == "relu" and intermediate == "crown"
                and any(inner.kind == "relu" for inner in layers[start:index])):
            boxes[index] = crown_box(layers[start:index], lines[start:index], boxes[start], boxes[index])
        lines.append(_relu_lines(*boxes[index]) if layer.kind == "relu" else None)
        boxes.append(BOUNDS[layer.kind](layer, *boxes[index]))
        if layer.kind not in CROWN_AFFINE and layer.kind != "relu":
            start = index + 1  # CROWN stops here: what follows is bounded over this layer's output box
            fallback.append(f"{index}.{layer.kind}")
    W, b = last.params["W"], last.params.get("b")
    A = (W.T[labels][:, None, :] - W.T[None, :, :]).astype(x.dtype)            # (N, K, D): rows W_y - W_k
    c = np.zeros(A.shape[:2], x.dtype) if b is None else (b[labels][:, None] - b[None, :]).astype(x.dtype)
    A, c = crown_back(layers[start:], lines[start:], A, c)
    return concretize(A, c, *boxes[start]), fallback


# --- one entry point -----------------------------------------------------------------

METHODS = {
    "ibp": "interval bound propagation (Gowal et al. 2018): each layer's output box from its input's",
    "crown-ibp": "CROWN's linear bounds for the margins over IBP's boxes inside (Zhang et al. 2020): "
                 "as fast as IBP, tighter",
    "crown": "CROWN (Zhang et al. 2018): linear bounds for the margins and for every unstable relu input; "
             "the tightest, and the slowest",
}
BATCH = {"ibp": 500, "crown-ibp": 100, "crown": 50}  # images bounded at once


@in_eval_mode  # here, before the parts' threads: each of them then finds the network in evaluation mode
def margins(net, x, labels, eps, method):
    """Lower bounds `(N, K)` of the margins z_y - z_k over the eps-ball by `method` (a key of
    METHODS), and the layers it bounded by IBP for want of anything better."""
    from cnnrun.nn import parallel

    if method not in METHODS:
        raise CnnrunError(f"--method {method!r}: expected one of {', '.join(METHODS)}")

    def part(rows):  # the kernels are planned for parts of a batch (nn/parallel.py), run side by side
        if method == "ibp":
            return ibp_margins(net, x[rows], labels[rows], eps), []
        return crown_margins(net, x[rows], labels[rows], eps, intermediate="crown" if method == "crown" else "ibp")

    done = parallel.run(part, parallel.parts(len(x)), net.threads)
    return np.concatenate([d[0] for d in done]), sorted({name for d in done for name in d[1]},
                                                         key=lambda name: int(name.split(".")[0]))


# --- certified training: IBP's loss and its gradient, by hand (Gowal et al. 2018) -------
#
# The worst-case logits over the eps-ball are minus the margins' lower bounds (z_y - z_k >=
# m_k, so z_k - z_y <= -m_k): CE(-m, y) is small only when every margin is provably
# large. Training lowers kappa * CE(z, y) + (1 - kappa) * CE(-m, y). Its gradient goes back
# through the bound computation, each step the transpose of its forward:
#   affine:   c' = L(c), r' = |W| r   ->  dc = L^T (dl' + du'), dr = |W|^T (du' - dl'),
#                                          dW += (dl' + du') c^T-terms + sign(W) (du' - dl') r^T-terms
#   monotone: l' = f(l), u' = f(u)    ->  dl = f'(l) dl', du = f'(u) du'
#   box:      c = (u + l) / 2, r = (u - l) / 2  ->  dl = (dc - dr) / 2, du = (dc + dr) / 2

IBP_TRAINABLE = {"normalize", "conv", "dense", "relu", "flatten", "reshape", "maxpool", "avgpool",
                 "global_avgpool", "sigmoid", "tanh"}


def check_ibp_trainable(net):
    """One line naming the first layer IBP training cannot pass (it needs the bound of each
    layer and its gradient, for the layers of IBP_TRAINABLE)."""
    for index, layer in enumerate(net.layers[:-2]):
        if layer.kind not in IBP_TRAINABLE:
            raise CnnrunError(f"layer {index} ({layer.kind}): IBP training bounds only "
                              f"{', '.join(sorted(IBP_TRAINABLE))} (then a last dense layer)")
    if net.layers[-2].kind != "dense":
        raise CnnrunError("IBP training needs the last layer before softmax to be dense (folded into the margins)")


def _affine_replicas(layer):
    centre, radius = layer.replica(), layer.replica()
    radius.params, radius.bias = {"W": np.abs(layer.params["W"])}, False
    return centre, radius


def ibp_loss_and_grads(net, x, labels, eps):
    """IBP's worst-case loss CE(-m, y) on images `x` at eps (the mean over the batch), and its
    gradient: `(loss, worst-case logits (N, K), {parameter name: gradient})`. The batch runs
    in the network's parts, side by side on its threads (nn/parallel.py), their gradients
    summed."""
    from cnnrun.nn import parallel

    x, parts = np.asarray(x, net.dtype), parallel.parts(len(x))
    done = parallel.run(lambda part: _ibp_part(net, x[part], labels[part], eps, len(x)), parts, net.threads)
    grads = {name: sum(d[2][name] for d in done) for name in done[0][2]}
    return float(sum(d[0] for d in done)), np.concatenate([d[1] for d in done]), grads


def _ibp_part(net, x, labels, eps, n):
    """`ibp_loss_and_grads` on one part of a batch of `n`: `(its share of the summed loss,
    its worst-case logits, its share of the gradients)`."""
    layers, last = net.layers[:-2], net.layers[-2]
    lower, upper = input_box(np.asarray(x, net.dtype), eps)
    tape = []
    for layer in layers:
        if layer.kind in ("conv", "dense"):
            centre, radius = _affine_replicas(layer)
            c, r = centre.forward((upper + lower) / 2), radius.forward((upper - lower) / 2)
            lower, upper = c - r, c + r
            tape.append((centre, radius))
        else:
            low, up = layer.replica(), layer.replica()
            lower, upper = low.forward(lower), up.forward(upper)
            tape.append((low, up))
    W, b = last.params["W"], last.params.get("b")
    m = margin_bounds(W, b, lower, upper, labels)
    worst = -m
    shifted = worst - worst.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = float(-log_p[rows, labels].sum() / n)
    d_worst = np.exp(log_p)
    d_worst[rows, labels] -= 1
    dm = (-d_worst / n).astype(net.dtype)
    dm[rows, labels] = 0  # m_y is 0 whatever the weights
    # margin_bounds backward, class by class as its forward
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    d_centre, d_radius = np.zeros_like(centre), np.zeros_like(radius)
    dW = np.zeros_like(W)
    grads = {}
    for y in np.unique(labels):
        rows = labels == y
        difference = W[:, y:y + 1] - W                                   # (D, K)
        d_centre[rows] = dm[rows] @ difference.T
        d_radius[rows] = -dm[rows] @ np.abs(difference).T
        T = centre[rows].T @ dm[rows] - (radius[rows].T @ dm[rows]) * np.sign(difference)   # (D, K)
        dW -= T
        dW[:, y] += T.sum(axis=1)
    grads[f"{len(net.layers) - 2}.dense.W"] = dW
    if b is not None:
        db = -dm.sum(axis=0)
        np.add.at(db, labels, dm.sum(axis=1))
        grads[f"{len(net.layers) - 2}.dense.b"] = db
    d_lower, d_upper = (d_centre - d_radius) / 2, (d_centre + d_radius) / 2
    for index in range(len(layers) - 1, -1, -1):
        layer, (first, second) = layers[index], tape[index]
        need_dx = index > 0
        if layer.kind in ("conv", "dense"):
            dc, dr = first.backward(d_lower + d_upper, need_dx=need_dx), second.backward(d_upper - d_lower,
                                                                                         need_dx=need_dx)
            grads[f"{index}.{layer.kind}.W"] = first.grads["W"] + np.sign(layer.params["W"]) * second.grads["W"]
            if "b" in layer.params:
                grads[f"{index}.{layer.kind}.b"] = first.grads["b"]
            if need_dx:
                d_lower, d_upper = (dc - dr) / 2, (dc + dr) / 2
        elif need_dx:
            d_lower, d_upper = first.backward(d_lower), second.backward(d_upper)
    return loss, worst, grads


def ibp_step(net, x, y, labels, eps, kappa):
    """One step's gradients for IBP training: `kappa * CE(z, y) + (1 - kappa) * CE(-m, y)`
    on the batch `x` with one-hot `y`; fills the layers' `grads`. Returns `(loss, clean logits)`."""
    loss, logits, _ = net.loss_and_backward(x, y)
    if kappa >= 1:
        return loss, logits
    worst_loss, _, grads = ibp_loss_and_grads(net, x, labels, eps)
    for index, layer in enumerate(net.layers):
        for name in layer.params:
            layer.grads[name] = kappa * layer.grads[name] + (1 - kappa) * grads[f"{index}.{layer.kind}.{name}"]
    return kappa * loss + (1 - kappa) * worst_loss, logits


def ibp_trainer(settings, epoch, first_step, steps_per_epoch, epochs):
    """The training step of `train.adversarial` with method ibp: `f(net, x, y, labels) ->
    (loss, logits)`, filling the gradients (`ibp_step`). eps grows by `warmup` epochs or
    `eps_schedule` per step (as for the attacks' training), and kappa with it: 1 at eps 0,
    `kappa` at the full eps (Gowal et al. ramp both together). The steps are counted over
    the run from `first_step`, so a resumed run ramps as an uninterrupted one."""
    from cnnrun.robustness.attacks import eps_at

    calls = [first_step]
    epoch_scale = min(1.0, (epoch + 1) / settings["warmup"]) if settings["warmup"] else 1.0

    def step(net, x, y, labels):
        if settings.get("eps_schedule"):
            eps = eps_at(settings, calls[0], steps_per_epoch, epochs)
        else:
            eps = epoch_scale * settings["eps"]
        calls[0] += 1
        share = eps / settings["eps"] if settings["eps"] else 1.0
        return ibp_step(net, x, y, labels, eps, 1 - (1 - settings["kappa"]) * share)

    return step


# --- the reference for CROWN: a network of dense layers and relus, as matrices --------

def reference_crown(weights, biases, x, labels, eps, intermediate="crown"):
    """CROWN's margin bounds for the network `z_0 = x W_0 + b_0, z_j = relu(z_{j-1}) W_j + b_j`
    (the last z the logits) on flat images `x` `(N, D)`, one image at a time, every linear
    bound an explicit matrix: the definition that `crown_margins` computes through the
    layers' backward passes. Each relu's input box is interval arithmetic's, its unstable
    neurons' bounds tightened by CROWN itself (`intermediate="crown"`) from the second relu on."""
    def relaxed(A, c, box):
        """Rows `A . relu(z) + c` as rows on z in `box`, by the lower lines (positive
        entries) and the upper ones (negative entries)."""
        l, u = box
        unstable = (l < 0) & (u > 0)
        up_slope = np.where(unstable, u / np.where(unstable, u - l, 1), (l >= 0) * 1.0)
        low_slope = np.where(unstable, (u > -l) * 1.0, (l >= 0) * 1.0)
        c = c + np.minimum(A, 0) @ np.where(unstable, -up_slope * l, 0)
        return np.maximum(A, 0) * low_slope + np.minimum(A, 0) * up_slope, c

    out = []
    for image, label in zip(x, labels):
        low0, up0 = np.clip(image - eps, 0, 1), np.clip(image + eps, 0, 1)
        boxes = []  # the box of each z_j but the last

        def minimum(A, c, depth):
            """The minimum over the input box of rows `A . z_depth + c`."""
            for j in range(depth, -1, -1):
                A, c = A @ weights[j].T, c + A @ biases[j]   # rows on z_j's input
                if j > 0:
                    A, c = relaxed(A, c, boxes[j - 1])
            return np.maximum(A, 0) @ low0 + np.minimum(A, 0) @ up0 + c

        for depth in range(len(weights) - 1):
            h_low, h_up = (low0, up0) if depth == 0 else (np.maximum(boxes[-1][0], 0), np.maximum(boxes[-1][1], 0))
            W, b = weights[depth], biases[depth]
            l = np.maximum(W, 0).T @ h_low + np.minimum(W, 0).T @ h_up + b
            u = np.maximum(W, 0).T @ h_up + np.minimum(W, 0).T @ h_low + b
            if intermediate == "crown" and depth > 0:  # CROWN tightens the unstable neurons
                eye, zero, unstable = np.eye(len(b)), np.zeros(len(b)), (l < 0) & (u > 0)
                l = np.where(unstable, np.maximum(l, minimum(eye, zero, depth)), l)
                u = np.where(unstable, np.minimum(u, -minimum(-eye, zero, depth)), u)
            boxes.append((l, u))
        W, b = weights[-1], biases[-1]
        A, c = relaxed((W[:, label][:, None] - W).T, b[label] - b, boxes[-1])   # margins on the last relu's input
        out.append(minimum(A, c, len(weights) - 2))
    return np.array(out)
