"""What keeping the forward's columns for the weight gradient saves in a training step.

    python benchmarks/keep_columns.py configs/net2.yaml --rounds 30

A convolution whose columns (im2col) fit one chunk (kernels.CHUNK_BYTES) hands them
from the forward on to the weight gradient instead of unfolding them again
(`kernels.KEEP_COLUMNS`). This times the config's training step both ways in one
process, in alternation (8 steps kept, 8 unfolded again, and so on), on a random
batch of the config's batch size, and prints the median of each and of the ratios
pair by pair: on a noisy machine the ratio of neighbours holds where two separate
runs do not. The two ways give the same bits (tests/test_layer_gradients.py).
"""

import argparse
import time

import numpy as np

from cnnrun import api, bench
from cnnrun.nn import kernels


def step_ms(step, keep, steps):
    kernels.KEEP_COLUMNS = keep
    step()  # the first step after a switch is not timed
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    cfg = api.load_config(args.config)
    net = api.build_network(cfg)
    x, _, y = bench._random_batch(net, cfg["train"]["batch_size"], np.random.default_rng(0))
    step = bench._timed_step(net, cfg["train"], x, y)
    kept, anew = [], []
    for _ in range(args.rounds):
        kept.append(step_ms(step, True, args.steps))
        anew.append(step_ms(step, False, args.steps))
    kept, anew = np.array(kept), np.array(anew)
    ratio = anew / kept
    print(f"{cfg['name']}: batch {len(x)}, {net.threads} threads, {args.rounds} rounds of {args.steps} steps each way")
    print(f"kept {np.median(kept):.2f} ms/step, unfolded again {np.median(anew):.2f} ms/step; "
          f"speed-up {np.median(ratio):.3f}x (quartiles {np.quantile(ratio, 0.25):.3f}-{np.quantile(ratio, 0.75):.3f})")


if __name__ == "__main__":
    main()
