"""FAB-T, Linf: the targeted Fast Adaptive Boundary attack (Croce & Hein 2020,
"Minimally distorted adversarial examples with a fast adaptive boundary attack").

FAB looks for the smallest perturbation that crosses the decision boundary between
the true class y and a target class t. At each iteration it linearises
f(x) = z_t(x) - z_y(x) at the current point x1, so that the boundary is the hyperplane
`w . z = b` with w = grad f(x1) and b = w . x1 - f(x1), and it projects onto that
hyperplane (closest point in Linf, inside the [0, 1] box) both x1 and the original
image x0. The next point is a step between the two projections, biased towards the
one from x0 (which keeps the perturbation small):

    x1 <- clip((x1 + eta d1) (1 - alpha) + (x0 + eta d2) alpha, 0, 1),
    alpha = min(|d1| / (|d1| + |d2|), alpha_max)

When x1 is misclassified, FAB keeps it if it is the closest so far and steps back
towards x0: x1 <- x0 + beta (x1 - x0). A result counts only if it is within eps.

As the reference runs it in AutoAttack's "standard" version (fra31/auto-attack,
`fab_base.py`, `fab_projections.py`): targets the 2nd to 10th most likely classes at
the clean image, 100 iterations, alpha_max 0.1, eta 1.05, beta 0.9, one restart
without a random start. The projection here is the closed form (a sort and
cumulative sums), the reference's is a bisection over the same sorted breakpoints.

Images are `(N, C, H, W)` in [0, 1], labels and targets `(N,)` ints.
"""

import numpy as np

from cnnrun.nn.network import in_eval_mode


def project_linf(t, w, b):
    """The smallest Linf step d (rows `(M, D)`) that takes each row of `t` onto its
    hyperplane `w . z = b` while keeping t + d in [0, 1]; where the box cannot reach
    the hyperplane, the step to the box's corner nearest to it.

    Each coordinate moves towards the hyperplane by at most r, and at most `cap` (the
    distance to the box's edge in that direction); the largest change of w . z at
    radius r, G(r) = sum |w_i| min(r, cap_i), is piecewise linear in r with breaks at
    the sorted caps, so the smallest r with G(r) = |w . t - b| is read off cumulative sums."""
    excess = np.einsum("md,md->m", w, t) - b  # > 0: w . z must decrease
    direction = -np.sign(w) * np.sign(excess)[:, None]
    cap = np.where(direction > 0, 1 - t, np.where(direction < 0, t, 0))
    need, weight = np.abs(excess), np.abs(w)
    order = np.argsort(cap, axis=1)
    caps, weights = np.take_along_axis(cap, order, 1), np.take_along_axis(weight, order, 1)
    below = np.cumsum(weights * caps, axis=1)  # sum of |w_j| cap_j over caps up to this one
    above = weights.sum(axis=1, keepdims=True) - np.cumsum(weights, axis=1)  # sum of |w_j| over larger caps
    reach = below + caps * above  # G at each break
    k = np.argmax(reach >= need[:, None], axis=1)  # the first break at or past the hyperplane
    rows = np.arange(len(t))
    reachable = reach[:, -1] >= need
    done_below = below[rows, k] - weights[rows, k] * caps[rows, k]
    free_weight = above[rows, k] + weights[rows, k]
    r = np.where(reachable, (need - done_below) / np.maximum(free_weight, 1e-30), np.inf)
    return direction * np.minimum(np.maximum(r, 0)[:, None], cap)


def linf(v):
    """The Linf norm of each row of `(N, ...)`."""
    return np.abs(v.reshape(len(v), -1)).max(axis=1)


def fab_targeted_run(net, x, labels, targets, steps=100, alpha_max=0.1, eta=1.05, beta=0.9):
    """One run of FAB towards `targets` from the clean images; returns `(closest
    misclassified point found (N, C, H, W), its Linf distance (N,), inf if none)`."""
    n = len(x)
    x0 = x.reshape(n, -1).astype(np.float64)
    x1 = x0.copy()
    rows = np.arange(n)
    best, best_dist = x.copy(), np.full(n, np.inf)
    for _ in range(steps):
        z = net.logits(x1.reshape(x.shape).astype(x.dtype))
        dlogits = np.zeros_like(z)
        dlogits[rows, targets], dlogits[rows, labels] = 1.0, -1.0
        w = net.backward(dlogits, need_input_grad=True, need_param_grads=False).reshape(n, -1).astype(np.float64)
        f = z[rows, targets].astype(np.float64) - z[rows, labels]
        b = np.einsum("nd,nd->n", w, x1) - f
        d = project_linf(np.concatenate([x1, x0]), np.concatenate([w, w]), np.concatenate([b, b]))
        d1, d2 = d[:n], d[n:]
        a1, a2 = np.maximum(linf(d1), 1e-8), np.maximum(linf(d2), 1e-8)
        alpha = np.clip(a1 / (a1 + a2), 0, alpha_max)[:, None]
        x1 = np.clip((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha, 0, 1)
        wrong = net.logits(x1.reshape(x.shape).astype(x.dtype)).argmax(axis=1) != labels
        dist = linf(x1 - x0)
        closer = wrong & (dist < best_dist)
        best[closer], best_dist[closer] = x1[closer].reshape((-1,) + x.shape[1:]), dist[closer]
        x1[wrong] = x0[wrong] + beta * (x1[wrong] - x0[wrong])
    return best, best_dist


@in_eval_mode
def fab_t(net, x, y, eps, *, targets=9, steps=100, active=None, on_target=None):
    """FAB-T within eps: FAB towards each of the `targets` most likely other classes at
    the clean image in turn, on the images classified right and not fooled yet (and of
    those only the `active` ones, a mask `(N,)`); returns the adversarial images (x
    where nothing within eps was found). `y` is one-hot `(N, K)`, as for every attack.
    `on_target(r, n_left)` is called after each."""
    labels, out = y.argmax(axis=1), x.copy()
    ranked = np.argsort(net.logits(x), axis=1)[:, ::-1]  # classes by decreasing clean logit
    robust = ranked[:, 0] == labels
    if active is not None:
        robust &= np.asarray(active, bool)
    for r in range(1, min(targets, ranked.shape[1] - 1) + 1):
        left = np.flatnonzero(robust)
        if len(left) == 0:
            break
        adv, dist = fab_targeted_run(net, x[left], labels[left], ranked[left, r], steps)
        adv = np.clip(adv, np.clip(x[left] - eps, 0, 1), np.clip(x[left] + eps, 0, 1))  # float rounding only
        hit = (dist <= eps) & (net.logits(adv).argmax(axis=1) != labels[left])
        out[left[hit]] = adv[hit]
        robust[left[hit]] = False
        if on_target:
            on_target(r, int(robust.sum()))
    return out
