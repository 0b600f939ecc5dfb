"""A training run: the epoch loop with its run folder, progress, checkpoints and plots."""

import os
import platform
import subprocess
import sys
import time

import numpy as np
from tqdm import tqdm

from cnnrun import attacks, plots, runs
from cnnrun.config import build_network
from cnnrun.errors import CnnrunError
from cnnrun.nn import exponential_lr, make_optimizer
from cnnrun.training import Diverged, epoch_rng, evaluate, train_epoch


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


def check_data_fits(net, data):
    shape = data["train"][0].shape[1:]
    if tuple(shape) != net.input_shape:
        raise CnnrunError(f"the data's images are {tuple(shape)} but model.input_shape is "
                          f"{list(net.input_shape)}")


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
    return text + f"  {row['seconds']:.1f}s"


def train_run(config, run_dir, data, resume=False, progress=True, log=print, command=""):
    """Train `config`'s network on `data` in `run_dir`, from scratch or from its checkpoint.

    Writes metrics, checkpoint and summary after every epoch, curves at every
    evaluation, the final weights at the end. Returns the summary dict; raises
    `Stopped` on Ctrl-C or divergence, with the last good checkpoint kept.
    """
    train_cfg = config["train"]
    epochs, seed = train_cfg["epochs"], config["seed"]
    net = build_network(config)
    check_data_fits(net, data)
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    checkpoint = os.path.join(run_dir, "checkpoint.npz")
    summary_path = os.path.join(run_dir, "summary.json")

    start_epoch, rows, previous = 0, [], {}
    if resume:
        if not os.path.isfile(checkpoint):
            raise CnnrunError(f"{run_dir}: no checkpoint.npz to resume from")
        state = net.load(checkpoint)
        start_epoch = int(state["epoch"])
        rows = [r for r in runs.read_metrics(run_dir) if r["epoch"] <= start_epoch]
        previous = runs.read_json(summary_path, {})
        if start_epoch >= epochs:
            raise CnnrunError(f"{run_dir}: already trained {start_epoch} of {epochs} epochs; "
                              f"pass --epochs N with a larger N to train on")
    else:
        runs.save_config(run_dir, config)

    summary = dict(
        name=config["name"], status="running", epochs_done=start_epoch, epochs_planned=epochs,
        **summarise(rows), wall_time_s=previous.get("wall_time_s", 0.0),
        train_samples_per_s=previous.get("train_samples_per_s"), command=previous.get("command", command),
        resumed_with=previous.get("resumed_with", []) + ([command] if resume else []),
        python=platform.python_version(), numpy=np.__version__, git_commit=git_commit(),
        started=previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")), pid=os.getpid(),
        train_samples=len(x_train), test_samples=len(x_test), adversarial=train_cfg["adversarial"],
    )
    runs.write_json(summary_path, summary)
    optimizer = make_optimizer(train_cfg)
    names = list(net.named_parameters())
    if resume:  # the checkpoint holds the optimizer's state too
        optimizer.load_state(state, names)
    batches = -(-len(x_train) // train_cfg["batch_size"])
    train_seconds = 0.0
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            optimizer.lr = exponential_lr(train_cfg["lr"], train_cfg["lr_decay"], epoch)
            started = time.perf_counter()
            with tqdm(total=batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress,
                      unit="batch", file=sys.stderr) as bar:
                def on_batch(loss, acc):
                    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", refresh=False)
                    bar.update()
                try:
                    adversary = attacks.adversary(train_cfg["adversarial"], epoch_rng(seed, epoch, stream=1), epoch)
                    train_loss, train_acc = train_epoch(net, optimizer, x_train, y_train, train_cfg["batch_size"],
                                                        epoch_rng(seed, epoch), on_batch, adversary)
                except Diverged as e:
                    summary.update(status="diverged", diverged_at=dict(epoch=epoch + 1, batch=e.batch))
                    runs.write_json(summary_path, summary)
                    raise Stopped(f"training diverged at epoch {epoch + 1}, batch {e.batch + 1} (loss {e.loss}); "
                                  f"the last good checkpoint (epoch {epoch}) is kept in {run_dir}. "
                                  f"Try a smaller train.lr.", 1) from None
            train_time = time.perf_counter() - started
            train_seconds += train_time
            row = dict(epoch=epoch + 1, lr=optimizer.lr, train_loss=train_loss, train_acc=train_acc,
                       test_loss=None, test_acc=None)
            evaluating = (epoch + 1) % train_cfg["eval_every"] == 0 or epoch + 1 == epochs
            if evaluating:
                row["test_loss"], row["test_acc"], _ = evaluate(net, x_test, y_test)
            row["seconds"] = round(time.perf_counter() - started, 3)
            rows.append(row)
            # Metrics first, then the checkpoint: on resume, rows past the checkpoint are dropped.
            runs.write_metrics(run_dir, rows)
            net.save(checkpoint, extra={"epoch": np.array(epoch + 1), **optimizer.state(names)})
            summary.update(epochs_done=epoch + 1, **summarise(rows),
                           wall_time_s=round(summary["wall_time_s"] + row["seconds"], 3),
                           train_samples_per_s=round(len(x_train) * (epoch + 1 - start_epoch) / train_seconds, 1))
            runs.write_json(summary_path, summary)
            if evaluating:
                plots.training_curves(rows, os.path.join(run_dir, "curves.png"), config["name"])
            log(epoch_line(row, epochs))
    except KeyboardInterrupt:
        summary.update(status="interrupted")
        runs.write_json(summary_path, summary)
        raise Stopped(f"interrupted during epoch {epoch + 1}; the checkpoint holds epoch "
                      f"{summary['epochs_done']}. Resume with: cnnrun train --resume {run_dir}", 130) from None
    net.save(os.path.join(run_dir, "weights.npz"))
    summary.update(status="finished")
    runs.write_json(summary_path, summary)
    return summary
