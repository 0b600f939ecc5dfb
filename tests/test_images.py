"""Your own pictures made MNIST-like before `predict`."""

import numpy as np
from scipy import ndimage

from cnnrun.images import to_mnist


def test_dark_digit_on_light_paper_becomes_a_centred_light_digit_on_black():
    paper = np.ones((90, 60))
    paper[10:40, 5:15] = 0.0  # an off-centre dark bar
    out = to_mnist(paper)
    assert out.shape == (28, 28) and out.max() == 1.0 and out.min() == 0.0
    assert out[0].max() == 0 and out[:, 0].max() == 0  # black border
    rows, cols = np.nonzero(out > 0.5)
    assert rows.max() - rows.min() + 1 <= 21  # longer side scaled to 20 pixels
    cy, cx = ndimage.center_of_mass(out)
    assert abs(cy - 13.5) < 0.6 and abs(cx - 13.5) < 0.6


def test_light_digit_on_black_is_not_inverted_and_blank_image_stays_blank():
    image = np.zeros((28, 28))
    image[8:20, 12:16] = 1.0
    out = to_mnist(image)
    assert out[14, 14] > 0.9 and out[0, 0] == 0
    assert to_mnist(np.ones((30, 30))).max() == 0
