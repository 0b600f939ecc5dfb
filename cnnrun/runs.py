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
import json
import os
import socket
import time

import numpy as np
import yaml

from cnnrun.config import build_network, parse_yaml, validate
from cnnrun.errors import CnnrunError
from cnnrun.fileio import write_atomic, write_csv

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]


def new_run_dir(runs_dir, name, config=None):
    """Create `RUNS_DIR/YYYYmmdd-HHMMSS-NAME` (with -2, -3... if that folder exists) and,
    given a config, write its config.yaml at once, so the folder is a resumable run
    from its first moment."""
    try:
        os.makedirs(runs_dir, exist_ok=True)
    except OSError as e:
        raise CnnrunError(f"{runs_dir}: cannot create the folder ({e.strerror})") from None
    base = os.path.join(runs_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{name}")
    for attempt in range(1, 1000):
        path = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(path)  # atomic: two runs started in the same second never share a folder
        except FileExistsError:
            continue
        except OSError as e:
            raise CnnrunError(f"{runs_dir}: cannot create a run folder there ({e.strerror})") from None
        if config is not None:
            save_config(path, config)
        return path
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
        if os.path.exists(runs_dir) and not os.path.isdir(runs_dir):
            raise CnnrunError(f"{runs_dir}: not a folder (--runs-dir names the folder holding the runs)")
        runs = list_runs(runs_dir)
        if not runs:
            raise CnnrunError(f"{runs_dir}: no runs yet; train one with `cnnrun train CONFIG`")
        return runs[-1]
    if os.path.isfile(run_dir):
        raise CnnrunError(f"{run_dir}: is a file, not a run folder")
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
            return validate(parse_yaml(f), path)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise CnnrunError(f"{path}: cannot read the run's config ({e})") from None


def load_run(run_dir, runs_dir, need_weights=True, batch_size=500, engine="fast"):
    """`(run folder, config, network)` of a run folder (default: the latest in `runs_dir`)
    with the run's weights loaded. A run with no weights yet is an error, or, with
    `need_weights=False`, gives None for the network; weights that do not fit are always an error."""
    run_dir = resolve_run(run_dir, runs_dir)
    cfg = load_run_config(run_dir)
    path = weights_path(run_dir, required=need_weights)
    if path is None:
        return run_dir, cfg, None
    net = build_network(cfg, batch_size=batch_size, engine=engine)
    net.load(path)
    return run_dir, cfg, net


def weights_path(run_dir, required=True):
    """The run's final weights, else its latest checkpoint; if it has neither, an error
    (or None when not `required`)."""
    for name in ("weights.npz", "checkpoint.npz"):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path
    if not required:
        return None
    raise CnnrunError(f"{run_dir}: holds no weights yet (no weights.npz or checkpoint.npz)")


def checkpoint_epoch(run_dir):
    """The epoch the run's checkpoint holds (0 if it has none yet)."""
    path = os.path.join(run_dir, "checkpoint.npz")
    if not os.path.isfile(path):
        return 0
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(data["epoch"])
    except Exception as e:
        raise CnnrunError(f"{path}: not a readable checkpoint ({e})") from None


def run_status(summary):
    """finished / interrupted / diverged / running; `killed` if it says running but its
    process is gone; `unknown` if that cannot be told (no pid recorded); `not started`
    without a summary."""
    if not summary:
        return "not started"
    status = summary.get("status", "unknown")
    if status != "running":
        return status
    pid = summary.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return "unknown"
    if summary.get("host", socket.gethostname()) != socket.gethostname():
        return f"running on {summary['host']}"  # another machine's process cannot be looked up here
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return "killed"
    except PermissionError:
        return "running"  # it exists, under another user
    except OSError:
        return "unknown"
    return "running"


def write_metrics(run_dir, rows):
    write_csv(os.path.join(run_dir, "metrics.csv"), METRIC_COLUMNS, rows)


def read_metrics(run_dir):
    """metrics.csv as a list of dicts with numbers (None for empty test columns)."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        return []
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        rows = [{k: (int(row[k]) if k == "epoch" else float(row[k])) if row.get(k) not in ("", None) else None
                 for k in METRIC_COLUMNS} for row in rows]
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as e:
        raise CnnrunError(f"{path}: not a readable metrics file ({e})") from None
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        missing = [k for k in ("epoch", "lr", "train_loss", "train_acc") if row[k] is None]
        if missing:
            raise CnnrunError(f"{path}: line {number} has no {', '.join(missing)} (a damaged metrics file)")
    return rows


def write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path, default=None):
    """A JSON file's content, or `default` if it is missing, unreadable or not of
    `default`'s type (a summary that is not a mapping counts as missing)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return default
    return value if default is None or isinstance(value, type(default)) else default
