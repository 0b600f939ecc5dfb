"""The fast kernels behind the layers. Each computes what a function of `reference.py`
computes by its definition (read that first); tests/test_reference.py holds each against
it on odd shapes, strides, padding and ties. Which of them a convolution runs is decided
in ONE place, `conv_plan`, and kept on the layer (`Conv2D.plan`); docs/performance.md
has the measurements behind each variant and its rule.

Convolution forward (and its weight gradient, from the same layout):
- `correlate` on `im2col`: windows unfolded into columns, a chunk of samples at a time
  (CHUNK_BYTES), one `(F, C*kh*kw) @ (C*kh*kw, Ho*Wo)` product per sample;
  `correlate_weight_grad`.
- `correlate_wide` on `pad_wide` + `wide_columns`: stride 1, the columns over the padded
  width, each row one contiguous copy; `correlate_wide_weight_grad`.
- `correlate_patches` on `pad_last` + `patches`: channels last, one product over the
  whole part; `patches_weight_grad`.
Convolution input gradient: `input_grad_wide` (the flipped kernel, stride 1),
`input_grad_scatter` and `input_grad_scatter_batch_last` (col2im), `input_grad_patches`
(col2im channels-last).
Max-pool: `first_max` and `route_to_first`. Padding: `pad_hw`.
"""

import functools
import typing

import numpy as np


def out_size(size, kernel, stride, padding):
    """Output length of a sliding window along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


# The columns of one chunk of samples take at most this many bytes, so that they stay in
# the cache between being written and being multiplied (a whole batch's do not).
CHUNK_BYTES = 4 << 20

def batch_chunks(n, bytes_per_sample):
    """Slices of a batch of `n` whose work buffers take at most CHUNK_BYTES each."""
    size = max(1, CHUNK_BYTES // bytes_per_sample)
    return [slice(start, min(start + size, n)) for start in range(0, max(n, 1), size)]


def im2col(xp, kernel, stride, out):
    """Unfold windows, per sample: `(n, C, Hp, Wp)` -> columns `(n, C*kh*kw, Ho*Wo)` in `out`.

    Column `(a, b)` of sample `n` holds the window whose top-left corner is at
    `(a*sh, b*sw)`, flattened in `(c, i, j)` order to match a `(F, C, kh, kw)`
    weight tensor reshaped to `(F, C*kh*kw)`.
    """
    (kh, kw), (sh, sw) = kernel, stride
    n, c, hp, wp = xp.shape
    ho, wo = out_size(hp, kh, sh, 0), out_size(wp, kw, sw, 0)
    xp = np.ascontiguousarray(xp)  # (the view below reads xp's memory in C order; a no-op if it is)
    # A view (n, C, kh, kw, Ho, Wo) of xp: element [.., i, j, a, b] is xp[.., a*sh + i, b*sw + j].
    s_n, s_c, s_h, s_w = xp.strides
    windows = np.ndarray((n, c, kh, kw, ho, wo), xp.dtype, buffer=xp, strides=(s_n, s_c, s_h, s_w, s_h * sh, s_w * sw))
    np.copyto(out.reshape(n, c, kh, kw, ho, wo), windows)
    return out


def pad_hw(x, padding, value=0.0):
    """`(N, C, H, W)` -> `(N, C, H + 2*ph, W + 2*pw)`, `value` all around (x itself if no
    padding). Same as np.pad's constant mode, which costs more in Python than in copying."""
    (ph, pw), (n, c, h, w) = padding, x.shape
    if not (ph or pw):
        return x
    out = np.full((n, c, h + 2 * ph, w + 2 * pw), value, x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def correlate(xp, W, stride, keep=False):
    """Cross-correlation over the valid positions (a convolution's forward, no padding):
    xp `(N, C, Hp, Wp)`, W `(F, C, kh, kw)` -> `(N, F, Ho, Wo)`, chunk by chunk of
    samples: unfold into columns, then one product per sample, `(F, C*kh*kw) @
    (C*kh*kw, Ho*Wo)`. Returns `(y, columns)`: with `keep` and the whole batch's columns
    `(N, C*kh*kw, Ho*Wo)` in one chunk, those, for `correlate_weight_grad` (else None)."""
    kh, kw = W.shape[2:]
    out_hw = out_size(xp.shape[2], kh, stride[0], 0), out_size(xp.shape[3], kw, stride[1], 0)
    return unfold_and_multiply(xp, W, out_hw, lambda part, out: im2col(part, (kh, kw), stride, out), keep)


def unfold_and_multiply(xp, W, out_hw, unfold, keep=False):
    """`(N, F, *out_hw)`: chunk by chunk of samples, `unfold(xp[chunk], columns)` fills the
    columns `(m, C*kh*kw, prod(out_hw))`, then one `(F, C*kh*kw)` product per sample;
    and, with `keep`, the columns when the whole batch's fit in one chunk (else None)."""
    f, c, kh, kw = W.shape
    n, size = xp.shape[0], out_hw[0] * out_hw[1]
    y = np.empty((n, f) + tuple(out_hw), xp.dtype)
    W_rows = np.ascontiguousarray(W).reshape(f, c * kh * kw)
    chunks = batch_chunks(n, c * kh * kw * size * xp.itemsize)
    cols = np.empty((chunks[0].stop, c * kh * kw, size), xp.dtype)
    for chunk in chunks:
        m = chunk.stop - chunk.start
        unfold(xp[chunk], cols[:m])
        np.matmul(W_rows, cols[:m], out=y[chunk].reshape(m, f, size))
    return y, (cols if keep and len(chunks) == 1 else None)


def pad_wide(x, padding):
    """`(N, C, H, W)` -> `(N, C, H + 2*ph + 1, W + 2*pw)`: zero padding, and one more zero
    row at the bottom so that every row `wide_columns` reads lies inside the array."""
    (ph, pw), (n, c, h, w) = padding, x.shape
    out = np.zeros((n, c, h + 2 * ph + 1, w + 2 * pw), x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def wide_columns(xq, kernel, ho, out):
    """Unfold for a stride-1 correlation over the padded width: `(n, C, Hp + 1, Wp)` ->
    columns `(n, C*kh*kw, Ho*Wp)` in `out`.

    Row `(c, i, j)` of sample n is `xq[n, c]` read flat from `i*Wp + j`, `Ho*Wp` values
    in a row: its value `a*Wp + b` is what offset `(i, j)` of the window at `(a, b)` reads.
    The last `Wp - Wo` values of each output row (b >= Wo) belong to no window: they are
    computed and cropped off. Each row is one contiguous copy, where `im2col`'s rows
    are Wo values long.
    """
    (kh, kw), (n, c, _, wp) = kernel, xq.shape
    xq = np.ascontiguousarray(xq)
    s_n, s_c, s_h, s_w = xq.strides
    rows = np.ndarray((n, c, kh, kw, ho * wp), xq.dtype, buffer=xq, strides=(s_n, s_c, s_h, s_w, s_w))
    np.copyto(out.reshape(n, c, kh, kw, ho * wp), rows)
    return out


def correlate_wide(xq, W, ho, keep=False):
    """Stride-1 cross-correlation over the padded width: xq `(N, C, Hp + 1, Wp)` (from
    `pad_wide`), W `(F, C, kh, kw)` -> `(N, F, Ho, Wp)`, of which the first Wo = Wp - kw + 1
    columns are the output; and the columns, as `correlate` gives them. Chunk by chunk
    of samples: `wide_columns`, then `(F, C*kh*kw) @ (C*kh*kw, Ho*Wp)` per sample."""
    kernel = W.shape[2:]
    return unfold_and_multiply(xq, W, (ho, xq.shape[3]), lambda part, out: wide_columns(part, kernel, ho, out), keep)


def correlate_wide_weight_grad(xq, dy, kernel, columns=None):
    """dL/dW `(F, C, kh, kw)` of `correlate_wide(xq, W, Ho)` given dL/dy `(N, F, Ho, Wo)`,
    by `columns_weight_grad` with dy laid out over the padded width."""
    ho = dy.shape[2]
    return columns_weight_grad(xq, dy, kernel, lambda part, out: wide_columns(part, kernel, ho, out), xq.shape[3],
                               columns)


def input_grad_wide(dy, W, padding, in_hw):
    """dL/dx `(N, C, H, W)` of a stride-1 convolution given dL/dy `(N, F, Ho, Wo)`: the
    correlation of dy (zero-padded) with the flipped kernel, its input and output channels
    swapped, dx[h] = sum_i dy[h + p - i] * W[i], by `correlate_wide`."""
    (kh, kw), (ph, pw), (h, w) = W.shape[2:], padding, in_hw
    window = shifted_window(dy, (ph - kh + 1, pw - kw + 1), (h + kh, w + kw - 1))
    dx_wide, _ = correlate_wide(window, W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), h)
    return dx_wide[:, :, :, :w]


def correlate_weight_grad(xp, dy, kernel, stride, columns=None):
    """dL/dW `(F, C, kh, kw)` of `correlate(xp, W, stride)` given dL/dy `(N, F, Ho, Wo)`,
    by `columns_weight_grad` on im2col's columns."""
    return columns_weight_grad(xp, dy, kernel, lambda part, out: im2col(part, kernel, stride, out), dy.shape[3],
                               columns)


def columns_weight_grad(xp, dy, kernel, unfold, width, columns=None):
    """dL/dW of a correlation by columns: the sum over samples of `dy_n (F, Ho*width) @
    columns_n.T` -> `(F, C, kh, kw)`, computed transposed (`columns_n @ dy_n.T`, the faster
    shape for BLAS). `unfold(xp[chunk], out)` makes the columns `(m, C*kh*kw, Ho*width)`
    (`columns`: the forward's, if it kept them); dy is laid out `width` wide, with zeros
    in the columns past Wo, which belong to no window and so add nothing."""
    (kh, kw), (n, f, ho, wo), c = kernel, dy.shape, xp.shape[1]
    dW_t = np.zeros((c * kh * kw, f), dy.dtype)
    if columns is not None:
        chunks, cols = [slice(0, n)], columns
    else:
        chunks = batch_chunks(n, c * kh * kw * ho * width * xp.itemsize)
        cols = np.empty((chunks[0].stop, c * kh * kw, ho * width), xp.dtype)
    dy_wide = np.zeros((chunks[0].stop, f, ho, width), dy.dtype) if width != wo else None
    for chunk in chunks:
        m = chunk.stop - chunk.start
        if columns is None:
            unfold(xp[chunk], cols[:m])
        if dy_wide is None:
            d = dy[chunk].reshape(m, f, ho * wo)
        else:
            dy_wide[:m, :, :, :wo] = dy[chunk]
            d = dy_wide[:m].reshape(m, f, ho * width)
        dW_t += np.matmul(cols[:m], d.transpose(0, 2, 1)).sum(axis=0)
    return np.ascontiguousarray(dW_t.T).reshape(f, c, kh, kw)


def pad_last(x, padding):
    """`(N, C, H, W)` -> `(N, H + 2*ph, W + 2*pw, C)`: zero padding and channels last, in one copy."""
    (ph, pw), (n, c, h, w) = padding, x.shape
    out = np.zeros((n, h + 2 * ph, w + 2 * pw, c), x.dtype)
    out[:, ph:ph + h, pw:pw + w, :] = x.transpose(0, 2, 3, 1)
    return out


def weights_last(W):
    """W `(F, C, kh, kw)` as `(kh*kw*C, F)`, rows in the `(i, j, c)` order of `patches`."""
    f, c, kh, kw = W.shape
    return np.ascontiguousarray(W.transpose(2, 3, 1, 0)).reshape(kh * kw * c, f)


def channels_last_rows(a):
    """`(N, F, Ho, Wo)` -> `(N*Ho*Wo, F)`, a row per output position, as `patches` orders them."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(-1, a.shape[1])


def patches(xl, kernel, stride, out_hw):
    """Unfold windows channels-last: xl `(N, Hp, Wp, C)` -> patches `(N*Ho*Wo, kh*kw*C)`.

    Row `(n, a, b)` holds the window of sample n whose top-left corner is at
    `(a*sh, b*sw)`, flattened in `(i, j, c)` order; its row i is one contiguous run
    of `kw*C` values of xl.
    """
    (kh, kw), (sh, sw), (ho, wo), (n, _, _, c) = kernel, stride, out_hw, xl.shape
    s_n, s_h, s_w, s_c = xl.strides
    windows = np.ndarray((n, ho, wo, kh, kw, c), xl.dtype, buffer=xl, strides=(s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))
    out = np.empty((n, ho, wo, kh, kw, c), xl.dtype)
    np.copyto(out, windows)
    return out.reshape(n * ho * wo, kh * kw * c)


def correlate_patches(xl, W, stride, out_hw):
    """Cross-correlation over the valid positions of xl `(N, Hp, Wp, C)` (from `pad_last`),
    W `(F, C, kh, kw)` -> `(N, F, Ho, Wo)`, and the patches for `patches_weight_grad`:
    one product `patches @ W_last` `(N*Ho*Wo, kh*kw*C) @ (kh*kw*C, F)`, W_last being W
    in `(i, j, c)` order, then the result channels-first."""
    f, n, (ho, wo) = W.shape[0], xl.shape[0], out_hw
    rows = patches(xl, W.shape[2:], stride, out_hw)
    y = np.empty((n, f, ho, wo), xl.dtype)
    np.copyto(y, (rows @ weights_last(W)).reshape(n, ho, wo, f).transpose(0, 3, 1, 2))
    return y, rows


def patches_weight_grad(rows, dy, W_shape):
    """dL/dW `(F, C, kh, kw)` of `correlate_patches` given dL/dy `(N, F, Ho, Wo)` and its
    patches `(N*Ho*Wo, kh*kw*C)`: `patches.T @ dy_last`, dy channels-last `(N*Ho*Wo, F)`."""
    f, c, kh, kw = W_shape
    return np.ascontiguousarray((rows.T @ channels_last_rows(dy)).reshape(kh, kw, c, f).transpose(3, 2, 0, 1))


class ConvPlan(typing.NamedTuple):
    """Which kernels a convolution runs (`conv_plan`): `forward` (and so its weight
    gradient) "patches", "wide" or "columns"; `input_grad` "patches", "wide", "scatter" or
    "scatter_batch_last"; `keep_columns`: the forward's columns (or patches) are kept for
    the weight gradient instead of unfolded again."""
    forward: str
    input_grad: str
    keep_columns: bool

    def __str__(self):
        return f"{self.forward}{' (kept)' if self.keep_columns else ''}, dx {self.input_grad}"


def conv_plan(n, W_shape, stride, out_hw, itemsize):
    """The kernels a convolution with weights `W_shape` `(F, C, kh, kw)`, `stride` and
    outputs `out_hw` runs on a part of `n` samples of `itemsize` bytes. The rules, each
    measured on the shipped configs (docs/performance.md):

    - forward "patches" at a stride above 1 with C > 1 and at most 64 output positions
      (robust-pgd's and small-adv's second convolutions: their products are narrow);
      "wide" at stride 1 with C > 1 when the columns take more than one chunk (net3-4's
      later convolutions); else "columns" (im2col), its columns kept when they fit one
      chunk (net2's convolutions);
    - input_grad "patches" where the forward took them and C >= 32; else "wide" at
      stride 1 with C > 1; "scatter" for one input channel (a first convolution: the
      attack step's input gradient); else "scatter_batch_last".
    """
    f, c, kh, kw = W_shape
    ho, wo = out_hw
    column_bytes = c * kh * kw * ho * wo * itemsize  # im2col's columns of one sample
    stride_1 = tuple(stride) == (1, 1)
    if not stride_1 and c > 1 and ho * wo <= 64:
        forward, keep = "patches", True
    elif stride_1 and c > 1 and n * column_bytes > CHUNK_BYTES:
        forward, keep = "wide", False  # (its columns, wider than im2col's, take more than one chunk too)
    else:
        forward, keep = "columns", len(batch_chunks(n, column_bytes)) == 1
    if forward == "patches" and c >= 32:
        input_grad = "patches"
    elif stride_1 and c > 1:
        input_grad = "wide"
    else:
        input_grad = "scatter" if c == 1 else "scatter_batch_last"
    return ConvPlan(forward, input_grad, keep)


def input_grad_patches(dy, W, stride, padding, in_hw):
    """dL/dx `(N, C, H, W)` of `correlate_patches` given dL/dy `(N, F, Ho, Wo)`: the patches'
    gradient `dy_last @ W_last.T` `(N*Ho*Wo, kh*kw*C)`, each entry added back to the
    channels-last padded-input pixel `patches` read it from (one strided add per kernel
    offset, along runs of C values), then padding cut off and channels first."""
    (_, c, kh, kw), (n, _, ho, wo), (ph, pw), (h, w) = W.shape, dy.shape, padding, in_hw
    d_rows = (channels_last_rows(dy) @ weights_last(W).T).reshape(n, ho, wo, kh, kw, c)
    dxl = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dy.dtype)
    for k, (rows, cols) in enumerate(kernel_offsets((kh, kw), stride, (ho, wo))):
        dxl[:, rows, cols, :] += d_rows[:, :, :, k // kw, k % kw, :]
    dx = np.empty((n, c, h, w), dy.dtype)
    np.copyto(dx, dxl[:, ph:ph + h, pw:pw + w, :].transpose(0, 3, 1, 2))
    return dx


def input_grad_scatter(dy, W, stride, padding, in_hw):
    """dL/dx of a convolution (col2im, any stride): per sample, the columns' gradient
    `W_rows.T @ dy_n` `(C*kh*kw, Ho*Wo)`, each entry added back to the padded-input
    pixel `im2col` read it from (one strided add per kernel offset), padding cut off."""
    f, c, kh, kw = W.shape
    n, _, ho, wo = dy.shape
    (ph, pw), (h, w) = padding, in_hw
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dy.dtype)
    W_cols = np.ascontiguousarray(W.reshape(f, c * kh * kw).T)
    chunks = batch_chunks(n, c * kh * kw * ho * wo * dy.itemsize)
    dcols = np.empty((chunks[0].stop, c * kh * kw, ho * wo), dy.dtype)
    for chunk in chunks:
        m = chunk.stop - chunk.start
        np.matmul(W_cols, dy[chunk].reshape(m, f, ho * wo), out=dcols[:m])
        d, dx = dcols[:m].reshape(m, c, kh * kw, ho, wo), dxp[chunk]
        for k, (rows, cols) in enumerate(kernel_offsets((kh, kw), stride, (ho, wo))):
            dx[:, :, rows, cols] += d[:, :, k]
    return dxp[:, :, ph:ph + h, pw:pw + w]


def input_grad_scatter_batch_last(dy, W, stride, padding, in_hw):
    """The col2im of `input_grad_scatter` with the samples as the last axis, a chunk of
    them at a time: the columns' gradient of a chunk of m samples is one product
    `W_rows.T @ dy` `(C*kh*kw, Ho*Wo*m)`, and each kernel offset's strided add runs along
    rows of Wo*m values instead of Wo (NumPy's cost per row dominates rows of 14 values).
    For one input channel, the two transposes cost more than that saves."""
    f, c, kh, kw = W.shape
    n, _, ho, wo = dy.shape
    (ph, pw), (h, w) = padding, in_hw
    W_cols = np.ascontiguousarray(W.reshape(f, c * kh * kw).T)
    dx = np.empty((n, c, h, w), dy.dtype)
    for chunk in batch_chunks(n, c * kh * kw * ho * wo * dy.itemsize):
        m = chunk.stop - chunk.start
        dy_last = np.ascontiguousarray(np.moveaxis(dy[chunk], 0, -1))           # (F, Ho, Wo, m)
        dcols = (W_cols @ dy_last.reshape(f, ho * wo * m)).reshape(c, kh * kw, ho, wo, m)
        dxp = np.zeros((c, h + 2 * ph, w + 2 * pw, m), dy.dtype)
        for k, (rows, cols) in enumerate(kernel_offsets((kh, kw), stride, (ho, wo))):
            dxp[:, rows, cols] += dcols[:, k]
        np.copyto(dx[chunk], np.moveaxis(dxp[:, ph:ph + h, pw:pw + w], -1, 0))
    return dx


@functools.cache  # (a few shapes per network, asked for at every batch)
def kernel_offsets(kernel, stride, out_hw):
    """For each kernel offset `(i, j)`, in row-major order: the slices `(rows, cols)` of a
    padded input that offset reads in every window (the windows' outputs are `out_hw`)."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    return tuple((rows, cols) for rows in axis_offsets(kh, sh, ho) for cols in axis_offsets(kw, sw, wo))


@functools.cache
def axis_offsets(kernel, stride, n_out):
    """Along one axis: for each offset `i` in a window, the slice of the input it reads in
    each of the `n_out` windows (`i, i + stride, ...`)."""
    return tuple(slice(i, i + (n_out - 1) * stride + 1, stride) for i in range(kernel))


def first_max(views):
    """Elementwise max of same-shaped arrays, and the index of the first one holding it
    (uint8 unless there are more than 256 arrays)."""
    top = np.maximum(views[0], views[1]) if len(views) > 1 else views[0].copy()
    for v in views[2:]:
        np.maximum(top, v, out=top)
    # The index = how many arrays come before the first holding the max (bools read as 0/1).
    later = views[0] != top
    first = later.astype(np.uint8 if len(views) <= 256 else np.intp)
    for v in views[1:-1]:
        later &= v != top
        first += later.view(np.uint8)
    return top, first


def route_to_first(dy, first, kernel, stride, size, axis):
    """Backward of `first_max` over windows along `axis` (2: H, 3: W): each entry of dy
    goes to offset `first` of its window; `size` is the input's length along `axis`."""
    n_out = dy.shape[axis]
    tiled = stride == kernel and n_out * stride == size  # each input in exactly one window
    shape = dy.shape[:axis] + (size,) + dy.shape[axis + 1:]
    dx = (np.empty if tiled else np.zeros)(shape, dy.dtype)
    parts = [dx[(slice(None),) * axis + (s,)] for s in axis_offsets(kernel, stride, n_out)]
    if not tiled:
        for i, part in enumerate(parts):
            part += dy * (first == i)
        return dx
    for i, part in enumerate(parts[:-1]):
        np.multiply(dy, first == i, out=part)
    # The last offset gets what no other took (exact: at most one of them holds dy, the rest 0).
    last = parts[-1]
    if len(parts) == 1:
        np.copyto(last, dy)
    else:
        np.subtract(dy, parts[0], out=last)
    for part in parts[1:-1]:
        last -= part
    return dx


def shifted_window(a, start, size):
    """`a[..., start_h : start_h + size_h, start_w : start_w + size_w]` of
    `(N, C, H, W)` where indices outside `a` read as zero (start may be negative)."""
    out = np.zeros(a.shape[:2] + tuple(size), dtype=a.dtype)
    src, dst = [], []
    for axis, (s, n) in enumerate(zip(start, size)):
        lo, hi = max(s, 0), min(s + n, a.shape[2 + axis])
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - s, lo - s + max(hi - lo, 0)))
    out[:, :, dst[0], dst[1]] = a[:, :, src[0], src[1]]
    return out
