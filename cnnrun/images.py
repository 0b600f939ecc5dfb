"""Your own digit images -> MNIST-like inputs: grayscale, white digit on black, centred."""

import numpy as np
from scipy import ndimage

from cnnrun.errors import CnnrunError


MAX_PIXELS = 25_000_000  # a 5000 x 5000 photo; larger images are refused before they are decoded


def read_image(path, max_pixels=MAX_PIXELS):
    """A PNG or JPEG as a grayscale float array `(H, W)` in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as image:  # reads the header only: the size is known before decoding
            width, height = image.size
            if width * height > max_pixels:
                raise CnnrunError(f"{path}: {width}x{height} pixels is more than the {max_pixels:,} "
                                  f"predict reads; scale the picture down first")
            image = np.asarray(image.convert("RGBA"), dtype=np.float64) / 255.0
    except CnnrunError:
        raise
    except FileNotFoundError:
        raise CnnrunError(f"{path}: no such image") from None
    except Exception as e:
        raise CnnrunError(f"{path}: not a readable image ({e})") from None
    rgb, alpha = image[..., :3], image[..., 3:]
    image = (rgb * alpha + (1 - alpha)) @ np.array([0.299, 0.587, 0.114])  # transparent reads as white paper
    if min(image.shape) < 2:
        raise CnnrunError(f"{path}: {image.shape[1]}x{image.shape[0]} pixels is too small for a digit (2x2 at least)")
    return image


def to_mnist(image, size=(28, 28), box=20):
    """Grayscale `(H, W)` -> `(h, w)` like MNIST: a light digit on black, scaled so its
    longer side is `box` pixels (20 of 28), centred by its centre of mass."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    if border.mean() > 0.5:  # dark digit on light paper: invert
        image = 1.0 - image
    image = np.clip(image - np.median(border if border.mean() <= 0.5 else 1.0 - border), 0, None)
    if image.max() <= 0:
        return np.zeros(size)
    image = image / image.max()
    rows, cols = np.nonzero(image > 0.1)
    digit = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = box * min(size) / 28 / max(digit.shape)
    digit = np.clip(ndimage.zoom(digit, scale, order=1), 0, 1)
    out = np.zeros(size)
    h, w = min(digit.shape[0], size[0]), min(digit.shape[1], size[1])
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    out[top:top + h, left:left + w] = digit[:h, :w]
    cy, cx = ndimage.center_of_mass(out)
    return np.clip(ndimage.shift(out, (size[0] / 2 - 0.5 - cy, size[1] / 2 - 0.5 - cx), order=1), 0, 1)
