"""Layers with hand-written forward and backward passes.

Every layer works on a batch: images are `(N, C, H, W)`, flat vectors `(N, D)`.

A layer's life:
- `Layer(**args)`: the arguments a config gives it; `args` on the class says
  which they are and what values they take (the config validator reads it).
- `build(in_shape)`: checks that the layer fits its input shape (one sample,
  no N: `(C, H, W)` or `(D,)`), remembers it as `self.in_shape` and returns
  the output shape. Nothing is allocated yet.
- `init_params(rng, dtype)`: creates `self.params` (shapes from `param_shapes()`).
- `forward(x)` keeps in `self.cache` exactly what `backward` needs;
  `backward(dy)` fills `self.grads` (same keys as `self.params`) and returns
  the gradient with respect to the layer's input.
- `buffers`: state that is not learnt by gradient (batch norm's running
  statistics): saved with the weights, never touched by the optimizer.

A batch runs in parts, each through its own copy of the layers (parallel.py).
A layer whose output for one sample depends on the other samples of the batch
(batch norm in training) says so with `couples_batch`, and runs across all the
parts at once in `forward_parts` / `backward_parts` (sequence.py).

Each class here reads in a screen: the arithmetic of convolution and max-pool is
in kernels.py (the fast variants), and every layer's plain definition, the one
the tests hold these against, is in reference.py.
"""

import copy
import inspect
import math

import numpy as np

from cnnrun.errors import CnnrunError
from cnnrun.nn.kernels import (
    axis_offsets, conv_plan, correlate, correlate_patches, correlate_weight_grad, correlate_wide,
    correlate_wide_weight_grad, first_max, input_grad_patches, input_grad_scatter, input_grad_scatter_batch_last,
    input_grad_wide, out_size, pad_hw, pad_last, pad_wide, patches_weight_grad, route_to_first,
)
from cnnrun.nn import parallel, sequence
from cnnrun.nn.rules import (
    BOOL, INIT, LAYER_LIST, NUMBER, PADDING, POSITIVE_INT, POSITIVE_NUMBER, RATE, SHAPE, SHORTCUT, SIZE, UNIT, optional,
)


class Layer:
    """Base class: a layer with no parameters that passes shapes through."""

    kind = "layer"
    args = {}  # constructor argument -> rule (see rules.py), for the config validator
    training = False  # the network's mode (Network.train / eval), set on every part's copy
    stochastic = False  # draws random numbers in training: the network hands it `rng` for each part
    couples_batch = False  # needs the whole batch (all the parts) at once in this mode: sequence.py

    def __init__(self):
        self.params, self.grads, self.cache, self.buffers = {}, {}, None, {}

    def named_sublayers(self):
        """`[(name, layer), ...]`: the layers inside this one (a residual block's: `body.0.conv`,
        ...), in order; none for most."""
        return []

    def sublayers(self):
        return [layer for _, layer in self.named_sublayers()]

    def build(self, in_shape):
        """Check and remember the input shape `in_shape` (no N); return the output shape."""
        self.in_shape = tuple(in_shape)
        return self.in_shape

    def param_shapes(self):
        """`{name: shape}` of the parameters `init_params` will create (after `build`)."""
        return {}

    def init_params(self, rng, dtype):
        """Create `self.params` with their initial values (after `build`)."""

    def replica(self):
        """A copy sharing this layer's parameters, with a cache and gradients of its own
        (one part of a batch runs through it; see parallel.py)."""
        twin = copy.copy(self)
        twin.grads, twin.cache = {}, None
        return twin

    def scratch_per_sample(self):
        """Values per sample of the work buffers forward and backward use beyond
        their input and output (for the memory estimate)."""
        return 0

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, need_dx=True, need_grads=True):
        """dL/dy -> dL/dx (None unless `need_dx`); fills `grads` if `need_grads`
        (attacks need only dL/dx, and skip the parameter gradients)."""
        raise NotImplementedError

    def _fail(self, in_shape, why):
        raise CnnrunError(f"input shape {tuple(in_shape)}: {why}")


def _pair(v):
    """An int or a pair `[h, w]` -> a tuple `(h, w)`."""
    return (v, v) if isinstance(v, int) else tuple(v)


def init_weights(rng, shape, fan_in, fan_out, scheme):
    """Random weights of `shape`: "he" (normal, variance 2 / fan_in: keeps the activation
    variance through ReLUs, He et al. 2015) or "glorot" (uniform, variance 2 / (fan_in + fan_out))."""
    if scheme == "he":
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    if scheme == "glorot":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)
    raise CnnrunError(f"init {scheme!r}: expected 'he' or 'glorot'")



class Normalize(Layer):
    """Fixed standardisation (x - mean) / std, no parameters: inputs stay in pixel units
    for users and attacks while the first layer sees zero-mean, unit-variance values."""

    kind = "normalize"
    args = {"mean": NUMBER, "std": POSITIVE_NUMBER}

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy / self.std if need_dx else None


class Conv2D(Layer):
    """2-D convolution (cross-correlation): `(N, C, H, W)` -> `(N, F, Ho, Wo)`.

    Weights `W` are `(F, C, kh, kw)`, bias `b` is `(F,)`; the initial weights are
    `init_gain` times the `init` scheme's.
    """

    kind = "conv"
    args = {"filters": POSITIVE_INT, "kernel": SIZE, "stride": SIZE, "padding": PADDING, "bias": BOOL,
            "init": INIT, "init_gain": POSITIVE_NUMBER}

    def __init__(self, filters, kernel, stride=1, padding=0, bias=True, init="he", init_gain=1.0):
        super().__init__()
        self.filters, self.bias, self.init, self.init_gain = filters, bias, init, init_gain
        self.kernel, self.stride, self.padding = _pair(kernel), _pair(stride), _pair(padding)
        self.plan = None  # the kernels of the last forward: kernels.conv_plan's choice for its shape

    def build(self, in_shape):
        if len(in_shape) != 3:
            self._fail(in_shape, "expects images (C, H, W)")
        c, h, w = in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        if kh > h + 2 * ph or kw > w + 2 * pw:
            self._fail(in_shape, f"kernel {kh}x{kw} is larger than the padded input "
                                 f"{h + 2 * ph}x{w + 2 * pw}")
        self.in_shape = tuple(in_shape)
        self.out_hw = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
        return (self.filters,) + self.out_hw

    def param_shapes(self):
        c, (kh, kw) = self.in_shape[0], self.kernel
        shapes = {"W": (self.filters, c, kh, kw)}
        if self.bias:
            shapes["b"] = (self.filters,)
        return shapes

    def init_params(self, rng, dtype):
        f, c, kh, kw = self.param_shapes()["W"]
        W = init_weights(rng, (f, c, kh, kw), c * kh * kw, f * kh * kw, self.init)
        self.params["W"] = (self.init_gain * W).astype(dtype)
        if self.bias:
            self.params["b"] = np.zeros(f, dtype)

    def scratch_per_sample(self):
        """The channels-last input and patches when the layer takes them (kept for dW);
        otherwise 0: im2col's columns are made chunk by chunk, in CHUNK_BYTES."""
        (c, h, w), (kh, kw), (ph, pw), (ho, wo) = self.in_shape, self.kernel, self.padding, self.out_hw
        if self.plan_for(1).forward != "patches":
            return 0
        return (h + 2 * ph) * (w + 2 * pw) * c + ho * wo * kh * kw * c

    def plan_for(self, n, itemsize=4):
        """The kernels (`kernels.ConvPlan`) this layer runs on a part of `n` samples."""
        c, (kh, kw) = self.in_shape[0], self.kernel
        return conv_plan(n, (self.filters, c, kh, kw), self.stride, self.out_hw, itemsize)

    def forward(self, x):
        """`(N, C, H, W)` -> `(N, F, Ho, Wo)`, by the kernels `kernels.conv_plan` picks for the
        shape and the part size, kept as `self.plan`."""
        W, (ho, wo) = self.params["W"], self.out_hw
        self.plan = plan = self.plan_for(len(x), x.itemsize)
        if plan.forward == "patches":  # channels-last, one product over the part
            xp = None
            y, columns = correlate_patches(pad_last(x, self.padding), W, self.stride, (ho, wo))
        elif plan.forward == "wide":  # stride 1: the output over the padded width, cropped (a view) below
            xp = pad_wide(x, self.padding)
            y, columns = correlate_wide(xp, W, ho, plan.keep_columns)
            y = y[:, :, :, :wo]
        else:  # im2col
            xp = pad_hw(x, self.padding)
            y, columns = correlate(xp, W, self.stride, plan.keep_columns)
        self.cache = xp, columns, plan
        if self.bias:  # (into a new array when wide: the crop and the bias in one pass)
            y = np.add(y, self.params["b"][:, None, None], out=None if plan.forward == "wide" else y)
        return np.ascontiguousarray(y)

    def backward(self, dy, need_dx=True, need_grads=True):
        W, (xp, columns, plan) = self.params["W"], self.cache
        if need_grads:
            if plan.forward == "patches":
                self.grads["W"] = patches_weight_grad(columns, dy, W.shape)
            elif plan.forward == "wide":
                self.grads["W"] = correlate_wide_weight_grad(xp, dy, self.kernel, columns)
            else:
                self.grads["W"] = correlate_weight_grad(xp, dy, self.kernel, self.stride, columns)
            if self.bias:
                self.grads["b"] = dy.sum(axis=(0, 2, 3))
        if not need_dx:
            return None
        in_hw = self.in_shape[1:]
        if plan.input_grad == "patches":
            return input_grad_patches(dy, W, self.stride, self.padding, in_hw)
        if plan.input_grad == "wide":
            return input_grad_wide(dy, W, self.padding, in_hw)
        if plan.input_grad == "scatter":
            return input_grad_scatter(dy, W, self.stride, self.padding, in_hw)
        return input_grad_scatter_batch_last(dy, W, self.stride, self.padding, in_hw)


class MaxPool2D(Layer):
    """Max pooling: `(N, C, H, W)` -> `(N, C, Ho, Wo)`; windows may overlap, padding reads -inf.

    The gradient of each window goes to ONE input: its first maximum in
    row-major order (as in PyTorch), so ties (flat black backgrounds) are exact.
    """

    kind = "maxpool"
    args = {"kernel": SIZE, "stride": optional(SIZE), "padding": PADDING}  # stride null: the kernel

    def __init__(self, kernel, stride=None, padding=0):
        super().__init__()
        self.kernel = _pair(kernel)
        self.stride = self.kernel if stride is None else _pair(stride)
        self.padding = _pair(padding)

    def build(self, in_shape):
        if len(in_shape) != 3:
            self._fail(in_shape, "expects images (C, H, W)")
        c, h, w = in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        if 2 * ph > kh or 2 * pw > kw:
            self._fail(in_shape, f"padding {ph}x{pw} must be at most half the kernel {kh}x{kw}")
        if kh > h + 2 * ph or kw > w + 2 * pw:
            self._fail(in_shape, f"kernel {kh}x{kw} is larger than the padded input "
                                 f"{h + 2 * ph}x{w + 2 * pw}")
        self.in_shape = tuple(in_shape)
        return (c, out_size(h, kh, sh, ph), out_size(w, kw, sw, pw))

    def forward(self, x):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        ho, wo = out_size(x.shape[2], kh, sh, ph), out_size(x.shape[3], kw, sw, pw)
        xp = pad_hw(x, self.padding, -np.inf)
        # Max is separable: first the max of each window's rows (along W), then the max of
        # those (along H). The window's first maximum in row-major order is then in the
        # first row holding the max, at that row's first maximum.
        row_max, col_first = first_max([xp[:, :, :, cols] for cols in axis_offsets(kw, sw, wo)])  # (N, C, Hp, Wo)
        out, row_first = first_max([row_max[:, :, rows] for rows in axis_offsets(kh, sh, ho)])    # (N, C, Ho, Wo)
        self.cache = row_first, col_first
        return out

    def backward(self, dy, need_dx=True, need_grads=True):
        if not need_dx:
            return None
        (row_first, col_first), (kh, kw), (sh, sw) = self.cache, self.kernel, self.stride
        (ph, pw), (c, h, w) = self.padding, self.in_shape
        d_row_max = route_to_first(dy, row_first, kh, sh, h + 2 * ph, axis=2)   # (N, C, Hp, Wo)
        dxp = route_to_first(d_row_max, col_first, kw, sw, w + 2 * pw, axis=3)  # (N, C, Hp, Wp)
        return dxp[:, :, ph:ph + h, pw:pw + w]


class InstanceNorm(Layer):
    """Instance normalisation: each sample's channel normalised over H x W.

    y = gamma * (x - mean) / sqrt(var + eps) + beta, with gamma, beta of shape `(C,)`.
    """

    kind = "instance_norm"
    args = {"eps": POSITIVE_NUMBER, "affine": BOOL}

    def __init__(self, eps=1e-5, affine=True):
        super().__init__()
        self.eps, self.affine = eps, affine

    def build(self, in_shape):
        if len(in_shape) != 3:
            self._fail(in_shape, "expects images (C, H, W)")
        return super().build(in_shape)

    def param_shapes(self):
        return {"gamma": self.in_shape[:1], "beta": self.in_shape[:1]} if self.affine else {}

    def init_params(self, rng, dtype):
        if self.affine:
            self.params["gamma"] = np.ones(self.in_shape[0], dtype)
            self.params["beta"] = np.zeros(self.in_shape[0], dtype)

    def forward(self, x):
        n, c, h, w = x.shape
        p = h * w
        flat = x.reshape(n, c, p)
        centred = flat - np.einsum("ncp->nc", flat)[..., None] / p
        sum_sq = np.einsum("ncp,ncp->nc", centred, centred)[..., None]  # (N, C, 1), no squared copy
        inv_std = 1.0 / np.sqrt(sum_sq / p + self.eps)
        scale = inv_std * self.params["gamma"][:, None] if self.affine else inv_std  # gamma / std
        self.cache = centred, inv_std, scale                            # xhat = centred * inv_std
        y = centred * scale
        if self.affine:
            y += self.params["beta"][:, None]
        return y.reshape(x.shape)

    def backward(self, dy, need_dx=True, need_grads=True):
        if not need_dx and not (self.affine and need_grads):
            return None
        n, c, h, w = dy.shape
        p = h * w
        dy = dy.reshape(n, c, p)
        centred, inv_std, scale = self.cache
        sum_dy = np.einsum("ncp->nc", dy)[..., None]                                 # (N, C, 1)
        sum_dy_xhat = np.einsum("ncp,ncp->nc", dy, centred)[..., None] * inv_std
        if self.affine and need_grads:
            self.grads["gamma"] = sum_dy_xhat.sum(axis=(0, 2))
            self.grads["beta"] = sum_dy.sum(axis=(0, 2))
        if not need_dx:
            return None
        # Through the mean and the variance: dx = (dy - mean(dy) - xhat * mean(dy * xhat)) * gamma / std
        # (in place after the first product: one new array, four passes).
        dx = centred * (sum_dy_xhat * inv_std * (-1.0 / p))           # -xhat * mean(dy xhat)
        dx += dy
        dx -= sum_dy / p
        dx *= scale
        return dx.reshape(n, c, h, w)


class BatchNorm(Layer):
    """Batch normalisation (Ioffe & Szegedy 2015): each channel normalised over the batch,
    and over H x W for images: `(N, C, H, W)` or `(N, D)` -> the same shape.

        y = gamma * (x - mean) / sqrt(var + eps) + beta     (gamma, beta: `(C,)`)

    Training: mean and (biased) var are the WHOLE batch's, all its parts together
    (`forward_parts`), and the running estimates, buffers, move towards them as PyTorch's:
    running = (1 - momentum) * running + momentum * batch value (the variance unbiased,
    times m / (m - 1) for m values per channel). Evaluation: mean and var are the running
    estimates, and the layer is an affine map of each sample alone.
    """

    kind = "batch_norm"
    args = {"momentum": UNIT, "eps": POSITIVE_NUMBER, "affine": BOOL}

    def __init__(self, momentum=0.1, eps=1e-5, affine=True):
        super().__init__()
        self.momentum, self.eps, self.affine = momentum, eps, affine

    def build(self, in_shape):
        if len(in_shape) not in (1, 3):
            self._fail(in_shape, "expects images (C, H, W) or flat vectors (D,)")
        return super().build(in_shape)

    @property
    def couples_batch(self):
        return self.training

    def param_shapes(self):
        return {"gamma": self.in_shape[:1], "beta": self.in_shape[:1]} if self.affine else {}

    def init_params(self, rng, dtype):
        c = self.in_shape[0]
        if self.affine:
            self.params["gamma"], self.params["beta"] = np.ones(c, dtype), np.zeros(c, dtype)
        self.buffers["running_mean"], self.buffers["running_var"] = np.zeros(c, dtype), np.ones(c, dtype)

    def _channels(self, v):
        """A per-channel `(C,)` vector shaped to broadcast over `(N, C, H, W)` or `(N, C)`."""
        return v.reshape((1, -1, 1, 1) if len(self.in_shape) == 3 else (1, -1))

    def _sum(self, a, b=None):
        """Per channel: the sum of `a` over all but the channel axis (of `a * b` if given)."""
        letters = "nchw" if a.ndim == 4 else "nc"
        return np.einsum(f"{letters}->c", a) if b is None else np.einsum(f"{letters},{letters}->c", a, b)

    def _centre(self, x, mean):
        """Keep and return x - mean."""
        self.cache = x - self._channels(mean)
        return self.cache

    def _scale(self, var):
        """y from the kept x - mean and the variance `(C,)`."""
        inv_std = self._channels((1 / np.sqrt(var + self.eps)).astype(var.dtype))
        scale = inv_std * self._channels(self.params["gamma"]) if self.affine else inv_std
        centred = self.cache
        self.cache = centred, inv_std, scale                       # xhat = centred * inv_std
        y = centred * scale
        if self.affine:
            y += self._channels(self.params["beta"])
        return y

    def forward(self, x):
        if self.training:  # one part: the batch is all there is
            return self.forward_parts([self], [x], threads=1)[0]
        self._centre(x, self.buffers["running_mean"])
        return self._scale(self.buffers["running_var"])

    def forward_parts(self, replicas, xs, threads):
        """Training: every part `xs[i]` (through its copy `replicas[i]`) normalised with the
        mean and variance of all the parts together; the running estimates updated once."""
        m = sum(x.size for x in xs) // self.in_shape[0]  # values per channel in the batch
        if m < 2:
            raise CnnrunError(f"batch_norm in training needs more than one value per channel, and a batch of "
                              f"{sum(len(x) for x in xs)} of shape {self.in_shape} has {m}")
        mean = sum(parallel.run(self._sum, xs, threads)) / m
        var = sum(parallel.run(lambda i: replicas[i]._sum(*[replicas[i]._centre(xs[i], mean)] * 2),
                               range(len(xs)), threads)) / m
        running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
        running_mean += self.momentum * (mean - running_mean)
        running_var += self.momentum * (var * (m / (m - 1)) - running_var)
        return parallel.run(lambda i: replicas[i]._scale(var), range(len(xs)), threads)

    def _grad_sums(self, dy, need_grads):
        """`(sum of dy, sum of dy * xhat)` per channel over this part; they are this part's
        share of dbeta and dgamma."""
        centred, inv_std, _ = self.cache
        sum_dy, sum_dy_xhat = self._sum(dy), self._sum(dy, centred) * inv_std.reshape(-1)
        if self.affine and need_grads:
            self.grads["gamma"], self.grads["beta"] = sum_dy_xhat, sum_dy
        return sum_dy, sum_dy_xhat

    def backward(self, dy, need_dx=True, need_grads=True):
        if self.training:
            return self.backward_parts([self], [dy], 1, need_dx, need_grads)[0]
        # Evaluation: an affine map, dx = dy * gamma / std.
        if self.affine and need_grads:
            self._grad_sums(dy, need_grads)
        return dy * self.cache[2] if need_dx else None

    def backward_parts(self, replicas, dys, threads, need_dx, need_grads):
        """Training: the parts' input gradients. The batch mean and variance depend on
        every sample, so each part's gradient needs two sums over the whole batch:

            dx = (dy - mean(dy) - xhat * mean(dy * xhat)) * gamma / std
        """
        sums = parallel.run(lambda i: replicas[i]._grad_sums(dys[i], need_grads), range(len(dys)), threads)
        if not need_dx:
            return [None] * len(dys)
        m = sum(dy.size for dy in dys) // self.in_shape[0]
        mean_dy = self._channels(sum(s[0] for s in sums) / m)
        mean_dy_xhat = sum(s[1] for s in sums) / m

        def input_grad(i):
            centred, inv_std, scale = replicas[i].cache
            dx = centred * (self._channels(mean_dy_xhat) * inv_std * -1)     # -xhat * mean(dy xhat)
            dx += dys[i]
            dx -= mean_dy
            dx *= scale
            return dx
        return parallel.run(input_grad, range(len(dys)), threads)


class Flatten(Layer):
    """`(N, C, H, W)` (or any shape) -> `(N, C*H*W)`."""

    kind = "flatten"

    def build(self, in_shape):
        self.in_shape = tuple(in_shape)
        return (math.prod(in_shape),)

    def forward(self, x):
        return x.reshape(x.shape[0], math.prod(self.in_shape))  # not -1: a batch may be empty

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy.reshape((dy.shape[0],) + self.in_shape) if need_dx else None


class Reshape(Layer):
    """`(N, *in_shape)` -> `(N, *shape)`, same number of elements."""

    kind = "reshape"
    args = {"shape": SHAPE}

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def build(self, in_shape):
        if math.prod(in_shape) != math.prod(self.shape):
            self._fail(in_shape, f"cannot reshape {math.prod(in_shape)} values to {self.shape}")
        self.in_shape = tuple(in_shape)
        return self.shape

    def forward(self, x):
        return x.reshape((x.shape[0],) + self.shape)

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy.reshape((dy.shape[0],) + self.in_shape) if need_dx else None


class Dense(Layer):
    """Fully connected: `(N, D)` -> `(N, units)`; W is `(D, units)`, b is `(units,)`."""

    kind = "dense"
    args = {"units": POSITIVE_INT, "bias": BOOL, "init": INIT, "init_gain": POSITIVE_NUMBER}

    def __init__(self, units, bias=True, init="he", init_gain=1.0):
        super().__init__()
        self.units, self.bias, self.init, self.init_gain = units, bias, init, init_gain

    def build(self, in_shape):
        if len(in_shape) != 1:
            self._fail(in_shape, "expects flat vectors (D,): add a flatten layer before it")
        self.in_shape = tuple(in_shape)
        return (self.units,)

    def param_shapes(self):
        shapes = {"W": (self.in_shape[0], self.units)}
        if self.bias:
            shapes["b"] = (self.units,)
        return shapes

    def init_params(self, rng, dtype):
        d = self.in_shape[0]
        W = init_weights(rng, (d, self.units), d, self.units, self.init)
        self.params["W"] = (self.init_gain * W).astype(dtype)
        if self.bias:
            self.params["b"] = np.zeros(self.units, dtype)

    def forward(self, x):
        self.cache = x
        out = x @ self.params["W"]
        if self.bias:
            out += self.params["b"]
        return out

    def backward(self, dy, need_dx=True, need_grads=True):
        if need_grads:
            self.grads["W"] = self.cache.T @ dy
            if self.bias:
                self.grads["b"] = dy.sum(axis=0)
        return dy @ self.params["W"].T if need_dx else None


class ReLU(Layer):
    """max(x, 0), elementwise."""

    kind = "relu"

    def forward(self, x):
        y = np.maximum(x, 0)
        self.cache = y
        return y

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy * (self.cache > 0) if need_dx else None


class LeakyReLU(Layer):
    """x where x > 0, else slope * x, elementwise."""

    kind = "leaky_relu"
    args = {"slope": NUMBER}

    def __init__(self, slope=0.01):
        super().__init__()
        self.slope = slope

    def forward(self, x):
        positive = x > 0
        self.cache = positive
        return np.where(positive, x, self.slope * x).astype(x.dtype, copy=False)

    def backward(self, dy, need_dx=True, need_grads=True):
        return np.where(self.cache, dy, self.slope * dy).astype(dy.dtype, copy=False) if need_dx else None


class Tanh(Layer):
    """tanh(x), elementwise; its derivative is 1 - tanh(x)^2."""

    kind = "tanh"

    def forward(self, x):
        self.cache = y = np.tanh(x)
        return y

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy * (1 - self.cache * self.cache) if need_dx else None


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), elementwise (as exp(-log(1 + exp(-x))), which never overflows);
    its derivative is y (1 - y)."""

    kind = "sigmoid"

    def forward(self, x):
        self.cache = y = np.exp(-np.logaddexp(0, -x)).astype(x.dtype, copy=False)
        return y

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy * self.cache * (1 - self.cache) if need_dx else None


class AvgPool2D(MaxPool2D):
    """Average pooling: `(N, C, H, W)` -> `(N, C, Ho, Wo)`, each output the mean of its
    window, padding read as zeros and counted (PyTorch's default, count_include_pad)."""

    kind = "avgpool"

    def forward(self, x):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        ho, wo = out_size(x.shape[2], kh, sh, ph), out_size(x.shape[3], kw, sw, pw)
        xp = pad_hw(x, self.padding)
        # Separable, as max-pool: the sum of each window's rows (along W), then of those (along H).
        row_sum = sum(xp[:, :, :, cols] for cols in axis_offsets(kw, sw, wo))        # (N, C, Hp, Wo)
        total = sum(row_sum[:, :, rows] for rows in axis_offsets(kh, sh, ho))        # (N, C, Ho, Wo)
        return (total / (kh * kw)).astype(x.dtype, copy=False)

    def backward(self, dy, need_dx=True, need_grads=True):
        if not need_dx:
            return None
        (kh, kw), (sh, sw), (ph, pw), (_, h, w) = self.kernel, self.stride, self.padding, self.in_shape
        share = dy / (kh * kw)                                                       # each input's part of a mean
        d_row_sum = np.zeros(dy.shape[:2] + (h + 2 * ph, dy.shape[3]), dy.dtype)     # (N, C, Hp, Wo)
        for rows in axis_offsets(kh, sh, dy.shape[2]):
            d_row_sum[:, :, rows] += share
        dxp = np.zeros(dy.shape[:2] + (h + 2 * ph, w + 2 * pw), dy.dtype)
        for cols in axis_offsets(kw, sw, dy.shape[3]):
            dxp[:, :, :, cols] += d_row_sum
        return dxp[:, :, ph:ph + h, pw:pw + w]


class GlobalAvgPool(Layer):
    """The mean of each channel over its pixels: `(N, C, H, W)` -> `(N, C)`."""

    kind = "global_avgpool"

    def build(self, in_shape):
        if len(in_shape) != 3:
            self._fail(in_shape, "expects images (C, H, W)")
        self.in_shape = tuple(in_shape)
        return (in_shape[0],)

    def forward(self, x):
        return x.mean(axis=(2, 3))

    def backward(self, dy, need_dx=True, need_grads=True):
        if not need_dx:
            return None
        _, h, w = self.in_shape
        return np.broadcast_to((dy / (h * w))[:, :, None, None], dy.shape + (h, w)).copy()


def dropout_mask(rng, shape, rate, dtype):
    """Inverted dropout's mask: 1 / (1 - rate) where a uniform draw is at least `rate`
    (kept), else 0."""
    keep = rng.random(shape, dtype=np.float64) >= rate
    return keep.astype(dtype) * dtype.type(1 / (1 - rate))


class Dropout(Layer):
    """Inverted dropout: in training, each value is kept with probability 1 - rate and
    scaled by 1 / (1 - rate), so that evaluation, where the layer is the identity, sees
    the same expected values. The masks come from `self.rng`, which the network sets
    for each part of each batch from its noise generator (reproducible, and the same on
    1 thread or 2)."""

    kind = "dropout"
    args = {"rate": RATE}
    stochastic = True

    def __init__(self, rate=0.5):
        super().__init__()
        self.rate, self.rng = rate, None

    def forward(self, x):
        if not self.training or self.rate == 0:
            self.cache = None
            return x
        self.cache = dropout_mask(self.rng, x.shape, self.rate, x.dtype)
        return x * self.cache

    def backward(self, dy, need_dx=True, need_grads=True):
        if not need_dx:
            return None
        return dy if self.cache is None else dy * self.cache


class Residual(Layer):
    """A residual block (He et al. 2016): `body(x) + shortcut(x)`.

    The body is a list of layers, written as a network's; the shortcut is the identity or a
    list of its own (typically a 1x1 strided conv and batch_norm, where the body changes
    the shape). The block is one layer of the sequence; backward sends the gradient down
    both branches and adds the two at the input. Its parameters and buffers are its
    layers', named `body.0.conv.W`, `shortcut.1.batch_norm.gamma`, ...
    """

    kind = "residual"
    args = {"layers": LAYER_LIST, "shortcut": SHORTCUT}

    def __init__(self, layers, shortcut="identity"):
        super().__init__()
        self.body = [self._make(entry, f"layers[{j}]") for j, entry in enumerate(layers)]
        self.shortcut = [] if shortcut == "identity" else [self._make(entry, f"shortcut[{j}]")
                                                           for j, entry in enumerate(shortcut)]

    def _make(self, entry, where):
        """A layer of the block, of this engine's classes (reference.py's in the reference)."""
        return make_layer(self.classes(), entry, where)

    def classes(self):
        return LAYERS

    def named_sublayers(self):
        """`(prefix, layer)` for each layer of the block: `("body.0.conv", conv)`, ..."""
        return ([(f"body.{j}.{layer.kind}", layer) for j, layer in enumerate(self.body)]
                + [(f"shortcut.{j}.{layer.kind}", layer) for j, layer in enumerate(self.shortcut)])

    @property
    def couples_batch(self):
        return any(layer.couples_batch for layer in self.sublayers())

    def build(self, in_shape):
        self.in_shape, self.inner_shapes = tuple(in_shape), []
        shapes = {}
        for name, branch in (("layers", self.body), ("shortcut", self.shortcut)):
            shape = self.in_shape
            for j, layer in enumerate(branch):
                try:
                    shape = tuple(layer.build(shape))
                except CnnrunError as e:
                    raise CnnrunError(f"{name}[{j}] ({layer.kind}): {e}") from None
                self.inner_shapes.append(shape)
            shapes[name] = shape
        if shapes["layers"] != shapes["shortcut"]:
            shortcut = "the identity shortcut" if not self.shortcut else "the shortcut"
            raise CnnrunError(f"input shape {self.in_shape}: the body gives {shapes['layers']} and {shortcut} "
                              f"{shapes['shortcut']}; they must be the same shape to be added")
        return shapes["layers"]

    def param_shapes(self):
        return {f"{prefix}.{name}": shape for prefix, layer in self.named_sublayers()
                for name, shape in layer.param_shapes().items()}

    def init_params(self, rng, dtype):
        for _, layer in self.named_sublayers():
            layer.init_params(rng, dtype)
        self.params = {f"{prefix}.{name}": p for prefix, layer in self.named_sublayers() for name, p in layer.params.items()}
        self.buffers = {f"{prefix}.{name}": b for prefix, layer in self.named_sublayers() for name, b in layer.buffers.items()}

    def replica(self):
        twin = super().replica()
        twin.body, twin.shortcut = [layer.replica() for layer in self.body], [layer.replica() for layer in self.shortcut]
        return twin

    def scratch_per_sample(self):
        return sum(2 * math.prod(shape) for shape in self.inner_shapes) + sum(
            layer.scratch_per_sample() for layer in self.sublayers())

    def _collect_grads(self):
        self.grads = {f"{prefix}.{name}": g for prefix, layer in self.named_sublayers() for name, g in layer.grads.items()}

    def forward(self, x):
        return sequence.forward_layers(self.body, x) + sequence.forward_layers(self.shortcut, x)

    def backward(self, dy, need_dx=True, need_grads=True):
        d_body, d_shortcut = (
            sequence.backward_layers(branch, dy, sequence.needs_input_grad(branch, need_dx, need_grads), need_grads)
            for branch in (self.body, self.shortcut))
        if need_grads:
            self._collect_grads()
        return d_body + d_shortcut if need_dx else None

    def forward_parts(self, replicas, xs, threads):
        """A block holding a layer that couples the batch: each branch staged over the parts."""
        body = sequence.forward([r.body for r in replicas], xs, threads)
        shortcut = sequence.forward([r.shortcut for r in replicas], xs, threads)
        return [a + b for a, b in zip(body, shortcut)]

    def backward_parts(self, replicas, dys, threads, need_dx, need_grads):
        d_body, d_shortcut = (
            sequence.backward([getattr(r, branch) for r in replicas], dys,
                              sequence.needs_input_grad(getattr(self, branch), need_dx, need_grads), need_grads, threads)
            for branch in ("body", "shortcut"))
        if need_grads:
            for r in replicas:
                r._collect_grads()
        return [a + b for a, b in zip(d_body, d_shortcut)] if need_dx else [None] * len(dys)


class Softmax(Layer):
    """Probabilities over the class axis: `(N, K)` -> `(N, K)`.

    With cross-entropy the network skips this backward and uses the fused
    gradient `(p - y) / N` on the logits (see `losses.softmax_cross_entropy`).
    """

    kind = "softmax"

    def build(self, in_shape):
        if len(in_shape) != 1:
            self._fail(in_shape, "expects flat vectors (K,): add a flatten layer before it")
        return super().build(in_shape)

    def forward(self, x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        self.cache = p
        return p

    def backward(self, dy, need_dx=True, need_grads=True):
        # Jacobian-vector product: dx_i = p_i * (dy_i - sum_j dy_j p_j)
        p = self.cache
        return p * (dy - np.sum(dy * p, axis=1, keepdims=True)) if need_dx else None


# Config name -> layer class: a config layer `conv: {filters: 8, kernel: 3}` is `Conv2D(filters=8, kernel=3)`.
LAYERS = {cls.kind: cls for cls in (
    Normalize, Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool, InstanceNorm, BatchNorm, Flatten, Reshape, Dense, ReLU,
    LeakyReLU, Tanh, Sigmoid, Dropout, Residual, Softmax)}


def parse_entry(entry):
    """A layer as a config writes it -> `(kind, kwargs)`: `relu`, `{conv: {filters: 8}}`,
    or already a pair `("conv", {"filters": 8})`."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        kind, kwargs = next(iter(entry.items()))
        return kind, kwargs or {}
    if isinstance(entry, tuple) and len(entry) == 2:
        return entry[0], entry[1] or {}
    raise CnnrunError(f"expected a layer name or `name: {{arguments}}`, got {entry!r}")


def make_layer(classes, entry, where):
    """The layer of config `entry` from `classes` (an engine's LAYERS); a wrong kind or
    argument is one line starting with `where` and the kind: `layer 3 (conv): ...`."""
    try:
        kind, kwargs = parse_entry(entry)
    except CnnrunError as e:
        raise CnnrunError(f"{where}: {e}") from None
    if kind not in classes:
        raise CnnrunError(f"{where} ({kind}): unknown layer; known: {', '.join(classes)}")
    try:
        inspect.signature(classes[kind]).bind(**kwargs)
    except TypeError as e:  # an argument the layer does not take, or one missing
        raise CnnrunError(f"{where} ({kind}): {e}") from None
    try:
        return classes[kind](**kwargs)
    except CnnrunError as e:  # a residual block's own layers
        raise CnnrunError(f"{where} ({kind}): {e}") from None


def walk(layers):
    """Every layer of `layers` and, depth first, every layer inside them."""
    for layer in layers:
        yield layer
        yield from walk(layer.sublayers())


def walk_named(named):
    """`(name, layer)` for every layer of `named` (pairs) and, depth first, every layer
    inside them, named after the layer holding it: `4.residual.body.0.conv`."""
    for name, layer in named:
        yield name, layer
        yield from walk_named((f"{name}.{sub_name}", sub) for sub_name, sub in layer.named_sublayers())
