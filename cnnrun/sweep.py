"""Sweeps: many ordinary training runs (configs x grid settings x seeds) on Dask distributed.

A sweep folder `RUNS_DIR/sweeps/YYYYmmdd-HHMMSS-NAME/` holds

    sweep.yaml     the spec and the expanded plan, one entry per run
    NNN-NAME-sS/   one ordinary run folder per entry (what `cnnrun train` writes)
    results.csv    one row per run, read back from the run folders
    summary.csv    per config and setting: n, mean, std, min, max of the final test accuracy
    summary.md     the same as a Markdown table
    curves.png     test accuracy against epoch: mean and a band of one standard deviation

Every run folder is created, with its config, before anything is trained. A Dask
task trains one folder with `train_run(..., resume=True)`: a task that is
rescheduled after its worker died, or re-run by `sweep --resume`, continues from
the run's last checkpoint, so no epoch is duplicated or missing.
"""

import contextlib
import itertools
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
import warnings

import numpy as np
import yaml

from cnnrun import plots, runs
from cnnrun.nn import parallel
from cnnrun.config import NAME, build_network, find_config, load_config, parse_yaml, read_yaml, set_value
from cnnrun.errors import CnnrunError, interrupted
from cnnrun.fileio import write_atomic, write_csv
from cnnrun.reports import write_tables
from cnnrun.runs import is_sweep, list_sweeps  # noqa: F401 (also sweep.is_sweep, sweep.list_sweeps)

SPEC_KEYS = ("name", "configs", "seeds", "grid", "set")
MAX_RUNS = 10_000  # runs in one sweep: a typo in a seed range must not plan a billion
INSTALL_HINT = "cnnrun sweep needs Dask: pip install -e '.[sweep]' (dask[distributed])"
RESULT_COLUMNS = ["run", "config", "setting", "overrides", "seed", "status", "epochs_done", "epochs_planned",
                  "final_test_acc", "best_test_acc", "wall_time_s"]  # run: the run's folder in the sweep folder
SUMMARY_COLUMNS = ["config", "setting", "n", "mean", "std", "min", "max", "epochs"]


def require_dask():
    """Import Dask distributed, or say in one line how to install it."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise CnnrunError(INSTALL_HINT) from None


# --- the spec -------------------------------------------------------------------

def parse_seeds(value, where="seeds"):
    """`3`, `[0, 1, 2]`, `"0-4"` or `"0,2,5"` -> a list of distinct non-negative ints."""
    if isinstance(value, str):
        seeds = []
        for part in value.split(","):
            low, dash, high = part.strip().partition("-")
            try:
                low, high = int(low), int(high) if dash else int(low)
            except ValueError:
                raise CnnrunError(f"{where}: {value!r}: expected integers, e.g. 0-4 or 0,1,2") from None
            if high - low >= MAX_RUNS:  # refused before a list of them is made
                raise CnnrunError(f"{where}: {value!r}: more than {MAX_RUNS:,} seeds (at most {MAX_RUNS:,} runs a sweep)")
            seeds += list(range(low, high + 1))
    elif isinstance(value, int) and not isinstance(value, bool):
        seeds = [value]
    elif isinstance(value, list):
        seeds = value
    else:
        raise CnnrunError(f"{where}: expected a list of integers or a range like 0-4, got {value!r}")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise CnnrunError(f"{where}: expected non-negative integers, got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise CnnrunError(f"{where}: a seed is listed twice in {value!r}")
    return seeds


def parse_grid_option(text):
    """`train.lr=0.005,0.01` (or `train.kernel=[[3,3],[5,5]]`) -> `("train.lr", [0.005, 0.01])`."""
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise CnnrunError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. train.lr=0.005,0.01")
    try:
        parsed = parse_yaml(values) if values.lstrip().startswith("[") else \
            [parse_yaml(v) for v in values.split(",")]
    except yaml.YAMLError:
        raise CnnrunError(f"--grid {text!r}: the values are not valid YAML") from None
    return key, parsed


def check_spec(spec, source):
    """A spec mapping -> the same with defaults, or a one-line error naming the key."""
    if not isinstance(spec, dict):
        raise CnnrunError(f"{source}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise CnnrunError(f"{source}: {unknown[0]}: unknown key; expected one of {', '.join(SPEC_KEYS)}")
    name = spec.get("name", "sweep")
    if not NAME[1](name):
        raise CnnrunError(f"{source}: name: expected {NAME[0]}, got {name!r}")
    configs = spec.get("configs")
    if not isinstance(configs, list) or not configs or not all(isinstance(c, str) and c for c in configs):
        raise CnnrunError(f"{source}: configs: expected a non-empty list of config file paths")
    seeds = parse_seeds(spec.get("seeds", [0]), f"{source}: seeds")
    grid = spec.get("grid") or {}
    sets = spec.get("set") or {}
    for key, what in (("grid", grid), ("set", sets)):
        if not isinstance(what, dict) or not all(isinstance(k, str) and k for k in what):
            raise CnnrunError(f"{source}: {key}: expected a mapping of config keys, e.g. {{train.lr: ...}}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise CnnrunError(f"{source}: grid.{key}: expected a non-empty list of values, got {values!r}")
    return dict(name=name, configs=configs, seeds=seeds, grid=grid, set=sets)


def load_spec(path):
    return read_yaml(path, "sweep spec")


def is_spec_file(path):
    """Whether a YAML file is a sweep spec (it lists `configs:`) rather than one config."""
    try:
        raw = read_yaml(path)
    except CnnrunError:
        return False
    return isinstance(raw, dict) and "configs" in raw


def setting_label(setting):
    """`{"train.lr": 0.01}` -> `"train.lr=0.01"`; no grid -> `"default"`."""
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "default"


def resolve_config_path(path, spec_dir):
    """A config as written in a spec: a path relative to the current folder, else to the
    spec's, else the name of a shipped config (`net2`)."""
    if not (os.path.isabs(path) or os.path.exists(path) or spec_dir is None):
        beside = os.path.join(spec_dir, path)
        if os.path.exists(beside):
            return beside
    return find_config(path)


def expand(spec, spec_dir=None):
    """The plan: one entry per (config, grid setting, seed), each config validated and built
    (so every mistake shows before any run starts). Returns `(entries, resolved configs)`."""
    count = len(spec["configs"]) * math.prod(len(v) for v in spec["grid"].values()) * len(spec["seeds"])
    if count > MAX_RUNS:
        raise CnnrunError(f"{count:,} runs (configs x grid settings x seeds): at most {MAX_RUNS:,} in one sweep")
    keys = list(spec["grid"])
    settings = [dict(zip(keys, values)) for values in itertools.product(*spec["grid"].values())]
    entries, configs = [], []
    for config_path in spec["configs"]:
        path = resolve_config_path(config_path, spec_dir)
        base = load_config(path)
        for setting in settings:
            overrides = {**spec["set"], **setting}
            for seed in spec["seeds"]:
                cfg = base
                for key, value in overrides.items():
                    cfg = set_value(cfg, key, value, f"{path}, sweep set/grid")
                cfg = set_value(cfg, "seed", seed, f"{path}, sweep seeds")
                build_network(cfg)  # shapes and memory, checked now
                index = len(entries)
                entries.append(dict(run=f"{index:03d}-{cfg['name']}-s{seed}", config=os.path.abspath(path),
                                    name=cfg["name"], setting=dict(setting), overrides=dict(overrides), seed=seed))
                configs.append(cfg)
    return entries, configs


# --- the sweep folder ---------------------------------------------------------------

def create_sweep(runs_dir, spec, entries, configs):
    """The sweep folder with sweep.yaml and one run folder (config.yaml only) per entry."""
    sweep_dir = runs.new_run_dir(os.path.join(runs_dir, "sweeps"), spec["name"])
    for entry, cfg in zip(entries, configs):
        os.mkdir(os.path.join(sweep_dir, entry["run"]))
        runs.save_config(os.path.join(sweep_dir, entry["run"]), cfg)
    write_atomic(os.path.join(sweep_dir, "sweep.yaml"),
                 yaml.safe_dump(dict(spec=spec, runs=entries), sort_keys=False))
    return sweep_dir




def load_sweep(sweep_dir):
    """`(spec, entries)` of a sweep folder; a clear error if it is not one."""
    if not os.path.isdir(sweep_dir):
        raise CnnrunError(f"{sweep_dir}: no such sweep folder")
    path = os.path.join(sweep_dir, "sweep.yaml")
    if not os.path.isfile(path):
        raise CnnrunError(f"{sweep_dir}: not a sweep folder (no sweep.yaml)")
    try:
        with open(path) as f:
            raw = parse_yaml(f)
        spec, entries = raw["spec"], raw["runs"]
        for entry in entries:
            if not NAME[1](entry["run"]):
                raise ValueError(f"run folder name {entry['run']!r}")
    except (OSError, yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError, ValueError) as e:
        raise CnnrunError(f"{path}: not a readable sweep plan ({e})") from None
    return spec, entries


def run_state(run_dir):
    """`(status, epochs done)` of a run folder in a sweep, from its summary."""
    summary = runs.read_json(os.path.join(run_dir, "summary.json"), {})
    status = runs.run_status(summary)
    done = summary.get("epochs_done", 0)
    return status, done if isinstance(done, int) else 0


# --- the task a worker runs -------------------------------------------------------

_DATA = {}  # per worker process: the last data set loaded, reused by the next run that needs it


def train_task(run_dir, data_dir=None, threads=1, until=None):
    """Train (or continue) one run folder on this worker, its network on `threads` threads
    (BLAS runs one thread in each: nn/parallel.py), up to epoch `until` if given. Returns
    `{"status", "host", "message"}`; a diverged run is a result, not a failure, and a run
    that cannot train (its data missing or not fitting its network, say) has status
    "failed" and the one-line reason (no traceback in the worker's log)."""
    from cnnrun.data import load_data
    from cnnrun.runner import Stopped, train_run

    parallel.keep_freed_memory()
    os.environ["CNNRUN_THREADS"] = str(threads)  # the network's own threads (nn/parallel.py)
    host = socket.gethostname()
    try:
        if not runs.is_run(run_dir):
            raise CnnrunError(f"worker {host} cannot see the run folder {run_dir}: "
                              f"--runs-dir must be on a filesystem every worker shares, at the same path")
        cfg = runs.load_run_config(run_dir)
        key = (data_dir, os.environ.get("CNNRUN_DATA_DIR"), yaml.safe_dump(cfg["data"]))
        if key not in _DATA:
            _DATA.clear()
            _DATA[key] = load_data(cfg, data_dir, progress=False, of_run=True)
        train_run(cfg, run_dir, _DATA[key], resume=True, progress=False, log=lambda _: None,
                  command=f"cnnrun sweep (worker {host})", until=until)
    except Stopped as e:
        return dict(status="diverged" if e.exit_code == 1 else "interrupted", host=host, message=str(e))
    except CnnrunError as e:
        return dict(status="failed", host=host, message=str(e))
    return dict(status=run_state(run_dir)[0], host=host, message="")


# --- running it on a cluster -----------------------------------------------------------

class Cluster:
    """A Dask client: on a LocalCluster of `workers` processes started here (one thread
    each), or on the existing scheduler at `address`. Use as a context manager."""

    def __init__(self, address=None, workers=None, dashboard=False, timeout=10):
        self.address, self.workers, self.dashboard, self.timeout = address, workers, dashboard, timeout
        self.cluster = self.client = None

    def __enter__(self):
        import logging

        from distributed import Client, LocalCluster

        if self.address:
            try:
                self.client = Client(self.address, timeout=self.timeout)
            except ValueError as e:  # not an address at all
                raise CnnrunError(f"--scheduler {self.address}: expected an address like tcp://HOST:PORT ({e})") from None
            except (OSError, TimeoutError) as e:
                raise CnnrunError(f"--scheduler {self.address}: cannot reach the scheduler within "
                                  f"{self.timeout:g}s ({type(e).__name__})") from None
            try:
                self.client.wait_for_workers(1, timeout=self.timeout)
            except (OSError, TimeoutError):
                self.client.close()
                raise CnnrunError(f"--scheduler {self.address}: no worker joined within {self.timeout:g}s; "
                                  f"start some with: dask worker {self.address} --nthreads 1") from None
        else:
            with warnings.catch_warnings():  # without a dashboard the scheduler still serves health checks,
                warnings.filterwarnings("ignore", message="Port .* is already in use")  # on any free port
                try:
                    self.cluster = LocalCluster(n_workers=self.workers or os.cpu_count() or 1, threads_per_worker=1,
                                                processes=True, silence_logs=logging.ERROR,
                                                dashboard_address=":8787" if self.dashboard else None)
                except (RuntimeError, OSError, TimeoutError) as e:
                    raise CnnrunError(f"could not start a local Dask cluster ({e})") from None
            self.client = Client(self.cluster)
        return self.client

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        return False

    def stop_now(self):
        """On Ctrl-C: a local cluster's workers are killed at once (a running task cannot be
        interrupted, and Dask's workers ignore SIGINT); their runs keep their last checkpoint.
        Returns whether there was a local cluster to stop."""
        if self.cluster is None:
            return False
        try:
            pids = set(self.client.run(os.getpid, wait=True).values())
        except Exception:  # the cluster is already going down
            pids = set()
        # A worker that got the Ctrl-C itself leaves the scheduler (so `run` misses it) but
        # trains on until its task ends: its process is a child of this one, started by its nanny.
        pids |= {p.pid for p in multiprocessing.active_children() if p.name.startswith("Dask Worker process")}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return True

    def describe(self):
        workers = len(self.client.scheduler_info().get("workers", {}))
        where = self.address or "a local cluster"
        return f"{workers} worker{'s' if workers != 1 else ''} on {where}"


def mark_interrupted(sweep_dir, entries, wait=5.0):
    """After Ctrl-C stopped and closed the local cluster: the runs its workers were
    training (still `running`, on this machine, their process gone within `wait` seconds)
    say `interrupted`, as a stopped `cnnrun train` does, rather than `killed`."""
    deadline = time.monotonic() + wait
    for entry in entries:
        path = os.path.join(sweep_dir, entry["run"], "summary.json")
        summary = runs.read_json(path, {})
        if summary.get("status") != "running" or summary.get("host") != socket.gethostname():
            continue
        while runs.run_status(summary) == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        if runs.run_status(summary) == "killed":
            summary["status"] = "interrupted"
            runs.write_json(path, summary)


def check_runs(sweep_dir):
    """Every run folder of a sweep readable (config and metrics), or a one-line error naming
    the damaged file, before a cluster is started."""
    _, entries = load_sweep(sweep_dir)
    for entry in entries:
        run_dir = os.path.join(sweep_dir, entry["run"])
        if not runs.is_run(run_dir):
            raise CnnrunError(f"{run_dir}: the run folder of the plan is missing or has no config.yaml")
        runs.load_run_config(run_dir)
        runs.read_metrics(run_dir)
    return entries


def pending_runs(sweep_dir, entries, until=None):
    """The entries still to train: not finished, not diverged (and short of epoch `until`)."""
    todo = []
    for entry in entries:
        status, done = run_state(os.path.join(sweep_dir, entry["run"]))
        if status not in ("finished", "diverged") and (until is None or done < until):
            todo.append(entry)
    return todo


def run_sweep(sweep_dir, client, data_dir=None, progress=True, log=print, poll=0.5, until=None, trackers=None):
    """Train every pending run of the sweep on `client`'s workers (with `until`, each up to
    that epoch and paused there), showing one progress bar (runs and epochs) and a line per
    finished run; then write results, summary (also at epoch `until`) and curves. Returns
    `(summary rows, failures)`, the rows at epoch `until` if given; Ctrl-C cancels what is
    queued and raises KeyboardInterrupt. `trackers` (tracking.Trackers) are fed by this
    process from the run folders as they advance: the workers never touch them."""
    from distributed import as_completed
    from tqdm import tqdm

    _, entries = load_sweep(sweep_dir)
    todo = pending_runs(sweep_dir, entries, until)
    epochs = {e["run"]: runs.load_run_config(os.path.join(sweep_dir, e["run"]))["train"]["epochs"] for e in entries}
    if until is not None:
        epochs = {run: min(n, until) for run, n in epochs.items()}
    data_dir = os.path.abspath(data_dir) if data_dir else None
    futures = {client.submit(train_task, os.path.abspath(os.path.join(sweep_dir, e["run"])), data_dir, 1, until,
                             key=f"cnnrun-{os.path.basename(sweep_dir)}-{e['run']}", pure=False): e for e in todo}
    failures = []
    total_epochs = sum(epochs.values())
    finished_runs = len(entries) - len(todo)
    seen = {}  # run -> (status, epochs done) at its last sync
    run_dirs = [os.path.join(sweep_dir, e["run"]) for e in entries]
    with tqdm(total=total_epochs, unit="epoch", disable=not progress, desc="sweep") as bar:
        def refresh():
            states = {run_dir: run_state(run_dir) for run_dir in run_dirs}
            if trackers:
                for run_dir, state in states.items():
                    if seen.get(run_dir) != state:
                        seen[run_dir] = state
                        trackers.sync_run(run_dir)
            done = sum(min(states[os.path.join(sweep_dir, e["run"])][1], epochs[e["run"]]) for e in entries)
            bar.set_postfix_str(f"runs {finished_runs}/{len(entries)}", refresh=False)
            bar.update(done - bar.n)

        queue = as_completed(list(futures))
        try:
            with signals_as_a_flag() as caught:
                while not queue.is_empty() and not caught:
                    for future in queue.next_batch(block=False):
                        entry = futures[future]
                        finished_runs += 1
                        if future.status == "error":  # an exception the task did not expect
                            result = dict(status="failed", message=str(future.exception()).splitlines()[0]
                                          if future.exception() else "failed")
                        else:
                            result = future.result()
                        if result["status"] == "failed":
                            failures.append((entry["run"], result["message"]))
                            log(f"failed {entry['run']}: {result['message']}")
                        else:
                            log(run_line(sweep_dir, entry, result))
                    refresh()
                    time.sleep(poll)
            if caught:
                raise KeyboardInterrupt
            refresh()
        except BaseException as e:
            if interrupted(e):
                client.cancel(list(futures))
            if trackers:  # what the runs have so far
                trackers.sync_sweep(sweep_dir, run_dirs, finished=False)
            raise
    table = write_results(sweep_dir, until)
    if trackers:
        trackers.sync_sweep(sweep_dir, run_dirs, finished=not failures)
    return table, failures


@contextlib.contextmanager
def signals_as_a_flag():
    """Within the block, Ctrl-C and SIGTERM only append their number to the list it yields,
    for the caller to act on at a point of its choosing: raised inside Dask's client code,
    a KeyboardInterrupt may not reach the caller. (Main thread only; elsewhere a no-op.)"""
    caught = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_line(sweep_dir, entry, result):
    summary = runs.read_json(os.path.join(sweep_dir, entry["run"], "summary.json"), {})
    acc = summary.get("final_test_acc")
    text = f"{result['status']} {entry['name']} [{setting_label(entry['setting'])}] seed {entry['seed']}"
    if isinstance(acc, float):
        text += f": test accuracy {acc:.4f} ({summary.get('epochs_done')} epochs, {summary.get('wall_time_s', 0):.0f}s"
        text += f", on {result['host']})"
    return text


# --- results ----------------------------------------------------------------------------

def result_rows(sweep_dir):
    """One row per run of the plan, read from the run folders' own summary.json."""
    _, entries = load_sweep(sweep_dir)
    rows = []
    for entry in entries:
        run_dir = os.path.join(sweep_dir, entry["run"])
        summary = runs.read_json(os.path.join(run_dir, "summary.json"), {})
        rows.append(dict(run=entry["run"], config=entry["name"], setting=setting_label(entry["setting"]),
                         overrides=setting_label(entry["overrides"]) if entry["overrides"] else "",
                         seed=entry["seed"], status=run_state(run_dir)[0],
                         epochs_done=summary.get("epochs_done", 0), epochs_planned=summary.get("epochs_planned"),
                         final_test_acc=summary.get("final_test_acc"), best_test_acc=summary.get("best_test_acc"),
                         wall_time_s=summary.get("wall_time_s")))
    return rows


def summary_rows(rows, sweep_dir=None, at_epoch=None):
    """Per (config, setting): n, mean, sample standard deviation (n - 1), min and max of the
    final test accuracy over its finished runs, and their epochs. With `at_epoch`: of the
    test accuracy at that epoch (metrics.csv in `sweep_dir`), over every run tested there,
    finished or not, so that seeds still training compare at an epoch they all reached."""
    groups = {}
    for row in rows:
        members = groups.setdefault((row["config"], row["setting"]), [])
        if at_epoch is not None:
            acc = accuracy_at_epoch(os.path.join(sweep_dir, row["run"]), at_epoch)
            if acc is not None:
                members.append((acc, at_epoch))
        elif row["status"] == "finished" and isinstance(row["final_test_acc"], (int, float)):
            members.append((row["final_test_acc"], row["epochs_done"]))
    table = []
    for (config, setting), members in groups.items():
        accs = [acc for acc, _ in members]
        table.append(dict(config=config, setting=setting, n=len(accs),
                          mean=float(np.mean(accs)) if accs else None,
                          std=float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                          min=float(np.min(accs)) if accs else None, max=float(np.max(accs)) if accs else None,
                          epochs="/".join(str(e) for e in sorted({e for _, e in members}))))
    return table


def accuracy_at_epoch(run_dir, epoch):
    """The run's test accuracy after `epoch` (None if it was not tested then)."""
    for m in runs.read_metrics(run_dir):
        if m["epoch"] == epoch:
            return m["test_acc"]
    return None


def curve_groups(sweep_dir, rows):
    """`[(label, epochs, mean, std)]`: test accuracy per evaluated epoch, over each group's runs."""
    groups = {}
    for row in rows:
        metrics = runs.read_metrics(os.path.join(sweep_dir, row["run"]))
        tested = {m["epoch"]: m["test_acc"] for m in metrics if m["test_acc"] is not None}
        groups.setdefault((row["config"], row["setting"]), []).append(tested)
    lines = []
    for (config, setting), curves in groups.items():
        epochs = sorted(set().union(*curves))
        values = [[c[e] for c in curves if e in c] for e in epochs]
        label = config if setting == "default" else f"{config} [{setting}]"
        lines.append((label, epochs, [float(np.mean(v)) for v in values],
                      [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]))
    return lines


def write_results(sweep_dir, at_epoch=None):
    """results.csv, summary.csv, summary.md and curves.png in the sweep folder; returns the summary
    rows. With `at_epoch` also summary-epoch-E.csv/.md (see `summary_rows`), whose rows it returns."""
    rows = result_rows(sweep_dir)
    write_csv(os.path.join(sweep_dir, "results.csv"), RESULT_COLUMNS, rows)
    table = summary_rows(rows)
    write_tables(sweep_dir, "summary", SUMMARY_COLUMNS, [[r[c] for c in SUMMARY_COLUMNS] for r in table])
    if at_epoch is not None:
        table = summary_rows(rows, sweep_dir, at_epoch)
        write_tables(sweep_dir, f"summary-epoch-{at_epoch}", SUMMARY_COLUMNS,
                     [[r[c] for c in SUMMARY_COLUMNS] for r in table])
    spec, _ = load_sweep(sweep_dir)
    plots.mean_curves(curve_groups(sweep_dir, rows), os.path.join(sweep_dir, "curves.png"),
                      f"{spec.get('name', 'sweep')}: test accuracy, mean and one standard deviation over seeds")
    return table
