"""Experiment tracking: MLflow and TensorBoard, fed from run folders.

A tracker never decides what a run is: metrics.csv, summary.json and the files of a
run folder are the record, and `sync_run` makes a tracker show what a folder holds,
whenever it is called and however often. Logging during training is that same call
after every epoch; `cnnrun track` is it on folders trained without tracking; a sweep's
own process calls it on its runs' folders as they advance, so workers never touch the
tracking store. Calling it twice logs nothing twice:

- MLflow: the run's id is kept in RUN_DIR/tracking.json (one per tracking URI), and
  the steps a metric already has are read back before logging the others.
- TensorBoard: event files in RUN_DIR/tb/; tracking.json keeps the last epoch written,
  and a writer reopened after a kill purges any later steps it had left.

A failing tracker never costs a run: `Trackers` turns its errors into one warning line
(what was not logged, and the `cnnrun track` command that logs it later) and stops
using it for the rest of the process.
"""

import json
import os
import shlex
import re
import time
from urllib.parse import urlparse

import numpy as np

from cnnrun import runs
from cnnrun.errors import CnnrunError

MLFLOW_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
STATE_FILE = "tracking.json"
EXPERIMENT = "cnnrun"
STATUS = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "interrupted": "KILLED",
          "paused": "KILLED", "running": "RUNNING"}


# --- choosing ---------------------------------------------------------------------

def mlflow_uri(value, runs_dir):
    """The tracking URI for `--mlflow [URI]`: URI, else $MLFLOW_TRACKING_URI, else a SQLite
    database in the runs folder. One line of error for anything MLflow 3 cannot use."""
    uri = value or os.environ.get("MLFLOW_TRACKING_URI") or \
        "sqlite:///" + os.path.abspath(os.path.join(runs_dir, "mlflow.db"))
    parsed = urlparse(uri)
    if parsed.scheme.split("+")[0] not in MLFLOW_SCHEMES:
        hint = " (MLflow 3's file store is refused: use sqlite:///PATH/mlflow.db)" \
            if parsed.scheme in ("", "file") else ""
        raise CnnrunError(f"--mlflow {uri!r}: not a tracking URI MLflow knows; expected sqlite:///PATH, "
                          f"http(s)://HOST:PORT or a database URL{hint}")
    if parsed.scheme in ("http", "https") and not parsed.hostname:
        raise CnnrunError(f"--mlflow {uri!r}: no host in the address")
    if parsed.scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise CnnrunError(f"--mlflow {uri!r}: a SQLite URI is sqlite:///PATH (three slashes, then the path)")
    return uri


def require(module, extra):
    """Import a tracker's library, or say in one line how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise CnnrunError(f"--{extra} needs {module}: pip install -e '.[{extra}]'") from None


def make_trackers(mlflow=None, tensorboard=False, runs_dir="runs", log=print):
    """`Trackers` for the CLI flags (`mlflow`: the flag's value, "" for the default URI,
    None for off), their libraries checked now, before any run folder is made."""
    trackers = []
    if mlflow is not None:
        uri = mlflow_uri(mlflow or None, runs_dir)
        require("mlflow", "mlflow")
        trackers.append(MlflowTracker(uri))
        log(f"MLflow: logging to {uri} (MLflow takes some seconds to start, more for a new store)")
    if tensorboard:
        require("tensorboardX", "tensorboard")
        trackers.append(TensorboardTracker(runs_dir))
        log("TensorBoard: event files in each run folder's tb/")
    return Trackers(trackers, log)


class Trackers:
    """The trackers of one process; a tracker that fails is warned about once and dropped."""

    def __init__(self, trackers, log=print):
        self.trackers, self.log = list(trackers), log

    def __bool__(self):
        return bool(self.trackers)

    def updated(self):
        """The run folders (absolute paths) to which some tracker logged something new."""
        return set().union(*(tracker.updated for tracker in self.trackers))

    def where(self):
        """One line per tracker still working: where it logged, and how to look."""
        return [tracker.where() for tracker in self.trackers]

    def call(self, method, *args, **kwargs):
        """`tracker.method(*args)` on each tracker; a failure is one warning line, never an error."""
        results = {}
        for tracker in list(self.trackers):
            try:
                results[tracker.name] = getattr(tracker, method)(*args, **kwargs)
            except Exception as e:  # any failure of a tracker: the run goes on without it
                self.trackers.remove(tracker)
                what = args[0] if args else ""
                message = " ".join(f"{type(e).__name__}: {e}".split())[:300]
                self.log(f"warning: {tracker.name} logging stopped ({message}); {what} is complete on disk; "
                         f"log it later with: {tracker.track_command(what)}")
        return results

    def sync_run(self, run_dir, **kwargs):
        return self.call("sync_run", run_dir, **kwargs)

    def sync_sweep(self, sweep_dir, run_dirs, finished=True):
        """Each run of a sweep, then (MLflow) the sweep's parent run with its summary."""
        for run_dir in run_dirs:
            self.sync_run(run_dir)
        for tracker in list(self.trackers):
            if hasattr(tracker, "sync_sweep"):
                one = Trackers([tracker], self.log)
                one.call("sync_sweep", sweep_dir, finished)
                if not one.trackers:  # it failed and was warned about
                    self.trackers.remove(tracker)


# --- what a run folder holds --------------------------------------------------------

def flatten(value, prefix=""):
    """A config as flat `{"train.lr": "0.01", "model.layers.0.conv.filters": "8", ...}`."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: "null" if value is None else str(value)}
    flat = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def run_params(run_dir):
    """The resolved config flattened, with the seed and the git commit."""
    config = runs.load_run_config(run_dir)
    summary = runs.read_json(os.path.join(run_dir, "summary.json"), {})
    params = flatten(config)
    params["git_commit"] = str(summary.get("git_commit"))
    return params


def run_metrics(run_dir):
    """Per-epoch metrics from metrics.csv: `{name: {epoch: value}}` (test figures only where
    evaluated)."""
    metrics = {}
    for row in runs.read_metrics(run_dir):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"):
            if row.get(key) is not None:
                metrics.setdefault(key, {})[int(row["epoch"])] = float(row[key])
    return metrics


def evaluation_metrics(run_dir):
    """Figures of `eval`, `attack` and `certify` in the folder: `{name: value}`."""
    found = {}
    evaluated = runs.read_json(os.path.join(run_dir, "eval.json"), None)
    if isinstance(evaluated, dict) and "accuracy" in evaluated:
        found["eval_test_acc"] = float(evaluated["accuracy"])
        found["eval_test_loss"] = float(evaluated["loss"])
    for results in sorted(_attack_results(run_dir)):
        report = runs.read_json(results, None)
        for r in (report or {}).get("results", []):
            key = re.sub(r"[^A-Za-z0-9_.-]", "_", f"robust_acc_{r['method']}_eps{r['eps']:g}")
            found[key] = float(r["accuracy"])
            for stage, accuracy in r.get("after_each", {}).items():  # a suite: after each of its attacks
                found[re.sub(r"[^A-Za-z0-9_.-]", "_", f"{key}_after_{stage}")] = float(accuracy)
    for results in sorted(_attack_results(run_dir, "certify")):
        report = runs.read_json(results, None)
        for r in (report or {}).get("results", []):
            found[re.sub(r"[^A-Za-z0-9_.-]", "_", f"certified_acc_{r['method']}_eps{r['eps']:g}")] = float(r["accuracy"])
    return found


def _attack_results(run_dir, verb="attacks"):
    """The results.json files of the run's `attacks` (or `certify`) folders."""
    folder = os.path.join(run_dir, verb)
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, d, "results.json") for d in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, d, "results.json"))]


def run_artifacts(run_dir):
    """The files a tracker shows beside the metrics, relative to the run folder: while a
    run trains only its config (the pictures change every epoch; they go at the end)."""
    summary = runs.read_json(os.path.join(run_dir, "summary.json"), {})
    if summary.get("status", "running") == "running":
        return ["config.yaml"] if os.path.isfile(os.path.join(run_dir, "config.yaml")) else []
    names = ["config.yaml", "curves.png", "confusion.png", "filters.png", "model.onnx"]
    if summary.get("status") == "finished":
        names.append("weights.npz")
    found = [n for n in names if os.path.isfile(os.path.join(run_dir, n))]
    for results in sorted(_attack_results(run_dir)):
        folder = os.path.dirname(results)
        found += [os.path.relpath(os.path.join(folder, f), run_dir) for f in sorted(os.listdir(folder))
                  if f.endswith((".png", ".json", ".csv"))]
    return found


def file_stamp(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def read_state(run_dir):
    state = runs.read_json(os.path.join(run_dir, STATE_FILE), {})
    return state if isinstance(state, dict) else {}


def write_state(run_dir, state):
    runs.write_json(os.path.join(run_dir, STATE_FILE), state)


# --- MLflow -------------------------------------------------------------------------

class MlflowTracker:
    """A run folder as an MLflow run: params, per-epoch metrics, artifacts, tags and status."""

    name = "MLflow"

    def __init__(self, uri):
        # Fail fast on an unreachable server instead of MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.uri, self._client, self._experiment = uri, None, None
        self.updated = set()  # run folders that got anything new from this process

    def track_command(self, what):
        return f"cnnrun track {shlex.quote(str(what))} --mlflow {shlex.quote(self.uri)}"

    def where(self):
        look = f"open {self.uri}" if self.uri.startswith("http") else f"mlflow ui --backend-store-uri {self.uri}"
        return f"MLflow: logged to {self.uri}, experiment {os.environ.get('MLFLOW_EXPERIMENT_NAME') or EXPERIMENT}; " \
               f"to look: {look}"

    @property
    def client(self):
        if self._client is None:
            import logging
            for name in ("mlflow", "alembic"):  # their INFO lines about creating tables, on every new store
                logging.getLogger(name).setLevel(logging.WARNING)
            from mlflow.tracking import MlflowClient
            if self.uri.startswith("sqlite:///"):  # SQLite makes the file, not its folder
                os.makedirs(os.path.dirname(os.path.abspath(self.uri[10:])), exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self):
        if self._experiment is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                self._experiment = found.experiment_id
            else:
                location = None
                if self.uri.startswith("sqlite:///"):  # artifacts in a folder beside the database
                    location = "file://" + os.path.join(os.path.dirname(os.path.abspath(self.uri[10:])),
                                                        "mlflow-artifacts")
                self._experiment = self.client.create_experiment(name, artifact_location=location)
        return self._experiment

    def run_id(self, run_dir, state, run_name, tags):
        """The MLflow run of this folder: the one tracking.json names, else one tagged with
        the folder, else a new one."""
        known = state.get("mlflow", {}).get(self.uri)
        if known:
            return known
        folder = os.path.abspath(run_dir)
        found = "'" not in folder and self.client.search_runs(  # (a quote would end the filter's string)
            [self.experiment_id()], f"tags.cnnrun_run_dir = '{folder}'", max_results=1)
        if found:
            return found[0].info.run_id
        return self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags,
                                      start_time=started_ms(run_dir)).info.run_id

    def sync_run(self, run_dir, parent=None):
        """Make the MLflow run of `run_dir` show what the folder holds; returns its id."""
        from mlflow.entities import Metric, Param, RunTag

        state = read_state(run_dir)
        summary = runs.read_json(os.path.join(run_dir, "summary.json"), {})
        sweep_dir = os.path.dirname(os.path.abspath(run_dir))
        if parent is None and os.path.isfile(os.path.join(sweep_dir, "sweep.yaml")):
            parent = self.sweep_parent(sweep_dir)
        tags = {"cnnrun_run_dir": os.path.abspath(run_dir), "cnnrun_network": str(summary.get("name"))}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run_id = self.run_id(run_dir, state, os.path.basename(os.path.abspath(run_dir)), tags)
        state.setdefault("mlflow", {})[self.uri] = run_id
        write_state(run_dir, state)
        run = self.client.get_run(run_id)
        logged = run.data.params
        params = run_params(run_dir)
        new_params = [Param(k, v[:6000]) for k, v in params.items() if k not in logged]
        changed = [RunTag(f"changed.{k}", v[:5000]) for k, v in params.items() if k in logged and logged[k] != v[:6000]]
        now = int(time.time() * 1000)
        metrics = []
        for key, by_epoch in {**run_metrics(run_dir), **{k: {0: v} for k, v in evaluation_metrics(run_dir).items()}
                              }.items():
            have = {m.step for m in self.client.get_metric_history(run_id, key)} if key in run.data.metrics else set()
            metrics += [Metric(key, value, now, step) for step, value in sorted(by_epoch.items()) if step not in have]
        status = summary.get("status", "running")
        run_tags = [RunTag("status", str(status))] + changed + \
            [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
        new = new_params or metrics or any(run.data.tags.get(t.key) != t.value for t in run_tags)
        self.client.log_batch(run_id, tags=run_tags)
        for start in range(0, len(new_params), 100):  # MLflow's limits on one batch
            self.client.log_batch(run_id, params=new_params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        uploaded = state.get("mlflow_artifacts", {}).get(run_id, {})
        for name in run_artifacts(run_dir):
            stamp = file_stamp(os.path.join(run_dir, name))
            if uploaded.get(name) != stamp:
                folder = os.path.dirname(name)
                self.client.log_artifact(run_id, os.path.join(run_dir, name), artifact_path=folder or None)
                uploaded[name] = stamp
                new = True
        state.setdefault("mlflow_artifacts", {})[run_id] = uploaded
        write_state(run_dir, state)
        mlflow_status = STATUS.get(status, "RUNNING")
        if new or run.info.status != mlflow_status:
            self.updated.add(os.path.abspath(run_dir))
        if run.info.status != mlflow_status:
            if mlflow_status == "RUNNING":  # resumed
                self.client.update_run(run_id, status="RUNNING")
            else:  # the run's own end where the summary knows it (logged afterwards by `track`)
                start = started_ms(run_dir)
                wall = summary.get("wall_time_s")
                end = int(start + 1000 * wall) if start and isinstance(wall, (int, float)) else now
                self.client.set_terminated(run_id, mlflow_status, end_time=min(end, now))
        return run_id

    def sweep_parent(self, sweep_dir):
        """The sweep's parent run (its id in SWEEP_DIR/tracking.json), made on first use."""
        state = read_state(sweep_dir)
        parent = state.get("mlflow", {}).get(self.uri)
        if parent:
            return parent
        folder = os.path.abspath(sweep_dir)
        found = "'" not in folder and self.client.search_runs(
            [self.experiment_id()], f"tags.cnnrun_sweep_dir = '{folder}'", max_results=1)
        parent = found[0].info.run_id if found else self.client.create_run(
            self.experiment_id(), run_name=os.path.basename(folder), tags={"cnnrun_sweep_dir": folder}).info.run_id
        state.setdefault("mlflow", {})[self.uri] = parent
        write_state(sweep_dir, state)
        return parent

    def sync_sweep(self, sweep_dir, finished):
        """The parent run's summary: per config and setting, the mean, sd, min, max and n of
        the final test accuracy (summary.csv), and curves.png; FINISHED once `finished`."""
        from mlflow.entities import Metric

        parent = self.sweep_parent(sweep_dir)
        run = self.client.get_run(parent)
        now = int(time.time() * 1000)
        metrics = []
        for row in read_csv_rows(os.path.join(sweep_dir, "summary.csv")):
            label = re.sub(r"[^A-Za-z0-9_.-]", "_", "_".join(v for v in (row.get("config"), row.get("setting")) if v))
            for stat in ("mean", "std", "n", "min", "max"):
                try:
                    metrics.append(Metric(f"{label}.{stat}", float(row[stat]), now, 0))
                except (KeyError, TypeError, ValueError):  # an empty cell: no runs finished there
                    pass
        metrics = [m for m in metrics if run.data.metrics.get(m.key) != m.value]
        if metrics:
            self.client.log_batch(parent, metrics=metrics)
        for name in ("curves.png", "summary.md", "summary.csv"):
            if os.path.isfile(os.path.join(sweep_dir, name)):
                self.client.log_artifact(parent, os.path.join(sweep_dir, name))
        if finished and run.info.status != "FINISHED":
            self.client.set_terminated(parent, "FINISHED", end_time=now)
        return parent


def started_ms(run_dir):
    """When the run started (summary.json's local time), in ms since the epoch, or None."""
    started = runs.read_json(os.path.join(run_dir, "summary.json"), {}).get("started")
    try:
        return int(1000 * time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S")))
    except (TypeError, ValueError, OverflowError):
        return None


def read_csv_rows(path):
    import csv
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- TensorBoard --------------------------------------------------------------------

class TensorboardTracker:
    """A run folder as TensorBoard event files in RUN_DIR/tb/."""

    name = "TensorBoard"

    def __init__(self, runs_dir="runs"):
        self.runs_dir = runs_dir
        self.updated = set()  # run folders that got anything new from this process

    def track_command(self, what):
        return f"cnnrun track {shlex.quote(str(what))} --tensorboard"

    def where(self):
        return f"TensorBoard: event files in each run folder's tb/; to look: tensorboard --logdir {self.runs_dir}"

    def sync_run(self, run_dir, parent=None):
        from tensorboardX import SummaryWriter

        state = read_state(run_dir)
        tb = state.get("tensorboard", {})
        last = tb.get("last_epoch", 0)
        metrics = run_metrics(run_dir)
        # A test figure can arrive for an epoch already written (the last one, evaluated at
        # the end): write again from the first epoch that changed.
        first = min([e for by in metrics.values() for e in by if e > last] +
                    [e for e in metrics.get("test_acc", {}) if e not in tb.get("tested", [])] + [10 ** 9])
        logdir = os.path.join(run_dir, "tb")
        images = tb.get("images", {})
        summary = runs.read_json(os.path.join(run_dir, "summary.json"), {})
        pictures = [n for n in run_artifacts(run_dir) if n.endswith(".png")]
        changed = [n for n in pictures if images.get(n) != file_stamp(os.path.join(run_dir, n))]
        hparams = summary.get("status") == "finished" and not tb.get("hparams") and \
            summary.get("final_test_acc") is not None
        kernels = first_kernels(run_dir) if summary.get("status") == "finished" and not tb.get("filters") else None
        if first == 10 ** 9 and not changed and not hparams and kernels is None:
            return logdir
        self.updated.add(os.path.abspath(run_dir))
        # A file of its own per writer (event files are named by the second they were opened in).
        writer = SummaryWriter(logdir, purge_step=first if first != 10 ** 9 else None, flush_secs=3600,
                               filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        try:
            for key, by_epoch in metrics.items():
                for epoch, value in sorted(by_epoch.items()):
                    if epoch >= first:
                        writer.add_scalar(key, value, epoch)
            step = int(summary.get("epochs_done") or 0)
            for name in changed:
                writer.add_image(name[:-4], _read_png(os.path.join(run_dir, name)), step, dataformats="HWC")
                images[name] = file_stamp(os.path.join(run_dir, name))
            if kernels is not None:  # the first convolution's kernels, channel 0, each scaled to [0, 1]
                low = kernels.min(axis=(1, 2, 3), keepdims=True)
                span = kernels.max(axis=(1, 2, 3), keepdims=True) - low
                writer.add_images("filters", (kernels - low) / np.where(span > 0, span, 1), step,
                                  dataformats="NCHW")
                tb["filters"] = True
            if hparams:
                from tensorboardX.summary import hparams as hparams_summaries
                flat = {k: _hparam(v) for k, v in run_params(run_dir).items()}
                results = {"hparam/final_test_acc": float(summary["final_test_acc"]),
                           "hparam/best_test_acc": float(summary.get("best_test_acc") or 0.0)}
                for part in hparams_summaries(flat, results):  # the HParams plugin's experiment, start and end records
                    writer.file_writer.add_summary(part)
                for key, value in results.items():
                    writer.add_scalar(key, value, step)
                tb["hparams"] = True
            writer.flush()
        finally:
            writer.close()
        all_epochs = [e for by in metrics.values() for e in by]
        tb.update(last_epoch=max(all_epochs, default=last), tested=sorted(metrics.get("test_acc", {})), images=images)
        state["tensorboard"] = tb
        write_state(run_dir, state)
        return logdir


def first_kernels(run_dir):
    """The first convolution's weights in weights.npz, channel 0: `(F, 1, kh, kw)`, or None."""
    try:
        with np.load(os.path.join(run_dir, "weights.npz")) as weights:
            convs = [k for k in weights.files if weights[k].ndim == 4]
            first = min(convs, key=lambda k: int(k.split(".")[0])) if convs else None
            return None if first is None else weights[first][:, :1].astype(np.float32)
    except (OSError, ValueError):
        return None


def _read_png(path):
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _hparam(value):
    """A parameter as TensorBoard's HParams plugin takes it: a number where it is one."""
    try:
        number = json.loads(value)
    except ValueError:
        return value
    return number if isinstance(number, (int, float)) and not isinstance(number, bool) else value
