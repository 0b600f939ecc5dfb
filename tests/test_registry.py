"""One place to add a layer: every kind in `cnnrun.nn.network.LAYERS` has a reference
twin, a PyTorch twin, an ONNX export, a finite-difference check and a parallel-parts
check. A new layer without an example below fails here first."""

import numpy as np
import pytest
import torch

from cnnrun import export, torch_twin
from cnnrun.nn import Network, reference
from cnnrun.nn.gradcheck import TOLERANCE, check_layer
from cnnrun.nn.layers import walk
from cnnrun.nn.network import LAYERS

# Each kind with the arguments and input shape (odd sizes) its checks build it with;
# softmax ends every network (its backward is fused into the loss).
EXAMPLES = {
    "normalize": ({"mean": 0.2, "std": 0.5}, (2, 5, 7)),
    "conv": ({"filters": 3, "kernel": 3, "stride": 2, "padding": 1}, (2, 7, 9)),
    "maxpool": ({"kernel": 3, "stride": 2, "padding": 1}, (2, 7, 9)),
    "instance_norm": ({}, (2, 5, 7)),
    "flatten": ({}, (2, 3, 5)),
    "reshape": ({"shape": [5, 6]}, (2, 3, 5)),
    "dense": ({"units": 4}, (7,)),
    "relu": ({}, (2, 5, 7)),
    "leaky_relu": ({"slope": 0.2}, (2, 5, 7)),
    "tanh": ({}, (2, 5, 7)),
    "sigmoid": ({}, (2, 5, 7)),
    "avgpool": ({"kernel": 3, "stride": 2, "padding": 1}, (2, 7, 9)),
    "global_avgpool": ({}, (3, 5, 7)),
    "dropout": ({"rate": 0.3}, (2, 5, 7)),
    "batch_norm": ({"momentum": 0.2}, (2, 5, 7)),
    "residual": ({"layers": [{"conv": {"filters": 3, "kernel": 3, "stride": 2, "padding": 1}}, {"batch_norm": {}},
                             "relu", {"conv": {"filters": 3, "kernel": 3, "padding": 1}}],
                  "shortcut": [{"conv": {"filters": 3, "kernel": 1, "stride": 2}}, {"batch_norm": {}}]}, (2, 7, 9)),
    "softmax": ({}, (6,)),
}
# The ONNX operators some kinds must export to.
OPERATORS = {"batch_norm": {"BatchNormalization"}, "residual": {"Add", "Conv", "BatchNormalization", "Relu"},
             "avgpool": {"AveragePool"}, "global_avgpool": {"GlobalAveragePool"}}
# Kinds whose training mode differs from evaluation in a way finite differences can follow
# (batch statistics; dropout's masks are drawn anew at every call, and are checked in test_modes.py).
TRAINING_DIFFERS = ["batch_norm", "residual"]


def test_every_layer_kind_has_an_example_a_reference_a_twin_and_an_onnx_export():
    kinds = set(LAYERS)
    assert set(EXAMPLES) == kinds, "add the new layer's example here (and its checks follow)"
    assert set(reference.LAYERS) == kinds
    assert set(torch_twin.TWINS) == kinds - {"softmax"}
    assert set(export.NODES) == kinds - {"softmax"}
    for kind, (kwargs, shape) in EXAMPLES.items():  # the twin knows the names of its parameters
        layer = LAYERS[kind](**kwargs)
        layer.build(shape)
        if not layer.sublayers():  # (a block's parameters are its layers')
            assert set(layer.param_shapes()) == set(torch_twin.PARAMETERS.get(kind, {})), kind


def network_around(kind, dtype=np.float64, threads=None):
    """`kind` (its example) followed by flatten, a dense layer of 3 and softmax."""
    kwargs, shape = EXAMPLES[kind]
    specs = [(kind, kwargs)] + ([] if kind == "softmax" else [("flatten", {}), ("dense", {"units": 3}),
                                                               ("softmax", {})])
    if kind == "softmax":
        specs = [("dense", {"units": 3}), ("softmax", {})]
    return Network(specs, shape, seed=1, dtype=dtype, threads=threads)


@pytest.mark.parametrize("kind, training", [(kind, False) for kind in sorted(set(EXAMPLES) - {"softmax"})]
                         + [(kind, True) for kind in TRAINING_DIFFERS])
def test_every_layers_backward_passes_the_finite_difference_check(kind, training, rng):
    kwargs, shape = EXAMPLES[kind]
    layer = LAYERS[kind](**kwargs)
    layer.build(shape)
    layer.init_params(rng, np.float64)
    for p in list(layer.params.values()) + list(layer.buffers.values()):
        p += rng.standard_normal(p.shape) * 0.1
    for each in walk([layer]):
        each.training = training
    rows = check_layer(layer, rng.standard_normal((3,) + shape), rng, 30)
    assert any(name == "dx" for name, _ in rows) and set(layer.params) <= {name for name, _ in rows}
    for name, error in rows:
        assert error < TOLERANCE, f"{kind} {name}: relative error {error:.2e}"


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_layer_gives_the_same_numbers_in_training_on_one_thread_or_two(kind, rng):
    """In training mode (dropout drawing its masks), a batch of 130 in three parts: the same
    loss and gradients on 1 thread and on 2, twice in a row from the same noise."""
    x = rng.standard_normal((130,) + EXAMPLES[kind][1] if kind != "softmax" else (130, 6))
    y = np.eye(3)[rng.integers(0, 3, 130)]
    results = []
    for threads in (1, 2):
        net = network_around(kind, threads=threads).train(np.random.default_rng(9))
        loss, _, dx = net.loss_and_backward(x, y, need_input_grad=True)
        results.append((loss, dx, net.named_gradients()))
    (loss_1, dx_1, g_1), (loss_2, dx_2, g_2) = results
    assert loss_1 == loss_2
    np.testing.assert_array_equal(dx_1, dx_2)
    for name in g_1:
        np.testing.assert_array_equal(g_1[name], g_2[name], err_msg=name)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_layer_gives_the_same_numbers_in_parts_on_two_threads_as_whole_on_one(kind, rng):
    """A batch of 130 runs in three parts (64 is the most a part holds); laid through the
    layers whole, by hand, it gives the same logits, loss and gradients."""
    net = network_around(kind, threads=2)
    x = rng.standard_normal((130,) + net.input_shape)
    y = np.eye(3)[rng.integers(0, 3, 130)]
    loss, _, dx = net.loss_and_backward(x, y, need_input_grad=True)
    assert len(net.parts) == 3
    h = x
    for layer in net.layers[:-1]:
        h = layer.replica().forward(h)
    np.testing.assert_allclose(net.logits(x), h, rtol=1e-12, atol=1e-12)
    whole = network_around(kind, threads=1)
    loss_1, _, dx_1 = whole.loss_and_backward(x, y, need_input_grad=True)
    assert loss == pytest.approx(loss_1, rel=1e-12)
    np.testing.assert_allclose(dx, dx_1, rtol=1e-10, atol=1e-12)
    for (name, g), g_1 in zip(net.named_gradients().items(), whole.named_gradients().values()):
        np.testing.assert_allclose(g, g_1, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind", sorted(set(EXAMPLES) - {"softmax"}))
def test_every_layers_twin_and_onnx_export_compute_what_it_computes(kind, rng):
    net = network_around(kind, dtype=np.float32)
    x = rng.random((5,) + net.input_shape, dtype=np.float32)
    logits = net.logits(x)
    model = torch_twin.twin(net).eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), logits, rtol=1e-5, atol=1e-5)
    onnx_model = export.to_onnx(net)
    probabilities, onnx_logits = export.run_onnx(onnx_model, x)
    np.testing.assert_allclose(onnx_logits, logits, rtol=1e-5, atol=1e-5)
    operators = {node.op_type for node in onnx_model.graph.node}
    assert "Dropout" not in operators  # the exported model evaluates
    assert OPERATORS.get(kind, set()) <= operators, operators
