"""cnnrun and its PyTorch twin each timed on its own, not in alternation.

    python benchmarks/each_alone.py configs/robust-pgd.yaml --rounds 15

`cnnrun bench --against torch` times the two in alternation, so that a machine that
speeds up or slows down does not bias the ratio. But after each call PyTorch's OpenMP
threads wait busily on every core for about 5 ms, beside cnnrun's first calls after
it; a short step (an evaluation pass of robust-pgd, 3 ms) loses most. This times each
side's evaluation pass and training step (the config's optimizer at a tiny learning
rate, as `bench` does) in `rounds` blocks of 8 calls in a row, after 5 untimed calls,
one side after the other, and prints the median samples/s and the ratio. On a machine
that drifts, run it twice.
"""

import argparse
import time

import numpy as np

from cnnrun import api, bench, torch_twin
from cnnrun.nn import parallel


def samples_per_s(fn, n, rounds, calls=8):
    for _ in range(5):
        fn()
    blocks = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        blocks.append((time.perf_counter() - start) / calls)
    return n / float(np.median(blocks))


def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    parallel.keep_freed_memory()  # as the command line does
    cfg = api.load_config(args.config)
    net = api.build_network(cfg)
    x, labels, y = bench._random_batch(net, cfg["train"]["batch_size"], np.random.default_rng(0))
    model, xt, labels_t = torch_twin.twin(net), torch.from_numpy(x), torch.from_numpy(labels)
    optimizer_t = torch_twin.make_optimizer(model, dict(cfg["train"], lr=1e-6))

    def evaluate_t():
        with torch.no_grad():
            model(xt)

    pairs = {"train": (bench._timed_step(net, cfg["train"], x, y),
                       lambda: torch_twin.train_step(model, optimizer_t, xt, labels_t)),
             "eval": (lambda: net.forward(x), evaluate_t)}
    print(f"{cfg['name']}: batch {len(x)}, {net.threads} threads, PyTorch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {args.rounds} blocks of 8 calls each, each side alone")
    for name, (ours, theirs) in pairs.items():
        t = samples_per_s(theirs, len(x), args.rounds)
        c = samples_per_s(ours, len(x), args.rounds)
        print(f"{name:6s} cnnrun {c:10,.0f}  PyTorch {t:10,.0f}  {c / t:.2f}x")


if __name__ == "__main__":
    main()
