"""What MLflow and TensorBoard logging add to a training epoch, measured inside one run.

    python benchmarks/tracking_overhead.py configs/net2.yaml --epochs 3 --data-dir DIR

Trains CONFIG with both trackers on (a SQLite MLflow store in a temporary folder) and
times every tracker call apart from the epochs it follows: the figure is the trackers'
seconds per epoch against the epoch's own seconds (metrics.csv). The first call, which
creates the MLflow database, is reported on its own.
"""

import argparse
import os
import tempfile
import time

from cnnrun import api, runs
from cnnrun.runner import train_run
from cnnrun.tracking import MlflowTracker, TensorboardTracker, Trackers


class Timed(Trackers):
    def __init__(self, trackers):
        super().__init__(trackers, log=print)
        self.seconds = []

    def sync_run(self, run_dir, **kwargs):
        started = time.perf_counter()
        result = super().sync_run(run_dir, **kwargs)
        self.seconds.append(time.perf_counter() - started)
        return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    cfg = api.load_config(args.config)
    cfg["train"]["epochs"], cfg["train"]["eval_every"] = args.epochs, 1
    data = api.load_data(cfg, args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = runs.new_run_dir(os.path.join(tmp, "runs"), cfg["name"], cfg)
        trackers = Timed([MlflowTracker(f"sqlite:///{tmp}/mlflow.db"), TensorboardTracker()])
        train_run(cfg, run_dir, data, progress=False, log=lambda _: None, trackers=trackers)
        assert len(trackers.trackers) == 2, "a tracker failed"
        epochs = [row["seconds"] for row in runs.read_metrics(run_dir)]
        first, per_epoch, last = trackers.seconds[0], trackers.seconds[1:-1], trackers.seconds[-1]
        print(f"{cfg['name']}: {len(epochs)} epochs of {sum(epochs) / len(epochs):.2f} s on average")
        print(f"first call (creates the MLflow database): {first:.2f} s; the end of the run: {last:.2f} s")
        print(f"per epoch: {1000 * sum(per_epoch) / len(per_epoch):.0f} ms of logging, "
              f"{100 * sum(per_epoch) / sum(epochs):.2f} % of an epoch")


if __name__ == "__main__":
    main()
