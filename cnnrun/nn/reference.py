"""The engine as its equations: every layer's forward and backward pass written
straight from its definition, as sums over kernel offsets and `einsum`.

No chunking, no strided views, no layout tricks: this is the engine to read, and
the one the fast engine (layers.py, kernels.py) is tested against, layer by layer
and for whole networks (tests/test_reference.py). `Network(..., engine="reference")`
or `cnnrun train --engine reference` runs it: the same numbers to float tolerance,
only slower (`cnnrun bench CONFIG --engine reference` says how much).

Shapes: images `(N, C, H, W)`, flat vectors `(N, D)`; a convolution's weights
`(F, C, kh, kw)`. In the sums, `n` is the sample, `f` an output channel, `c` an
input channel, `(a, b)` an output position, `(i, j)` a kernel offset, and `xp`
the input padded with `ph` rows and `pw` columns on each side.
"""

import numpy as np

from cnnrun.nn import layers


def out_size(size, kernel, stride, padding):
    """Windows along one axis: `(size + 2 * padding - kernel) // stride + 1`."""
    return (size + 2 * padding - kernel) // stride + 1


def pad(x, padding, value=0.0):
    """`(N, C, H, W)` -> `(N, C, H + 2*ph, W + 2*pw)`, `value` all around."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def offset_slices(i, j, stride, out_hw):
    """The pixels of a padded input that kernel offset `(i, j)` reads in every window:
    rows `i, i + sh, ..., i + (Ho - 1) * sh`, and columns likewise."""
    (sh, sw), (ho, wo) = stride, out_hw
    return slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)


# --- convolution ---------------------------------------------------------------

# --8<-- [start:conv]  (shown in docs/how-it-works.md)
def conv_forward(x, W, b, stride, padding):
    """Cross-correlation, x `(N, C, H, W)`, W `(F, C, kh, kw)`, b `(F,)` or None -> `(N, F, Ho, Wo)`:

        y[n, f, a, b] = bias[f] + sum_{c, i, j} W[f, c, i, j] * xp[n, c, a*sh + i, b*sw + j]
    """
    f, _, kh, kw = W.shape
    xp = pad(x, padding)
    ho, wo = out_size(x.shape[2], kh, stride[0], padding[0]), out_size(x.shape[3], kw, stride[1], padding[1])
    y = np.zeros((x.shape[0], f, ho, wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, cols = offset_slices(i, j, stride, (ho, wo))
            y += np.einsum("fc,ncab->nfab", W[:, :, i, j], xp[:, :, rows, cols], optimize=True)
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv_backward(dy, x, W, stride, padding):
    """Gradients of `conv_forward` given dL/dy `(N, F, Ho, Wo)` -> `(dx, dW, db)`:

        dW[f, c, i, j] = sum_{n, a, b} dy[n, f, a, b] * xp[n, c, a*sh + i, b*sw + j]
        db[f]          = sum_{n, a, b} dy[n, f, a, b]
        dxp[n, c, a*sh + i, b*sw + j] += sum_f W[f, c, i, j] * dy[n, f, a, b]   (for every a, b, i, j)

    and dx is dxp without its padding: each input pixel collects the gradient of
    every window that read it (the "col2im" of the fast engine).
    """
    _, _, kh, kw = W.shape
    (ph, pw), (h, w) = padding, x.shape[2:]
    xp = pad(x, padding)
    dxp, dW = np.zeros_like(xp), np.zeros_like(W)
    for i in range(kh):
        for j in range(kw):
            rows, cols = offset_slices(i, j, stride, dy.shape[2:])
            dW[:, :, i, j] = np.einsum("nfab,ncab->fc", dy, xp[:, :, rows, cols], optimize=True)
            dxp[:, :, rows, cols] += np.einsum("fc,nfab->ncab", W[:, :, i, j], dy, optimize=True)
    return dxp[:, :, ph:ph + h, pw:pw + w], dW, dy.sum(axis=(0, 2, 3))
# --8<-- [end:conv]


# --- max-pool ------------------------------------------------------------------

# --8<-- [start:maxpool]  (shown in docs/how-it-works.md)
def maxpool_forward(x, kernel, stride, padding):
    """x `(N, C, H, W)` -> `(y, first)`, both `(N, C, Ho, Wo)`, padding reading -inf:

        y[n, c, a, b] = max_{i, j} xp[n, c, a*sh + i, b*sw + j]

    and `first` the offset `k = i * kw + j` of the window's FIRST maximum in
    row-major order (argmax returns the first), where its gradient goes.
    """
    (kh, kw), xp = kernel, pad(x, padding, -np.inf)
    ho, wo = out_size(x.shape[2], kh, stride[0], padding[0]), out_size(x.shape[3], kw, stride[1], padding[1])
    windows = np.stack([xp[(..., *offset_slices(i, j, stride, (ho, wo)))]
                        for i in range(kh) for j in range(kw)])                # (kh*kw, N, C, Ho, Wo)
    return windows.max(axis=0), windows.argmax(axis=0)


def maxpool_backward(dy, first, in_shape, kernel, stride, padding):
    """dL/dx `(N, C, H, W)`: each window's gradient goes to its first maximum only (a tie,
    such as a flat black background, sends it to ONE input); overlapping windows add up:

        dxp[n, c, a*sh + i, b*sw + j] += dy[n, c, a, b]   where i * kw + j == first[n, c, a, b]
    """
    (kh, kw), (ph, pw), (h, w) = kernel, padding, in_shape
    dxp = np.zeros(dy.shape[:2] + (h + 2 * ph, w + 2 * pw), dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[(..., *offset_slices(i, j, stride, dy.shape[2:]))] += dy * (first == i * kw + j)
    return dxp[:, :, ph:ph + h, pw:pw + w]
# --8<-- [end:maxpool]


# --- instance norm ---------------------------------------------------------------

# --8<-- [start:instance_norm]  (shown in docs/how-it-works.md)
def instance_norm_forward(x, gamma, beta, eps):
    """Each sample's channel normalised over its H*W pixels -> `(y, xhat, std)`:

        mu = mean_{h, w} x,  var = mean_{h, w} (x - mu)^2,  std = sqrt(var + eps)
        xhat = (x - mu) / std,  y = gamma[c] * xhat + beta[c]   (gamma, beta None: y = xhat)
    """
    mu = x.mean(axis=(2, 3), keepdims=True)
    std = np.sqrt(((x - mu) ** 2).mean(axis=(2, 3), keepdims=True) + eps)
    xhat = (x - mu) / std
    y = xhat if gamma is None else gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    return y, xhat, std


def instance_norm_backward(dy, xhat, std, gamma):
    """Gradients of `instance_norm_forward` -> `(dx, dgamma, dbeta)`, means over H*W:

        dgamma[c] = sum_{n, h, w} dy * xhat,   dbeta[c] = sum_{n, h, w} dy
        g  = dy * gamma[c]   (the gradient on xhat)
        dx = (g - mean(g) - xhat * mean(g * xhat)) / std

    (mu and var depend on every pixel: the two means are their share of the chain rule.
    It is sqrt(var + eps), not sigma + eps, that divides.)
    """
    g = dy if gamma is None else dy * gamma[None, :, None, None]
    dx = (g - g.mean(axis=(2, 3), keepdims=True) - xhat * (g * xhat).mean(axis=(2, 3), keepdims=True)) / std
    return dx, (dy * xhat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))
# --8<-- [end:instance_norm]


# --- batch norm ------------------------------------------------------------------

# --8<-- [start:batch_norm]  (shown in docs/how-it-works.md)
def channel_axes(x):
    """The axes a channel's statistics run over: `(0, 2, 3)` for images, `(0,)` for vectors."""
    return (0, 2, 3) if x.ndim == 4 else (0,)


def per_channel(v, ndim):
    """A `(C,)` vector shaped to broadcast over `(N, C, H, W)` (ndim 4) or `(N, C)`."""
    return v.reshape((1, -1, 1, 1) if ndim == 4 else (1, -1))


def batch_norm_forward(x, gamma, beta, mean, var, eps):
    """Each channel normalised with the given `(C,)` mean and variance -> `(y, xhat, std)`:

        std = sqrt(var + eps),  xhat = (x - mean) / std,  y = gamma[c] * xhat + beta[c]

    In training, mean and var are the batch's (over N, and H, W: `x.mean(channel_axes)`,
    `x.var(channel_axes)`); in evaluation, the running estimates.
    """
    std = per_channel(np.sqrt(var + eps), x.ndim)
    xhat = (x - per_channel(mean, x.ndim)) / std
    y = xhat if gamma is None else per_channel(gamma, x.ndim) * xhat + per_channel(beta, x.ndim)
    return y, xhat, std


def batch_norm_backward(dy, xhat, std, gamma, training):
    """Gradients of `batch_norm_forward` -> `(dx, dgamma, dbeta)`, sums and means over a
    channel's m values (N, or N, H, W):

        dgamma[c] = sum dy * xhat,   dbeta[c] = sum dy,   g = dy * gamma[c]
        training:    dx = (g - mean(g) - xhat * mean(g * xhat)) / std   (the batch's mean
                     and var depend on every sample: instance norm's formula, over the batch)
        evaluation:  dx = g / std                                       (constants)
    """
    axes = channel_axes(dy)
    g = dy if gamma is None else dy * per_channel(gamma, dy.ndim)
    if training:
        g = g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True)
    return g / std, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
# --8<-- [end:batch_norm]


# --- average pooling ------------------------------------------------------------

def avgpool_forward(x, kernel, stride, padding):
    """x `(N, C, H, W)` -> `(N, C, Ho, Wo)`, padding reading 0 and counted:

        y[n, c, u, v] = 1 / (kh*kw) * sum_{i, j} xp[n, c, u*sh + i, v*sw + j]
    """
    (kh, kw), xp = kernel, pad(x, padding)
    ho, wo = out_size(x.shape[2], kh, stride[0], padding[0]), out_size(x.shape[3], kw, stride[1], padding[1])
    windows = [xp[(..., *offset_slices(i, j, stride, (ho, wo)))] for i in range(kh) for j in range(kw)]
    return sum(windows) / (kh * kw)


def avgpool_backward(dy, in_shape, kernel, stride, padding):
    """dL/dx `(N, C, H, W)`: every input of a window gets 1 / (kh*kw) of its gradient:

        dxp[n, c, u*sh + i, v*sw + j] += dy[n, c, u, v] / (kh*kw)   (for every u, v, i, j)
    """
    (kh, kw), (ph, pw), (h, w) = kernel, padding, in_shape
    dxp = np.zeros(dy.shape[:2] + (h + 2 * ph, w + 2 * pw), dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[(..., *offset_slices(i, j, stride, dy.shape[2:]))] += dy / (kh * kw)
    return dxp[:, :, ph:ph + h, pw:pw + w]


# --- softmax and cross-entropy ---------------------------------------------------

# --8<-- [start:softmax]  (shown in docs/how-it-works.md)
def softmax(z):
    """p[n, k] = exp(z[n, k]) / sum_j exp(z[n, j]) of logits `(N, K)` (the row's max
    subtracted first: the same p, and no overflow)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_backward(dy, p):
    """dx[n, k] = p[n, k] * (dy[n, k] - sum_j dy[n, j] * p[n, j]) (the softmax's Jacobian times dy)."""
    return p * (dy - (dy * p).sum(axis=1, keepdims=True))


def softmax_cross_entropy(z, y):
    """Mean cross-entropy of softmax(z) against one-hot `y`, both `(N, K)` -> `(loss, dz)`:

        loss = -1/N sum_{n, k} y[n, k] * log p[n, k]
        dz   = (p - y) / N     (the softmax's Jacobian and the log's 1/p cancel)
    """
    p = softmax(z)
    return float(-(y * np.log(p)).sum() / len(z)), (p - y) / len(z)
# --8<-- [end:softmax]


# --- the layers, on these functions ----------------------------------------------
# Each subclasses its fast twin: the same arguments, shapes and parameters (so the
# same seed gives the same initial weights); only forward and backward differ.
# A `dy` of None means nothing before this layer needs a gradient.

class Conv2D(layers.Conv2D):
    def forward(self, x):
        self.cache = x
        return conv_forward(x, self.params["W"], self.params.get("b"), self.stride, self.padding)

    def backward(self, dy, need_dx=True, need_grads=True):
        dx, dW, db = conv_backward(dy, self.cache, self.params["W"], self.stride, self.padding)
        if need_grads:
            self.grads["W"] = dW
            if self.bias:
                self.grads["b"] = db
        return dx if need_dx else None


class MaxPool2D(layers.MaxPool2D):
    def forward(self, x):
        y, self.cache = maxpool_forward(x, self.kernel, self.stride, self.padding)
        return y

    def backward(self, dy, need_dx=True, need_grads=True):
        if dy is None or not need_dx:
            return None
        return maxpool_backward(dy, self.cache, self.in_shape[1:], self.kernel, self.stride, self.padding)


class InstanceNorm(layers.InstanceNorm):
    def forward(self, x):
        y, *self.cache = instance_norm_forward(x, self.params.get("gamma"), self.params.get("beta"), self.eps)
        return y

    def backward(self, dy, need_dx=True, need_grads=True):
        if dy is None:
            return None
        dx, dgamma, dbeta = instance_norm_backward(dy, *self.cache, self.params.get("gamma"))
        if self.affine and need_grads:
            self.grads["gamma"], self.grads["beta"] = dgamma, dbeta
        return dx if need_dx else None


class BatchNorm(layers.BatchNorm):
    """Training: the whole batch's statistics (the parts put together: `forward_parts`),
    the running estimates updated as running += momentum * (batch value - running), the
    variance unbiased (m / (m - 1)). Evaluation: the running estimates."""

    def forward(self, x):
        if self.training:
            m = x.size // x.shape[1]
            mean, var = x.mean(axis=channel_axes(x)), x.var(axis=channel_axes(x))
            self.buffers["running_mean"] += self.momentum * (mean - self.buffers["running_mean"])
            self.buffers["running_var"] += self.momentum * (var * m / (m - 1) - self.buffers["running_var"])
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        y, *self.cache = batch_norm_forward(x, self.params.get("gamma"), self.params.get("beta"), mean, var, self.eps)
        return y

    def backward(self, dy, need_dx=True, need_grads=True):
        if dy is None:
            return None
        dx, dgamma, dbeta = batch_norm_backward(dy, *self.cache, self.params.get("gamma"), self.training)
        if self.affine and need_grads:
            self.grads["gamma"], self.grads["beta"] = dgamma, dbeta
        return dx if need_dx else None

    def forward_parts(self, replicas, xs, threads):
        """The parts put together, normalised as one batch, and cut again (this copy keeps the cache)."""
        y = self.forward(np.concatenate(xs))
        return np.split(y, np.cumsum([len(x) for x in xs])[:-1])

    def backward_parts(self, replicas, dys, threads, need_dx, need_grads):
        """The whole batch's gradients: this copy holds the parameters' gradients, the others zeros."""
        dx = self.backward(np.concatenate(dys), need_dx, need_grads)
        for other in replicas[1:]:
            other.grads = {name: np.zeros_like(g) for name, g in self.grads.items()}
        return np.split(dx, np.cumsum([len(dy) for dy in dys])[:-1]) if need_dx else [None] * len(dys)


class Residual(layers.Residual):
    """y = body(x) + shortcut(x), its layers this engine's;  dx = d_body + d_shortcut."""

    def classes(self):
        return LAYERS


class Dense(layers.Dense):
    """y = x @ W + b;  dW = x.T @ dy,  db = sum_n dy,  dx = dy @ W.T."""

    def forward(self, x):
        self.cache = x
        return x @ self.params["W"] + (self.params["b"] if self.bias else 0)

    def backward(self, dy, need_dx=True, need_grads=True):
        if need_grads:
            self.grads["W"] = self.cache.T @ dy
            if self.bias:
                self.grads["b"] = dy.sum(axis=0)
        return dy @ self.params["W"].T if need_dx else None


class ReLU(layers.ReLU):
    """y = max(x, 0);  dx = dy where x > 0, else 0."""

    def forward(self, x):
        self.cache = x
        return np.maximum(x, 0)

    def backward(self, dy, need_dx=True, need_grads=True):
        return np.where(self.cache > 0, dy, 0) if dy is not None and need_dx else None


class LeakyReLU(layers.LeakyReLU):
    """y = x if x > 0 else slope * x;  dx = dy if x > 0 else slope * dy."""

    def forward(self, x):
        self.cache = x
        return np.where(x > 0, x, self.slope * x)

    def backward(self, dy, need_dx=True, need_grads=True):
        return np.where(self.cache > 0, dy, self.slope * dy) if dy is not None and need_dx else None


class Tanh(layers.Tanh):
    """y = tanh(x);  dx = dy * (1 - y^2)."""

    def forward(self, x):
        self.cache = np.tanh(x)
        return self.cache

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy * (1 - self.cache ** 2) if dy is not None and need_dx else None


class Sigmoid(layers.Sigmoid):
    """y = 1 / (1 + exp(-x));  dx = dy * y * (1 - y)."""

    def forward(self, x):
        with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0: y is then 0, as it should be
            self.cache = 1 / (1 + np.exp(-x))
        return self.cache

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy * self.cache * (1 - self.cache) if dy is not None and need_dx else None


class AvgPool2D(layers.AvgPool2D):
    def forward(self, x):
        return avgpool_forward(x, self.kernel, self.stride, self.padding)

    def backward(self, dy, need_dx=True, need_grads=True):
        if dy is None or not need_dx:
            return None
        return avgpool_backward(dy, self.in_shape[1:], self.kernel, self.stride, self.padding)


class GlobalAvgPool(layers.GlobalAvgPool):
    """y[n, c] = mean_{h, w} x[n, c, h, w];  dx[n, c, h, w] = dy[n, c] / (H*W)."""

    def forward(self, x):
        return x.mean(axis=(2, 3))

    def backward(self, dy, need_dx=True, need_grads=True):
        if dy is None or not need_dx:
            return None
        c, h, w = self.in_shape
        return np.repeat(np.repeat(dy[:, :, None, None] / (h * w), h, axis=2), w, axis=3)


class Dropout(layers.Dropout):
    """Training: y = x * m with m = keep / (1 - rate), keep ~ Bernoulli(1 - rate) (the
    same draws as the fast layer, `layers.dropout_mask`);  dx = dy * m. Evaluation:
    y = x, dx = dy."""

    def forward(self, x):
        self.cache = layers.dropout_mask(self.rng, x.shape, self.rate, x.dtype) if self.training else None
        return x if self.cache is None else x * self.cache

    def backward(self, dy, need_dx=True, need_grads=True):
        if dy is None or not need_dx:
            return None
        return dy if self.cache is None else dy * self.cache


class Normalize(layers.Normalize):
    """y = (x - mean) / std;  dx = dy / std."""

    def forward(self, x):
        return (x - self.mean) / self.std

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy / self.std if dy is not None and need_dx else None


class Flatten(layers.Flatten):
    """A reshape to `(N, D)`, and back."""

    def forward(self, x):
        return x.reshape(len(x), int(np.prod(self.in_shape)))  # not -1: a batch may be empty

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy.reshape((len(dy),) + self.in_shape) if dy is not None and need_dx else None


class Reshape(layers.Reshape):
    def forward(self, x):
        return x.reshape((len(x),) + self.shape)

    def backward(self, dy, need_dx=True, need_grads=True):
        return dy.reshape((len(dy),) + self.in_shape) if dy is not None and need_dx else None


class Softmax(layers.Softmax):
    def forward(self, x):
        self.cache = softmax(x)
        return self.cache

    def backward(self, dy, need_dx=True, need_grads=True):
        return softmax_backward(dy, self.cache) if need_dx else None


LAYERS = {cls.kind: cls for cls in (Normalize, Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool, InstanceNorm, BatchNorm,
                                    Flatten, Reshape, Dense, ReLU, LeakyReLU, Tanh, Sigmoid, Dropout, Residual, Softmax)}
