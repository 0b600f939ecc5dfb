"""Throughput of a configured network on random inputs: whole steps and per layer."""

import os
import subprocess
import sys
import time

import numpy as np

from cnnrun.robustness import attacks
from cnnrun.nn import make_optimizer, one_hot
from cnnrun.nn import sequence
from cnnrun.nn.layers import walk


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _block_seconds(fn, calls=3):
    """Seconds per call over `calls` calls in a row, after one untimed call: the other
    side's idle threads spin for a while after it stops (OpenBLAS and OpenMP threads
    wait busily) and would slow the first call of this side."""
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _all_seconds(fn, repeats, warmup):
    """Seconds of each of `repeats` timed calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return np.array([_seconds(fn) for _ in range(repeats)])


def _median_seconds(fn, repeats, warmup):
    return float(np.median(_all_seconds(fn, repeats, warmup)))


# A benchmark whose repeats of one step differ by more than this (slowest / fastest) was
# disturbed, most often by other work on the machine: `benchmark` says so.
STEADY_SPREAD = 1.25


def load_per_core():
    """The 1-minute load average per core (other processes' work waiting for a core), or None."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (OSError, AttributeError):
        return None


def _random_batch(net, batch_size, rng):
    """Inputs `(batch_size, *input_shape)` in [0, 1], integer labels and their one-hot rows."""
    x = rng.random((batch_size,) + net.input_shape, dtype=np.float32).astype(net.dtype)
    k = net.output_shape[0]
    labels = rng.integers(0, k, batch_size)
    return x, labels, one_hot(labels, k, net.dtype)


def _timed_step(net, train_cfg, x, y):
    """A training step with the config's optimizer at a tiny learning rate: the update's
    cost is what is timed, not where it leads."""
    optimizer = make_optimizer(dict(train_cfg, lr=1e-6, lr_decay=1.0, schedule=None))

    def train_step():
        net.train()  # (dropout active, as in training)
        net.loss_and_backward(x, y)
        net.eval()
        optimizer.step(net.param_grad_pairs())

    return train_step


def gemm_shapes(layer, n, out_shape, first):
    """The matrix products `[(m, k, p), ...]` ((m, k) @ (k, p)) a layer's training step
    makes at batch `n`: forward, weight gradient and (unless `first`, the first layer
    with parameters) input gradient."""
    if layer.kind == "conv":
        (c, h, w), (kh, kw), (f, ho, wo) = layer.in_shape, layer.kernel, out_shape
        shapes = [(f, c * kh * kw, n * ho * wo), (f, n * ho * wo, c * kh * kw)]
        return shapes + ([] if first else [(c, f * kh * kw, n * h * w)])
    if layer.kind == "dense":
        d, u = layer.in_shape[0], layer.units
        return [(n, d, u), (d, n, u)] + ([] if first else [(n, u, d)])
    if layer.kind == "residual":  # its layers' (each in its place: inner_shapes are their outputs)
        return [shape for sub, out in zip(layer.sublayers(), layer.inner_shapes) for shape in gemm_shapes(sub, n, out, False)]
    return []


def gemm_seconds(shapes, dtype, repeats, warmup, rng):
    """Seconds of the products `shapes`, each on random matrices, timed on their own: the
    fastest of `repeats` (a busy machine only ever adds time, so the minimum is the
    figure least moved by it)."""
    total = 0.0
    for m, k, p in shapes:
        a, b = rng.random((m, k), dtype=np.float32).astype(dtype), rng.random((k, p), dtype=np.float32).astype(dtype)
        total += float(_all_seconds(lambda: a @ b, repeats, warmup).min())
    return total


# Environment variables that make OpenBLAS load other kernels than its own pick for the CPU.
OPENBLAS_FORCING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# Prints the kernel set NumPy's BLAS loads, in a fresh process.
_KERNELS_SCRIPT = ("import numpy, threadpoolctl; print(next((lib.get('architecture') for lib in "
                   "threadpoolctl.threadpool_info() if lib.get('user_api') == 'blas'), None))")


def blas_info():
    """The BLAS library NumPy's matrix products run on: its name, version and kernel set
    (OpenBLAS picks one for the CPU when it loads, unless OPENBLAS_CORETYPE names one).
    When it does, `own_kernels` is the set OpenBLAS picks without OPENBLAS_FORCING (asked
    of a fresh Python; None if that fails): the figures of the forced set say less about
    what this CPU can do."""
    from threadpoolctl import threadpool_info
    lib = next((lib for lib in threadpool_info() if lib.get("user_api") == "blas"), {})
    forced = os.environ.get("OPENBLAS_CORETYPE") if lib.get("internal_api") == "openblas" else None
    info = dict(library=lib.get("internal_api"), version=lib.get("version"), kernels=lib.get("architecture"),
                forced=forced)
    if forced:
        info["own_kernels"] = own_kernels()
    return info


def own_kernels():
    """The kernel set NumPy's BLAS loads in a fresh Python without OPENBLAS_FORCING, or None."""
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_FORCING}
    try:
        out = subprocess.run([sys.executable, "-c", _KERNELS_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return None if out in ("", "None") else out


def benchmark(net, train_cfg, batch_size, repeats=7, warmup=2, seed=0):
    """Time a training step (forward, loss, backward, the config's optimizer update) and
    an evaluation forward pass on a random batch `(batch_size, *input_shape)`.

    With adversarial training configured (`train_cfg["adversarial"]`), the making of
    the adversarial part of a batch is timed on its own, and the training figures
    with it included are reported beside the plain step.
    Returns a dict with samples/s and a per-layer list of median forward/backward ms,
    with the time of each layer's matrix products timed alone at the same shapes
    (`gemm_ms`), and their share of the training step (`gemm_share`).
    """
    rng = np.random.default_rng(seed)
    x, _, y = _random_batch(net, batch_size, rng)
    load_before = load_per_core()
    train_times = _all_seconds(_timed_step(net, train_cfg, x, y), repeats, warmup)
    train_s = float(np.median(train_times))
    eval_s = _median_seconds(lambda: net.forward(x), repeats, warmup)
    result = dict(batch_size=batch_size, repeats=repeats, parameters=int(net.num_parameters()),
                  optimizer=train_cfg["optimizer"], threads=net.threads,
                  train_samples_per_s=batch_size / train_s, eval_samples_per_s=batch_size / eval_s,
                  train_step_ms=train_s * 1e3, eval_step_ms=eval_s * 1e3, blas=blas_info(),
                  train_step_range_ms=[float(train_times.min() * 1e3), float(train_times.max() * 1e3)],
                  load_per_core=load_before)
    adversary = attacks.adversary(train_cfg["adversarial"], np.random.default_rng(seed))
    if adversary:
        adv_s = _median_seconds(lambda: adversary(net, x, y), repeats, warmup)
        result.update(adversarial_batch_ms=adv_s * 1e3,
                      adversarial_train_samples_per_s=batch_size / (train_s + adv_s))

    # Per layer: the same passes, each layer timed on its own (the softmax backward
    # is fused into the loss, and no layer up to the first with parameters needs an input
    # gradient in training).
    forward_ms = [[] for _ in net.layers]
    backward_ms = [[] for _ in net.layers]
    need_dx = sequence.needs_input_grad(net.layers[:-1], False, True)
    for layer in walk(net.layers):  # in training mode, as in a step (dropout drawing, batch norm's batch statistics)
        layer.training, layer.rng = True, np.random.default_rng(seed)
    for _ in range(repeats):
        h = x
        for i, layer in enumerate(net.layers):
            start = time.perf_counter()
            h = layer.forward(h)
            forward_ms[i].append((time.perf_counter() - start) * 1e3)
        grad = (h - y) / batch_size
        for i in range(len(net.layers) - 2, -1, -1):
            start = time.perf_counter()
            grad = net.layers[i].backward(grad, need_dx=need_dx[i])
            backward_ms[i].append((time.perf_counter() - start) * 1e3)
    for layer in walk(net.layers):
        layer.training = False
    first = next((i for i, layer in enumerate(net.layers) if layer.params), None)
    gemm_ms = [gemm_seconds(gemm_shapes(layer, batch_size, net.shapes[i + 1], i == first), net.dtype, repeats, warmup,
                            rng) * 1e3 for i, layer in enumerate(net.layers)]
    result["layers"] = [dict(index=i, kind=layer.kind, output_shape=list(net.shapes[i + 1]),
                             forward_ms=float(np.median(forward_ms[i])),
                             backward_ms=float(np.median(backward_ms[i])) if backward_ms[i] else None,
                             gemm_ms=gemm_ms[i], plan=str(layer.plan) if getattr(layer, "plan", None) else None)
                        for i, layer in enumerate(net.layers)]
    result["part_plans"] = {i: str(plan) for i, plan in net.conv_plans(batch_size).items()}
    result["gemm_ms"] = float(sum(gemm_ms))
    result["gemm_share"] = result["gemm_ms"] / result["train_step_range_ms"][0]  # fastest against fastest
    result["warnings"] = steadiness_warnings(result)
    return result


def steadiness_warnings(result):
    """Lines saying why a benchmark's figures may not be the machine's (empty if none):
    repeats that spread widely, a machine already loaded when it started, or matrix
    products that took longer alone than the whole step they are part of."""
    out = []
    fastest, slowest = result["train_step_range_ms"]
    if slowest > STEADY_SPREAD * fastest:
        out.append(f"the training step took {fastest:.1f} to {slowest:.1f} ms over the repeats (more than "
                   f"{STEADY_SPREAD:g}x apart): the machine was busy, so these figures are not steady")
    load = result.get("load_per_core")
    if load is not None and load > 0.5:
        out.append(f"the machine was already loaded when timing began (1-minute load {load:.1f} per core): "
                   f"other work shares the cores, so these figures are lower than the machine's")
    if result["gemm_share"] > 1:
        out.append(f"the matrix products timed alone took longer than the whole step "
                   f"({100 * result['gemm_share']:.0f} %): they were disturbed, so the GEMM share is not meaningful")
    if out:
        out.append("time again on an idle machine, or with more --repeats")
    return out


def against_torch(net, train_cfg, batch_size, repeats=7, warmup=2, seed=0):
    """Time cnnrun and its PyTorch twin (same layers, same weights) on the same random
    batch, in alternation A B A B so that a machine that speeds up or slows down does
    not bias the ratio: a training step (the config's optimizer), an evaluation pass
    and one attack step (the loss gradient on the input only). PyTorch uses as many
    threads as it finds cores, as NumPy's BLAS does.

    Returns `{"train"|"eval"|"attack_step": {"cnnrun": samples/s, "torch": samples/s,
    "ratio": cnnrun / torch}, "torch_version", "torch_threads"}`.
    """
    import torch

    from cnnrun import torch_twin

    x, labels, y = _random_batch(net, batch_size, np.random.default_rng(seed))
    model = torch_twin.twin(net)
    xt, labels_t = torch.from_numpy(x), torch.from_numpy(labels)
    optimizer_t = torch_twin.make_optimizer(model, dict(train_cfg, lr=1e-6, lr_decay=1.0, schedule=None))

    def evaluate_t():
        with torch.no_grad():
            model(xt)

    pairs = {"train": (_timed_step(net, train_cfg, x, y), lambda: torch_twin.train_step(model, optimizer_t, xt, labels_t)),
             "eval": (lambda: net.forward(x), evaluate_t),
             "attack_step": (lambda: net.loss_and_backward(x, y, need_input_grad=True, need_param_grads=False),
                             lambda: torch_twin.input_gradient(model, xt, labels_t))}
    result = dict(batch_size=batch_size, repeats=repeats, torch_version=torch.__version__,
                  torch_threads=torch.get_num_threads())
    for name, (ours, theirs) in pairs.items():
        for _ in range(warmup):
            ours(), theirs()
        times = np.array([(_block_seconds(ours), _block_seconds(theirs)) for _ in range(repeats)])
        ours_s, theirs_s = np.median(times, axis=0)
        result[name] = dict(cnnrun=batch_size / ours_s, torch=batch_size / theirs_s, ratio=theirs_s / ours_s)
    return result
