"""What one of the fast kernels' switches saves, timed both ways in one process.

    python benchmarks/kernel_switch.py configs/net4.yaml --switch WIDE_ROWS --rounds 20
    python benchmarks/kernel_switch.py configs/net2.yaml --switch KEEP_COLUMNS --rounds 30
    python benchmarks/kernel_switch.py configs/robust-pgd.yaml --switch PATCHES --rounds 30

The switches (cnnrun/nn/kernels.py):
- WIDE_ROWS: stride-1 convolutions whose columns take more than one chunk unfold them
  over the padded width (`correlate_wide`), and dx at stride 1 is taken the same way;
  off, every convolution uses im2col and dx is scattered back (col2im).
- KEEP_COLUMNS: a convolution whose columns fit one chunk hands them from the forward
  on to the weight gradient instead of unfolding them again.
- PATCHES: convolutions with a stride above 1, more than one input channel and small
  outputs unfold channels-last patches and make one product over the part
  (`correlate_patches`); off, they use im2col.

This times the config's training step, evaluation pass and attack step (the loss
gradient on the input only) with the switch on and off in alternation (8 calls on,
8 off, and so on, the first call after a switch untimed), on a random batch of the
config's batch size, and prints the median of each and of the ratios pair by pair:
on a noisy machine the ratio of neighbours holds where two separate runs do not.
With --layers it times instead each convolution of the network alone, forward and
backward (dx and dW), on one part of the batch (64 samples, 50 for a batch of 100)
and one thread, as each of a training step's threads runs it.
Both ways agree with the reference engine (tests/test_reference.py).
"""

import argparse
import time

import numpy as np

from cnnrun import api, bench
from cnnrun.nn import kernels, parallel
from threadpoolctl import threadpool_limits


def call_ms(fn, switch, on, calls, setup=None):
    setattr(kernels, switch, on)
    if setup:  # (a backward's forward, so that its cache is of the path switched to)
        setup()
    fn()  # the first call after a switch is not timed
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def conv_layers(net, switch, rounds, calls, rng, part):
    """Per convolution: median ms of forward and backward with the switch on and off, on
    `part` samples."""
    for index, layer in enumerate(net.layers):
        if layer.kind != "conv":
            continue
        x = rng.standard_normal((part,) + net.shapes[index]).astype(net.dtype)
        dy = rng.standard_normal((part,) + net.shapes[index + 1]).astype(net.dtype)
        twin = layer.replica()
        times = {}
        for name, fn, setup in (("forward", lambda: twin.forward(x), None),
                                ("backward", lambda: twin.backward(dy), lambda: twin.forward(x))):
            times[name] = np.array([(call_ms(fn, switch, True, calls, setup), call_ms(fn, switch, False, calls, setup))
                                    for _ in range(rounds)]).T
        (c, h, w), (f, ho, wo) = net.shapes[index], net.shapes[index + 1]
        print(f"layer {index:2d} conv {c}->{f} at {h}x{w}: " + ", ".join(
            f"{name} on {np.median(on):.2f} ms, off {np.median(off):.2f} ms ({np.median(off / on):.2f}x)"
            for name, (on, off) in times.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--switch", choices=["WIDE_ROWS", "KEEP_COLUMNS", "PATCHES"], default="WIDE_ROWS")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--layers", action="store_true", help="time each convolution alone (one part, one thread)")
    args = parser.parse_args()
    parallel.keep_freed_memory()  # as the command line does
    cfg = api.load_config(args.config)
    net = api.build_network(cfg)
    if args.layers:
        part = parallel.parts(cfg["train"]["batch_size"])[0].stop  # (the first part of a batch)
        print(f"{cfg['name']}: {args.switch} on against off, {part} samples, one thread, "
              f"{args.rounds} rounds of {args.calls} calls each way")
        with threadpool_limits(1):
            conv_layers(net, args.switch, args.rounds, args.calls, np.random.default_rng(0), part)
        setattr(kernels, args.switch, True)
        return
    x, _, y = bench._random_batch(net, cfg["train"]["batch_size"], np.random.default_rng(0))
    passes = {"train": bench._timed_step(net, cfg["train"], x, y),
              "eval": lambda: net.forward(x),
              "attack_step": lambda: net.loss_and_backward(x, y, need_input_grad=True, need_param_grads=False)}
    print(f"{cfg['name']}: {args.switch} on against off, batch {len(x)}, {net.threads} threads, "
          f"{args.rounds} rounds of {args.calls} calls each way")
    for name, fn in passes.items():
        on, off = np.array([(call_ms(fn, args.switch, True, args.calls), call_ms(fn, args.switch, False, args.calls))
                            for _ in range(args.rounds)]).T
        ratio = off / on
        print(f"{name:12s} on {np.median(on):7.2f} ms, off {np.median(off):7.2f} ms; speed-up {np.median(ratio):.3f}x "
              f"(quartiles {np.quantile(ratio, 0.25):.3f}-{np.quantile(ratio, 0.75):.3f})")
    setattr(kernels, args.switch, True)


if __name__ == "__main__":
    main()
