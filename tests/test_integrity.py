"""What a run wrote is what every verb reads: summary.json records the SHA-256 of
weights.npz and checkpoint.npz as written, loading checks it, `runs` and `verify`
show a damaged file, and `train --resume` repairs damaged final weights from an intact
checkpoint (never "nothing to do")."""

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun import runs
from cnnrun.cli import main
from idx import make_digits, write_config


@pytest.fixture
def run(tmp_path):
    data = make_digits(tmp_path / "data", n_train=64, n_test=16)
    config = write_config(tmp_path / "tiny.yaml", train__epochs=2)
    s = dict(data=str(data), config=config, runs=str(tmp_path / "runs"), tmp=tmp_path)
    assert invoke(s, "train", config, "--data-dir", data, "--quiet").exit_code == 0
    s["run"] = runs.list_runs(s["runs"])[0]
    return s


def invoke(s, *args):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--runs-dir", s["runs"]])


def damage(path, data=b"\x00\xff garbage"):
    with open(path, "wb") as f:
        f.write(data)


def one_line_error(result, *words):
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.exception, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]


def test_the_summary_records_the_digest_of_the_weights_and_the_checkpoint_as_written(run):
    digests = runs.read_json(os.path.join(run["run"], "summary.json"))["digests"]
    for name in ("weights.npz", "checkpoint.npz"):
        assert digests[name] == [runs.file_digest(os.path.join(run["run"], name))]
        assert digests[name][0].startswith("sha256:") and len(digests[name][0]) == 7 + 64


@pytest.mark.parametrize("how", ["garbage", "another run's weights"])
def test_damaged_final_weights_are_refused_shown_and_repaired_by_resume(run, how):
    weights = os.path.join(run["run"], "weights.npz")
    original = open(weights, "rb").read()
    if how == "garbage":
        damage(weights)
    else:  # a valid file of the right shapes, but not this run's: only the digest tells
        other = write_config(run["tmp"] / "other.yaml", train__epochs=1, seed=5)
        assert invoke(run, "train", other, "--data-dir", run["data"], "--quiet").exit_code == 0
        shutil.copy(os.path.join(runs.list_runs(run["runs"])[1], "weights.npz"), weights)
    for verb in (["eval", run["run"]], ["attack", run["run"], "--limit", 4], ["export", run["run"]],
                 ["predict", run["run"], run["config"]]):
        one_line_error(invoke(run, *verb, *(["--data-dir", run["data"]] if verb[0] != "predict" else [])),
                       f"{weights}: damaged")
    listing = invoke(run, "runs")
    assert listing.exit_code == 0 and "damaged" in listing.output.splitlines()[2]
    checked = invoke(run, "verify", run["run"])
    assert checked.exit_code == 1 and "weights.npz" in checked.output and "damaged" in checked.output

    result = invoke(run, "train", "--resume", run["run"], "--data-dir", run["data"], "--quiet")
    assert result.exit_code == 0, result.output
    assert "weights.npz is damaged; writing it again from the checkpoint" in result.output
    assert "nothing to do" not in result.output
    assert open(weights, "rb").read() == original  # the checkpoint holds the same numbers, bit for bit
    assert invoke(run, "verify", run["run"]).exit_code == 0
    assert "finished" in invoke(run, "runs").output.splitlines()[2]


def test_resume_refuses_when_the_weights_and_the_checkpoint_are_both_damaged(run):
    damage(os.path.join(run["run"], "weights.npz"))
    damage(os.path.join(run["run"], "checkpoint.npz"))
    result = invoke(run, "train", "--resume", run["run"], "--data-dir", run["data"], "--quiet")
    one_line_error(result, "checkpoint.npz: damaged")


def test_a_damaged_checkpoint_is_refused_by_resume_and_named(run):
    result = invoke(run, "train", "--resume", run["run"], "--epochs", 3, "--data-dir", run["data"], "--quiet")
    assert result.exit_code == 0  # intact: it trains on
    checkpoint = os.path.join(run["run"], "checkpoint.npz")
    with np.load(checkpoint) as stored:
        arrays = {k: stored[k] for k in stored.files}
    arrays["epoch"] = np.array(1)  # a well-formed checkpoint, but not the one written
    np.savez(checkpoint, **arrays)
    result = invoke(run, "train", "--resume", run["run"], "--epochs", 4, "--data-dir", run["data"], "--quiet")
    one_line_error(result, f"{checkpoint}: damaged")


def test_verify_checks_every_file_of_runs_and_sweeps(run):
    result = invoke(run, "verify", "--json")
    assert result.exit_code == 0, result.output
    states = {(r["file"]): r["state"] for r in map(json.loads, result.output.splitlines())}
    assert states == {"config.yaml": "intact", "metrics.csv": "intact", "summary.json": "intact",
                      "weights.npz": "intact", "checkpoint.npz": "intact"}
    damage(os.path.join(run["run"], "metrics.csv"), b"epoch,lr\n1,x\n")
    result = invoke(run, "verify", run["run"])
    assert result.exit_code == 1 and "metrics.csv" in result.output and "1 of 1 run damaged" in result.output


@pytest.mark.slow
def test_verify_takes_a_sweep_folder(run):
    result = invoke(run, "sweep", run["config"], "--seeds", "0-1", "--workers", 1, "--data-dir", run["data"],
                    "--quiet")
    assert result.exit_code == 0, result.output
    [sweep_dir] = [os.path.join(run["runs"], "sweeps", d) for d in os.listdir(os.path.join(run["runs"], "sweeps"))]
    assert invoke(run, "verify", sweep_dir).exit_code == 0
    victim = sorted(d for d in os.listdir(sweep_dir) if d.startswith("001-"))[0]
    damage(os.path.join(sweep_dir, victim, "checkpoint.npz"))
    result = invoke(run, "verify", sweep_dir)
    assert result.exit_code == 1 and f"1 of 2 runs damaged: {os.path.join(sweep_dir, victim)}" in result.output
    assert invoke(run, "verify").exit_code == 1  # every run and sweep of --runs-dir


def test_a_run_folder_written_before_digests_still_loads_with_a_note(run):
    summary_path = os.path.join(run["run"], "summary.json")
    summary = runs.read_json(summary_path)
    del summary["digests"]
    runs.write_json(summary_path, summary)
    result = invoke(run, "eval", run["run"], "--data-dir", run["data"], "--json")
    assert result.exit_code == 0, result.output
    assert "no digest recorded" in result.stderr and json.loads(result.stdout)["n"] == 16
    result = invoke(run, "verify", run["run"])
    assert result.exit_code == 0 and "unrecorded" in result.output


@pytest.mark.slow
def test_a_second_resume_of_a_run_in_training_is_refused_and_the_run_ends_intact(run):
    """Two `train --resume` of one folder at once: the second is one line and changes
    nothing; the first finishes exactly, and every file verifies. The second process
    imports cnnrun before the first starts and waits for a file to go on, so that its
    start-up time (seconds on a loaded machine) cannot outlast the first's training."""
    import subprocess
    import sys
    import time
    args = ["train", "--resume", run["run"], "--epochs", "40", "--data-dir", run["data"], "--runs-dir", run["runs"],
            "--quiet"]
    ready, go = str(run["tmp"] / "ready"), str(run["tmp"] / "go")
    waiting = ("import os, sys, time\nimport cnnrun.cli\nopen(sys.argv[1], 'w').close()\n"
               "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.002)\n"
               "sys.argv = ['cnnrun'] + sys.argv[3:]\ncnnrun.cli.main()\n")
    second = subprocess.Popen([sys.executable, "-c", waiting, ready, go] + args,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not os.path.exists(ready):
        time.sleep(0.01)
    first = subprocess.Popen([sys.executable, "-m", "cnnrun.cli"] + args,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while time.monotonic() < deadline and runs.read_json(os.path.join(run["run"], "summary.json"), {}).get(
            "epochs_done", 0) < 3:
        time.sleep(0.01)
    open(go, "w").close()
    _, stderr = second.communicate(timeout=120)
    assert runs.read_json(os.path.join(run["run"], "summary.json"))["epochs_done"] < 40, "the first ended too soon"
    assert second.returncode == 1, stderr
    assert "another cnnrun process is training this run now" in stderr
    assert first.wait(timeout=300) == 0, first.communicate()[1]
    assert runs.read_json(os.path.join(run["run"], "summary.json"))["epochs_done"] == 40
    assert invoke(run, "verify", run["run"]).exit_code == 0
