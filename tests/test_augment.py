"""Data augmentation: each transformation what it says, per image, vectorised over the
batch, from the generator it is handed; bad settings one line each."""

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun.cli import main
from cnnrun.data import augment
from idx import TINY_CONFIG, write_config

SETTINGS = {"shift": 0, "flip": 0.0, "rotate": 0.0}


class Fixed:
    """A generator stand-in whose uniform draws are the given angles."""

    def __init__(self, angles):
        self.angles = np.asarray(angles, float)

    def uniform(self, low, high, n):
        return self.angles[:n]


def test_a_shift_moves_each_image_by_its_own_offset_within_k_with_zeros_filling_in(rng):
    x = rng.random((40, 2, 9, 11)).astype(np.float32) + 1  # no zeros of its own
    y = augment.shift(x, 2, np.random.default_rng(0))
    assert y.dtype == np.float32 and y.shape == x.shape
    offsets = set()
    for image, moved in zip(x, y):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                expected = np.zeros_like(image)
                expected[:, max(dy, 0):9 + min(dy, 0), max(dx, 0):11 + min(dx, 0)] = \
                    image[:, max(-dy, 0):9 - max(dy, 0), max(-dx, 0):11 - max(dx, 0)]
                if np.array_equal(moved, expected):
                    matches.append((dy, dx))
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 10  # each image its own


def test_a_flip_mirrors_the_images_it_draws_and_leaves_the_others(rng):
    x = rng.random((200, 1, 4, 5))
    y = augment.flip(x, 0.5, np.random.default_rng(0))
    mirrored = np.array([np.array_equal(a, b[:, :, ::-1]) for a, b in zip(y, x)])
    kept = np.array([np.array_equal(a, b) for a, b in zip(y, x)])
    assert np.all(mirrored ^ kept) and 0.35 < mirrored.mean() < 0.65
    np.testing.assert_array_equal(augment.flip(x, 1.0, np.random.default_rng(0)), x[:, :, :, ::-1])


def test_a_rotation_turns_each_image_by_its_own_angle(rng):
    x = rng.random((3, 2, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(augment.rotate(x, 90, Fixed([0, 0, 0])), x)
    np.testing.assert_allclose(augment.rotate(x, 90, Fixed([90, 90, 90])), np.rot90(x, -1, axes=(2, 3)), atol=1e-6)
    np.testing.assert_allclose(augment.rotate(x, 180, Fixed([180] * 3)), x[:, :, ::-1, ::-1], atol=1e-6)
    mixed = augment.rotate(x, 90, Fixed([0, 90, 17]))
    np.testing.assert_array_equal(mixed[0], x[0])
    np.testing.assert_allclose(mixed[1], np.rot90(x[1], -1, axes=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(mixed[2], augment.rotate(x[2:], 90, Fixed([17]))[0], atol=1e-6)
    assert mixed.dtype == np.float32


def test_a_small_rotation_keeps_a_centred_dot_and_moves_a_corner_dot_to_its_rotated_place():
    x = np.zeros((1, 1, 9, 9))
    x[0, 0, 4, 4] = 1  # the centre: stays
    x[0, 0, 4, 8] = 1  # on the right edge, 4 from the centre: 90 degrees takes it to (8, 4) or (0, 4)
    y = augment.rotate(x, 90, Fixed([90]))
    assert y[0, 0, 4, 4] == pytest.approx(1) and y.sum() == pytest.approx(2)
    assert y[0, 0, 8, 4] == pytest.approx(1)


def test_augment_applies_the_settings_in_order_and_draws_only_from_its_generator(rng):
    x = rng.random((10, 1, 8, 8))
    assert augment.augment(x, None, None) is x
    assert augment.augment(x, dict(SETTINGS), np.random.default_rng(0)) is x
    settings = dict(SETTINGS, shift=1, rotate=15, flip=0.5)
    a = augment.augment(x, settings, np.random.default_rng(3))
    b = augment.augment(x, settings, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment.augment(x, settings, np.random.default_rng(4)))


@pytest.mark.parametrize("augment_settings, message", [
    ({"shift": 28}, "data.augment.shift: 28 pixels would move a 28x28 image out of itself; use less than 28"),
    ({"rotate": 200}, "data.augment.rotate: expected a number of degrees in [0, 180], got 200"),
    ({"flip": 2}, "data.augment.flip: expected a number in [0, 1], got 2"),
    ({"crop": 2}, "data.augment.crop: unknown key; expected one of shift, flip, rotate"),
])
def test_bad_augmentation_settings_are_one_line(setup, augment_settings, message):
    path = write_config(setup["tmp"] / "bad.yaml", data=dict(TINY_CONFIG["data"], augment=augment_settings))
    result = CliRunner().invoke(main, ["train", path, "--data-dir", setup["data"], "--runs-dir", setup["runs"]])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert message in result.output
