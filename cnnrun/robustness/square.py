"""The Square attack, Linf (Andriushchenko et al. 2020): gradient-free, forward passes only.

It lowers the margin `z_y - max_{k != y} z_k` of each image by random search: at each
iteration one square window of the perturbation is set to +-eps (a sign per channel),
and each image keeps the change only if its margin went down. An image whose margin
is below 0 is misclassified and is attacked no further.

As in AutoAttack's reference implementation (fra31/auto-attack, `square.py`, version
"standard"):
- the start is vertical stripes: one random sign per column and channel, times eps;
- one window (position and signs) is drawn per iteration for the whole batch, and
  every image accepts or rejects it on its own margin;
- the window's side comes from `p`, the share of the image it covers: p_init (0.8) is
  halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000, counted as
  they are (not rescaled to the query budget);
- a window's top-left corner is drawn from 0 .. H - s - 1 (the reference's
  `random_int(0, h - s)`), so it never touches the last row or column of free space.

Different: the random numbers come from NumPy (`rng`), not torch, so the windows
drawn differ from the reference's even at the same seed.

Images are `(N, C, H, W)` in [0, 1], labels `(N,)` ints.
"""

import math

import numpy as np

from cnnrun.nn.network import in_eval_mode

# Square's p is halved after each of these iterations (the reference's `p_selection`).
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(iteration, p_init=0.8):
    """The share of the image the window covers at `iteration` (from 0)."""
    return p_init / 2 ** sum(iteration > t for t in HALVINGS)


def side_length(p, height, width):
    """The window's side for share `p` of an `(H, W)` image: round(sqrt(p * H * W)),
    at least 1 and at most min(H, W)."""
    return min(max(int(round(math.sqrt(p * height * width))), 1), height, width)


def margins(net, x, labels):
    """`z_y - max_{k != y} z_k` of each image `(N,)`: below 0 when misclassified."""
    z = net.logits(x).astype(np.float64)
    rows = np.arange(len(x))
    correct = z[rows, labels].copy()
    z[rows, labels] = -np.inf
    return correct - z.max(axis=1)


@in_eval_mode
def square(net, x, y, eps, *, queries=5000, p_init=0.8, rng=None, active=None, on_query=None):
    """Square attack on every image (or the `active` ones, a mask `(N,)`); returns the
    adversarial images `(N, C, H, W)`: the point of lowest margin found, within eps of x
    and in [0, 1]. `y` is one-hot `(N, K)`, as for every attack. `queries` is the number
    of iterations after the start, one forward pass of the images still robust each;
    `on_query(i, n_left)` is called after each. An image's windows do not depend on the
    other images of the batch."""
    labels, rng = y.argmax(axis=1), np.random.default_rng(0) if rng is None else rng
    n, c, h, w = x.shape
    low, high = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    x_best = np.clip(x + eps * rng.choice([-1.0, 1.0], size=(n, c, 1, w)), 0, 1).astype(x.dtype)
    if active is not None:
        x_best[~np.asarray(active, bool)] = x[~np.asarray(active, bool)]
    margin = margins(net, x_best, labels)
    if active is not None:
        margin[~np.asarray(active, bool)] = -np.inf  # not attacked
    for i in range(queries):
        left = np.flatnonzero(margin > 0)
        if len(left) == 0:
            break
        s = side_length(p_schedule(i, p_init), h, w)
        top, start = rng.integers(0, max(h - s, 1)), rng.integers(0, max(w - s, 1))
        signs = 2.0 * eps * rng.choice([-1.0, 1.0], size=(c, 1, 1))
        window = (slice(None), slice(None), slice(top, top + s), slice(start, start + s))
        x_new = x_best[left]
        x_new[window] = np.clip(x_new[window] + signs, low[left][window], high[left][window])
        new_margin = margins(net, x_new, labels[left])
        better = new_margin < margin[left]  # a misclassified image has margin < 0 < its old one
        margin[left[better]] = new_margin[better]
        x_best[left[better]] = x_new[better]
        if on_query:
            on_query(i, len(left))
    return x_best
