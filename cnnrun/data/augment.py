"""Data augmentation: random shifts (a random crop of the zero-padded image), horizontal
flips and small rotations of a batch `(N, C, H, W)`, vectorised over the batch, drawn
from a generator the caller seeds (the runner: from the run's seed and the epoch, so a
resumed run draws what an uninterrupted one does).

    shift: k      each image moved by whole pixels dy, dx drawn in [-k, k], zeros filling in
                  (a random crop of size H x W from the image padded by k: the same thing)
    flip: p       mirrored left-right with probability p (never on digits by default: a
                  mirrored 2 is no digit)
    rotate: a     turned by an angle drawn in [-a, a] degrees about the centre, bilinear,
                  zeros outside
"""

import numpy as np

from cnnrun.errors import CnnrunError


def check(settings, image_shape):
    """A one-line error if `settings` cannot apply to images of `image_shape` `(C, H, W)`."""
    _, h, w = image_shape
    if settings["shift"] >= min(h, w):
        raise CnnrunError(f"data.augment.shift: {settings['shift']} pixels would move a {h}x{w} image out of "
                          f"itself; use less than {min(h, w)}")


def shift(x, k, rng):
    """Each image of `x` `(N, C, H, W)` moved by its own (dy, dx) in [-k, k]^2, zero fill."""
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2 * k, w + 2 * k), x.dtype)
    padded[:, :, k:k + h, k:k + w] = x
    top, left = rng.integers(0, 2 * k + 1, (2, n))                       # where each crop starts
    rows = top[:, None] + np.arange(h)                                   # (N, H)
    cols = left[:, None] + np.arange(w)                                  # (N, W)
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def flip(x, p, rng):
    """Each image mirrored left-right with probability `p`."""
    mirrored = rng.random(len(x)) < p
    return np.where(mirrored[:, None, None, None], x[:, :, :, ::-1], x)


def rotate(x, degrees, rng):
    """Each image turned by its own angle in [-degrees, degrees] about its centre: each output
    pixel reads the input at the rotated position, bilinearly, zeros outside."""
    n, c, h, w = x.shape
    angle = np.deg2rad(rng.uniform(-degrees, degrees, n))[:, None, None]  # (N, 1, 1)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.mgrid[0:h, 0:w]
    dy, dx = yy - cy, xx - cx
    src_y = cy + np.cos(angle) * dy - np.sin(angle) * dx                  # (N, H, W): where each pixel comes from
    src_x = cx + np.sin(angle) * dy + np.cos(angle) * dx
    y0, x0 = np.floor(src_y).astype(int), np.floor(src_x).astype(int)
    fy, fx = (src_y - y0).astype(x.dtype), (src_x - x0).astype(x.dtype)
    padded = np.zeros((n, c, h + 2, w + 2), x.dtype)                     # a border of zeros to read outside
    padded[:, :, 1:-1, 1:-1] = x
    y0, x0 = np.clip(y0 + 1, 0, h), np.clip(x0 + 1, 0, w)                 # (all outside reads land on zeros)
    outside = (src_y < -1) | (src_y > h) | (src_x < -1) | (src_x > w)
    samples = np.arange(n)[:, None, None, None]
    channels = np.arange(c)[None, :, None, None]

    def at(yi, xi):
        return padded[samples, channels, yi[:, None], xi[:, None]]

    fy, fx = fy[:, None], fx[:, None]
    out = ((1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x0 + 1)
           + fy * (1 - fx) * at(y0 + 1, x0) + fy * fx * at(y0 + 1, x0 + 1))
    return np.where(outside[:, None], 0, out).astype(x.dtype, copy=False)


def augment(x, settings, rng):
    """`x` `(N, C, H, W)` through the augmentations `settings` turns on (rotate, shift, flip, in
    that order), every draw from `rng`; `x` itself if none is."""
    if settings is None:
        return x
    if settings["rotate"]:
        x = rotate(x, settings["rotate"], rng)
    if settings["shift"]:
        x = shift(x, settings["shift"], rng)
    if settings["flip"]:
        x = flip(x, settings["flip"], rng)
    return x
