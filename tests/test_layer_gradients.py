"""Every layer's backward pass against central finite differences in float64."""

import numpy as np
import pytest

from cnnrun.nn import kernels, layers
from cnnrun.nn import Conv2D, Dense, Flatten, InstanceNorm, MaxPool2D, Normalize, ReLU, Reshape, Softmax
from cnnrun.nn.gradcheck import TOLERANCE, check_layer


def built(layer, in_shape, rng):
    layer.build(in_shape)
    layer.init_params(rng, np.float64)
    for p in layer.params.values():  # non-trivial affine parameters and biases
        p += rng.standard_normal(p.shape) * 0.1
    return layer


# The tensors each layer's check must cover, written out rather than read from the layer.
EXPECTED_TENSORS = {"conv": {"W", "b", "dx"}, "dense": {"W", "b", "dx"}, "instance_norm": {"gamma", "beta", "dx"}}


def assert_gradients_match(layer, in_shape, rng, n=2, samples=40):
    x = rng.standard_normal((n,) + tuple(in_shape))
    rows = check_layer(layer, x, rng, samples)
    expected = EXPECTED_TENSORS.get(layer.kind, {"dx"})
    if getattr(layer, "bias", True) is False:
        expected = expected - {"b"}
    if getattr(layer, "affine", True) is False:
        expected = expected - {"gamma", "beta"}
    assert sorted(name for name, _ in rows) == sorted(expected)
    for name, error in rows:
        assert error < TOLERANCE, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("channels", [1, 2])  # dx scattered per sample (one channel) or with the batch last
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv_gradients_for_every_padding_and_stride(padding, stride, channels, rng):
    layer = built(Conv2D(filters=3, kernel=3, stride=stride, padding=padding), (channels, 9, 8), rng)
    assert_gradients_match(layer, (channels, 9, 8), rng)


@pytest.mark.parametrize("kernel,stride,padding,shape", [
    ([2, 3], [1, 2], [0, 1], (3, 7, 10)),   # non-square kernel, stride and padding
    (5, 2, 2, (1, 11, 13)),                 # odd sizes, stride not dividing the input
    (1, 1, 0, (4, 5, 5)),                   # 1x1 convolution
    (3, 1, 3, (2, 4, 4)),                   # padding larger than kernel - 1
])
def test_conv_gradients_for_non_square_and_odd_shapes(kernel, stride, padding, shape, rng):
    layer = built(Conv2D(filters=2, kernel=kernel, stride=stride, padding=padding), shape, rng)
    assert_gradients_match(layer, shape, rng)


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_conv_gradients_when_the_input_gradient_is_taken_over_the_padded_width(padding, rng):
    """At stride 1 with more than one input channel, dx is the flipped-kernel correlation
    over the padded width (`input_grad_wide`); the tests above take the scatter paths."""
    layer = built(Conv2D(filters=2, kernel=3, padding=padding), (3, 7, 6), rng)
    assert_gradients_match(layer, (3, 7, 6), rng)


@pytest.mark.parametrize("kernel,stride,padding", [
    (3, 1, 0), (3, 1, 1), ([2, 3], 1, [0, 2]), (5, 1, 2), (1, 1, 0), (3, 2, 1), ([3, 2], [2, 3], [1, 0]),
])
def test_the_input_gradient_paths_agree(kernel, stride, padding, monkeypatch, rng):
    """Scatter per sample, scatter with the batch last (in chunks of 2 samples here, the
    last one partial) and, at stride 1, the correlation over the padded width: the same dL/dx."""
    kernel, stride, padding = layers._pair(kernel), layers._pair(stride), layers._pair(padding)
    W = rng.standard_normal((4, 3) + kernel)
    h, w = 7, 6
    dy = rng.standard_normal((5, 4, (h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
                              (w + 2 * padding[1] - kernel[1]) // stride[1] + 1))
    scattered = kernels.input_grad_scatter(dy, W, stride, padding, (h, w))
    monkeypatch.setattr(kernels, "CHUNK_BYTES", 2 * 3 * kernel[0] * kernel[1] * dy.shape[2] * dy.shape[3] * dy.itemsize)
    batch_last = kernels.input_grad_scatter_batch_last(dy, W, stride, padding, (h, w))
    assert scattered.shape == batch_last.shape == (5, 3, h, w)
    np.testing.assert_allclose(batch_last, scattered, rtol=1e-12, atol=1e-12)
    if stride == (1, 1):
        np.testing.assert_allclose(kernels.input_grad_wide(dy, W, padding, (h, w)), scattered, rtol=1e-12, atol=1e-12)


def test_conv_without_bias_has_only_weights(rng):
    layer = built(Conv2D(filters=2, kernel=3, bias=False), (2, 6, 6), rng)
    assert set(layer.params) == {"W"}
    assert_gradients_match(layer, (2, 6, 6), rng)


def test_conv_in_chunks_of_samples_matches_one_chunk_and_finite_differences(monkeypatch, rng):
    """Columns are made a chunk of samples at a time; with chunks of 2 samples (the last
    one partial) the output and gradients equal those of one chunk, and pass gradcheck."""
    layer = built(Conv2D(filters=3, kernel=3, stride=[2, 1], padding=1), (2, 7, 6), rng)
    x, dy = rng.standard_normal((5, 2, 7, 6)), rng.standard_normal((5, 3, 4, 6))
    whole = layer.forward(x), layer.backward(dy), layer.grads["W"].copy()
    per_sample = 2 * 3 * 3 * 4 * 6 * x.itemsize  # bytes of one sample's forward columns
    monkeypatch.setattr(kernels, "CHUNK_BYTES", 2 * per_sample)
    assert len(kernels.batch_chunks(5, per_sample)) == 3
    chunked = layer.forward(x), layer.backward(dy), layer.grads["W"]
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert_gradients_match(layer, (2, 7, 6), rng, n=5)


def test_conv_weight_gradient_from_the_forwards_columns_equals_one_unfolded_anew(monkeypatch, rng):
    """A batch whose columns fit one chunk keeps them from the forward for the weight
    gradient: the same bits as unfolding again, and a chunked batch keeps none."""
    planned = layers.conv_plan  # (this shape would take the patches, which are always kept)
    monkeypatch.setattr(layers, "conv_plan", lambda *shape: planned(*shape)._replace(forward="columns"))
    layer = built(Conv2D(filters=4, kernel=3, stride=[1, 2], padding=[1, 2]), (3, 7, 8), rng)
    x, dy = rng.standard_normal((6, 3, 7, 8)), rng.standard_normal((6, 4, 7, 5))
    layer.forward(x)
    assert layer.cache[1] is not None
    layer.backward(dy)
    kept = layer.grads["W"].copy()
    monkeypatch.setattr(layers, "conv_plan",
                        lambda *shape: planned(*shape)._replace(forward="columns", keep_columns=False))
    layer.forward(x)
    assert layer.cache[1] is None
    layer.backward(dy)
    np.testing.assert_array_equal(layer.grads["W"], kept)
    monkeypatch.setattr(layers, "conv_plan", lambda *shape: planned(*shape)._replace(forward="columns"))
    monkeypatch.setattr(kernels, "CHUNK_BYTES", 1)  # one sample a chunk: nothing kept, whatever the plan
    layer.forward(x)
    assert layer.cache[1] is None


@pytest.mark.parametrize("kernel,stride,padding,shape", [
    (2, None, 0, (3, 8, 8)),      # the usual 2x2
    (2, None, 0, (2, 7, 9)),      # odd sizes: the last row/column is dropped
    (3, 2, 0, (2, 9, 9)),         # overlapping windows
    (3, 2, 1, (2, 8, 7)),         # overlapping and padded
    ([2, 3], [1, 2], [1, 1], (1, 6, 7)),  # non-square everything
    (2, 3, 0, (2, 9, 9)),         # gaps between windows, the last one ending at the edge
    ([3, 1], [2, 3], [1, 0], (2, 7, 8)),  # gaps along W only, overlap along H only
])
def test_maxpool_gradients(kernel, stride, padding, shape, rng):
    layer = built(MaxPool2D(kernel=kernel, stride=stride, padding=padding), shape, rng)
    assert_gradients_match(layer, shape, rng)


def test_maxpool_tie_sends_gradient_to_first_maximum_only(rng):
    layer = built(MaxPool2D(kernel=2), (1, 2, 4), rng)
    x = np.array([[[[0.0, 0.0, 1.0, 5.0],
                    [0.0, 0.0, 5.0, 2.0]]]])  # window 1: all tied; window 2: tie at (0,1) and (1,0)
    out = layer.forward(x)
    np.testing.assert_array_equal(out, [[[[0.0, 5.0]]]])
    dx = layer.backward(np.array([[[[3.0, 7.0]]]]))
    np.testing.assert_array_equal(dx, [[[[3.0, 0.0, 0.0, 7.0],
                                         [0.0, 0.0, 0.0, 0.0]]]])


def test_maxpool_ties_in_overlapping_windows_each_go_to_their_own_first_maximum(rng):
    layer = built(MaxPool2D(kernel=3, stride=2), (1, 5, 5), rng)
    layer.forward(np.zeros((1, 1, 5, 5)))
    dx = layer.backward(np.ones((1, 1, 2, 2)))
    expected = np.zeros((5, 5))
    for top, left in [(0, 0), (0, 2), (2, 0), (2, 2)]:
        expected[top, left] += 1.0  # every window's first element is its first maximum
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_conv_bias_gradient_is_exact_through_tied_maxpool_windows(rng):
    """Black MNIST backgrounds make whole windows tie: conv bias -> maxpool must count
    each window once (a mask `x == max` would count every tied element)."""
    conv = built(Conv2D(filters=2, kernel=3, padding=1), (1, 6, 6), rng)
    pool = built(MaxPool2D(kernel=2), (2, 6, 6), rng)
    conv.params["W"][...] = 0.0  # every output equals the bias: all windows tie
    x = np.zeros((1, 1, 6, 6))
    upstream = rng.standard_normal((1, 2, 3, 3))

    def loss():
        return np.sum(pool.forward(conv.forward(x)) * upstream)

    loss()
    conv.backward(pool.backward(upstream))
    analytic = conv.grads["b"].copy()
    h = 1e-6
    for f in range(2):
        conv.params["b"][f] += h
        up = loss()
        conv.params["b"][f] -= 2 * h
        down = loss()
        conv.params["b"][f] += h
        assert abs((up - down) / (2 * h) - analytic[f]) < 1e-6
    np.testing.assert_allclose(analytic, upstream.sum(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 5), (2, 7, 4)])
def test_instance_norm_gradients(affine, shape, rng):
    layer = built(InstanceNorm(affine=affine), shape, rng)
    assert set(layer.params) == ({"gamma", "beta"} if affine else set())
    assert_gradients_match(layer, shape, rng)


def test_instance_norm_normalises_each_sample_and_channel(rng):
    layer = built(InstanceNorm(affine=False), (3, 6, 5), rng)
    y = layer.forward(rng.standard_normal((4, 3, 6, 5)) * 7 + 3)
    np.testing.assert_allclose(y.mean(axis=(2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(2, 3)), 1, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradients(bias, rng):
    assert_gradients_match(built(Dense(units=7, bias=bias), (11,), rng), (11,), rng)


def test_relu_gradients(rng):
    assert_gradients_match(built(ReLU(), (3, 4, 5), rng), (3, 4, 5), rng)


def test_flatten_and_reshape_gradients(rng):
    assert_gradients_match(built(Flatten(), (3, 4, 5), rng), (3, 4, 5), rng)
    assert_gradients_match(built(Reshape(shape=[6, 10]), (3, 4, 5), rng), (3, 4, 5), rng)


def test_softmax_layer_gradients(rng):
    assert_gradients_match(built(Softmax(), (10,), rng), (10,), rng)


def test_normalize_gradients_and_values(rng):
    layer = built(Normalize(mean=0.1307, std=0.3081), (1, 5, 4), rng)
    assert_gradients_match(layer, (1, 5, 4), rng)
    np.testing.assert_allclose(layer.forward(np.full((1, 1, 5, 4), 0.1307 + 0.3081)), 1.0)


def test_init_gain_scales_the_initial_weights(rng):
    a = Conv2D(filters=4, kernel=3)
    b = Conv2D(filters=4, kernel=3, init_gain=0.25)
    for layer in (a, b):
        layer.build((2, 6, 6))
        layer.init_params(np.random.default_rng(0), np.float64)
    np.testing.assert_allclose(b.params["W"], 0.25 * a.params["W"])


def test_maxpool_window_wider_than_256_finds_its_maximum_beyond_index_255(rng):
    layer = built(MaxPool2D(kernel=[1, 300]), (1, 2, 300), rng)
    x = np.zeros((1, 1, 2, 300))
    x[0, 0, 0, 280], x[0, 0, 1, 299] = 1.0, 2.0
    np.testing.assert_array_equal(layer.forward(x).ravel(), [1.0, 2.0])
    dx = layer.backward(np.array([[[[3.0], [5.0]]]]))
    assert dx[0, 0, 0, 280] == 3.0 and dx[0, 0, 1, 299] == 5.0 and np.count_nonzero(dx) == 2


def test_flatten_and_reshape_skip_the_input_gradient_when_not_needed(rng):
    for layer in (built(Flatten(), (3, 4, 5), rng), built(Reshape(shape=[6, 10]), (3, 4, 5), rng)):
        y = layer.forward(rng.standard_normal((2, 3, 4, 5)))
        assert layer.backward(np.ones_like(y), need_dx=False) is None
        assert layer.backward(np.ones_like(y)).shape == (2, 3, 4, 5)


def test_every_layer_argument_has_a_validation_rule():
    import inspect

    from cnnrun.nn import LAYERS
    for kind, cls in LAYERS.items():
        assert set(cls.args) == set(inspect.signature(cls).parameters), kind


def test_an_unknown_init_scheme_is_an_error_not_glorot(rng):
    from cnnrun.errors import CnnrunError
    layer = Dense(units=3, init="xavier")
    layer.build((4,))
    with pytest.raises(CnnrunError, match="init 'xavier'"):
        layer.init_params(rng, np.float64)


def test_finite_differences_leave_out_entries_on_a_kink_and_still_catch_wrong_gradients():
    """f = sum |a|: the entry at 0 has no derivative and is left out (NaN); the
    others are measured, so a wrong analytic gradient there still fails."""
    from cnnrun.nn.gradcheck import compare, numeric_gradient
    a = np.array([0.0, 1.5, -2.0])

    def f():
        return float(np.abs(a).sum())

    numeric = numeric_gradient(f, a, [(0,), (1,), (2,)])
    assert np.isnan(numeric[0]) and numeric[1:] == pytest.approx([1.0, -1.0])
    assert compare(np.array([0.0, 1.0, -1.0]), f, a, [(0,), (1,), (2,)]) < TOLERANCE
    assert compare(np.array([0.0, 1.0, 1.0]), f, a, [(0,), (1,), (2,)]) > 0.5
    assert np.isnan(compare(np.array([0.0, 1.0, -1.0]), f, a, [(0,)]))  # nothing left to compare
