"""What one rule of the convolution plan (`kernels.conv_plan`) saves, timed both ways in
one process: the plan as the engine makes it ("on") against the plan with that rule
undone ("off"), every convolution forced onto it.

    python benchmarks/kernel_switch.py configs/net4.yaml --switch WIDE --rounds 20
    python benchmarks/kernel_switch.py configs/net2.yaml --switch KEEP_COLUMNS --rounds 30
    python benchmarks/kernel_switch.py configs/robust-pgd.yaml --switch PATCHES --rounds 30
    python benchmarks/kernel_switch.py configs/net1.yaml --switch SCATTER --rounds 30

The rules undone:
- WIDE: stride-1 convolutions whose columns take more than one chunk unfold them over
  the padded width (`correlate_wide`), and dx at stride 1 is taken the same way; off,
  im2col and dx scattered back (col2im, the batch last).
- KEEP_COLUMNS: a convolution whose columns fit one chunk hands them from the forward
  on to the weight gradient; off, it unfolds them again.
- PATCHES: convolutions with a stride above 1, more than one input channel and small
  outputs unfold channels-last patches and make one product over the part
  (`correlate_patches`); off, im2col and dx scattered back with the batch last.
- SCATTER: a one-channel convolution's dx scattered back per sample; off, with the
  batch last, as for more channels.

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
from cnnrun.nn import kernels, layers, parallel
from threadpoolctl import threadpool_limits


def undone(switch, plan):
    """`plan` with the rule `switch` undone."""
    if switch == "WIDE" and plan.forward == "wide":
        plan = plan._replace(forward="columns")
    if switch == "WIDE" and plan.input_grad == "wide":
        plan = plan._replace(input_grad="scatter_batch_last")
    if switch == "KEEP_COLUMNS":
        plan = plan._replace(keep_columns=False)
    if switch == "PATCHES" and plan.forward == "patches":
        plan = plan._replace(forward="columns", input_grad="scatter_batch_last", keep_columns=False)
    if switch == "SCATTER" and plan.input_grad == "scatter":
        plan = plan._replace(input_grad="scatter_batch_last")
    return plan


def use(switch, on):
    """The engine's plan (on), or the plan with the rule `switch` undone (off)."""
    layers.conv_plan = kernels.conv_plan if on else (lambda *shape: undone(switch, kernels.conv_plan(*shape)))


def call_ms(fn, switch, on, calls, setup=None):
    use(switch, on)
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
    parser.add_argument("--switch", choices=["WIDE", "KEEP_COLUMNS", "PATCHES", "SCATTER"], default="WIDE")
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
        use(args.switch, True)
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
    use(args.switch, True)


if __name__ == "__main__":
    main()
