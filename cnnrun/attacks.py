"""Adversarial examples from the network's own input gradient: FGSM, BIM and PGD.

Images are `(N, C, H, W)` in [0, 1]; eps is in the same pixel units, and every
adversarial image is clipped to [0, 1]. `y` is one-hot `(N, K)`.
"""

import numpy as np

from cnnrun.nn import one_hot

METHODS = ("fgsm", "bim", "pgd")


def input_gradient(net, x, y):
    """d loss / d x `(N, C, H, W)` of the cross-entropy loss (mean over the batch)."""
    return net.loss_and_backward(x, y, need_input_grad=True, need_param_grads=False)[2]


def fgsm(net, x, y, eps):
    """Fast Gradient Sign Method: clip(x + eps * sign(grad_x L(x, y)), 0, 1)."""
    return np.clip(x + eps * np.sign(input_gradient(net, x, y)), 0, 1).astype(x.dtype)


def bim(net, x, y, eps, steps, step_size, start=None):
    """Basic Iterative Method: `steps` signed-gradient steps of `step_size` from `start`
    (default: x), each followed by projection onto the eps-ball around x and onto [0, 1]."""
    low, high = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    x_adv = x.copy() if start is None else start
    for _ in range(steps):
        x_adv = np.clip(x_adv + step_size * np.sign(input_gradient(net, x_adv, y)), low, high)
    return x_adv.astype(x.dtype)


def pgd(net, x, y, eps, steps, step_size, restarts, rng):
    """Projected Gradient Descent: BIM from a uniform random start in the eps-ball,
    `restarts` times; each image keeps the first restart that fools the network
    (else the last one)."""
    labels = y.argmax(axis=1)
    best, fooled = None, np.zeros(len(x), bool)
    for restart in range(restarts):
        start = np.clip(x + rng.uniform(-eps, eps, x.shape), 0, 1).astype(x.dtype)
        x_adv = bim(net, x, y, eps, steps, step_size, start)
        if best is None:
            best = x_adv
        else:
            best[~fooled] = x_adv[~fooled]  # images already fooled keep their example
        if restart < restarts - 1:
            fooled |= net.logits(best).argmax(axis=1) != labels
    return best


def default_step_size(eps, steps):
    """2.5 * eps / steps for the iterative attacks (Madry et al.'s rule of thumb)."""
    return 2.5 * eps / steps


def attack(net, x, y, method, eps, steps=40, step_size=None, restarts=1, rng=None):
    """Adversarial versions of `x` by `method` ("fgsm", "bim" or "pgd"); pgd's random
    starts come from `rng` (default: a generator seeded with 0)."""
    if method == "fgsm":
        return fgsm(net, x, y, eps)
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    if method == "bim":
        return bim(net, x, y, eps, steps, step_size)
    if method == "pgd":
        return pgd(net, x, y, eps, steps, step_size, restarts, np.random.default_rng(0) if rng is None else rng)
    raise ValueError(f"unknown attack {method!r}")


def evaluate_attack(net, x, labels, method, eps, batch_size=500, on_batch=None, **options):
    """Attack every image in batches; return `(x_adv, adversarial probabilities (N, K))`."""
    k = net.output_shape[0]
    adv, adv_p = [], []
    for i in range(0, len(x), batch_size):
        xb, lb = x[i:i + batch_size].astype(net.dtype), labels[i:i + batch_size]
        x_adv = attack(net, xb, one_hot(lb, k, net.dtype), method, eps, **options) if eps > 0 else xb
        adv.append(x_adv)
        adv_p.append(net.forward(x_adv))
        if on_batch:
            on_batch(len(xb))
    return np.concatenate(adv), np.concatenate(adv_p)


def robustness(labels, clean_pred, adv_pred):
    """`(accuracy on adversarial images, success rate among images classified right when clean)`."""
    right = clean_pred == labels
    accuracy = float(np.mean(adv_pred == labels))
    success = float(np.mean(adv_pred[right] != labels[right])) if right.any() else 0.0
    return accuracy, success


def adversary(settings, rng, epoch=0):
    """The batch transformation of adversarial training, from `train.adversarial`:
    replaces the first `ratio` share of each batch by adversarial versions made from
    the current weights. With `warmup: W`, eps (and the step sizes with it) grows
    linearly over the first W epochs: eps * (epoch + 1) / W at `epoch` (from 0).
    Returns `f(net, x, y) -> x` or None if not configured."""
    if not settings:
        return None
    method, ratio, steps = settings["method"], settings["ratio"], settings["steps"]
    scale = min(1.0, (epoch + 1) / settings["warmup"]) if settings["warmup"] else 1.0
    eps = scale * settings["eps"]
    step_size = scale * settings["step_size"] if settings["step_size"] else None

    def transform(net, x, y):
        n = int(round(ratio * len(x)))
        if n == 0:
            return x
        xa, ya = x[:n], y[:n]
        if method == "fgsm" and settings["random_start"]:  # Wong et al. 2020, "fast" FGSM training
            start = np.clip(xa + rng.uniform(-eps, eps, xa.shape), 0, 1).astype(x.dtype)
            x_adv = bim(net, xa, ya, eps, 1, step_size or 1.25 * eps, start)
        elif method == "fgsm":
            x_adv = fgsm(net, xa, ya, eps)
        else:
            x_adv = pgd(net, xa, ya, eps, steps, step_size or default_step_size(eps, steps), 1, rng)
        out = x.copy()
        out[:n] = x_adv
        return out

    return transform
