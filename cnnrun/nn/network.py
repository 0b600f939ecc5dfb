"""A network: a plain sequence of layers, built for one input shape."""

import io

import numpy as np

from cnnrun.errors import CnnrunError
from cnnrun.fileio import write_atomic
from cnnrun.nn.layers import (
    Conv2D, Dense, Flatten, InstanceNorm, MaxPool2D, Normalize, ReLU, Reshape, Softmax,
)
from cnnrun.nn.losses import softmax_cross_entropy

# Config name -> layer class. A config layer `conv: {filters: 8, kernel: 3}` is `Conv2D(filters=8, kernel=3)`.
LAYERS = {cls.kind: cls for cls in (
    Normalize, Conv2D, MaxPool2D, InstanceNorm, Flatten, Reshape, Dense, ReLU, Softmax)}


class Network:
    """Layers applied in order to `(N, *input_shape)` batches; ends with softmax.

    `layer_specs` is a list of `(kind, kwargs)`, e.g. `("conv", {"filters": 8, "kernel": 3})`.
    Each layer's output shape is inferred at build time; a layer that does not
    fit its input fails here with its index, type and the shapes involved.
    """

    def __init__(self, layer_specs, input_shape, seed=0, dtype=np.float32):
        self.input_shape, self.dtype = tuple(input_shape), np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.layers, self.shapes = [], [self.input_shape]
        for index, (kind, kwargs) in enumerate(layer_specs):
            if kind not in LAYERS:
                raise CnnrunError(f"layer {index} ({kind}): unknown layer; known: {', '.join(LAYERS)}")
            try:
                layer = LAYERS[kind](**kwargs)
                shape = layer.build(self.shapes[-1], rng, self.dtype)
            except (TypeError, CnnrunError) as e:  # a wrong argument, or shapes that do not fit
                raise CnnrunError(f"layer {index} ({kind}): {e}") from None
            if min(shape, default=1) < 1:
                raise CnnrunError(f"layer {index} ({kind}): input shape {self.shapes[-1]} "
                                  f"gives an empty output {shape}")
            self.layers.append(layer)
            self.shapes.append(tuple(shape))
        if not self.layers or not isinstance(self.layers[-1], Softmax):
            raise CnnrunError("the last layer must be softmax (the loss is categorical cross-entropy)")

    @property
    def output_shape(self):
        return self.shapes[-1]

    # --- parameters -------------------------------------------------------

    def named_parameters(self):
        """`{"0.conv.W": array, ...}`: every parameter by qualified name (the arrays themselves)."""
        return {f"{i}.{layer.kind}.{name}": p
                for i, layer in enumerate(self.layers) for name, p in layer.params.items()}

    def param_grad_pairs(self):
        """`[(param, grad), ...]` after a backward pass, for the optimizer."""
        return [(layer.params[name], layer.grads[name])
                for layer in self.layers for name in layer.params]

    def num_parameters(self):
        return sum(p.size for p in self.named_parameters().values())

    # --- passes -----------------------------------------------------------

    def logits(self, x):
        """Scores before the final softmax: `(N, *input_shape)` -> `(N, K)`."""
        x = np.asarray(x, self.dtype)
        for layer in self.layers[:-1]:
            x = layer.forward(x)
        return x

    def forward(self, x):
        """Class probabilities `(N, K)`."""
        return self.layers[-1].forward(self.logits(x))

    def backward(self, dlogits, need_input_grad=True, need_param_grads=True):
        """Back-propagate the loss gradient on the logits through every layer but
        the softmax (fused into the loss); fills each layer's `grads` if `need_param_grads`.
        Returns the gradient on the input `(N, *input_shape)`, or None if not needed."""
        grad = dlogits
        for index in range(len(self.layers) - 2, -1, -1):
            grad = self.layers[index].backward(grad, need_dx=need_input_grad or index > 0,
                                               need_grads=need_param_grads)
        return grad

    def loss_and_backward(self, x, y, need_input_grad=False, need_param_grads=True):
        """Forward, loss against one-hot `y` `(N, K)`, backward.

        Returns `(loss, logits, input_grad)`; `input_grad` is None unless asked for.
        """
        logits = self.logits(x)
        loss, dlogits = softmax_cross_entropy(logits, np.asarray(y, self.dtype))
        return loss, logits, self.backward(dlogits, need_input_grad, need_param_grads)

    # --- weights on disk --------------------------------------------------

    def save(self, path, extra=None):
        """Write every parameter to `.npz` under its qualified name, atomically
        (temporary file + rename): a kill never leaves a broken file."""
        arrays = dict(self.named_parameters())
        arrays.update(extra or {})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_atomic(path, buffer.getvalue())

    def load(self, path):
        """Read parameters saved by `save`; every name and shape must match this network."""
        try:
            with np.load(path, allow_pickle=False) as data:
                stored = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise CnnrunError(f"{path}: no such weights file") from None
        except Exception as e:
            raise CnnrunError(f"{path}: not a readable .npz weights file ({e})") from None
        params = self.named_parameters()
        problems = [f"{name} missing" for name in params if name not in stored]
        problems += [f"{name} is {stored[name].shape}, the config needs {p.shape}"
                     for name, p in params.items() if name in stored and stored[name].shape != p.shape]
        unexpected = [k for k in stored if k.split(".")[0].isdigit() and k not in params]
        problems += [f"{name} is not in the config" for name in unexpected]
        if problems:
            raise CnnrunError(f"{path}: weights do not fit the config: {'; '.join(problems)}")
        for name, p in params.items():
            p[...] = stored[name]
        return {k: v for k, v in stored.items() if k not in params}
