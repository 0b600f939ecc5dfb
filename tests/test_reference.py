"""The fast engine (layers.py on kernels.py) against the reference engine (reference.py,
the equations), layer by layer and for whole networks: forward, dx and every parameter
gradient, in float64, on odd shapes, strides, padding and ties. The reference itself is
held to finite differences here, so the chain is: definition -> finite differences ->
reference -> fast."""

import glob

import numpy as np
import pytest

from cnnrun.config import build_network, load_config
from cnnrun.nn import kernels, layers, losses, reference
from cnnrun.nn.gradcheck import TOLERANCE, check_layer
from cnnrun.nn.network import Network

RTOL = ATOL = 1e-10  # float64: the two engines sum in other orders, nothing more


def twins(kind, kwargs, in_shape, rng):
    """The fast layer and its reference twin, built for `in_shape`, with the same random
    parameters (biases and affine parameters non-zero)."""
    fast, ref = layers_of("fast")[kind](**kwargs), reference.LAYERS[kind](**kwargs)
    for layer in (fast, ref):
        layer.build(in_shape)
    fast.init_params(rng, np.float64)
    for name, p in fast.params.items():
        p += rng.standard_normal(p.shape) * 0.1
        ref.params[name] = p.copy()
    return fast, ref


def layers_of(engine):
    from cnnrun.nn.network import ENGINES
    return ENGINES[engine]


def assert_same_layer(fast, ref, x, rng):
    y_fast, y_ref = fast.forward(x.copy()), ref.forward(x.copy())
    assert y_fast.shape == y_ref.shape
    np.testing.assert_allclose(y_fast, y_ref, rtol=RTOL, atol=ATOL)
    dy = rng.standard_normal(y_ref.shape)
    dx_fast, dx_ref = fast.backward(dy.copy()), ref.backward(dy.copy())
    np.testing.assert_allclose(dx_fast, dx_ref, rtol=RTOL, atol=ATOL)
    assert set(fast.grads) == set(ref.grads) == set(fast.params)
    for name in fast.params:
        np.testing.assert_allclose(fast.grads[name], ref.grads[name], rtol=RTOL, atol=ATOL, err_msg=name)


CONV_CASES = [  # (filters, kernel, stride, padding, input shape)
    (3, 3, 1, 1, (1, 28, 28)),         # a first convolution: dx scattered per sample (plan "scatter")
    (8, 3, 1, 1, (8, 14, 14)),         # C == F, stride 1: dx over the padded width ("wide")
    (16, 3, 1, 1, (8, 7, 7)),          # C < F, stride 1: dx "wide" too
    (4, 3, 2, 1, (3, 9, 8)),           # stride 2, odd and even sizes
    (2, 5, 2, 2, (1, 11, 13)),         # kernel 5, stride not dividing the input
    (2, 4, 1, 2, (3, 6, 5)),           # even kernel
    (3, 1, 1, 0, (4, 5, 5)),           # 1x1
    (2, 2, 1, 0, (2, 5, 4)),           # kernel 2
    (3, 3, 3, 0, (2, 10, 11)),         # stride 3, rows no window reads
    (2, 3, 1, 3, (2, 4, 4)),           # padding larger than kernel - 1
    (5, [2, 3], [1, 2], [0, 1], (3, 7, 10)),   # non-square kernel, stride and padding
    (2, [3, 1], [2, 1], [2, 0], (2, 6, 5)),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("filters,kernel,stride,padding,shape", CONV_CASES)
def test_fast_conv_matches_the_reference(filters, kernel, stride, padding, shape, bias, rng):
    fast, ref = twins("conv", dict(filters=filters, kernel=kernel, stride=stride, padding=padding, bias=bias),
                      shape, rng)
    assert_same_layer(fast, ref, rng.standard_normal((3,) + shape), rng)


@pytest.mark.parametrize("filters,kernel,stride,padding,shape", CONV_CASES[:6])
def test_fast_conv_matches_the_reference_in_chunks_of_samples(filters, kernel, stride, padding, shape,
                                                              monkeypatch, rng):
    """With chunks of 2 samples (the last one partial) the fast kernels still agree."""
    fast, ref = twins("conv", dict(filters=filters, kernel=kernel, stride=stride, padding=padding), shape, rng)
    monkeypatch.setattr(kernels, "CHUNK_BYTES", 1)  # one sample a chunk
    assert_same_layer(fast, ref, rng.standard_normal((5,) + shape), rng)


STRIDE_1_CASES = [case for case in CONV_CASES if layers._pair(case[2]) == (1, 1)]


def force_plan(monkeypatch, **fields):
    """Make every convolution take the kernels `fields` name, whatever `conv_plan` says."""
    planned = layers.conv_plan
    monkeypatch.setattr(layers, "conv_plan", lambda *shape: planned(*shape)._replace(**fields))


@pytest.mark.parametrize("chunk_bytes", [1 << 30, 1])  # one chunk; a sample a chunk
@pytest.mark.parametrize("filters,kernel,stride,padding,shape", STRIDE_1_CASES)
def test_the_padded_width_path_matches_the_reference(filters, kernel, stride, padding, shape, chunk_bytes,
                                                     monkeypatch, rng):
    """Every stride-1 case through `correlate_wide`, its weight gradient and `input_grad_wide`
    (forced, one input channel included), in one chunk and a sample a chunk: forward, dx and dW."""
    fast, ref = twins("conv", dict(filters=filters, kernel=kernel, stride=stride, padding=padding), shape, rng)
    force_plan(monkeypatch, forward="wide", input_grad="wide", keep_columns=False)
    monkeypatch.setattr(kernels, "CHUNK_BYTES", chunk_bytes)
    assert_same_layer(fast, ref, rng.standard_normal((5,) + shape), rng)
    assert fast.plan.forward == "wide", "the layer did not take the padded-width path"


@pytest.mark.parametrize("input_grad", ["scatter", "scatter_batch_last"])
@pytest.mark.parametrize("keep_columns", [True, False])
@pytest.mark.parametrize("filters,kernel,stride,padding,shape", CONV_CASES)
def test_im2col_and_each_col2im_path_match_the_reference(filters, kernel, stride, padding, shape, keep_columns,
                                                         input_grad, monkeypatch, rng):
    """Every case through im2col (its columns kept for dW or unfolded again) and each
    col2im input gradient, forced, in chunks of one sample: forward, dx and dW."""
    fast, ref = twins("conv", dict(filters=filters, kernel=kernel, stride=stride, padding=padding), shape, rng)
    force_plan(monkeypatch, forward="columns", input_grad=input_grad, keep_columns=keep_columns)
    monkeypatch.setattr(kernels, "CHUNK_BYTES", 1)
    assert_same_layer(fast, ref, rng.standard_normal((5,) + shape), rng)
    assert fast.plan == ("columns", input_grad, keep_columns)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("filters,kernel,stride,padding,shape", CONV_CASES)
def test_the_channels_last_patches_path_matches_the_reference(filters, kernel, stride, padding, shape, bias,
                                                              monkeypatch, rng):
    """Every case through `correlate_patches`, `patches_weight_grad` and `input_grad_patches`
    (forced: strides of 1 and one input channel included): forward, dx and dW."""
    fast, ref = twins("conv", dict(filters=filters, kernel=kernel, stride=stride, padding=padding, bias=bias),
                      shape, rng)
    force_plan(monkeypatch, forward="patches", input_grad="patches", keep_columns=True)
    assert_same_layer(fast, ref, rng.standard_normal((5,) + shape), rng)
    assert fast.plan.forward == "patches", "the layer did not take the patches path"


def test_the_plan_takes_the_patches_for_strided_convolutions_with_small_outputs():
    """As measured (docs/performance.md): the second convolutions of robust-pgd (32->64,
    4x4, stride 2, 7x7 out) and small-adv (16->32) take the patches, and the input gradient
    goes channels-last from 32 input channels; a first convolution, a stride of 1 and more
    than 64 outputs do not take them."""
    plan = kernels.conv_plan
    assert plan(50, (64, 32, 4, 4), (2, 2), (7, 7), 4) == ("patches", "patches", True)
    assert plan(64, (32, 16, 4, 4), (2, 2), (7, 7), 4) == ("patches", "scatter_batch_last", True)
    assert plan(64, (8, 3, 3, 3), (1, 2), (8, 8), 4).forward == "patches"
    assert plan(50, (32, 1, 4, 4), (2, 2), (14, 14), 4) == ("columns", "scatter", True)  # robust-pgd's first
    assert plan(64, (32, 16, 3, 3), (2, 2), (14, 14), 4).forward == "columns"  # 196 outputs
    assert plan(64, (32, 32, 3, 3), (1, 1), (7, 7), 4).forward != "patches"
    assert plan(64, (32, 16, 4, 4), (2, 2), (8, 9), 4).forward == "columns"    # 72 outputs


def test_the_memory_estimate_counts_the_patches_a_layer_keeps_for_its_weight_gradient(monkeypatch):
    """robust-pgd's second convolution keeps its channels-last input (16x16x32) and its
    patches (7x7 windows of 4x4x32) per sample; on im2col it keeps nothing."""
    layer = layers.Conv2D(filters=64, kernel=4, stride=2, padding=1)
    layer.build((32, 14, 14))
    assert layer.scratch_per_sample() == 16 * 16 * 32 + 7 * 7 * 4 * 4 * 32
    force_plan(monkeypatch, forward="columns")
    assert layer.scratch_per_sample() == 0


def test_the_plan_goes_wide_at_stride_1_where_the_columns_outgrow_a_chunk():
    """As measured: net4's 16->16 at 28x28 and net3's 16->32 at 14x14 on a part of 64
    samples go wide, dx too; a first convolution, a stride of 2 and a layer whose columns
    fit one chunk (kept for dW) stay on im2col."""
    plan = kernels.conv_plan
    assert plan(64, (16, 16, 3, 3), (1, 1), (28, 28), 4) == ("wide", "wide", False)
    assert plan(64, (32, 16, 3, 3), (1, 1), (14, 14), 4) == ("wide", "wide", False)
    assert plan(64, (16, 1, 3, 3), (1, 1), (28, 28), 4) == ("columns", "scatter", True)  # 1.8 MB: kept
    assert plan(64, (64, 32, 4, 4), (2, 2), (7, 7), 4).forward == "patches"
    assert plan(64, (16, 8, 3, 3), (1, 1), (14, 14), 4) == ("columns", "wide", True)  # net2's second: 3.6 MB
    assert plan(2, (16, 16, 3, 3), (1, 1), (28, 28), 4) == ("columns", "wide", True)  # a small part


POOL_CASES = [  # (kernel, stride, padding, input shape), for max-pool and average pool alike
    (2, None, 0, (3, 8, 8)),               # the usual 2x2
    (2, None, 0, (2, 7, 9)),               # odd sizes: the last row and column dropped
    (3, 2, 0, (2, 9, 9)),                  # overlapping windows
    (3, 2, 1, (3, 8, 7)),                  # overlapping and padded
    ([2, 3], [1, 2], [1, 1], (1, 6, 7)),   # non-square everything
    (2, 3, 0, (2, 9, 9)),                  # gaps between windows, the last one ending at the edge
    ([3, 1], [2, 3], [1, 0], (2, 7, 8)),   # gaps along W only, overlap along H only
    (1, 1, 0, (1, 3, 4)),                  # 1x1: the identity
]


@pytest.mark.parametrize("kernel,stride,padding,shape", POOL_CASES)
def test_fast_avgpool_matches_the_reference(kernel, stride, padding, shape, rng):
    """Every max-pool case, averaged: overlapping windows add up in dx, inputs no window
    reads get exactly zero, padding counts as zeros."""
    fast, ref = twins("avgpool", dict(kernel=kernel, stride=stride, padding=padding), shape, rng)
    for n in (1, 3):
        assert_same_layer(fast, ref, rng.standard_normal((n,) + shape), rng)


@pytest.mark.parametrize("kind", ["leaky_relu", "tanh", "sigmoid"])
def test_activations_hold_at_large_inputs_in_float32(kind, rng):
    """Where exp overflows float32 (|x| ~ 100), the activations and their gradients stay
    finite and equal the reference's in float64."""
    fast, ref = twins(kind, {}, (4,), rng)
    x = np.array([[-1000.0, -100.0, 0.0, 100.0], [-30.0, -1e-3, 1e-3, 1000.0]])
    y = fast.forward(x.astype(np.float32))
    dx = fast.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32 and np.isfinite(y).all() and np.isfinite(dx).all()
    np.testing.assert_allclose(y, ref.forward(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, ref.backward(np.ones_like(x)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel,stride,padding,shape", POOL_CASES)
def test_fast_maxpool_matches_the_reference_with_ties(kernel, stride, padding, shape, rng):
    """Inputs of 0, 1 and 2 only: most windows hold tied maxima, and each window's gradient
    must go to its first maximum in row-major order in both engines; inputs no window
    reads (gaps, cropped edges) get exactly zero."""
    fast, ref = twins("maxpool", dict(kernel=kernel, stride=stride, padding=padding), shape, rng)
    x = rng.integers(0, 3, (3,) + shape).astype(np.float64)
    for _ in range(2):  # twice: a stale buffer from the first call must not leak into the second
        assert_same_layer(fast, ref, x, rng)
    dy = rng.standard_normal(ref.forward(x).shape)
    fast.forward(x)
    if fast.stride == fast.kernel:  # one window per input: a copy or an exact zero, never a sum
        np.testing.assert_array_equal(fast.backward(dy), ref.backward(dy))


def test_the_reference_maxpool_sends_a_tie_to_the_first_maximum_only():
    y, first = reference.maxpool_forward(np.array([[[[0.0, 0.0, 1.0, 5.0],
                                                     [0.0, 0.0, 5.0, 2.0]]]]), (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(y, [[[[0.0, 5.0]]]])
    dx = reference.maxpool_backward(np.array([[[[3.0, 7.0]]]]), first, (2, 4), (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(dx, [[[[3.0, 0.0, 0.0, 7.0],
                                          [0.0, 0.0, 0.0, 0.0]]]])


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 5), (2, 7, 4), (16, 28, 28)])
def test_fast_instance_norm_matches_the_reference(affine, shape, rng):
    fast, ref = twins("instance_norm", dict(affine=affine), shape, rng)
    assert_same_layer(fast, ref, rng.standard_normal((3,) + shape) * 5 + 2, rng)


@pytest.mark.parametrize("kind,kwargs,shape", [
    ("dense", dict(units=7), (11,)),
    ("dense", dict(units=3, bias=False), (5,)),
    ("relu", {}, (3, 4, 5)),
    ("normalize", dict(mean=0.1307, std=0.3081), (1, 5, 4)),
    ("flatten", {}, (3, 4, 5)),
    ("reshape", dict(shape=[6, 10]), (3, 4, 5)),
    ("softmax", {}, (10,)),
    ("leaky_relu", dict(slope=0.1), (3, 4, 5)),
    ("leaky_relu", dict(slope=-0.5), (7,)),
    ("tanh", {}, (3, 4, 5)),
    ("sigmoid", {}, (3, 4, 5)),
    ("global_avgpool", {}, (3, 5, 7)),
    ("global_avgpool", {}, (1, 1, 1)),
])
def test_fast_simple_layers_match_the_reference(kind, kwargs, shape, rng):
    fast, ref = twins(kind, kwargs, shape, rng)
    x = rng.standard_normal((3,) + shape)
    if kind == "relu":
        x[0, 0] = 0.0  # the kink: both engines pass no gradient at exactly 0
    assert_same_layer(fast, ref, x, rng)


@pytest.mark.parametrize("kind,kwargs,shape", [
    ("conv", dict(filters=3, kernel=3, stride=2, padding=1), (2, 7, 6)),
    ("conv", dict(filters=2, kernel=[2, 3], stride=[1, 2], padding=[1, 0]), (3, 5, 7)),
    ("maxpool", dict(kernel=3, stride=2, padding=1), (2, 7, 8)),
    ("instance_norm", {}, (3, 5, 4)),
    ("dense", dict(units=4), (6,)),
    ("relu", {}, (2, 3, 3)),
    ("softmax", {}, (5,)),
])
def test_the_reference_layers_pass_finite_differences(kind, kwargs, shape, rng):
    _, ref = twins(kind, kwargs, shape, rng)
    rows = check_layer(ref, rng.standard_normal((2,) + shape), rng, samples=30)
    assert {name for name, _ in rows} == set(ref.params) | {"dx"}
    for name, error in rows:
        assert error < TOLERANCE, f"{kind} {name}: relative error {error:.2e}"


def test_the_reference_loss_matches_the_fused_one(rng):
    z, y = rng.standard_normal((6, 10)) * 4, losses.one_hot(rng.integers(0, 10, 6), 10, np.float64)
    loss_ref, dz_ref = reference.softmax_cross_entropy(z, y)
    loss, dz = losses.softmax_cross_entropy(z, y)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    np.testing.assert_allclose(dz, dz_ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("path", sorted(glob.glob("configs/net*.yaml")) + ["configs/small-adv.yaml"])
def test_every_shipped_network_gives_the_same_loss_and_gradients_on_both_engines(path, rng):
    cfg = load_config(path)
    fast = build_network(cfg, dtype=np.float64, batch_size=4)
    ref = build_network(cfg, dtype=np.float64, batch_size=4, engine="reference")
    assert ref.engine == "reference" and isinstance(ref.layers[0], tuple(reference.LAYERS.values()))
    for a, b in zip(fast.named_parameters().values(), ref.named_parameters().values()):
        np.testing.assert_array_equal(a, b)  # same seed, same initial weights
    x = rng.random((4,) + fast.input_shape)
    y = losses.one_hot(rng.integers(0, 10, 4), 10, np.float64)
    loss_fast, logits_fast, dx_fast = fast.loss_and_backward(x, y, need_input_grad=True)
    loss_ref, logits_ref, dx_ref = ref.loss_and_backward(x, y, need_input_grad=True)
    assert loss_fast == pytest.approx(loss_ref, rel=1e-10)
    np.testing.assert_allclose(logits_fast, logits_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dx_fast, dx_ref, rtol=1e-8, atol=1e-12)
    for name, g in fast.named_gradients().items():
        np.testing.assert_allclose(g, ref.named_gradients()[name], rtol=1e-8, atol=1e-12, err_msg=name)


def test_training_on_the_reference_engine_follows_the_fast_one(rng):
    """Three SGD steps in float32 on each engine from the same seed: the same weights to
    float32 tolerance."""
    from cnnrun.nn import SGD
    specs = [("conv", dict(filters=4, kernel=3, padding=1)), ("instance_norm", {}), ("maxpool", dict(kernel=2)),
             ("relu", {}), ("flatten", {}), ("dense", dict(units=10)), ("softmax", {})]
    x = rng.random((16, 1, 8, 8)).astype(np.float32)
    y = losses.one_hot(rng.integers(0, 10, 16), 10)
    nets = [Network(specs, (1, 8, 8), seed=3, engine=e) for e in ("fast", "reference")]
    for net in nets:
        opt = SGD(lr=0.1)
        for _ in range(3):
            net.loss_and_backward(x, y)
            opt.step(net.param_grad_pairs())
    for name, p in nets[0].named_parameters().items():
        np.testing.assert_allclose(p, nets[1].named_parameters()[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_an_unknown_engine_is_a_clear_error():
    from cnnrun.errors import CnnrunError
    with pytest.raises(CnnrunError, match="engine 'slow': expected one of fast, reference"):
        Network([("flatten", {}), ("dense", dict(units=2)), ("softmax", {})], (1, 2, 2), engine="slow")


@pytest.mark.slow
def test_the_reference_engine_runs_every_verb_that_offers_it(setup):
    """train, eval, gradcheck and bench with --engine reference: the run trains to the
    fast engine's figures (float32 tolerance), and the other verbs work on it."""
    import json
    import os

    from cnnrun import runs
    from helpers import cli

    for engine in ("fast", "reference"):
        result = cli(setup, "train", setup["config"], "--data-dir", setup["data"], "--quiet", "--engine", engine)
        assert result.exit_code == 0, result.output
    fast_run, ref_run = runs.list_runs(setup["runs"])
    assert [runs.read_json(os.path.join(r, "summary.json"))["engine"] for r in (fast_run, ref_run)] == ["fast", "reference"]
    fast_rows, ref_rows = runs.read_metrics(fast_run), runs.read_metrics(ref_run)
    for a, b in zip(fast_rows, ref_rows):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1 / 64 + 1e-9)  # one image of 64 at most
    evals = [json.loads(cli(setup, "eval", fast_run, "--data-dir", setup["data"], "--json", "--engine", e).output)
             for e in ("fast", "reference")]
    assert evals[0]["loss"] == pytest.approx(evals[1]["loss"], rel=1e-5)
    from click.testing import CliRunner

    from cnnrun.cli import main
    result = CliRunner().invoke(main, ["gradcheck", setup["config"], "--engine", "reference"])
    assert result.exit_code == 0 and "checks pass" in result.output, result.output
    result = CliRunner().invoke(main, ["bench", setup["config"], "--engine", "reference", "--repeats", "1",
                                       "--warmup", "0", "--json"])
    out = json.loads(result.output)
    assert out["engine"] == "reference" and out["fast"]["train_samples_per_s"] > 0


# The kernels each shipped config's convolutions run in training (a part of its batch:
# 64 samples, 50 for robust-*'s and small-adv's 100). A change here is a change of plan:
# it needs its measurement in docs/performance.md.
SHIPPED_PLANS = {
    "certified-ibp": {"0.conv": ("columns", "scatter", True), "2.conv": ("wide", "wide", False)},
    "certified-ibp-01": {"0.conv": ("columns", "scatter", True), "2.conv": ("patches", "patches", True)},
    "certified-ibp-03": {"0.conv": ("columns", "scatter", True), "2.conv": ("patches", "patches", True)},
    "fashion": {"1.conv": ("columns", "scatter", True), "4.conv": ("wide", "wide", False),
                "8.conv": ("wide", "wide", False), "11.conv": ("wide", "wide", False)},
    "fast-fgsm": {"0.conv": ("columns", "scatter", True), "2.conv": ("patches", "scatter_batch_last", True)},
    "net1": {"1.conv": ("columns", "scatter", True)},
    "net2": {"0.conv": ("columns", "scatter", True), "4.conv": ("columns", "wide", True)},
    "net2-bn": {"0.conv": ("columns", "scatter", True), "4.conv": ("columns", "wide", True)},
    "net3": {"0.conv": ("columns", "scatter", True), "4.conv": ("wide", "wide", False)},
    "net4": {"0.conv": ("columns", "scatter", True), "3.conv": ("wide", "wide", False),
             "7.conv": ("wide", "wide", False), "10.conv": ("wide", "wide", False)},
    "resnet": {"1.conv": ("columns", "scatter", True),
               "4.residual.body.0.conv": ("wide", "wide", False), "4.residual.body.3.conv": ("wide", "wide", False),
               "6.residual.body.0.conv": ("columns", "scatter_batch_last", False),
               "6.residual.body.3.conv": ("wide", "wide", False),
               "6.residual.shortcut.0.conv": ("columns", "scatter_batch_last", True),
               "8.residual.body.0.conv": ("patches", "patches", True),
               "8.residual.body.3.conv": ("wide", "wide", False),
               "8.residual.shortcut.0.conv": ("patches", "patches", True)},
    "robust-pgd": {"0.conv": ("columns", "scatter", True), "2.conv": ("patches", "patches", True)},
    "robust-pgd-cosine": {"0.conv": ("columns", "scatter", True), "2.conv": ("patches", "patches", True)},
    "robust-trades": {"0.conv": ("columns", "scatter", True), "2.conv": ("patches", "patches", True)},
    "small-adv": {"0.conv": ("columns", "scatter", True), "2.conv": ("patches", "scatter_batch_last", True)},
    "smallcnn": {"0.conv": ("columns", "scatter", True), "2.conv": ("wide", "wide", False),
                 "5.conv": ("wide", "wide", False), "7.conv": ("wide", "wide", False)},
}


@pytest.mark.parametrize("name", sorted(SHIPPED_PLANS))
def test_each_shipped_configs_convolutions_run_the_planned_kernels(name):
    from cnnrun.config import build_network, load_config, shipped_configs
    assert set(SHIPPED_PLANS) == set(shipped_configs()) - {"study"}
    cfg = load_config(name)
    net = build_network(cfg)
    batch = cfg["train"]["batch_size"]
    assert {i: tuple(plan) for i, plan in net.conv_plans(batch).items()} == SHIPPED_PLANS[name]
    net.forward(np.zeros((batch,) + net.input_shape, net.dtype))  # what a forward of a batch's part took
    part = dict(net.named_layers(net.replicas[0]))
    taken = {i: tuple(part[i].plan) for i in SHIPPED_PLANS[name]}
    assert taken == SHIPPED_PLANS[name]
