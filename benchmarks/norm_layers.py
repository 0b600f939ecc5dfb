"""Batch norm (training: the whole batch's statistics, over the parts) beside instance norm,
forward and backward, on net2's shapes: the per-layer cost of switching net2 to net2-bn.

    python benchmarks/norm_layers.py [--batch 128] [--repeats 50]

Times the layer as a training step runs it: a batch of `--batch` in parts of at most 64
on the network's threads (CNNRUN_THREADS, else every core), the two layers timed in
alternation; prints the fastest and the median of the repeats in ms.
"""

import argparse
import time

import numpy as np

from cnnrun.nn import parallel, sequence
from cnnrun.nn.layers import BatchNorm, InstanceNorm


def timed(layer_class, shape, batch, threads, rng):
    """`() -> seconds` of one forward and backward of `layer_class` over a batch in parts."""
    parts = parallel.parts(batch)
    layer = layer_class()
    layer.build(shape)
    layer.init_params(rng, np.dtype(np.float32))
    replicas = [layer.replica() for _ in parts]
    for replica in replicas:
        replica.training = True
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    xs, dys = [x[p] for p in parts], [x[p] * 0.5 for p in parts]
    columns = [[r] for r in replicas]

    def run():
        start = time.perf_counter()
        sequence.forward(columns, xs, threads)
        sequence.backward(columns, dys, [True], True, threads)
        return time.perf_counter() - start
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    rng, threads = np.random.default_rng(0), parallel.default_threads()
    print(f"batch {args.batch}, {threads} threads, {args.repeats} repeats (ms: fastest, median)")
    for shape in ((8, 28, 28), (16, 14, 14)):
        runs = {cls.kind: timed(cls, shape, args.batch, threads, rng) for cls in (InstanceNorm, BatchNorm)}
        times = {kind: [] for kind in runs}
        for _ in range(args.repeats):
            for kind, run in runs.items():
                times[kind].append(run() * 1e3)
        print(f"{'x'.join(map(str, shape)):>9}  " + "   ".join(
            f"{kind} {min(t):.2f} / {np.median(t):.2f}" for kind, t in times.items()))


if __name__ == "__main__":
    main()
