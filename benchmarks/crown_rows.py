"""Full CROWN (`certify --method crown`) with a row carried back for every neuron of each
relu's input, as cnnrun did before 2026-12-08, against a row for each unstable one only
(`bounds.crown_box` now): seconds for the first N test images of a run, and whether the
two give the same certified images.

    python benchmarks/crown_rows.py RUN_DIR [--images 10] [--eps 0.1] [--weights final|best]

The two are timed one after the other, each on the network's threads (CNNRUN_THREADS,
else every core). A stable relu is exact whatever its box, so the unstable neurons'
bounds are all the margins need; the every-neuron bounds can only make the IBP boxes of
later layers tighter, which changes the margins in the float rounding at most here.
"""

import argparse
import time

import numpy as np

from cnnrun import api
from cnnrun.robustness import bounds


def every_neuron_box(layers, lines, domain, box):
    """`bounds.crown_box` as it was: both bounds of every neuron, unstable or not, each image's
    rows carried back together."""
    lower, upper = domain
    n, shape = len(lower), box[0].shape[1:]
    size = int(np.prod(shape))
    widest = max(int(np.prod(layer.in_shape)) for layer in layers)
    rows = max(1, bounds.CROWN_BUDGET // (2 * n * widest))
    out_low, out_up = box[0].reshape(n, -1).copy(), box[1].reshape(n, -1).copy()
    for start in range(0, size, rows):
        stop = min(start + rows, size)
        eye = np.zeros((stop - start, size), lower.dtype)
        eye[np.arange(stop - start), np.arange(start, stop)] = 1
        A = np.concatenate([eye, -eye]).reshape(1, 2 * (stop - start), *shape).repeat(n, axis=0)
        bound = bounds.concretize(*bounds.crown_back(layers, lines, A, np.zeros(A.shape[:2], lower.dtype)),
                                  lower, upper)
        out_low[:, start:stop] = np.maximum(out_low[:, start:stop], bound[:, :stop - start])
        out_up[:, start:stop] = np.minimum(out_up[:, start:stop], -bound[:, stop - start:])
    return out_low.reshape(box[0].shape), out_up.reshape(box[0].shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--weights", default="final", choices=["final", "best"])
    args = parser.parse_args()
    cfg, net = api.load_run(args.run_dir, weights=args.weights)
    x, labels = api.load_data(cfg)["test"]
    x, labels = x[:args.images], labels[:args.images]
    unstable_only = bounds.crown_box
    found = {}
    for name, box in (("unstable neurons", unstable_only), ("every neuron", every_neuron_box)):
        bounds.crown_box = box
        start = time.perf_counter()
        margins = bounds.margins(net, x, labels, args.eps, "crown")[0]
        seconds = time.perf_counter() - start
        found[name] = margins
        print(f"{name:>16}: {seconds:7.2f} s for {len(x)} images, "
              f"{bounds.certified(net, x, labels, margins).sum()} certified")
    bounds.crown_box = unstable_only
    print(f"largest difference of a margin bound: {np.abs(found['unstable neurons'] - found['every neuron']).max():.2e}")


if __name__ == "__main__":
    main()
