"""A network as an ONNX model: every cnnrun layer as the standard ONNX operator.

    normalize      Sub, Div                   conv       Conv (pads, strides, optional bias)
    maxpool        MaxPool (padding is -inf)  instance_norm  InstanceNormalization
    flatten        Flatten (axis 1)           reshape    Reshape (batch kept)
    dense          Gemm, or MatMul without bias
    relu           Relu                       softmax    Softmax (axis 1)
    batch_norm     BatchNormalization (its running statistics: the model evaluates)
    residual       its layers' nodes, then Add of the two branches

The model takes `image`, float32 `(N, C, H, W)` in [0, 1] with a dynamic batch
axis N, and gives `probabilities` `(N, K)` and `logits` `(N, K)`.
"""

import numpy as np

from cnnrun import __version__
from cnnrun.errors import CnnrunError

OPSET = 17
INSTALL_HINT = "cnnrun export needs onnx and onnxruntime: pip install -e '.[onnx]'"


def require_onnx():
    """Import onnx and onnxruntime, or say in one line how to install them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CnnrunError(INSTALL_HINT) from None


def _nodes(index, layer, x, constant):
    """ONNX nodes computing `layer` on the tensor named `x` (by its kind's entry in NODES);
    returns `(nodes, output name)`. `constant(name, array)` registers an initializer and
    returns its name."""
    if layer.kind not in NODES:
        raise CnnrunError(f"layer {index} ({layer.kind}): has no ONNX export")
    name = f"{index}.{layer.kind}"
    return NODES[layer.kind](layer, name, x, f"{name}.out", constant), f"{name}.out"


def _node(*args, **kwargs):
    from onnx import helper

    return helper.make_node(*args, **kwargs)


def _pads(layer):
    (ph, pw) = layer.padding
    return [ph, pw, ph, pw]


def _normalize(layer, name, x, out, constant):
    mean = constant(f"{name}.mean", np.array(layer.mean, np.float32))
    std = constant(f"{name}.std", np.array(layer.std, np.float32))
    return [_node("Sub", [x, mean], [f"{name}.centred"]), _node("Div", [f"{name}.centred", std], [out])]


def _conv(layer, name, x, out, constant):
    p = layer.params
    inputs = [x, constant(f"{name}.W", p["W"])] + ([constant(f"{name}.b", p["b"])] if layer.bias else [])
    return [_node("Conv", inputs, [out], kernel_shape=list(layer.kernel), strides=list(layer.stride),
                  pads=_pads(layer))]


def _instance_norm(layer, name, x, out, constant):
    c, p = layer.in_shape[0], layer.params
    gamma = p["gamma"] if layer.affine else np.ones(c, np.float32)
    beta = p["beta"] if layer.affine else np.zeros(c, np.float32)
    return [_node("InstanceNormalization", [x, constant(f"{name}.gamma", gamma), constant(f"{name}.beta", beta)],
                  [out], epsilon=float(layer.eps))]


def _reshape(layer, name, x, out, constant):
    shape = constant(f"{name}.shape", np.array((0,) + layer.shape, np.int64))  # 0: keep the batch axis
    return [_node("Reshape", [x, shape], [out])]


def _dense(layer, name, x, out, constant):
    W = constant(f"{name}.W", layer.params["W"])
    if layer.bias:
        return [_node("Gemm", [x, W, constant(f"{name}.b", layer.params["b"])], [out])]
    return [_node("MatMul", [x, W], [out])]


def _batch_norm(layer, name, x, out, constant):
    c, p, b = layer.in_shape[0], layer.params, layer.buffers
    gamma = p["gamma"] if layer.affine else np.ones(c, np.float32)
    beta = p["beta"] if layer.affine else np.zeros(c, np.float32)
    inputs = [x, constant(f"{name}.gamma", gamma), constant(f"{name}.beta", beta),
              constant(f"{name}.running_mean", b["running_mean"]), constant(f"{name}.running_var", b["running_var"])]
    return [_node("BatchNormalization", inputs, [out], epsilon=float(layer.eps))]


def _residual(layer, name, x, out, constant):
    ends, nodes = [], []
    for branch in ("body", "shortcut"):
        h = x
        for j, sublayer in enumerate(getattr(layer, branch)):
            sub_name = f"{name}.{branch}.{j}.{sublayer.kind}"
            nodes += NODES[sublayer.kind](sublayer, sub_name, h, f"{sub_name}.out", constant)
            h = f"{sub_name}.out"
        ends.append(h)  # the identity shortcut: x itself
    return nodes + [_node("Add", ends, [out])]


# Layer kind -> `(layer, node name, input name, output name, constant) -> [nodes]`: the
# ONNX export of every layer in cnnrun.nn.network.LAYERS but softmax (added at the end).
NODES = {
    "normalize": _normalize,
    "conv": _conv,
    "maxpool": lambda layer, name, x, out, constant: [
        _node("MaxPool", [x], [out], kernel_shape=list(layer.kernel), strides=list(layer.stride),
              pads=_pads(layer))],
    "instance_norm": _instance_norm,
    "flatten": lambda layer, name, x, out, constant: [_node("Flatten", [x], [out], axis=1)],
    "reshape": _reshape,
    "dense": _dense,
    "relu": lambda layer, name, x, out, constant: [_node("Relu", [x], [out])],
    "avgpool": lambda layer, name, x, out, constant: [
        _node("AveragePool", [x], [out], kernel_shape=list(layer.kernel), strides=list(layer.stride),
              pads=_pads(layer), count_include_pad=1)],
    "global_avgpool": lambda layer, name, x, out, constant: [
        _node("GlobalAveragePool", [x], [f"{name}.pooled"]), _node("Flatten", [f"{name}.pooled"], [out], axis=1)],
    "leaky_relu": lambda layer, name, x, out, constant: [_node("LeakyRelu", [x], [out], alpha=float(layer.slope))],
    "tanh": lambda layer, name, x, out, constant: [_node("Tanh", [x], [out])],
    "sigmoid": lambda layer, name, x, out, constant: [_node("Sigmoid", [x], [out])],
    "dropout": lambda layer, name, x, out, constant: [_node("Identity", [x], [out])],  # the exported model evaluates
    "batch_norm": _batch_norm,
    "residual": _residual,
}


def to_onnx(net, metadata=None):
    """The network as an `onnx.ModelProto` (opset 17), weights as float32 initializers."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = []

    def constant(name, array):
        array = np.asarray(array)
        array = array.astype(np.float32) if array.dtype.kind == "f" else array
        initializers.append(numpy_helper.from_array(array, name))
        return name

    nodes, x = [], "image"
    for index, layer in enumerate(net.layers[:-1]):
        layer_nodes, x = _nodes(index, layer, x, constant)
        nodes += layer_nodes
    nodes.append(helper.make_node("Identity", [x], ["logits"]))
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=1))
    k = net.output_shape[0]
    graph = helper.make_graph(
        nodes, "cnnrun", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *net.input_shape])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", k]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])], initializers)
    model = helper.make_model(graph, producer_name="cnnrun", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 9)  # readable by onnxruntime releases of the last years
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    return model


def run_onnx(model, x):
    """`(probabilities, logits)` of an ONNX model on `x` `(N, C, H, W)` by onnxruntime."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    runtime = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return tuple(runtime.run(["probabilities", "logits"], {"image": np.asarray(x, np.float32)}))


def export(net, x_check, metadata=None, tolerance=1e-5):
    """The checked model's bytes: `onnx.checker` passes, and onnxruntime's probabilities on
    `x_check` agree with `net.forward` within `tolerance`, with the same predictions."""
    import onnx

    model = to_onnx(net, metadata)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise CnnrunError(f"the exported model does not pass onnx.checker: {str(e).splitlines()[0]}") from None
    ours = net.forward(x_check)
    theirs, _ = run_onnx(model, x_check)
    difference = float(np.abs(ours - theirs).max())
    if not difference <= tolerance or not np.array_equal(ours.argmax(1), theirs.argmax(1)):  # NaN fails too
        raise CnnrunError(f"onnxruntime disagrees with cnnrun on {len(x_check)} test images "
                          f"(largest probability difference {difference:.2e}); the model was not written")
    return model.SerializeToString(), difference
