"""Sweeps on real Dask distributed: a local cluster, an existing scheduler with its own
workers, a worker killed mid-run, --resume, and bad specs."""

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from cnnrun import runs, sweep
from cnnrun.cli import main
from idx import make_digits, write_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::ResourceWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    data = make_digits(tmp / "data", n_train=512)
    a = write_config(tmp / "a.yaml", name="a", train__epochs=3)
    b = write_config(tmp / "b.yaml", name="b", train__epochs=2, train__lr=0.05)
    return dict(tmp=tmp, data=str(data), a=a, b=b)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def metrics_without_seconds(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in runs.read_metrics(run_dir)]


def weights(run_dir):
    with np.load(os.path.join(run_dir, "weights.npz")) as w:
        return {k: w[k].copy() for k in w.files}


def reference_run(tiny, config, seed, runs_dir, **kw):
    """The same run by `cnnrun train`, with one BLAS thread as a sweep worker has."""
    with threadpool_limits(limits=1, user_api="blas"):
        args = ["train", config, "--seed", seed, "--data-dir", tiny["data"], "--runs-dir", runs_dir, "--quiet"]
        result = cli(*args)
    assert result.exit_code == 0, result.output
    return runs.list_runs(runs_dir)[-1]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def only_sweep(runs_dir):
    [sweep_dir] = sweep.list_sweeps(runs_dir)
    return sweep_dir


@pytest.fixture(scope="module")
def local_sweep(tiny):
    """2 configs x 2 seeds on a LocalCluster of 2 workers: `(runs dir, sweep folder)`."""
    runs_dir = tiny["tmp"] / "local"
    result = cli("sweep", tiny["a"], tiny["b"], "--seeds", "0-1", "--workers", 2, "--data-dir", tiny["data"],
                 "--runs-dir", runs_dir)
    assert result.exit_code == 0, result.output
    return runs_dir, only_sweep(runs_dir)


@pytest.mark.slow
def test_a_local_sweep_writes_results_that_match_its_runs(local_sweep):
    runs_dir, sweep_dir = local_sweep
    plan = yaml.safe_load(open(os.path.join(sweep_dir, "sweep.yaml")))
    assert [(e["name"], e["seed"]) for e in plan["runs"]] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    results = read_csv(os.path.join(sweep_dir, "results.csv"))
    assert len(results) == 4
    for row in results:
        run_dir = os.path.join(sweep_dir, row["run"])
        summary = runs.read_json(os.path.join(run_dir, "summary.json"))
        metrics = runs.read_metrics(run_dir)
        assert row["status"] == summary["status"] == "finished"
        assert float(row["final_test_acc"]) == summary["final_test_acc"] == metrics[-1]["test_acc"]
        assert int(row["epochs_done"]) == len(metrics) == {"a": 3, "b": 2}[row["config"]]
        assert runs.load_run_config(run_dir)["seed"] == int(row["seed"])
    summary_rows = read_csv(os.path.join(sweep_dir, "summary.csv"))
    assert [(r["config"], r["n"]) for r in summary_rows] == [("a", "2"), ("b", "2")]
    for r in summary_rows:
        accs = [float(x["final_test_acc"]) for x in results if x["config"] == r["config"]]
        assert float(r["mean"]) == pytest.approx(np.mean(accs), abs=5e-5)
        assert float(r["std"]) == pytest.approx(np.std(accs, ddof=1), abs=5e-5)
        assert float(r["min"]) == pytest.approx(min(accs), abs=5e-5)
        assert float(r["max"]) == pytest.approx(max(accs), abs=5e-5)
        assert r["epochs"] == {"a": "3", "b": "2"}[r["config"]]
    assert os.path.getsize(os.path.join(sweep_dir, "curves.png")) > 10000
    assert "| config | setting |" in open(os.path.join(sweep_dir, "summary.md")).read()
    listing = cli("runs", "--runs-dir", runs_dir)
    assert os.path.basename(sweep_dir) in listing.output and "4 finished" in listing.output
    redrawn = cli("plot", sweep_dir)
    assert redrawn.exit_code == 0 and "summary.csv" in redrawn.output


def test_plot_at_epoch_compares_every_run_at_an_epoch_they_all_reached(local_sweep):
    runs_dir, sweep_dir = local_sweep
    result = cli("plot", sweep_dir, "--at-epoch", 2)
    assert result.exit_code == 0, result.output
    at_2 = {r["config"]: r for r in read_csv(os.path.join(sweep_dir, "summary-epoch-2.csv"))}
    for config in ("a", "b"):  # a trains 3 epochs, b 2: both were tested after epoch 2
        accs = [runs.read_metrics(os.path.join(sweep_dir, e))[1]["test_acc"]
                for e in sorted(os.listdir(sweep_dir)) if e.endswith(f"-{config}-s0") or e.endswith(f"-{config}-s1")]
        assert len(accs) == 2 and at_2[config]["n"] == "2" and at_2[config]["epochs"] == "2"
        assert float(at_2[config]["mean"]) == pytest.approx(np.mean(accs), abs=5e-5)
        assert float(at_2[config]["std"]) == pytest.approx(np.std(accs, ddof=1), abs=5e-5)
    assert cli("plot", sweep_dir, "--at-epoch", 3).exit_code == 0
    at_3 = {r["config"]: r["n"] for r in read_csv(os.path.join(sweep_dir, "summary-epoch-3.csv"))}
    assert at_3 == {"a": "2", "b": "0"}  # b never reached epoch 3
    mixed = cli("plot", sweep_dir, os.path.join(sweep_dir, sorted(os.listdir(sweep_dir))[0]), "--at-epoch", 2)
    assert mixed.exit_code != 0 and "not a sweep folder" in mixed.output
    missing = cli("plot", os.path.join(sweep_dir, "no-such-sweep"), "--at-epoch", 2)
    assert missing.exit_code == 1 and "no-such-sweep: not a sweep folder" in missing.output


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("cluster")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    log = open(tmp / "cluster.log", "w")
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--no-dashboard"], stdout=log, stderr=log)]
    time.sleep(1.0)
    for _ in range(2):
        processes.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                                           "--host", "127.0.0.1"], stdout=log, stderr=log))
    from distributed import Client
    with Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
    yield address
    for p in processes[::-1]:
        p.terminate()
    for p in processes:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    log.close()


@pytest.mark.slow
def test_a_sweep_on_an_existing_scheduler_gives_exactly_the_runs_of_cnnrun_train(tiny, scheduler):
    runs_dir = tiny["tmp"] / "remote"
    result = cli("sweep", tiny["a"], tiny["b"], "--seeds", "0,1", "--scheduler", scheduler,
                 "--data-dir", tiny["data"], "--runs-dir", runs_dir)
    assert result.exit_code == 0, result.output
    assert "on tcp://127.0.0.1" in result.output
    sweep_dir = only_sweep(runs_dir)
    for row in read_csv(os.path.join(sweep_dir, "results.csv")):
        config = tiny[row["config"]]
        reference = reference_run(tiny, config, row["seed"], str(tiny["tmp"] / "reference"))
        run_dir = os.path.join(sweep_dir, row["run"])
        assert metrics_without_seconds(run_dir) == metrics_without_seconds(reference)
        a, b = weights(run_dir), weights(reference)
        assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_run_whose_worker_is_killed_is_rescheduled_and_resumes_exactly(tiny, scheduler):
    long = write_config(tiny["tmp"] / "long.yaml", name="long", train__epochs=16)
    runs_dir = tiny["tmp"] / "killed"
    command = [sys.executable, "-m", "cnnrun.cli", "sweep", long, "--seeds", "0", "--scheduler", scheduler,
               "--data-dir", tiny["data"], "--runs-dir", str(runs_dir), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, deadline = None, time.monotonic() + 120
    while killed is None and time.monotonic() < deadline:
        time.sleep(0.02)
        for summary_path in runs_dir.glob("sweeps/*/*/summary.json"):
            summary = runs.read_json(str(summary_path), {})
            if summary.get("status") == "running" and 2 <= summary.get("epochs_done", 0) < 14:
                killed = (summary["pid"], summary["epochs_done"])
                os.kill(summary["pid"], signal.SIGKILL)  # the worker process training this run
    assert killed, "the run was never seen part-way"
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, out + err
    sweep_dir = only_sweep(str(runs_dir))
    [run_dir] = runs.list_runs(sweep_dir)
    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    assert summary["status"] == "finished" and summary["pid"] != killed[0]
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == list(range(1, 17))
    reference = reference_run(tiny, long, 0, str(tiny["tmp"] / "reference-long"))
    assert metrics_without_seconds(run_dir) == metrics_without_seconds(reference)
    a, b = weights(run_dir), weights(reference)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_of_an_interrupted_sweep_trains_only_the_missing_runs(tiny):
    runs_dir = tiny["tmp"] / "resume"
    assert cli("sweep", tiny["a"], tiny["b"], "--seeds", "0", "--workers", 1, "--data-dir", tiny["data"],
               "--runs-dir", runs_dir).exit_code == 0
    sweep_dir = only_sweep(runs_dir)
    a_run, b_run = (os.path.join(sweep_dir, d) for d in ("000-a-s0", "001-b-s0"))
    expected = metrics_without_seconds(b_run)
    untouched = {name: open(os.path.join(a_run, name), "rb").read() for name in os.listdir(a_run)}
    for name in os.listdir(b_run):  # b as a stop before its first checkpoint leaves it
        if name != "config.yaml":
            os.remove(os.path.join(b_run, name))
    result = cli("sweep", "--resume", sweep_dir, "--workers", 1, "--data-dir", tiny["data"], "--runs-dir", runs_dir)
    assert result.exit_code == 0, result.output
    assert "1 of 2 runs to train" in result.output
    assert {name: open(os.path.join(a_run, name), "rb").read() for name in os.listdir(a_run)} == untouched
    assert metrics_without_seconds(b_run) == expected
    assert [r["status"] for r in read_csv(os.path.join(sweep_dir, "results.csv"))] == ["finished", "finished"]


@pytest.mark.slow
def test_until_epoch_pauses_every_run_there_and_resume_goes_on_exactly(tiny, local_sweep):
    runs_dir = tiny["tmp"] / "until"
    common = ["--workers", 2, "--data-dir", tiny["data"], "--runs-dir", runs_dir]
    result = cli("sweep", tiny["a"], tiny["b"], "--seeds", "0-1", "--until-epoch", 1, *common)
    assert result.exit_code == 0, result.output
    assert "4 of 4 runs to train up to epoch 1" in result.output
    sweep_dir = only_sweep(runs_dir)
    at_1 = read_csv(os.path.join(sweep_dir, "summary-epoch-1.csv"))  # they test every 2 epochs
    assert [(r["config"], r["n"]) for r in at_1] == [("a", "0"), ("b", "0")]
    assert "no test accuracy at epoch 1" in result.output
    rows = read_csv(os.path.join(sweep_dir, "results.csv"))
    assert [(r["status"], r["epochs_done"]) for r in rows] == [("paused", "1")] * 4
    assert not any(os.path.exists(os.path.join(sweep_dir, r["run"], "weights.npz")) for r in rows)
    result = cli("sweep", "--resume", sweep_dir, "--until-epoch", 2, *common)
    assert result.exit_code == 0, result.output
    rows = read_csv(os.path.join(sweep_dir, "results.csv"))  # b plans 2 epochs: it finishes there
    assert [(r["config"], r["status"], r["epochs_done"]) for r in rows] == [
        ("a", "paused", "2"), ("a", "paused", "2"), ("b", "finished", "2"), ("b", "finished", "2")]
    at_2 = read_csv(os.path.join(sweep_dir, "summary-epoch-2.csv"))
    assert [(r["config"], r["n"], r["epochs"]) for r in at_2] == [("a", "2", "2"), ("b", "2", "2")]
    assert "test accuracy at epoch 2:" in result.output and "no test accuracy" not in result.output
    again = cli("sweep", "--resume", sweep_dir, "--until-epoch", 2, *common)
    assert again.exit_code == 0 and "0 of 4 runs to train" in again.output
    assert cli("sweep", "--resume", sweep_dir, *common).exit_code == 0
    _, uninterrupted = local_sweep
    for row in read_csv(os.path.join(sweep_dir, "results.csv")):
        assert row["status"] == "finished"
        paused, whole = os.path.join(sweep_dir, row["run"]), os.path.join(uninterrupted, row["run"])
        assert metrics_without_seconds(paused) == metrics_without_seconds(whole)
        assert all(np.array_equal(weights(paused)[k], w) for k, w in weights(whole).items())


@pytest.mark.parametrize("spec,message", [
    ({"configs": ["A"], "colour": 1}, "colour: unknown key"),
    ({"configs": ["A"], "grid": {"train.lr": []}}, "grid.train.lr: expected a non-empty list"),
    ({"configs": ["A"], "seeds": ["one"]}, "seeds: expected non-negative integers"),
    ({"configs": ["A"], "seeds": "0-x"}, "seeds: '0-x': expected integers"),
    ({"configs": ["A", "/no/such.yaml"]}, "/no/such.yaml: no such config file"),
    ({"configs": []}, "configs: expected a non-empty list"),
    ({"configs": ["A"], "name": "../up"}, "name: expected one plain file-name component"),
    ({"configs": ["A"], "set": {"train.lr": -1}}, "train.lr: expected a positive number"),
    ({"configs": ["A"], "grid": {"model.layers[0].conv.filters": [2, 0]}}, "filters: expected a positive integer"),
])
def test_a_bad_spec_is_one_line_before_any_run_starts(tiny, spec, message):
    path = tiny["tmp"] / "spec.yaml"
    spec = {**spec, "configs": [tiny["a"] if c == "A" else c for c in spec["configs"]]}
    path.write_text(yaml.safe_dump(spec))
    runs_dir = tiny["tmp"] / "bad"
    result = cli("sweep", path, "--runs-dir", runs_dir, "--data-dir", tiny["data"])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and message in result.output, result.output
    assert not os.path.exists(runs_dir)


@pytest.mark.slow
def test_an_unreachable_scheduler_is_a_clear_error_within_the_timeout(tiny):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    started = time.monotonic()
    result = cli("sweep", tiny["a"], "--scheduler", f"tcp://127.0.0.1:{port}", "--timeout", 2,
                 "--runs-dir", tiny["tmp"] / "unreachable")
    assert result.exit_code == 1 and "cannot reach the scheduler within 2s" in result.output, result.output
    assert result.output.count("\n") == 1 and time.monotonic() - started < 30
    assert not os.path.exists(tiny["tmp"] / "unreachable")


def test_a_worker_that_cannot_see_the_run_folder_says_so(tmp_path):
    result = sweep.train_task(str(tmp_path / "elsewhere" / "000-a-s0"))
    assert result["status"] == "failed"
    assert re.search("cannot see the run folder .*shares", result["message"])


def test_without_dask_sweep_says_how_to_install_it(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    result = cli("sweep", tiny["a"], "--runs-dir", tiny["tmp"] / "nodask")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "pip install -e '.[sweep]'" in result.output


def test_the_shipped_study_plans_every_network_over_five_seeds(monkeypatch):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(root)
    spec = sweep.check_spec(sweep.load_spec("configs/study.yaml"), "configs/study.yaml")
    entries, configs = sweep.expand(spec, os.path.join(root, "configs"))
    assert len(entries) == 25
    assert sorted({e["name"] for e in entries}) == ["net1", "net2", "net3", "net4", "robust-pgd"]
    assert {c["train"]["epochs"] for c in configs if c["name"] == "net4"} == {200}
    assert sorted({c["seed"] for c in configs}) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_a_diverged_run_is_recorded_and_not_retried(tiny):
    runs_dir = tiny["tmp"] / "diverged"
    result = cli("sweep", tiny["a"], tiny["b"], "--set", "train.lr=1e300", "--seeds", "0", "--workers", 1,
                 "--data-dir", tiny["data"], "--runs-dir", runs_dir)
    assert result.exit_code == 0, result.output
    sweep_dir = only_sweep(runs_dir)
    assert [r["status"] for r in read_csv(os.path.join(sweep_dir, "results.csv"))] == ["diverged", "diverged"]
    assert "diverged a [default] seed 0" in result.output
    again = cli("sweep", "--resume", sweep_dir, "--workers", 1, "--data-dir", tiny["data"], "--runs-dir", runs_dir)
    assert again.exit_code == 0 and "0 of 2 runs to train" in again.output


@pytest.mark.slow
def test_a_run_whose_network_does_not_fit_the_data_fails_in_one_line_and_the_others_train(tiny):
    narrow = write_config(tiny["tmp"] / "narrow.yaml", name="narrow",
                          model__layers=["flatten", {"dense": {"units": 9}}, "softmax"])
    runs_dir = tiny["tmp"] / "narrow-runs"
    command = [sys.executable, "-m", "cnnrun.cli", "sweep", tiny["a"], narrow, "--seeds", "0", "--workers", "1",
               "--data-dir", tiny["data"], "--runs-dir", str(runs_dir)]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert process.returncode == 1
    assert "failed 001-narrow-s0: the data has labels 0-9 but the network has 9 outputs" in process.stdout
    assert "Traceback" not in process.stdout + process.stderr, process.stderr
    statuses = {r["run"]: r["status"] for r in read_csv(os.path.join(only_sweep(str(runs_dir)), "results.csv"))}
    assert statuses["000-a-s0"] == "finished"


@pytest.fixture(scope="module")
def long_run(tiny):
    """A 40-epoch config on 4096 samples (about 0.1 s an epoch), and its run by `cnnrun train`."""
    long = write_config(tiny["tmp"] / "ctrlc.yaml", name="ctrlc", train__epochs=40)
    tiny = dict(tiny, data=str(make_digits(tiny["tmp"] / "data-4096", n_train=4096)))
    return tiny, long, reference_run(tiny, long, 0, str(tiny["tmp"] / "reference-ctrlc"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.slow
def test_ctrl_c_or_sigterm_stops_the_sweep_and_resume_finishes_it_exactly(long_run, signum):
    tiny, long, reference = long_run
    runs_dir = tiny["tmp"] / f"ctrlc-{signum}"
    command = [sys.executable, "-m", "cnnrun.cli", "sweep", long, "--seeds", "0", "--workers", "1",
               "--data-dir", tiny["data"], "--runs-dir", str(runs_dir), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.02)
        summaries = [runs.read_json(str(p), {}) for p in runs_dir.glob("sweeps/*/*/summary.json")]
        if any(s.get("epochs_done", 0) >= 2 for s in summaries):
            break
    at_signal = max((s.get("epochs_done", 0) for s in summaries), default=0)
    os.killpg(process.pid, signum)  # to the whole process group, as Ctrl-C in a terminal and batch systems do
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, out + err
    sweep_dir = only_sweep(str(runs_dir))
    assert f"resume with: cnnrun sweep --resume {sweep_dir}" in err
    [run_dir] = runs.list_runs(sweep_dir)
    # The worker is killed at once, not left to train on while the cluster closes: a
    # worker that got the signal itself leaves the scheduler (it trained 36 more epochs so).
    assert runs.checkpoint_epoch(run_dir) < at_signal + 20, (at_signal, runs.checkpoint_epoch(run_dir))
    assert runs.read_json(os.path.join(run_dir, "summary.json"))["status"] == "interrupted"  # not "killed"
    result = cli("sweep", "--resume", sweep_dir, "--workers", 1, "--data-dir", tiny["data"])
    assert result.exit_code == 0, result.output
    assert metrics_without_seconds(run_dir) == metrics_without_seconds(reference)
    a, b = weights(run_dir), weights(reference)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["sweep.yaml", "000-a-s0/config.yaml", "000-a-s0/metrics.csv"])
def test_a_damaged_sweep_folder_is_one_line_before_a_cluster_starts(tiny, local_sweep, damage):
    import shutil
    source = local_sweep[1]
    copy = tiny["tmp"] / "damaged" / damage.replace("/", "-")
    shutil.copytree(source, copy)
    (copy / damage).write_bytes(b"\x9c\x00garbage: [")
    result = cli("sweep", "--resume", copy)
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "error: " in result.output, result.output
    result = cli("plot", copy)  # the summary reads only what it needs: it may succeed, but never with a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 0 or (result.exit_code == 1 and result.output.count("\n") == 1), result.output


@pytest.mark.parametrize("args,message", [
    (["--seeds", "0-100000000"], "--seeds: '0-100000000': more than 10,000 seeds"),
    (["--seeds", "0-9999", "--grid", "train.lr=0.1,0.2"], "20,000 runs (configs x grid settings x seeds)"),
    (["--scheduler", "not-an-address"], "--scheduler not-an-address: expected an address like tcp://HOST:PORT"),
])
def test_a_sweep_too_large_to_plan_or_an_address_that_is_not_one_is_one_line(tiny, args, message):
    started = time.monotonic()
    result = cli("sweep", tiny["a"], *args, "--runs-dir", tiny["tmp"] / "refused")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert message in result.output and time.monotonic() - started < 30
    assert not os.path.exists(tiny["tmp"] / "refused")


@pytest.mark.slow
def test_a_grid_sweep_has_a_label_and_a_summary_row_per_setting_and_takes_its_name(tiny):
    runs_dir = tiny["tmp"] / "grid"
    result = cli("sweep", tiny["b"], "--grid", "train.lr=0.05,0.2", "--grid", "train.batch_size=16,64",
                 "--seeds", "0", "--name", "lrgrid", "--workers", 2, "--data-dir", tiny["data"],
                 "--runs-dir", runs_dir, "--quiet")
    assert result.exit_code == 0, result.output
    sweep_dir = only_sweep(runs_dir)
    assert sweep_dir.endswith("-lrgrid")
    results = read_csv(os.path.join(sweep_dir, "results.csv"))
    settings = {r["setting"] for r in results}
    assert settings == {f"train.lr={lr} train.batch_size={bs}" for lr in (0.05, 0.2) for bs in (16, 64)}
    for row in results:
        cfg = runs.load_run_config(os.path.join(sweep_dir, row["run"]))
        assert row["setting"] == f"train.lr={cfg['train']['lr']} train.batch_size={cfg['train']['batch_size']}"
    summary = read_csv(os.path.join(sweep_dir, "summary.csv"))
    assert sorted(r["setting"] for r in summary) == sorted(settings)
    for r in summary:
        [run] = [x for x in results if x["setting"] == r["setting"]]
        assert r["n"] == "1" and float(r["mean"]) == pytest.approx(float(run["final_test_acc"]), abs=5e-5)
