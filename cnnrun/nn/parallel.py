"""Data parallelism on the cores of one machine, and memory that stays mapped.

A batch is cut into parts of at most PART_SIZE samples (two at least), and each
part runs through its own copy of the layers (`Layer.replica`: same parameters,
its own cache and gradients), the parts side by side in threads. NumPy releases
the GIL in its array loops and matrix products, so the threads use several cores
in the elementwise passes too, where a BLAS library's own threads only speed up
the matrix products. BLAS runs one thread in each part. What the threads cannot
run side by side is the Python between NumPy calls, which holds the GIL: the
layers keep it short (no np.pad or sliding_window_view in a hot path: layers.py).

The parts depend only on the batch size, and BLAS's threads are always one, so
a batch gives the same numbers on 1 thread or on 8 (OpenBLAS on 2 threads sums
some products in another order).
"""

import contextlib
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

PART_SIZE = 64

_pools = {}         # threads -> ThreadPoolExecutor, made on first use
_blas = []          # the BLAS libraries' threadpoolctl controllers, found on first use


def parts(n):
    """Slices cutting a batch of `n` into ceil(n / PART_SIZE) parts of nearly equal size,
    and into two if that is one (and n > 1), so that two cores share it."""
    k = max(-(-n // PART_SIZE), min(n, 2), 1)  # an empty batch is one empty part
    return [slice(n * i // k, n * (i + 1) // k) for i in range(k)]


def default_threads():
    """`CNNRUN_THREADS` if set, else the number of cores this process may run on."""
    value = os.environ.get("CNNRUN_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            from cnnrun.errors import CnnrunError
            raise CnnrunError(f"CNNRUN_THREADS={value!r}: expected a whole number of threads, 1 or more")
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run(fn, items, threads):
    """`[fn(item) for item in items]`, on up to `threads` threads at once, BLAS on one."""
    items = list(items)
    with one_blas_thread():
        if threads <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="cnnrun-part")
        return list(_pools[threads].map(fn, items))


@contextlib.contextmanager
def one_blas_thread():
    """BLAS on one thread inside the block, as many as before after it. It calls the
    libraries' controllers directly: threadpoolctl's `limit` runs three times the Python."""
    if not _blas:
        from threadpoolctl import ThreadpoolController
        _blas.append(ThreadpoolController().select(user_api="blas").lib_controllers)
    before = [lib.get_num_threads() for lib in _blas[0]]
    for lib in _blas[0]:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_blas[0], before):
            lib.set_num_threads(n)


def keep_freed_memory():
    """Let this process keep freed arrays of up to 32 MiB for reuse (glibc's malloc).

    Every layer makes new arrays of a few MiB at every batch. By default glibc maps
    arrays over 128 KiB afresh and returns them when freed (its threshold rises later,
    and Dask's workers set MALLOC_TRIM_THRESHOLD_=65536, which stops that), so they
    are faulted in again at each batch: with this, net1 trains 40 % faster and net4
    8 % (in a Dask worker, a third of the time went to the kernel)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to undo
        return
    libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
