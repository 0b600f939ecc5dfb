"""The fast kernels behind the layers: convolution by im2col and matrix products (or,
at stride 1, by columns over the padded width; at strides above 1 with small outputs,
by channels-last patches), its input-gradient paths, and max-pool's separable first
maximum.

Every function here computes what a function of `reference.py` computes by its
definition; tests/test_reference.py holds each against it (forward, dx and every
parameter gradient, odd shapes, strides, padding and ties). Read reference.py first.

Variants, and when each wins (one thread, batch 64, `cnnrun bench configs/netN.yaml`
per-layer table and timings of the functions alone; docs/performance.md has the log):

| function | what | wins when |
|---|---|---|
| `im2col` + `correlate` | forward: unfold windows into columns a chunk of samples at a time (CHUNK_BYTES), one `(F, C*kh*kw) @ (C*kh*kw, Ho*Wo)` product per sample | stride above 1 with more than 64 outputs or one input channel, or columns that fit one chunk |
| `correlate_weight_grad` | dW: `columns @ dy.T` per chunk, summed | wherever the forward used im2col |
| `pad_wide` + `wide_columns` + `correlate_wide` | stride 1: the columns over the padded width, each row ONE contiguous copy of `Ho*Wp` values (im2col's rows are `Wo` long), the `Wp - Wo` extra values of each output row cropped off | stride 1, C > 1 and columns over one chunk (`wide_rows_win`: net3-4's later convolutions, 10-20 % faster in each pass); the unfold is 3-4x faster, the products 7-14 % larger |
| `correlate_wide_weight_grad` | dW over the padded width: dy laid out with zeros in the cropped columns | wherever the forward went wide |
| `input_grad_wide` | dx as the correlation of padded dy with the flipped kernel, channels swapped, over the padded width | stride 1 and C > 1 (net2-4's later convolutions; 16->32 at 14x14: 2.09 -> 1.99 ms against the scatter below) |
| `correlate_keeping_columns` | the forward, handing its columns on to dW when a whole part's fit in one chunk, so they are unfolded once | those layers (net2's two convolutions: a training step 5 % faster); larger ones unfold twice, a chunk at a time, which keeps the columns in cache |
| `input_grad_gather` | dx at stride 1 by im2col, the path before `input_grad_wide` | only with WIDE_ROWS off (C >= F) |
| `input_grad_scatter` | dx by col2im, one strided add per kernel offset, per sample | one input channel (a first convolution: the attack step's input gradient); the wide path there unfolds all F channels of dy, 2.4x slower (0.53 -> 1.25 ms, 1->16 channels at 28x28) |
| `input_grad_scatter_batch_last` | col2im with the samples as the last axis, so each add runs along rows of Wo*m values | C > 1 and stride > 1 where `input_grad_patches` does not apply (small-adv's second convolution) |
| `pad_last` + `correlate_patches` | forward: the padded input channels-last `(N, Hp, Wp, C)`, its windows copied as rows of patches `(N*Ho*Wo, kh*kw*C)` (each window row one contiguous run of `kw*C` values), then ONE product over the part `(N*Ho*Wo, kh*kw*C) @ (kh*kw*C, F)` | stride above 1, C > 1 and small outputs (`patches_win`: robust-pgd's second convolution, 32->64 at 14x14 to 7x7, 50 samples: forward 2.42 -> 1.76 ms; im2col makes 50 narrow products `(64, 512) @ (512, 49)` of rows of 7 values); at stride 1 or 14x14 outputs im2col is as fast or faster |
| `patches_weight_grad` | dW: `patches.T @ dy` with dy channels-last, one product over the part, the forward's patches kept | wherever the forward took patches (robust-pgd: 2.42 -> 1.45 ms) |
| `input_grad_patches` | dx by col2im channels-last: `dy_last @ W_last.T` `(N*Ho*Wo, kh*kw*C)` in one product, each kernel offset added back along runs of C values | where the forward took patches and C >= 32 (robust-pgd's second convolution: 2.42 -> 2.18 ms); with 16 channels or fewer the runs are too short (16->32 at 14x14: 0.79 -> 1.03 ms) |
| `first_max` + `route_to_first` | max-pool: the max along W, then along H, and the first maximum's index the same way | always (64x16x28x28 forward 1.6 -> 1.1 ms against one pass over kh*kw offsets) |
| `pad_hw` | padding by `full` plus one copy | always (np.pad: 626 us -> 400 us at 64x16x28x28, and it holds the GIL) |

`patches_win` and `wide_rows_win` pick the forward's path (and so dW's), `conv_input_grad` the dx path,
by shape.

reference: reference.py
"""

import functools

import numpy as np


def out_size(size, kernel, stride, padding):
    """Output length of a sliding window along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


# The columns of one chunk of samples take at most this many bytes, so that they stay in
# the cache between being written and being multiplied (a whole batch's do not).
CHUNK_BYTES = 4 << 20

# Whether `correlate_keeping_columns` hands a one-chunk batch's columns on to the weight
# gradient (False: unfold them again there; benchmarks/kernel_switch.py times both).
KEEP_COLUMNS = True

# Whether stride-1 convolutions take the padded-width path where `wide_rows_win` says it
# wins (False: the engine before it, im2col everywhere; benchmarks/kernel_switch.py times both).
WIDE_ROWS = True


# Whether convolutions with a stride above 1 and small outputs take the channels-last
# patches where `patches_win` says it wins (False: im2col, the engine before it;
# benchmarks/kernel_switch.py times both).
PATCHES = True


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


def correlate(xp, W, stride):
    """Cross-correlation over the valid positions (a convolution layer's forward, no padding):
    xp `(N, C, Hp, Wp)`, W `(F, C, kh, kw)` -> `(N, F, Ho, Wo)`.

    Chunk by chunk of samples: unfold into columns, then one matrix product per
    sample, `(F, C*kh*kw) @ (C*kh*kw, Ho*Wo)`, written straight into the output.
    """
    return correlate_keeping_columns(xp, W, stride)[0]


def correlate_keeping_columns(xp, W, stride):
    """`correlate`, and its columns `(N, C*kh*kw, Ho*Wo)` when the whole batch's fit in
    one chunk (else None), for `correlate_weight_grad` to reuse instead of unfolding again."""
    kh, kw = W.shape[2:]
    out_hw = out_size(xp.shape[2], kh, stride[0], 0), out_size(xp.shape[3], kw, stride[1], 0)
    return unfold_and_multiply(xp, W, out_hw, lambda part, out: im2col(part, (kh, kw), stride, out))


def unfold_and_multiply(xp, W, out_hw, unfold):
    """`(N, F, *out_hw)`: chunk by chunk of samples, `unfold(xp[chunk], columns)` fills the
    columns `(m, C*kh*kw, prod(out_hw))`, then one `(F, C*kh*kw)` product per sample;
    and the columns when the whole batch's fit in one chunk (else None)."""
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
    return y, (cols if KEEP_COLUMNS and len(chunks) == 1 else None)


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


def correlate_wide(xq, W, ho):
    """Stride-1 cross-correlation over the padded width: xq `(N, C, Hp + 1, Wp)` (from
    `pad_wide`), W `(F, C, kh, kw)` -> `(N, F, Ho, Wp)`, of which the first Wo = Wp - kw + 1
    columns are the output; and the columns, as `correlate_keeping_columns` gives them.
    Chunk by chunk of samples: `wide_columns`, then `(F, C*kh*kw) @ (C*kh*kw, Ho*Wp)`
    per sample."""
    kernel = W.shape[2:]
    return unfold_and_multiply(xq, W, (ho, xq.shape[3]), lambda part, out: wide_columns(part, kernel, ho, out))


def correlate_wide_weight_grad(xq, dy, kernel, columns=None):
    """dL/dW `(F, C, kh, kw)` of `correlate_wide(xq, W, Ho)` given dL/dy `(N, F, Ho, Wo)`:
    per chunk, dy laid out over the padded width with zeros in the cropped columns
    (so the values no window owns add nothing), then `columns_n @ dy_n.T` summed."""
    (kh, kw), (n, f, ho, wo), (c, wp) = kernel, dy.shape, (xq.shape[1], xq.shape[3])
    dW_t = np.zeros((c * kh * kw, f), dy.dtype)
    if columns is not None:
        chunks, cols = [slice(0, n)], columns
    else:
        chunks = batch_chunks(n, c * kh * kw * ho * wp * xq.itemsize)
        cols = np.empty((chunks[0].stop, c * kh * kw, ho * wp), xq.dtype)
    dy_wide = np.zeros((chunks[0].stop, f, ho, wp), dy.dtype)
    for chunk in chunks:
        m = chunk.stop - chunk.start
        if columns is None:
            wide_columns(xq[chunk], kernel, ho, cols[:m])
        dy_wide[:m, :, :, :wo] = dy[chunk]
        dW_t += np.matmul(cols[:m], dy_wide[:m].reshape(m, f, ho * wp).transpose(0, 2, 1)).sum(axis=0)
    return np.ascontiguousarray(dW_t.T).reshape(f, c, kh, kw)


def input_grad_wide(dy, W, padding, in_hw):
    """dL/dx `(N, C, H, W)` of a stride-1 convolution given dL/dy `(N, F, Ho, Wo)`: the
    correlation of dy (zero-padded) with the flipped kernel, its input and output channels
    swapped, dx[h] = sum_i dy[h + p - i] * W[i], by `correlate_wide`."""
    (kh, kw), (ph, pw), (h, w) = W.shape[2:], padding, in_hw
    window = shifted_window(dy, (ph - kh + 1, pw - kw + 1), (h + kh, w + kw - 1))
    dx_wide, _ = correlate_wide(window, W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), h)
    return dx_wide[:, :, :, :w]


def correlate_weight_grad(xp, dy, kernel, stride, columns=None):
    """dL/dW of `correlate(xp, W, stride)` given dL/dy `(N, F, Ho, Wo)`:
    the sum over samples of `dy_n (F, Ho*Wo) @ columns_n.T` -> `(F, C, kh, kw)`,
    computed transposed (`columns_n @ dy_n.T`), the faster shape for BLAS.
    `columns`: the forward's, from `correlate_keeping_columns` (unfolded anew if None)."""
    (kh, kw), (n, f, ho, wo), c = kernel, dy.shape, xp.shape[1]
    dW_t = np.zeros((c * kh * kw, f), dy.dtype)
    if columns is not None:
        chunks, cols = [slice(0, n)], columns
    else:
        chunks = batch_chunks(n, c * kh * kw * ho * wo * xp.itemsize)
        cols = np.empty((chunks[0].stop, c * kh * kw, ho * wo), xp.dtype)
    for chunk in chunks:
        m = chunk.stop - chunk.start
        if columns is None:
            im2col(xp[chunk], kernel, stride, cols[:m])
        dW_t += np.matmul(cols[:m], dy[chunk].reshape(m, f, ho * wo).transpose(0, 2, 1)).sum(axis=0)
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


def patches_win(W_shape, stride, out_hw):
    """Whether a convolution takes the channels-last patches (`correlate_patches` and its
    weight gradient): a stride above 1, more than one input channel and at most 64
    output positions (measured: robust-pgd's and small-adv's second convolutions, 7x7
    outputs, forward 1.4-1.9x and dW 1.0-1.7x faster; at 14x14 outputs the forward is
    slower, and with one input channel the transposes cost more than they save)."""
    return PATCHES and tuple(stride) != (1, 1) and W_shape[1] > 1 and out_hw[0] * out_hw[1] <= 64


def wide_rows_win(n, W_shape, stride, out_hw, itemsize):
    """Whether a stride-1 convolution of `n` samples takes the padded-width path
    (`correlate_wide` and its weight gradient): when it has more than one input channel
    and its columns take more than one chunk (measured: there each pass is 10-20 %
    faster; on smaller layers, whose columns are kept for the weight gradient, and on
    one input channel, im2col is as fast or faster)."""
    f, c, kh, kw = W_shape
    return (WIDE_ROWS and stride == (1, 1) and c > 1
            and n * c * kh * kw * out_hw[0] * out_hw[1] * itemsize > CHUNK_BYTES)


def conv_input_grad(dy, W, stride, padding, in_hw):
    """dL/dx `(N, C, H, W)` of a convolution layer given dL/dy `(N, F, Ho, Wo)`, by
    whichever of the three ways below is fastest for its shape (measured): over the
    padded width for stride 1 and more than one input channel; scatter per sample for
    one input channel (a first convolution); channels-last where the forward took the
    patches and C >= 32; scatter with the batch last otherwise.
    With WIDE_ROWS off, as before that path: gather by im2col at stride 1 and C >= F."""
    f, c = W.shape[:2]
    if c >= 32 and patches_win(W.shape, stride, dy.shape[2:]):
        return input_grad_patches(dy, W, stride, padding, in_hw)
    if WIDE_ROWS and stride == (1, 1) and c > 1:
        return input_grad_wide(dy, W, padding, in_hw)
    if not WIDE_ROWS and stride == (1, 1) and c >= f:
        return input_grad_gather(dy, W, padding, in_hw)
    if c == 1:
        return input_grad_scatter(dy, W, stride, padding, in_hw)
    return input_grad_scatter_batch_last(dy, W, stride, padding, in_hw)


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


def input_grad_gather(dy, W, padding, in_hw):
    """`input_grad_wide` by im2col: the engine's dx at stride 1 and C >= F before the
    padded-width path, kept as what WIDE_ROWS = False falls back to."""
    (kh, kw), (ph, pw), (h, w) = W.shape[2:], padding, in_hw
    window = shifted_window(dy, (ph - kh + 1, pw - kw + 1), (h + kh - 1, w + kw - 1))
    return correlate(window, W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), (1, 1))


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
