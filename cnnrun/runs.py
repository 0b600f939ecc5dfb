"""Run folders on disk: `RUNS_DIR/YYYYmmdd-HHMMSS-NAME/` and what they hold.

    config.yaml      the resolved config (overrides and seed included)
    metrics.csv      one row per epoch: epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds
    checkpoint.npz   weights + the epoch reached, after every epoch
    weights.npz      final weights
    summary.json     status, accuracies, wall time, speed, command, versions
    curves.png       test accuracy and training error against epoch

Every file is written to a temporary name and renamed, so a kill never leaves a broken one.
"""

import csv
import io
import json
import os
import time

import yaml

from cnnrun.config import validate
from cnnrun.errors import CnnrunError
from cnnrun.fileio import write_atomic

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]


def new_run_dir(runs_dir, name):
    """Create `RUNS_DIR/YYYYmmdd-HHMMSS-NAME` (with -2, -3... if that folder exists)."""
    os.makedirs(runs_dir, exist_ok=True)
    base = os.path.join(runs_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{name}")
    for attempt in range(1, 1000):
        path = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(path)  # atomic: two runs started in the same second never share a folder
            return path
        except FileExistsError:
            continue
    raise CnnrunError(f"{runs_dir}: too many runs named {os.path.basename(base)}")


def is_run(path):
    return os.path.isfile(os.path.join(path, "config.yaml"))


def list_runs(runs_dir):
    """Run folders in `runs_dir`, oldest first (names start with their timestamp)."""
    if not os.path.isdir(runs_dir):
        return []
    return [os.path.join(runs_dir, d) for d in sorted(os.listdir(runs_dir))
            if is_run(os.path.join(runs_dir, d))]


def resolve_run(run_dir, runs_dir):
    """The run folder given, or the latest in `runs_dir`; a clear error if there is none."""
    if run_dir is None:
        runs = list_runs(runs_dir)
        if not runs:
            raise CnnrunError(f"{runs_dir}: no runs yet; train one with `cnnrun train CONFIG`")
        return runs[-1]
    if not os.path.isdir(run_dir):
        raise CnnrunError(f"{run_dir}: no such run folder")
    if not is_run(run_dir):
        raise CnnrunError(f"{run_dir}: not a run folder (no config.yaml)")
    return run_dir


def save_config(run_dir, config):
    write_atomic(os.path.join(run_dir, "config.yaml"), yaml.safe_dump(config, sort_keys=False))


def load_run_config(run_dir):
    path = os.path.join(run_dir, "config.yaml")
    try:
        with open(path) as f:
            return validate(yaml.safe_load(f), path)
    except (OSError, yaml.YAMLError) as e:
        raise CnnrunError(f"{path}: cannot read the run's config ({e})") from None


def weights_path(run_dir):
    """The run's final weights, else its latest checkpoint; an error if it has neither."""
    for name in ("weights.npz", "checkpoint.npz"):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path
    raise CnnrunError(f"{run_dir}: holds no weights yet (no weights.npz or checkpoint.npz)")


def write_metrics(run_dir, rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in METRIC_COLUMNS})
    write_atomic(os.path.join(run_dir, "metrics.csv"), out.getvalue())


def read_metrics(run_dir):
    """metrics.csv as a list of dicts with numbers (None for empty test columns)."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "epoch" else float(v)) if v not in ("", None) else None
             for k, v in row.items()} for row in rows]


def write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default
