"""Run folders on disk: `RUNS_DIR/YYYYmmdd-HHMMSS-NAME/` and what they hold.

    config.yaml      the resolved config (overrides and seed included)
    metrics.csv      one row per epoch: epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds
    checkpoint.npz   weights + the epoch reached, after every epoch
    weights.npz      final weights
    summary.json     status, accuracies, wall time, speed, command, versions
    curves.png       test accuracy and training error against epoch

Every file is written to a temporary name and renamed, so a kill never leaves a broken one.
summary.json records the SHA-256 of weights.npz and checkpoint.npz as written
(`digests`), and every verb that loads them checks it: a file changed since is
"damaged", never used as if it were the run's.
"""

import contextlib
import csv
import hashlib
import json
import os
import shlex
import socket
import sys
import time

import numpy as np
import yaml

from cnnrun.config import build_network, parse_yaml, validate
from cnnrun.errors import CnnrunError
from cnnrun.fileio import write_atomic, write_csv

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
# Written when a run has them (data.validation; train.select's val_robust_acc), before "seconds".
VALIDATION_COLUMNS = ["val_loss", "val_acc", "val_robust_acc"]


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


def locate(name, runs_dir):
    """A run or sweep folder named as a user would name it: a path; a name that `cnnrun runs`
    prints (a folder in `runs_dir` or `runs_dir/sweeps`); or a unique prefix of one
    (`20261207-1655`). Returns the path (unchanged if nothing matches); several matches
    are an error listing them."""
    if os.path.exists(name) or os.sep in name.rstrip(os.sep):
        return name
    folders = list_runs(runs_dir) + list_sweeps(runs_dir)
    exact = [f for f in folders if os.path.basename(f) == name]
    if exact:
        return exact[0]
    matches = [f for f in folders if os.path.basename(f).startswith(name)]
    if len(matches) > 1:
        shown = ", ".join(os.path.basename(m) for m in matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise CnnrunError(f"{name}: matches {len(matches)} folders in {runs_dir} ({shown}); give more of the name")
    return matches[0] if matches else name


def is_sweep(path):
    return os.path.isfile(os.path.join(path, "sweep.yaml"))


def list_sweeps(runs_dir):
    """Sweep folders in `runs_dir/sweeps`, oldest first."""
    folder = os.path.join(runs_dir, "sweeps")
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, d) for d in sorted(os.listdir(folder)) if is_sweep(os.path.join(folder, d))]


def resolve_run(run_dir, runs_dir):
    """The run folder given (a path, a name `cnnrun runs` prints, or a unique prefix), or
    the latest in `runs_dir`; a clear error if there is none."""
    if run_dir is not None:
        run_dir = locate(run_dir, runs_dir)
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
        raise CnnrunError(f"{run_dir}: no such run folder, nor a run in {runs_dir} of that name "
                          f"(`cnnrun runs` lists them)")
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


def load_run(run_dir, runs_dir, need_weights=True, batch_size=500, engine="fast", weights="final"):
    """`(run folder, config, network)` of a run folder (default: the latest in `runs_dir`)
    with the run's weights loaded: its final ones (or its checkpoint's), or with
    `weights="best"` those of the epoch train.select chose (best.npz). A run with no
    weights yet is an error, or, with `need_weights=False`, gives None for the network;
    weights that do not fit are always an error."""
    run_dir = resolve_run(run_dir, runs_dir)
    cfg = load_run_config(run_dir)
    if weights == "best":
        path = os.path.join(run_dir, "best.npz")
        if not os.path.isfile(path):
            why = ("its config has no train.select" if cfg["train"]["select"] is None
                   else "no epoch has been evaluated yet")
            raise CnnrunError(f"{run_dir}: has no best.npz ({why}); leave out --weights best for its final weights")
    else:
        path = weights_path(run_dir, required=need_weights)
    if path is None:
        return run_dir, cfg, None
    net = build_network(cfg, batch_size=batch_size, engine=engine)
    check_file(run_dir, os.path.basename(path))
    net.load(path)
    return run_dir, cfg, net


def unfinished_note(run_dir):
    """One line saying that a run's weights are not its final ones (it stopped, is still
    training or is paused part-way), or None for a finished run."""
    summary = read_json(os.path.join(run_dir, "summary.json"), {})
    status = run_status(summary, run_dir) if summary else "not started"
    if status == "finished" and os.path.isfile(os.path.join(run_dir, "weights.npz")):
        return None
    done, planned = summary.get("epochs_done", checkpoint_epoch(run_dir)), summary.get("epochs_planned", "?")
    going_on = "" if status.startswith("running") else f"; `cnnrun train --resume {shlex.quote(run_dir)}` trains on"
    return (f"note: {run_dir} is not finished ({status}, {done} of {planned} epochs): these are the weights "
            f"of its checkpoint at epoch {done}{going_on}")


DIGESTED = ("weights.npz", "checkpoint.npz", "best.npz")


@contextlib.contextmanager
def training_lock(run_dir):
    """Held while a process trains the run in `run_dir` (an flock on RUN_DIR/.lock): a second
    `train --resume` of the same folder is refused in one line instead of racing the first.
    The operating system releases it when the process ends, however it ends (kill -9
    included), so a killed run resumes as before."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    try:
        handle = open(os.path.join(run_dir, ".lock"), "a")
    except OSError as e:
        raise CnnrunError(f"{run_dir}: cannot write in the run folder ({e.strerror})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CnnrunError(f"{run_dir}: another cnnrun process is training this run now; resume it "
                              f"once that one has stopped") from None
        except OSError:  # a filesystem without locks: go on without one
            pass
        yield
    finally:
        handle.close()


def digest(data):
    """`"sha256:<hex>"` of bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def record_digest(summary, name, data, keep_previous=False):
    """Note in `summary` (a dict, written by the caller) the digest of the bytes `data` that
    `name` now holds; with `keep_previous`, the one before stays accepted too (for the
    moment between announcing a new file and its rename)."""
    digests = summary.setdefault("digests", {})
    accepted = [digest(data)]
    if keep_previous:
        accepted += [d for d in digests.get(name, [])[:1] if d != accepted[0]]
    digests[name] = accepted


def file_state(run_dir, name, summary=None):
    """`(state, detail)` of weights.npz or checkpoint.npz against the summary's digests:
    "intact", "missing", "unrecorded" (no digest: written before cnnrun 0.2.0, or the
    summary is unreadable) or "damaged" (its bytes are not what was written)."""
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        return "missing", f"{path}: missing"
    summary = read_json(os.path.join(run_dir, "summary.json"), {}) if summary is None else summary
    accepted = summary.get("digests", {}).get(name) if isinstance(summary.get("digests"), dict) else None
    if not accepted:
        return "unrecorded", f"{path}: no digest recorded (written before cnnrun 0.2.0); not checked"
    try:
        actual = file_digest(path)
    except OSError as e:
        return "damaged", f"{path}: unreadable ({e.strerror})"
    if actual not in accepted:
        return "damaged", (f"{path}: damaged: its SHA-256 is not the one recorded in summary.json when it "
                           f"was written")
    return "intact", f"{path}: intact"


def check_file(run_dir, name, summary=None):
    """`file_state`, as an error if damaged and a note on stderr if unrecorded."""
    state, detail = file_state(run_dir, name, summary)
    if state == "damaged":
        raise CnnrunError(f"{detail}; `cnnrun verify {shlex.quote(run_dir)}` checks the whole folder")
    if state == "unrecorded":
        print(f"note: {detail}", file=sys.stderr)
    return state


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
    if file_state(run_dir, "checkpoint.npz")[0] == "damaged":
        check_file(run_dir, "checkpoint.npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            return int(data["epoch"])
    except Exception as e:
        raise CnnrunError(f"{path}: not a readable checkpoint ({e})") from None


def run_status(summary, run_dir=None):
    """finished / interrupted / diverged / running; `killed` if it says running but its
    process is gone; `unknown` if that cannot be told (no pid recorded); `not started`
    without a summary; given `run_dir`, `damaged` if its weights or checkpoint are not
    what was written."""
    if not summary:
        return "not started"
    if run_dir is not None and any(file_state(run_dir, name, summary)[0] == "damaged" for name in DIGESTED):
        return "damaged"
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
    extra = [c for c in VALIDATION_COLUMNS if any(r.get(c) is not None for r in rows)]
    write_csv(os.path.join(run_dir, "metrics.csv"), METRIC_COLUMNS[:-1] + extra + ["seconds"], rows)


def read_metrics(run_dir):
    """metrics.csv as a list of dicts with numbers (None for empty test columns)."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        return []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        columns = METRIC_COLUMNS + [c for c in VALIDATION_COLUMNS if c in (reader.fieldnames or [])]
        rows = [{k: (int(row[k]) if k == "epoch" else float(row[k])) if row.get(k) not in ("", None) else None
                 for k in columns} for row in rows]
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


def verify_run(run_dir):
    """Every file of a run folder checked: `[(file, state, detail), ...]`, state one of
    intact, missing, unrecorded (no digest: older cnnrun) or damaged. The weights and the
    checkpoint must also match their digest and load into the config's network."""
    checks, cfg = [], None
    try:
        cfg = load_run_config(run_dir)
        checks.append(("config.yaml", "intact", "a valid config"))
    except CnnrunError as e:
        checks.append(("config.yaml", "damaged", str(e)))
    try:
        rows = read_metrics(run_dir)
        checks.append(("metrics.csv", "intact" if rows else "missing", f"{len(rows)} epochs"))
    except CnnrunError as e:
        checks.append(("metrics.csv", "damaged", str(e)))
    summary_path = os.path.join(run_dir, "summary.json")
    summary = read_json(summary_path, {})
    if not os.path.isfile(summary_path):
        checks.append(("summary.json", "missing", "not started"))
    elif not summary:
        checks.append(("summary.json", "damaged", f"{summary_path}: not a readable summary"))
    else:
        checks.append(("summary.json", "intact", f"status {summary.get('status', '?')}"))
    for name in DIGESTED:
        state, detail = file_state(run_dir, name, summary)
        if name == "best.npz" and state == "missing":  # a run without train.select has none
            continue
        if state in ("intact", "unrecorded") and cfg is not None:
            try:
                build_network(cfg, batch_size=1).load(os.path.join(run_dir, name))
            except CnnrunError as e:
                state, detail = "damaged", str(e)
        checks.append((name, state, detail))
    return checks
