"""Adversarial examples from the network's own input gradient: FGSM, BIM, PGD, and APGD
(Croce & Hein 2020) on cross-entropy and on the targeted DLR loss.

Images are `(N, C, H, W)` in [0, 1]; eps is in the same pixel units, and every
adversarial image is clipped to [0, 1]. `y` is one-hot `(N, K)`.
"""

import numpy as np

from cnnrun.errors import CnnrunError
from cnnrun.nn import one_hot
from cnnrun.nn.losses import cross_entropy_per_sample, dlr_targeted

METHODS = ("fgsm", "bim", "pgd", "apgd-ce", "apgd-t", "autoattack")
DEFAULT_STEPS = {"bim": 40, "pgd": 40, "apgd-ce": 100, "apgd-t": 100, "autoattack": 100}


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


def _apgd_run(net, x, labels, targets, eps, steps, rng, rho=0.75):
    """One run of APGD (Croce & Hein 2020, Algorithm 1) from a random start in the eps-ball,
    vectorised over the batch: every image has its own step size, starting at 2 eps and
    halved at the checkpoints when the loss rose in at most `rho` of the steps since the
    last one, or neither the step nor the best loss changed; a halving restarts from the
    best point. The loss is cross-entropy, or targeted DLR towards
    `targets` if given. Returns `(adversarial x, fooled (N,) bool)`: the last iterate that
    fooled the network, else the highest-loss point."""
    low, high = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)

    def loss_and_gradient(images):
        logits = net.logits(images)
        if targets is None:
            losses, dlogits = cross_entropy_per_sample(logits, labels)
        else:
            losses, dlogits = dlr_targeted(logits, labels, targets)
        grad = net.backward(dlogits.astype(net.dtype), need_input_grad=True, need_param_grads=False)
        return losses, grad, logits.argmax(axis=1) != labels

    def per_image(v):
        return v.reshape((-1,) + (1,) * (x.ndim - 1))

    x_adv = np.clip(x + rng.uniform(-eps, eps, x.shape), low, high).astype(x.dtype)
    losses, grad, fooled = loss_and_gradient(x_adv)
    x_fooled = x_adv.copy()
    best_loss, x_best, grad_best = losses.copy(), x_adv.copy(), grad.copy()
    step = np.full(len(x), 2.0 * eps)
    alpha = 0.75  # x moves 0.75 of the way to the projected step, and keeps 0.25 of its last move
    # Checkpoints: the first after 22% of the steps, then ever closer, but at least 6% apart.
    period, shrink, min_period = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    since_check, increases, previous_loss = 0, np.zeros(len(x)), losses.copy()
    best_at_check, halved_at_check = best_loss.copy(), np.ones(len(x), bool)
    x_previous = x_adv
    for i in range(steps):
        a = alpha if i > 0 else 1.0
        z = np.clip(x_adv + per_image(step) * np.sign(grad), low, high)
        x_new = np.clip(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_previous), low, high)
        x_previous, x_adv = x_adv, x_new.astype(x.dtype)
        losses, grad, wrong = loss_and_gradient(x_adv)
        fooled |= wrong
        x_fooled[wrong] = x_adv[wrong]
        increases += losses > previous_loss
        previous_loss = losses
        better = losses > best_loss
        best_loss[better], x_best[better], grad_best[better] = losses[better], x_adv[better], grad[better]
        since_check += 1
        if since_check == period:  # a checkpoint
            halve = (increases <= rho * period) | (~halved_at_check & (best_at_check >= best_loss))
            step[halve] /= 2.0
            x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
            halved_at_check, best_at_check = halve, best_loss.copy()
            period, since_check, increases = max(period - shrink, min_period), 0, np.zeros(len(x))
    return np.where(per_image(fooled), x_fooled, x_best), fooled


def apgd(net, x, y, eps, steps=100, restarts=1, rng=None, targets=0):
    """APGD-CE (`targets=0`) or APGD-T on the DLR loss towards each of the `targets`
    most likely other classes in turn (at the clean image). Each restart and target
    runs only on the images not fooled yet. Returns the adversarial images."""
    rng = np.random.default_rng(0) if rng is None else rng
    labels, k = y.argmax(axis=1), y.shape[1]
    if targets and k < 4:
        raise CnnrunError(f"apgd-t: the DLR loss needs at least 4 classes, the network has {k}")
    ranked = np.argsort(net.logits(x), axis=1)[:, ::-1]  # classes by decreasing clean logit
    out, fooled = x.copy(), np.zeros(len(x), bool)
    goals = [None] if not targets else [ranked[:, r] for r in range(1, min(targets, k - 1) + 1)]
    for goal in goals:
        goal = None if goal is None else np.where(goal == labels, ranked[:, 0], goal)
        for _ in range(restarts):
            left = np.flatnonzero(~fooled)
            if len(left) == 0:
                return out
            adv, hit = _apgd_run(net, x[left], labels[left], None if goal is None else goal[left], eps, steps, rng)
            out[left] = adv
            fooled[left] = hit
    return out


def autoattack(net, x, y, eps, steps=100, restarts=1, rng=None, targets=9):
    """The per-image worst case of APGD-CE, then APGD-T on the images it did not fool:
    AutoAttack's two gradient attacks (not its FAB and Square)."""
    rng = np.random.default_rng(0) if rng is None else rng
    labels = y.argmax(axis=1)
    out = apgd(net, x, y, eps, steps, restarts, rng)
    left = np.flatnonzero(net.logits(out).argmax(axis=1) == labels)
    if len(left):
        out[left] = apgd(net, x[left], y[left], eps, steps, restarts, rng, targets=targets)
    return out


def attack(net, x, y, method, eps, steps=None, step_size=None, restarts=1, rng=None, targets=9):
    """Adversarial versions of `x` by `method` (one of METHODS); steps default to 40 for bim
    and pgd, 100 for the APGD methods; random starts come from `rng` (default: seeded with 0)."""
    rng = np.random.default_rng(0) if rng is None else rng
    if method == "fgsm":
        return fgsm(net, x, y, eps)
    if method not in METHODS:
        raise ValueError(f"unknown attack {method!r}")
    steps = DEFAULT_STEPS[method] if steps is None else steps
    if method == "apgd-ce":
        return apgd(net, x, y, eps, steps, restarts, rng)
    if method == "apgd-t":
        return apgd(net, x, y, eps, steps, restarts, rng, targets=targets)
    if method == "autoattack":
        return autoattack(net, x, y, eps, steps, restarts, rng, targets)
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    if method == "bim":
        return bim(net, x, y, eps, steps, step_size)
    return pgd(net, x, y, eps, steps, step_size, restarts, rng)


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
