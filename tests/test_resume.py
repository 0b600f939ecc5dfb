"""`train --resume` from every state a stop can leave a run in, and the status `runs` shows."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnrun import runner, runs
from helpers import cli, metrics_without_seconds
from idx import make_digits, write_config


def train(s, *extra):
    return cli(s, "train", s["config"], "--data-dir", s["data"], "--quiet", *extra)


def resume(s, run_dir, *extra):
    return cli(s, "train", "--resume", run_dir, "--data-dir", s["data"], "--quiet", *extra)


def assert_same_run(a, b):
    assert metrics_without_seconds(a) == metrics_without_seconds(b)
    with np.load(os.path.join(a, "weights.npz")) as wa, np.load(os.path.join(b, "weights.npz")) as wb:
        assert sorted(wa.files) == sorted(wb.files)
        assert all(np.array_equal(wa[k], wb[k]) for k in wa.files)
    assert runs.read_json(os.path.join(b, "summary.json"))["status"] == "finished"


def folder_bytes(run_dir):
    return {name: open(os.path.join(run_dir, name), "rb").read() for name in sorted(os.listdir(run_dir))
            if os.path.isfile(os.path.join(run_dir, name))}


@pytest.fixture
def reference(setup):
    assert train(setup).exit_code == 0
    return runs.list_runs(setup["runs"])[0]


def test_ctrl_c_in_the_first_epoch_resumes_from_the_start_in_the_same_folder(setup, reference, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_epoch", interrupt)
    result = train(setup)
    assert result.exit_code == 130
    part = [d for d in runs.list_runs(setup["runs"]) if d != reference][0]
    assert f"Resume with: cnnrun train --resume {part}" in result.output
    assert not os.path.exists(os.path.join(part, "checkpoint.npz"))
    monkeypatch.undo()
    result = resume(setup, part)
    assert result.exit_code == 0, result.output
    assert_same_run(reference, part)


@pytest.mark.slow
def test_ctrl_c_inside_an_import_is_an_interruption_not_a_traceback(setup, reference, monkeypatch):
    """Python turns Ctrl-C inside an import (matplotlib's first figure, after an epoch)
    into an ImportError caused by it; the run still stops as interrupted and resumes."""
    def interrupted_import(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e

    monkeypatch.setattr(runner.plots, "training_curves", interrupted_import)
    result = train(setup)
    assert result.exit_code == 130, result.output
    part = [d for d in runs.list_runs(setup["runs"]) if d != reference][0]
    assert f"Resume with: cnnrun train --resume {part}" in result.output
    assert runs.read_json(os.path.join(part, "summary.json"))["status"] == "interrupted"
    monkeypatch.undo()
    assert resume(setup, part).exit_code == 0
    assert_same_run(reference, part)


def test_an_import_error_of_its_own_is_not_taken_for_ctrl_c(setup, monkeypatch):
    def broken(*args, **kwargs):
        raise ImportError("no module named somewhere")

    monkeypatch.setattr(runner.plots, "training_curves", broken)
    result = train(setup)
    assert result.exit_code == 1 and "internal error" in result.output and "ImportError" in result.output


def test_a_run_killed_after_its_last_checkpoint_is_finished_by_resume(setup, reference):
    # What a SIGKILL between the last checkpoint and weights.npz leaves behind.
    os.remove(os.path.join(reference, "weights.npz"))
    summary = runs.read_json(os.path.join(reference, "summary.json"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    summary.update(status="running", pid=dead.pid)
    runs.write_json(os.path.join(reference, "summary.json"), summary)
    listing = cli(setup, "runs")
    assert "killed" in listing.output
    metrics_before = metrics_without_seconds(reference)

    result = resume(setup, reference)
    assert result.exit_code == 0, result.output
    assert metrics_without_seconds(reference) == metrics_before
    fresh = train(setup)
    assert fresh.exit_code == 0
    assert_same_run(runs.list_runs(setup["runs"])[-1], reference)
    assert "finished" in cli(setup, "runs").output


def test_resume_of_a_finished_run_succeeds_and_changes_nothing(setup, reference):
    before = folder_bytes(reference)
    result = resume(setup, reference)
    assert result.exit_code == 0, result.output
    assert "already finished" in result.output
    assert folder_bytes(reference) == before
    again = resume(setup, reference, "--epochs", 4)  # the epochs it already has: still nothing to do
    assert again.exit_code == 0 and folder_bytes(reference) == before


def test_a_refused_resume_leaves_the_run_as_it_was(setup, reference):
    before = folder_bytes(reference)
    result = resume(setup, reference, "--epochs", 1)
    assert result.exit_code == 1
    assert "already trained 4 epochs; it cannot be cut to 1" in result.output
    assert result.output.count("\n") == 1
    assert folder_bytes(reference) == before


@pytest.mark.parametrize("summary,kill,expected", [
    ({"status": "running"}, None, "unknown"),                         # no pid recorded
    ({"status": "running", "pid": "12"}, None, "unknown"),
    ({"status": "running", "pid": 12}, PermissionError, "running"),   # alive, under another user
    ({"status": "running", "pid": 12}, ProcessLookupError, "killed"),
    ({"status": "running", "pid": 12}, "alive", "running"),
    ({"status": "finished", "pid": 12}, ProcessLookupError, "finished"),
    ({"status": "running", "pid": 12, "host": "elsewhere.example"}, ProcessLookupError, "running on elsewhere.example"),
])
def test_run_status_tells_running_killed_and_unknown_apart(monkeypatch, summary, kill, expected):
    def fake_kill(pid, signal):
        assert pid == 12 and signal == 0  # never the process group (pid 0)
        if kill != "alive":
            raise kill

    monkeypatch.setattr(os, "kill", fake_kill)
    assert runs.run_status(summary) == expected


@pytest.mark.slow
def test_a_run_killed_at_random_moments_always_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL a real training process at 10 random moments (2 in each of 4 epochs and before the first); each time, resuming must end
    with the full metrics and exactly the weights of an uninterrupted run."""
    data = make_digits(tmp_path / "data", n_train=1024)
    config = write_config(tmp_path / "kill.yaml", train__epochs=4)
    command = [sys.executable, "-m", "cnnrun.cli"]
    env = dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")

    def run(args, runs_dir):
        return subprocess.run(command + args + ["--data-dir", str(data), "--runs-dir", runs_dir, "--quiet"],
                              env=env, capture_output=True, text=True)

    ref_dir = str(tmp_path / "reference")
    started = time.monotonic()
    assert run(["train", config], ref_dir).returncode == 0
    duration = time.monotonic() - started
    [reference] = runs.list_runs(ref_dir)
    epoch_seconds = min(row["seconds"] for row in runs.read_metrics(reference))
    rng = random.Random(0)
    states = []  # what each kill left: the checkpoint's epoch, or "finished"
    for attempt in range(10):
        runs_dir = str(tmp_path / f"killed-{attempt}")
        process = subprocess.Popen(command + ["train", config, "--data-dir", str(data), "--runs-dir", runs_dir,
                                              "--quiet"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        # A random moment within a chosen epoch (0: before the first checkpoint), found by
        # watching the run's summary, so the kills spread over every stage even on a
        # machine whose speed changes under other load.
        target, deadline = attempt % 5, time.monotonic() + 10 * duration + 30
        while target and process.poll() is None and time.monotonic() < deadline and not any(
                runs.read_json(str(p), {}).get("epochs_done", 0) >= target
                for p in Path(runs_dir).glob("*/summary.json")):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 1.0) * (epoch_seconds if target else duration / 4))
        process.send_signal(signal.SIGKILL)
        process.wait()
        folders = [os.path.join(runs_dir, d) for d in os.listdir(runs_dir)] if os.path.isdir(runs_dir) else []
        if not folders:  # killed before the run folder existed: nothing to resume
            assert run(["train", config], runs_dir).returncode == 0
        else:
            [run_dir] = folders
            finished = runs.read_json(os.path.join(run_dir, "summary.json"), {}).get("status") == "finished"
            states.append("finished" if finished else runs.checkpoint_epoch(run_dir))
            result = run(["train", "--resume", run_dir], runs_dir)
            assert result.returncode == 0, (attempt, result.stderr)
        assert_same_run(reference, runs.list_runs(runs_dir)[0])
    assert len(set(states)) >= 4, states  # the kills landed at many different moments


def test_sigterm_stops_training_like_ctrl_c(tmp_path):
    """`kill` (a batch system's time limit) marks the run interrupted after a finished
    epoch's checkpoint, says how to resume and exits 130."""
    data = make_digits(tmp_path / "data", n_train=512)
    config = write_config(tmp_path / "term.yaml", train__epochs=400)
    runs_dir = str(tmp_path / "runs")
    command = [sys.executable, "-m", "cnnrun.cli", "train", config, "--data-dir", str(data), "--runs-dir", runs_dir]
    process = subprocess.Popen(command + ["--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            runs.read_json(str(p), {}).get("epochs_done", 0) >= 2 for p in Path(runs_dir).glob("*/summary.json")):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    [run_dir] = runs.list_runs(runs_dir)
    assert f"Resume with: cnnrun train --resume {run_dir}" in err
    assert runs.read_json(os.path.join(run_dir, "summary.json"))["status"] == "interrupted"
    assert 2 <= runs.checkpoint_epoch(run_dir) < 400
