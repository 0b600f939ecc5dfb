"""What a trained network computes, as arrays: each layer's output, which pixels decide a
prediction, what an adversarial perturbation does inside, what a class looks like.

Every function takes a `Network` and runs it in evaluation mode (dropout off, batch norm
on its running statistics). One image `x` is `(C, H, W)` in [0, 1]; an attribution has
its shape. The pictures and the HTML page are drawn from these in `pages.py`.

    saliency            d z_c / d x                        (Simonyan et al. 2014)
    smoothgrad          the mean of it over noisy copies   (Smilkov et al. 2017)
    integrated_gradients (x - x') * mean of d z_c / d x along x' -> x
                                                          (Sundararajan et al. 2017)
    grad_cam            relu(sum_k mean(d z_c / d A_k) A_k) on the last convolution's
                        output A, resized to the image    (Selvaraju et al. 2017)
"""

import numpy as np

from cnnrun.errors import CnnrunError
from cnnrun.nn.network import in_eval_mode
from cnnrun.nn.sequence import backward_layers


# --- one pass, layer by layer -------------------------------------------------------

def _column(net):
    """A copy of the network's top-level layers (sharing its parameters) in evaluation mode."""
    column = [layer.replica() for layer in net.layers]
    for layer in column:
        layer.training = False
        for inner in layer.sublayers():
            inner.training = False
    return column


@in_eval_mode
def layer_outputs(net, x):
    """`[(name, output), ...]`: the output of every top-level layer for the images `x`
    `(N, C, H, W)`, in order ("0.conv", "1.relu", ..., the last one the probabilities)."""
    h = np.asarray(x, net.dtype)
    outputs = []
    for index, layer in enumerate(_column(net)):
        h = layer.forward(h)
        outputs.append((f"{index}.{layer.kind}", h))
    return outputs


def check_class(net, target):
    """`target` as an int class index of `net`, or a one-line error."""
    k = net.output_shape[0]
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)) or not 0 <= target < k:
        raise CnnrunError(f"target class {target!r}: the network has classes 0 to {k - 1}")
    return int(target)


@in_eval_mode
def input_gradient(net, x, seed):
    """`d (sum_k seed[n, k] z_k) / d x` for each image of `x` `(N, C, H, W)`: the gradient of a
    weighted sum of the logits `(N, K)`, `(N, C, H, W)`."""
    net.logits(np.asarray(x, net.dtype))
    return net.backward(np.asarray(seed, net.dtype), need_input_grad=True, need_param_grads=False)


def logit_gradient(net, x, target):
    """`d z_target / d x` for each image of `x` `(N, C, H, W)` (the logit before softmax):
    `(N, C, H, W)`; `target` an int or one per image."""
    seed = np.zeros((len(x), net.output_shape[0]))
    seed[np.arange(len(x)), np.broadcast_to(np.asarray(target), (len(x),))] = 1
    return input_gradient(net, x, seed)


def logits_of(net, x):
    """The logits `(N, K)` of images `x`, in evaluation mode."""
    return in_eval_mode(lambda n, v: n.logits(v))(net, np.asarray(x, net.dtype))


# --- attributions ----------------------------------------------------------------------

def saliency(net, x, target):
    """The gradient of class `target`'s logit with respect to the one image `x` `(C, H, W)`:
    `(C, H, W)`. Its magnitude says which pixels move the score most; its sign which way."""
    return logit_gradient(net, x[None], check_class(net, target))[0]


def smoothgrad(net, x, target, samples=50, noise=0.15, seed=0):
    """The saliency averaged over `samples` copies of `x` with Gaussian noise of standard
    deviation `noise` (in pixel units; images span [0, 1]): `(C, H, W)`. One batch."""
    rng = np.random.default_rng(seed)
    noisy = x[None] + noise * rng.standard_normal((samples, *x.shape))
    return logit_gradient(net, noisy, check_class(net, target)).mean(axis=0)


def integrated_gradients(net, x, target, steps=64, baseline=None):
    """`(x - baseline) * the mean gradient of z_target along the straight path from the
    baseline (default black, zeros) to x`, by the midpoint rule on `steps` points: `(C, H, W)`.
    Completeness: the attributions sum to `z(x) - z(baseline)`, up to the rule's error."""
    baseline = np.zeros_like(x) if baseline is None else baseline
    alphas = (np.arange(steps) + 0.5) / steps
    path = baseline[None] + alphas[:, None, None, None] * (x - baseline)[None]
    return (x - baseline) * logit_gradient(net, path, check_class(net, target)).mean(axis=0)


def last_conv_index(net):
    """The index of the network's last top-level layer whose output is a stack of maps
    `(C, H, W)` made by a convolution (a conv, or a residual block), or an error."""
    for index in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[index]
        if layer.kind == "conv" or (layer.kind == "residual" and len(net.shapes[index + 1]) == 3):
            return index
    raise CnnrunError("Grad-CAM needs a convolution: the network has none")


def resize_bilinear(maps, size):
    """`(..., h, w)` -> `(..., H, W)` by bilinear interpolation on pixel centres (as
    PyTorch's `interpolate(mode="bilinear", align_corners=False)`)."""
    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    (r0, r1, fr), (c0, c1, fc) = axis(maps.shape[-2], size[0]), axis(maps.shape[-1], size[1])
    rows = maps[..., r0, :] * (1 - fr)[:, None] + maps[..., r1, :] * fr[:, None]
    return rows[..., c0] * (1 - fc) + rows[..., c1] * fc


@in_eval_mode
def grad_cam(net, x, target, layer=None):
    """Grad-CAM of class `target` for the one image `x`: `(cam (H, W) on the image's grid,
    coarse cam (h, w), name of the layer)`. The layer is the last convolution's (or
    `layer`, an index): its output A `(K, h, w)`, each map weighted by the mean of
    `d z_target / d A_k`, summed, through a relu, and resized to the image bilinearly."""
    target = check_class(net, target)
    index = last_conv_index(net) if layer is None else layer
    column = _column(net)[:-1]
    h = np.asarray(x[None], net.dtype)
    for k, item in enumerate(column):
        h = item.forward(h)
        if k == index:
            maps = h
    seed = np.zeros_like(h)
    seed[0, target] = 1
    after = column[index + 1:]
    grad = backward_layers(after, seed, [True] * len(after), need_grads=False) if after else seed
    weights = grad[0].mean(axis=(1, 2))
    coarse = np.maximum(np.tensordot(weights, maps[0], axes=1), 0)
    return resize_bilinear(coarse, x.shape[1:]), coarse, f"{index}.{net.layers[index].kind}"


# --- an adversarial example, inside ---------------------------------------------------

def adversarial_twin(net, x, label, eps, steps=40):
    """The PGD adversarial example of the one image `x` (true class `label`) at `eps`:
    `(C, H, W)`, within eps of x per pixel and in [0, 1] (its random start seeded: the
    same every time)."""
    from cnnrun.robustness.attacks import evaluate_attack

    x_adv, _ = evaluate_attack(net, x[None].astype(net.dtype), np.array([label]), "pgd", eps, steps=steps)
    return x_adv[0]


def layer_distances(net, x, x_adv):
    """`[(name, relative distance), ...]`: for each top-level layer, `||a(x_adv) - a(x)|| /
    ||a(x)||` between the two images' outputs (0 where both are zero)."""
    clean, adv = layer_outputs(net, x[None]), layer_outputs(net, x_adv[None])
    rows = []
    for (name, a), (_, b) in zip(clean, adv):
        norm = float(np.linalg.norm(a))
        rows.append((name, float(np.linalg.norm(b - a)) / norm if norm > 0 else 0.0))
    return rows


# --- what a class looks like, and fooling images ---------------------------------------

@in_eval_mode
def class_visualisation(net, target, steps=200, lr=0.05, l2=1e-3, jitter=2, seed=0):
    """An image that class `target`'s logit scores high: gradient ascent on
    `z_target(x) - l2 * ||x||^2` from a faint random image, each step on a copy shifted by
    up to `jitter` pixels (so that single pixels do not carry the score), each step of
    size `lr` in the gradient's largest entry, kept in [0, 1] (CS231n's recipe).
    Returns `(image (C, H, W), logits (steps + 1,) of the target along the way)`."""
    target = check_class(net, target)
    rng = np.random.default_rng(seed)
    x = (0.1 * rng.random(net.input_shape)).astype(net.dtype)
    scores = [float(net.logits(x[None])[0, target])]
    for _ in range(steps):
        dy, dx = rng.integers(-jitter, jitter + 1, 2) if jitter else (0, 0)
        shifted = np.roll(x, (dy, dx), axis=(1, 2))
        grad = logit_gradient(net, shifted[None], target)[0] - 2 * l2 * shifted
        grad = np.roll(grad, (-dy, -dx), axis=(1, 2))
        x = np.clip(x + lr * grad / max(float(np.abs(grad).max()), 1e-12), 0, 1).astype(net.dtype)
        scores.append(float(net.logits(x[None])[0, target]))
    return x, np.array(scores)


@in_eval_mode
def fooling_image(net, x, target, max_steps=200, lr=0.5):
    """`x` pushed until the network calls it class `target`: steps of L2 length `lr` up the
    gradient of the margin `z_target - z_top` (top: the most likely other class), kept in
    [0, 1] (CS231n's fooling images, on the margin). Returns `(image, steps taken, whether
    it is now classified as target)`."""
    target = check_class(net, target)
    x = np.asarray(x, net.dtype).copy()
    for step in range(max_steps + 1):
        z = net.logits(x[None])[0]
        if int(z.argmax()) == target:
            return x, step, True
        if step == max_steps:
            break
        seed = np.zeros((1, len(z)))
        seed[0, target], seed[0, int(np.argmax(np.where(np.arange(len(z)) == target, -np.inf, z)))] = 1, -1
        grad = input_gradient(net, x[None], seed)[0]
        x = np.clip(x + lr * grad / max(float(np.linalg.norm(grad)), 1e-12), 0, 1).astype(net.dtype)
    return x, max_steps, False
