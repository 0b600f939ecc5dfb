"""Adversarial examples: FGSM, BIM, PGD and APGD (Croce & Hein 2020, on cross-entropy
and on the targeted DLR loss) from the network's own input gradient; FAB-T (fab.py) and
the gradient-free Square (square.py); and AutoAttack's standard suite of four.

Every attack has one signature, `attack(net, x, y, eps, *, settings by name)`: images
`x` `(N, C, H, W)` in [0, 1], one-hot labels `y` `(N, K)`, eps in the same pixel units;
every adversarial image is clipped to [0, 1]. Every attack runs the network in
evaluation mode (`network.in_eval_mode`): dropout off, batch norm on its running
statistics, which no attack changes.
"""

import time

import numpy as np

from cnnrun.errors import CnnrunError
from cnnrun.nn import one_hot
from cnnrun.nn.losses import cross_entropy_per_sample, dlr_targeted, kl_to_clean
from cnnrun.nn.network import in_eval_mode
from cnnrun.nn.optim import learning_rate
from cnnrun.robustness.fab import fab_t
from cnnrun.robustness.square import square

METHODS = ("fgsm", "bim", "pgd", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack", "autoattack-apgd")
# Steps (iterations) of each iterative method; for square, its queries.
DEFAULT_STEPS = {"bim": 40, "pgd": 40, "apgd-ce": 100, "apgd-t": 100, "fab-t": 100, "square": 5000,
                 "autoattack": 100, "autoattack-apgd": 100}
# The attacks of each suite, in order; each runs on the images the ones before left robust.
SUITES = {"autoattack": ("apgd-ce", "apgd-t", "fab-t", "square"), "autoattack-apgd": ("apgd-ce", "apgd-t")}


def input_gradient(net, x, y):
    """d loss / d x `(N, C, H, W)` of the cross-entropy loss (mean over the batch)."""
    return net.loss_and_backward(x, y, need_input_grad=True, need_param_grads=False)[2]


@in_eval_mode
def fgsm(net, x, y, eps):
    """Fast Gradient Sign Method: clip(x + eps * sign(grad_x L(x, y)), 0, 1)."""
    return np.clip(x + eps * np.sign(input_gradient(net, x, y)), 0, 1).astype(x.dtype)


@in_eval_mode
def bim(net, x, y, eps, *, steps, step_size, start=None):
    """Basic Iterative Method: `steps` signed-gradient steps of `step_size` from `start`
    (default: x), each followed by projection onto the eps-ball around x and onto [0, 1]."""
    low, high = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    x_adv = x.copy() if start is None else start
    for _ in range(steps):
        x_adv = np.clip(x_adv + step_size * np.sign(input_gradient(net, x_adv, y)), low, high)
    return x_adv.astype(x.dtype)


@in_eval_mode
def pgd(net, x, y, eps, *, steps, step_size, restarts=1, rng=None):
    """Projected Gradient Descent: BIM from a uniform random start in the eps-ball,
    `restarts` times; each image keeps the first restart that fools the network
    (else the last one)."""
    labels, rng = y.argmax(axis=1), np.random.default_rng(0) if rng is None else rng
    best, fooled = None, np.zeros(len(x), bool)
    for restart in range(restarts):
        start = np.clip(x + rng.uniform(-eps, eps, x.shape), 0, 1).astype(x.dtype)
        x_adv = bim(net, x, y, eps, steps=steps, step_size=step_size, start=start)
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


def _apgd_run(net, x, labels, targets, eps, steps, noise, rho=0.75):
    """One run of APGD (Croce & Hein 2020, Algorithm 1) from the random start x + eps * noise
    (`noise` uniform in [-1, 1], the shape of x), projected onto the eps-ball,
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

    x_adv = np.clip(x + eps * noise, low, high).astype(x.dtype)
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


@in_eval_mode
def apgd(net, x, y, eps, *, steps=100, restarts=1, rng=None, targets=0, active=None):
    """APGD-CE (`targets=0`) or APGD-T on the DLR loss towards each of the `targets`
    most likely other classes in turn (at the clean image). Each restart and target
    runs only on the images not fooled yet, and of those only on the `active` ones
    (a mask `(N,)`; default all). Each run draws the random starts of the whole batch,
    so an image's start does not depend on which others are attacked with it.
    Returns the adversarial images."""
    rng = np.random.default_rng(0) if rng is None else rng
    labels, k = y.argmax(axis=1), y.shape[1]
    if targets and k < 4:
        raise CnnrunError(f"apgd-t: the DLR loss needs at least 4 classes, the network has {k}")
    ranked = np.argsort(net.logits(x), axis=1)[:, ::-1]  # classes by decreasing clean logit
    out = x.copy()
    fooled = np.zeros(len(x), bool) if active is None else ~np.asarray(active, bool)
    goals = [None] if not targets else [ranked[:, r] for r in range(1, min(targets, k - 1) + 1)]
    for goal in goals:
        goal = None if goal is None else np.where(goal == labels, ranked[:, 0], goal)
        for _ in range(restarts):
            left = np.flatnonzero(~fooled)
            if len(left) == 0:
                return out
            noise = rng.uniform(-1, 1, x.shape)[left]
            adv, hit = _apgd_run(net, x[left], labels[left], None if goal is None else goal[left], eps, steps, noise)
            out[left] = adv
            fooled[left] = hit
    return out


@in_eval_mode
def run_suite(net, x, y, eps, *, suite="autoattack", steps=100, restarts=1, rng=None, targets=9, queries=5000,
              on_stage=None):
    """AutoAttack: the attacks of `SUITES[suite]` in turn, each on the images that the
    ones before left robust, each from the clean image; the result per image is the
    first adversarial example found (the worst case). `steps` is the APGD and FAB
    iterations, `queries` Square's. Returns `(x_adv, broken_by)`: `broken_by` `(N,)`
    holds, per image, the index in the suite of the attack that fooled it, -1 if the
    clean image is already misclassified, len(suite) if it is still robust.
    `on_stage(name, n_robust, seconds)` is called after each attack."""
    rng = np.random.default_rng(0) if rng is None else rng
    labels = y.argmax(axis=1)
    stages = SUITES[suite]
    stage_rngs = rng.spawn(len(stages))  # attack k alone with rng.spawn(n)[k] draws what it draws here
    out = x.copy()
    broken_by = np.where(net.logits(x).argmax(axis=1) == labels, len(stages), -1)
    for index, name in enumerate(stages):
        started = time.perf_counter()
        robust = broken_by == len(stages)
        if robust.any() and eps > 0:
            if name == "apgd-ce":
                adv = apgd(net, x, y, eps, steps=steps, restarts=restarts, rng=stage_rngs[index], active=robust)
            elif name == "apgd-t":
                adv = apgd(net, x, y, eps, steps=steps, restarts=restarts, rng=stage_rngs[index], targets=targets,
                           active=robust)
            elif name == "fab-t":
                adv = fab_t(net, x, y, eps, targets=targets, steps=steps, active=robust)
            else:
                adv = square(net, x, y, eps, queries=queries, rng=stage_rngs[index], active=robust)
            fooled = robust & (net.logits(adv).argmax(axis=1) != labels)
            out[fooled] = adv[fooled]
            broken_by[fooled] = index
        if on_stage:
            on_stage(name, int(np.sum(broken_by == len(stages))), time.perf_counter() - started)
    return out, broken_by


@in_eval_mode
def attack(net, x, y, method, eps, *, steps=None, step_size=None, restarts=1, rng=None, targets=9, queries=5000):
    """Adversarial versions of `x` by `method` (one of METHODS); steps default to 40 for bim
    and pgd, 100 for the APGD methods and FAB-T; Square makes `queries` queries; random
    starts come from `rng` (default: seeded with 0)."""
    rng = np.random.default_rng(0) if rng is None else rng
    if method == "fgsm":
        return fgsm(net, x, y, eps)
    if method not in METHODS:
        raise ValueError(f"unknown attack {method!r}")
    steps = DEFAULT_STEPS[method] if steps is None or method == "square" else steps
    if method == "apgd-ce":
        return apgd(net, x, y, eps, steps=steps, restarts=restarts, rng=rng)
    if method == "apgd-t":
        return apgd(net, x, y, eps, steps=steps, restarts=restarts, rng=rng, targets=targets)
    if method == "fab-t":
        return fab_t(net, x, y, eps, targets=targets, steps=steps)
    if method == "square":
        return square(net, x, y, eps, queries=queries, rng=rng)
    if method in SUITES:
        return run_suite(net, x, y, eps, suite=method, steps=steps, restarts=restarts, rng=rng, targets=targets,
                         queries=queries)[0]
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    if method == "bim":
        return bim(net, x, y, eps, steps=steps, step_size=step_size)
    return pgd(net, x, y, eps, steps=steps, step_size=step_size, restarts=restarts, rng=rng)


def evaluate_attack(net, x, labels, method, eps, batch_size=500, on_batch=None, **options):
    """Attack every image in batches; return `(x_adv, adversarial probabilities (N, K))`."""
    x_adv, adv_p, _, _ = evaluate_suite(net, x, labels, method, eps, batch_size, on_batch, **options)
    return x_adv, adv_p


@in_eval_mode
def evaluate_suite(net, x, labels, method, eps, batch_size=500, on_batch=None, on_stage=None, **options):
    """`evaluate_attack`, plus for a suite (`SUITES`) which of its attacks broke each
    image (`run_suite`'s `broken_by` `(N,)`) and the seconds each attack took in all:
    `(x_adv, probabilities, broken_by, {attack: seconds})`, the last two None for a
    single attack. `on_stage` is passed to `run_suite`."""
    k = net.output_shape[0]
    adv, adv_p, broken = [], [], []
    seconds = dict.fromkeys(SUITES.get(method, ()), 0.0)

    def stage_done(name, n_robust, spent):
        seconds[name] += spent
        if on_stage:
            on_stage(name, n_robust, spent)

    for i in range(0, len(x), batch_size):
        xb, lb = x[i:i + batch_size].astype(net.dtype), labels[i:i + batch_size]
        yb = one_hot(lb, k, net.dtype)
        if method in SUITES:
            options = dict(options)
            steps = options.pop("steps", None) or DEFAULT_STEPS[method]
            options.pop("step_size", None)
            x_adv, by = run_suite(net, xb, yb, eps, suite=method, steps=steps, on_stage=stage_done, **options)
            broken.append(by)
        else:
            x_adv = attack(net, xb, yb, method, eps, **options) if eps > 0 else xb
        adv.append(x_adv)
        adv_p.append(net.forward(x_adv))
        if on_batch:
            on_batch(len(xb))
    if not broken:
        return np.concatenate(adv), np.concatenate(adv_p), None, None
    return np.concatenate(adv), np.concatenate(adv_p), np.concatenate(broken), {n: round(t, 3) for n, t in seconds.items()}


def robustness(labels, clean_pred, adv_pred):
    """`(accuracy on adversarial images, success rate among images classified right when clean)`."""
    right = clean_pred == labels
    accuracy = float(np.mean(adv_pred == labels))
    success = float(np.mean(adv_pred[right] != labels[right])) if right.any() else 0.0
    return accuracy, success


@in_eval_mode
def trades_adversary(net, x, eps, steps, step_size, rng):
    """TRADES's inner maximisation (Zhang et al. 2019): `steps` signed-gradient steps of
    `step_size` on KL(p(x) || p(x')), from x' = x + 0.001 N(0, 1), each projected onto
    the eps-ball around x and onto [0, 1]. Returns x' `(N, C, H, W)`."""
    low, high = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    z_clean = net.logits(x)
    x_adv = np.clip(x + 0.001 * rng.standard_normal(x.shape), low, high).astype(x.dtype)
    for _ in range(steps):
        _, dlogits = kl_to_clean(z_clean, net.logits(x_adv))
        grad = net.backward(dlogits.astype(net.dtype), need_input_grad=True, need_param_grads=False)
        x_adv = np.clip(x_adv + step_size * np.sign(grad), low, high).astype(x.dtype)
    return x_adv


def eps_at(settings, step, steps_per_epoch, epochs):
    """The eps of adversarial training at training step `step` (from 0 over the run) by
    `eps_schedule`, any learning-rate schedule (nn/optim.py) with `eps` in the place of
    the rate; `eps` itself without one."""
    if not settings.get("eps_schedule"):
        return settings["eps"]
    as_rate = {"lr": settings["eps"], "lr_decay": 1.0, "schedule": settings["eps_schedule"], "epochs": epochs}
    return learning_rate(as_rate, step, steps_per_epoch)


def adversary(settings, rng, epoch=0, first_step=0, steps_per_epoch=1, epochs=1):
    """The batch transformation of adversarial training, from `train.adversarial`:
    replaces the first `ratio` share of each batch by adversarial versions made from
    the current weights (for `trades`: the whole batch's x', which the TRADES loss
    takes beside the clean batch). With `warmup: W`, eps (and the step sizes with it) grows
    linearly over the first W epochs: eps * (epoch + 1) / W at `epoch` (from 0). With
    `eps_schedule`, eps (and the step sizes with it) is set at every step, the calls
    counted as the epoch's steps from `first_step` (`eps_at`).
    Returns `f(net, x, y) -> x` or None if not configured."""
    if not settings or settings["method"] == "ibp":  # certified training: not an attack (bounds.ibp_trainer)
        return None
    method, ratio, steps = settings["method"], settings["ratio"], settings["steps"]
    epoch_scale = min(1.0, (epoch + 1) / settings["warmup"]) if settings["warmup"] else 1.0
    calls = [first_step]

    def transform(net, x, y):
        if settings.get("eps_schedule"):
            eps = eps_at(settings, calls[0], steps_per_epoch, epochs)
            scale = eps / settings["eps"] if settings["eps"] else 0.0
        else:
            scale = epoch_scale
            eps = scale * settings["eps"]
        calls[0] += 1
        step_size = scale * settings["step_size"] if settings["step_size"] else None
        if method == "trades":
            return trades_adversary(net, x, eps, steps, step_size or default_step_size(eps, steps), rng)
        n = int(round(ratio * len(x)))
        if n == 0:
            return x
        xa, ya = x[:n], y[:n]
        if method == "fgsm" and settings["random_start"]:  # Wong et al. 2020, "fast" FGSM training
            # The gradient is taken at the start as drawn, outside [0, 1] or not, as Wong et al. do
            # (only the step's result is clipped): a start clipped to [0, 1] leaves half of MNIST's
            # black background at exactly 0, and fast-fgsm then learned to defeat FGSM alone
            # (0 % under PGD-40 at eps 0.3: docs/adversarial-training.md).
            start = (xa + rng.uniform(-eps, eps, xa.shape)).astype(x.dtype)
            x_adv = bim(net, xa, ya, eps, steps=1, step_size=step_size or 1.25 * eps, start=start)
        elif method == "fgsm":
            x_adv = fgsm(net, xa, ya, eps)
        else:
            x_adv = pgd(net, xa, ya, eps, steps=steps, step_size=step_size or default_step_size(eps, steps), rng=rng)
        out = x.copy()
        out[:n] = x_adv
        return out

    return transform
