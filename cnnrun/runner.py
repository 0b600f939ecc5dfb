"""A training run: the epoch loop in its run folder, with metrics, checkpoint, summary and curves.

After every epoch the run folder holds everything needed to go on: metrics.csv
first, then checkpoint.npz (weights, optimizer state, the epoch), then
summary.json. Resuming (`train_run(..., resume=True)`) takes a folder from
whatever state a stop left it in:

- not started (no checkpoint yet): trains from epoch 0 in the same folder;
- interrupted, killed or paused (`until`) part-way: continues from the checkpoint's epoch;
- killed after the last epoch's checkpoint: writes the final weights and summary;
- finished: changes nothing.

Shuffling and random starts depend only on (seed, epoch), so a resumed run
gives exactly the numbers of an uninterrupted one.
"""

import os
import shlex
import platform
import socket
import subprocess
import sys
import time

import numpy as np
from tqdm import tqdm

from cnnrun import plots, runs
from cnnrun.data import augment
from cnnrun.robustness import attacks, bounds
from cnnrun.config import build_network
from cnnrun.data import check_data_fits
from cnnrun.errors import CnnrunError, interrupted
from cnnrun.fileio import write_atomic
from cnnrun.nn import make_optimizer
from cnnrun.training import (Diverged, check_adversarial, check_batches, epoch_rng, evaluate, steps_per_epoch,
                             train_epoch)

# During training, curves.png is redrawn after a tested epoch at most once in this many
# seconds (a drawing takes 0.1-0.3 s, longer than a small network's epoch), and always
# when the run finishes or pauses. `cnnrun plot RUN` redraws it at any time.
CURVES_EVERY_S = 10.0


class Stopped(Exception):
    """Training ended early (interrupted or diverged); the message says how to go on."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def git_commit():
    """The commit of the cnnrun checkout, if it is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def summarise(rows):
    """Final and best test accuracy from metric rows."""
    tested = [r for r in rows if r.get("test_acc") is not None]
    best = max(tested, key=lambda r: r["test_acc"], default=None)
    return dict(final_test_acc=tested[-1]["test_acc"] if tested else None,
                final_test_loss=tested[-1]["test_loss"] if tested else None,
                best_test_acc=best["test_acc"] if best else None,
                best_epoch=best["epoch"] if best else None)


def epoch_line(row, epochs):
    text = (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  lr {row['lr']:.5f}  "
            f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}")
    if row.get("test_acc") is not None:
        text += f"  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}"
    if row.get("val_acc") is not None:
        text += f"  val acc {row['val_acc']:.4f}"
    if row.get("val_robust_acc") is not None:
        text += f" robust {row['val_robust_acc']:.4f}"
    return text + f"  {row['seconds']:.1f}s"


# --- resuming -----------------------------------------------------------------

def resume_action(run_dir, epochs):
    """What resuming `run_dir` to `epochs` epochs does: "train" (from the checkpoint,
    or from the start if there is none), "finish" (the checkpoint already holds the
    last epoch: write the final weights), "repair" (finished, but its final weights are
    damaged: write them again from the checkpoint, which holds the same numbers) or
    "nothing" (finished, or stopped early). Refuses, changing nothing, if the checkpoint is past `epochs`
    or damaged where it is needed."""
    done = runs.checkpoint_epoch(run_dir)
    runs.read_metrics(run_dir)  # a damaged metrics file is an error now, before anything is written
    if done > epochs:
        raise CnnrunError(f"{run_dir}: already trained {done} epochs; it cannot be cut to {epochs} "
                          f"(pass a larger --epochs to train on)")
    stopped = runs.read_json(os.path.join(run_dir, "summary.json"), {})
    if stopped.get("status") == "finished" and stopped.get("stopped_early"):
        return "nothing"  # it stopped early, by its train.early_stop: final
    if done < epochs:
        return "train"
    summary = runs.read_json(os.path.join(run_dir, "summary.json"), {})
    if summary.get("status") != "finished" or not os.path.isfile(os.path.join(run_dir, "weights.npz")):
        return "finish"
    if runs.file_state(run_dir, "weights.npz", summary)[0] == "damaged" or not _loads(run_dir, "weights.npz"):
        runs.check_file(run_dir, "checkpoint.npz", summary)  # nothing intact to rebuild from: refuse
        if not _loads(run_dir, "checkpoint.npz"):
            raise CnnrunError(f"{run_dir}: weights.npz and checkpoint.npz are both damaged; nothing to rebuild from")
        return "repair"
    return "nothing"


def _loads(run_dir, name):
    """Whether `name` in the run folder is a readable .npz of finite numbers."""
    try:
        with np.load(os.path.join(run_dir, name), allow_pickle=False) as data:
            return all(np.isfinite(data[k]).all() for k in data.files if data[k].dtype.kind == "f")
    except Exception:
        return False


def restore(run_dir, net, optimizer):
    """Load the run's checkpoint into `net` and `optimizer`; return `(epoch, metric rows 1..epoch)`.
    A run with no checkpoint yet starts at epoch 0 with no rows."""
    path = os.path.join(run_dir, "checkpoint.npz")
    if not os.path.isfile(path):
        return 0, []
    runs.check_file(run_dir, "checkpoint.npz")
    state = net.load(path)
    try:
        epoch = int(state["epoch"])
        optimizer.load_state(state, list(net.named_parameters()))
    except (KeyError, ValueError, TypeError) as e:
        raise CnnrunError(f"{path}: the checkpoint lacks the epoch or the optimizer's state ({e})") from None
    rows = [r for r in runs.read_metrics(run_dir) if r["epoch"] <= epoch]  # rows past it are redone
    if [r["epoch"] for r in rows] != list(range(1, epoch + 1)):
        raise CnnrunError(f"{run_dir}: metrics.csv does not hold epochs 1 to {epoch} of the checkpoint")
    return epoch, rows


# --- one epoch and what is saved after it ---------------------------------------

def augmenter(settings, rng):
    """`x -> x` transforming a training batch by `data.augment` (data/augment.py), its draws
    from `rng`; None if the config has none."""
    return None if settings is None else (lambda x: augment.augment(x, settings, rng))


def run_epoch(net, optimizer, config, data, epoch, progress):
    """Train one epoch (from 0) and evaluate if it is due; return `(metrics row, training seconds)`."""
    train_cfg, seed = config["train"], config["seed"]
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    epochs = train_cfg["epochs"]
    started = time.perf_counter()
    batches = steps_per_epoch(len(x_train), train_cfg["batch_size"])
    with tqdm(total=batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress,
              unit="batch", file=sys.stderr) as bar:
        def on_batch(loss, acc):
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", refresh=False)
            bar.update()
        settings = train_cfg["adversarial"]
        adversary = attacks.adversary(settings, epoch_rng(seed, epoch, stream=1), epoch, first_step=epoch * batches,
                                      steps_per_epoch=batches, epochs=epochs)
        beta = settings["beta"] if settings and settings["method"] == "trades" else None
        certified = (bounds.ibp_trainer(settings, epoch, epoch * batches, batches, epochs)
                     if settings and settings["method"] == "ibp" else None)
        train_loss, train_acc = train_epoch(net, optimizer, x_train, y_train, train_cfg["batch_size"],
                                            epoch_rng(seed, epoch), on_batch, adversary, beta,
                                            noise=epoch_rng(seed, epoch, stream=2), first_step=epoch * batches,
                                            augment=augmenter(config["data"]["augment"], epoch_rng(seed, epoch, stream=3)),
                                            certified=certified)
    train_seconds = time.perf_counter() - started
    row = dict(epoch=epoch + 1, lr=optimizer.lr, train_loss=train_loss, train_acc=train_acc,
               test_loss=None, test_acc=None)
    if (epoch + 1) % train_cfg["eval_every"] == 0 or epoch + 1 == epochs:
        row["test_loss"], row["test_acc"], _ = evaluate(net, x_test, y_test)
        if "val" in data:
            row.update(validate_epoch(net, data["val"], train_cfg["select"]))
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row, train_seconds


def validate_epoch(net, val, select):
    """`{"val_loss", "val_acc"}` on the held-out images, and with train.select's
    val_robust_acc, the accuracy of its attack on the first `limit` of them."""
    x_val, y_val = val
    figures = dict(zip(("val_loss", "val_acc"), evaluate(net, x_val, y_val)[:2]))
    if select and select["metric"] == "val_robust_acc":
        a = select["attack"]
        x, labels = x_val[:a["limit"]], y_val[:a["limit"]]
        options = {} if a["method"] == "fgsm" else dict(steps=a["steps"], step_size=a["step_size"],
                                                        rng=np.random.default_rng(0))
        _, probabilities = attacks.evaluate_attack(net, x, labels, a["method"], a["eps"], **options)
        figures["val_robust_acc"] = float(np.mean(probabilities.argmax(axis=1) == labels))
    return figures


def select_best(run_dir, net, config, rows, summary):
    """With train.select: if the last row's figure beats every earlier row's, write the
    weights as best.npz (atomically, its digest in the summary) and note the epoch in
    `summary["selected"]`. Called before the epoch's checkpoint, so a run killed in between
    redoes the epoch and writes the same file again."""
    select = config["train"]["select"]
    if select is None or rows[-1].get(select["metric"]) is None:
        return
    metric = select["metric"]
    earlier = [r[metric] for r in rows[:-1] if r.get(metric) is not None]
    if earlier and rows[-1][metric] <= max(earlier):
        return
    runs.record_digest(summary, "best.npz", net.save(os.path.join(run_dir, "best.npz")))
    summary["selected"] = dict(metric=metric, epoch=rows[-1]["epoch"], value=rows[-1][metric])


def stops_early(config, rows):
    """With train.early_stop: whether the last `patience` evaluations all came after the
    best one (by train.select's metric, else val_acc)."""
    early = config["train"]["early_stop"]
    if early is None:
        return False
    select = config["train"]["select"]
    metric = select["metric"] if select else "val_acc"
    figures = [r[metric] for r in rows if r.get(metric) is not None]
    return len(figures) > early["patience"] and int(np.argmax(figures)) < len(figures) - early["patience"]


def save_epoch(run_dir, net, optimizer, rows, summary):
    """Metrics first, then the checkpoint: on resume, rows past the checkpoint are dropped.
    The summary announces the new checkpoint's digest (the old one still accepted) before
    the rename, so a kill at any moment leaves a checkpoint it vouches for; the caller
    writes the summary again once the epoch is counted, with the new digest alone."""
    runs.write_metrics(run_dir, rows)
    data = net.to_npz(extra={"epoch": np.array(rows[-1]["epoch"]), **optimizer.state(list(net.named_parameters()))})
    runs.record_digest(summary, "checkpoint.npz", data, keep_previous=True)
    runs.write_json(os.path.join(run_dir, "summary.json"), summary)
    write_atomic(os.path.join(run_dir, "checkpoint.npz"), data)
    runs.record_digest(summary, "checkpoint.npz", data)


def new_summary(config, rows, epoch, previous, data, command, resume, engine="fast"):
    """summary.json at the start of a run (or of its resumption), status "running";
    `engine` is the one the network runs on."""
    return dict(
        name=config["name"], status="running", epochs_done=epoch, epochs_planned=config["train"]["epochs"],
        engine=engine,
        **summarise(rows), wall_time_s=previous.get("wall_time_s", 0.0),
        train_samples_per_s=previous.get("train_samples_per_s"), command=previous.get("command", command),
        resumed_with=previous.get("resumed_with", []) + ([command] if resume else []),
        python=platform.python_version(), numpy=np.__version__, git_commit=git_commit(),
        started=previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
        pid=os.getpid(), host=socket.gethostname(),
        train_samples=len(data["train"][0]), test_samples=len(data["test"][0]),
        adversarial=config["train"]["adversarial"],
        digests={k: v for k, v in previous.get("digests", {}).items() if k in ("checkpoint.npz", "best.npz")}
        if isinstance(previous.get("digests"), dict) else {},
    )


def finish(run_dir, net, config, data, rows, summary):
    """The final weights, curves and a finished summary (evaluating first if the last
    epoch has no test figures)."""
    if rows and rows[-1]["test_acc"] is None:
        rows[-1]["test_loss"], rows[-1]["test_acc"], _ = evaluate(net, *data["test"])
        runs.write_metrics(run_dir, rows)
    runs.record_digest(summary, "weights.npz", net.save(os.path.join(run_dir, "weights.npz")))
    if rows:
        plots.training_curves(rows, os.path.join(run_dir, "curves.png"), config["name"])
    summary.update(status="finished", epochs_done=len(rows), **summarise(rows))
    runs.write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


# --- the run ----------------------------------------------------------------------

def train_run(config, run_dir, data, resume=False, progress=True, log=print, command="", until=None,
              engine="fast", trackers=None):
    """Train `config`'s network on `data` in `run_dir`, from scratch or (`resume`) from
    whatever the folder holds. With `until`, stop after that epoch (if it comes before
    the last) with status "paused": resuming goes on exactly. `engine`: "fast" or
    "reference" (nn/reference.py, the same numbers to float tolerance, slower).
    Returns the summary dict; raises `Stopped` on Ctrl-C or divergence, with the last
    good checkpoint kept. One process at a time: a second one on the same folder is
    refused while the first trains (`runs.training_lock`). `trackers` (tracking.Trackers)
    are shown the folder after every epoch and at the end; they never stop a run."""
    from cnnrun.tracking import Trackers
    trackers = trackers or Trackers([])
    with runs.training_lock(run_dir):
        try:
            return _train_run(config, run_dir, data, resume, progress, log, command, until, engine, trackers)
        finally:
            trackers.sync_run(run_dir)  # the state it ended in: finished, interrupted, paused, diverged


def _train_run(config, run_dir, data, resume, progress, log, command, until, engine, trackers):
    epochs = config["train"]["epochs"]
    stop = epochs if until is None else min(until, epochs)
    summary_path = os.path.join(run_dir, "summary.json")
    net = build_network(config, engine=engine)
    for images, labels in data.values():
        check_data_fits(net, images, labels)
    check_batches(net, len(data["train"][0]), config["train"]["batch_size"])
    check_adversarial(net, config["train"]["adversarial"])
    if config["data"]["augment"]:
        augment.check(config["data"]["augment"], net.input_shape)
    optimizer = make_optimizer(config["train"], list(net.named_parameters()),
                               steps_per_epoch(len(data["train"][0]), config["train"]["batch_size"]))
    previous = {}
    if resume:
        action = resume_action(run_dir, epochs)
        previous = runs.read_json(summary_path, {})
        if action == "nothing":
            return previous
    elif not runs.is_run(run_dir):
        runs.save_config(run_dir, config)
    start, rows = restore(run_dir, net, optimizer) if resume else (0, [])
    if stop < epochs and start >= stop:  # already at or past `until`: nothing to train
        return previous
    if resume:
        runs.save_config(run_dir, config)  # --epochs may have grown it
    summary = new_summary(config, rows, start, previous, data, command, resume, net.engine)
    if resume and isinstance(previous.get("selected"), dict) and previous["selected"].get("epoch", start + 1) <= start:
        summary["selected"] = previous["selected"]  # (one past the checkpoint is chosen again when redone)
    runs.write_json(summary_path, summary)
    trackers.sync_run(run_dir)
    samples, seconds = 0, 0.0
    epoch = start
    drawn_at, drawn_rows = -CURVES_EVERY_S, len(rows)  # when curves.png was drawn, and of how many epochs

    def draw():
        nonlocal drawn_at, drawn_rows
        plots.training_curves(rows, os.path.join(run_dir, "curves.png"), config["name"])
        drawn_at, drawn_rows = time.monotonic(), len(rows)

    try:
        for epoch in range(start, stop):
            try:
                row, train_seconds = run_epoch(net, optimizer, config, data, epoch, progress)
            except Diverged as e:
                batch = e.batch + 1  # counted from 1, as the epoch
                summary.update(status="diverged", diverged_at=dict(epoch=epoch + 1, batch=batch))
                runs.write_json(summary_path, summary)
                raise Stopped(f"training diverged at epoch {epoch + 1}, batch {batch} (loss {e.loss}); "
                              f"the last good checkpoint (epoch {epoch}) is kept in {run_dir}. "
                              f"Try a smaller train.lr.", 1) from None
            rows.append(row)
            select_best(run_dir, net, config, rows, summary)
            save_epoch(run_dir, net, optimizer, rows, summary)
            samples, seconds = samples + len(data["train"][0]), seconds + train_seconds
            summary.update(epochs_done=epoch + 1, **summarise(rows),
                           wall_time_s=round(summary["wall_time_s"] + row["seconds"], 3),
                           train_samples_per_s=round(samples / seconds, 1))
            runs.write_json(summary_path, summary)
            if row["test_acc"] is not None and epoch + 1 < epochs and time.monotonic() - drawn_at >= CURVES_EVERY_S:
                draw()  # (the last epoch's curves are finish's)
            log(epoch_line(row, epochs))
            trackers.sync_run(run_dir)
            if stops_early(config, rows):
                summary.update(stopped_early=dict(epoch=epoch + 1, patience=config["train"]["early_stop"]["patience"]))
                log(f"stopping early at epoch {epoch + 1}: no better validation figure in the last "
                    f"{config['train']['early_stop']['patience']} evaluations")
                break
    except BaseException as e:
        if not interrupted(e):
            raise
        summary.update(status="interrupted")
        runs.write_json(summary_path, summary)
        raise Stopped(f"interrupted during epoch {epoch + 1}; the checkpoint holds epoch "
                      f"{summary['epochs_done']}. Resume with: cnnrun train --resume {shlex.quote(run_dir)}", 130) from None
    if stop < epochs and not summary.get("stopped_early"):
        if rows and drawn_rows < len(rows):
            draw()
        summary.update(status="paused")
        runs.write_json(summary_path, summary)
        return summary
    return finish(run_dir, net, config, data, rows, summary)
