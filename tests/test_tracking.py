"""MLflow and TensorBoard tracking against real backends: a SQLite MLflow store, an
`mlflow server` and a `tensorboard` on 127.0.0.1, and a headless Chromium on their pages."""

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from cnnrun import runs
from cnnrun.cli import main
from idx import make_digits, write_config

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package


def invoke(s, *args):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--runs-dir", s["runs"]])


@pytest.fixture
def s(tmp_path):
    data = make_digits(tmp_path / "data", n_train=64, n_test=16)
    config = write_config(tmp_path / "tiny.yaml", train__epochs=3, train__eval_every=2)
    return dict(data=str(data), config=config, runs=str(tmp_path / "runs"), tmp=tmp_path,
                uri=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")


def client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def all_runs(uri):
    c = client(uri)
    experiments = c.search_experiments()
    return c.search_runs([e.experiment_id for e in experiments])


def histories(c, run):
    """Every metric of a run as {key: [(step, value), ...]} in step order."""
    return {key: sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


def folder_metrics(run_dir):
    found = {}
    for row in runs.read_metrics(run_dir):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"):
            if row[key] is not None:
                found.setdefault(key, []).append((row["epoch"], row[key]))
    return found


def artifacts(c, run_id, path=None):
    names = []
    for f in c.list_artifacts(run_id, path):
        names += artifacts(c, run_id, f.path) if f.is_dir else [f.path]
    return sorted(names)


def train(s, *extra):
    result = invoke(s, "train", s["config"], "--data-dir", s["data"], "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return runs.list_runs(s["runs"])[-1], result


@pytest.mark.slow
def test_train_logs_params_every_epochs_metrics_artifacts_and_status_to_sqlite(s):
    run_dir, _ = train(s, "--mlflow", s["uri"])
    (run,) = all_runs(s["uri"])
    c = client(s["uri"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["cnnrun_run_dir"] == os.path.abspath(run_dir) and run.data.tags["status"] == "finished"
    params = run.data.params
    cfg = runs.load_run_config(run_dir)
    assert params["train.lr"] == str(cfg["train"]["lr"]) and params["seed"] == str(cfg["seed"])
    assert params["model.layers.0.conv.filters"] == str(cfg["model"]["layers"][0]["conv"]["filters"])
    assert "git_commit" in params
    assert histories(c, run) == folder_metrics(run_dir)
    assert {"config.yaml", "curves.png", "weights.npz"} <= set(artifacts(c, run.info.run_id))
    # The artifacts sit in a folder beside the database, not in the working directory.
    assert os.path.isdir(s["tmp"] / "store" / "mlflow-artifacts") and not os.path.exists("mlruns")


@pytest.mark.slow
def test_an_interrupted_run_resumed_is_one_mlflow_run_with_each_step_once(s, monkeypatch):
    from cnnrun import runner
    real = runner.run_epoch

    def stop_at_epoch_2(net, optimizer, config, data, epoch, progress):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(net, optimizer, config, data, epoch, progress)

    monkeypatch.setattr(runner, "run_epoch", stop_at_epoch_2)
    result = invoke(s, "train", s["config"], "--data-dir", s["data"], "--quiet", "--mlflow", s["uri"])
    assert result.exit_code == 130
    (run_dir,) = runs.list_runs(s["runs"])
    (killed,) = all_runs(s["uri"])
    assert killed.info.status == "KILLED" and set(dict(histories(client(s["uri"]), killed)["train_loss"])) == {1, 2}
    monkeypatch.setattr(runner, "run_epoch", real)
    result = invoke(s, "train", "--resume", run_dir, "--data-dir", s["data"], "--quiet", "--mlflow", s["uri"])
    assert result.exit_code == 0, result.output
    (run,) = all_runs(s["uri"])
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert histories(client(s["uri"]), run) == folder_metrics(run_dir)  # each step once, as metrics.csv


@pytest.mark.slow
def test_track_twice_on_a_folder_trained_without_tracking_gives_what_logging_during_training_gives(s):
    during = f"sqlite:///{s['tmp'] / 'during.db'}"
    after = f"sqlite:///{s['tmp'] / 'after.db'}"
    logged_dir, _ = train(s, "--mlflow", during, "--tensorboard")
    plain_dir, _ = train(s)
    for expected in ("logged 1 of 1 run(s) anew", "logged 0 of 1 run(s) anew"):  # the second time: nothing new
        result = invoke(s, "track", plain_dir, "--mlflow", after, "--tensorboard")
        assert result.exit_code == 0 and expected in result.output, result.output
    assert f"mlflow ui --backend-store-uri {after}" in result.output and "tensorboard --logdir" in result.output
    (a,), (b,) = all_runs(during), all_runs(after)
    ca, cb = client(during), client(after)
    ignore = {"seconds"}  # the two trainings took different times; everything else is the same
    ha = {k: v for k, v in histories(ca, a).items() if k not in ignore}
    hb = {k: v for k, v in histories(cb, b).items() if k not in ignore}
    assert ha == hb and len(histories(cb, b)["seconds"]) == 3
    assert a.data.params == b.data.params and a.info.status == b.info.status == "FINISHED"
    assert artifacts(ca, a.info.run_id) == artifacts(cb, b.info.run_id)
    assert tensorboard_scalars(logged_dir)["train_loss"] == [(e, v) for e, v in folder_metrics(logged_dir)["train_loss"]]
    # TensorBoard from `track`, twice: each step once.
    assert [step for step, _ in tensorboard_scalars(plain_dir)["train_loss"]] == [1, 2, 3]


@pytest.mark.slow
def test_eval_attack_and_export_add_to_the_runs_tracked_run(s):
    run_dir, _ = train(s, "--mlflow", s["uri"])
    assert invoke(s, "eval", run_dir, "--data-dir", s["data"], "--mlflow", s["uri"]).exit_code == 0
    assert invoke(s, "attack", run_dir, "--data-dir", s["data"], "--eps", "0.1", "--method", "fgsm",
                  "--mlflow", s["uri"]).exit_code == 0
    assert invoke(s, "export", run_dir, "--data-dir", s["data"], "--check-images", 4,
                  "--mlflow", s["uri"]).exit_code == 0
    (run,) = all_runs(s["uri"])
    evaluated = runs.read_json(os.path.join(run_dir, "eval.json"))
    assert run.data.metrics["eval_test_acc"] == pytest.approx(evaluated["accuracy"])
    (folder,) = os.listdir(os.path.join(run_dir, "attacks"))
    report = runs.read_json(os.path.join(run_dir, "attacks", folder, "results.json"))
    assert run.data.metrics["robust_acc_fgsm_eps0.1"] == pytest.approx(report["results"][0]["accuracy"])
    names = artifacts(client(s["uri"]), run.info.run_id)
    assert {"confusion.png", "model.onnx"} <= set(names) and any(n.startswith("attacks/") for n in names)


@pytest.mark.slow
def test_a_two_worker_sweep_is_one_parent_with_a_child_per_run_holding_its_folders_metrics(s):
    result = invoke(s, "sweep", s["config"], "--seeds", "0,1", "--grid", "train.lr=0.05,0.1", "--workers", 2,
                    "--data-dir", s["data"], "--quiet", "--mlflow", s["uri"])
    assert result.exit_code == 0, result.output
    found = all_runs(s["uri"])
    parents = [r for r in found if "cnnrun_sweep_dir" in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4 and len(found) == 5
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    c = client(s["uri"])
    for child in children:
        assert histories(c, child) == folder_metrics(child.data.tags["cnnrun_run_dir"])
        assert child.info.status == "FINISHED"
    sweep_dir = parents[0].data.tags["cnnrun_sweep_dir"]
    summary = {f"{r['config']}_{r['setting']}".replace("=", "_").replace(" ", "_"): r
               for r in __import__("csv").DictReader(open(os.path.join(sweep_dir, "summary.csv")))}
    parent = parents[0].data.metrics
    for label, row in summary.items():
        key = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in label)
        assert parent[f"{key}.mean"] == pytest.approx(float(row["mean"])) and parent[f"{key}.n"] == float(row["n"])
    assert "curves.png" in artifacts(c, parents[0].info.run_id)
    assert parents[0].info.status == "FINISHED"


# --- faults and bad input ---------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_costs_nothing_but_one_warning_line(s):
    run_dir, result = train(s, "--mlflow", f"http://127.0.0.1:{free_port()}")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"cnnrun track {run_dir} --mlflow http://127.0.0.1:" in warnings[0]
    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    assert summary["status"] == "finished"
    assert all(state == "intact" for _, state, _ in runs.verify_run(run_dir))


@pytest.mark.slow
def test_a_locked_or_damaged_database_costs_nothing_but_one_warning_line(s):
    os.makedirs(s["tmp"] / "store")
    db = s["tmp"] / "store" / "mlflow.db"
    train(s, "--mlflow", s["uri"])  # the store exists
    lock = sqlite3.connect(db, timeout=0)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        run_dir, result = train(s, "--mlflow", s["uri"])
    finally:
        lock.rollback()
        lock.close()
    assert runs.read_json(os.path.join(run_dir, "summary.json"))["status"] == "finished"
    assert sum(line.startswith("warning:") for line in result.stderr.splitlines()) == 1
    db.write_bytes(b"this is not a database" * 100)
    run_dir, result = train(s, "--mlflow", s["uri"])
    assert runs.read_json(os.path.join(run_dir, "summary.json"))["status"] == "finished"
    assert sum(line.startswith("warning:") for line in result.stderr.splitlines()) == 1


@pytest.mark.parametrize("uri", ["not a uri", "file:///tmp/mlruns", "ftp://host/x", "sqlite://relative.db",
                                 "http://"])
def test_a_uri_mlflow_cannot_use_is_one_line_before_any_run_folder(s, uri):
    result = invoke(s, "train", s["config"], "--data-dir", s["data"], "--mlflow", uri)
    assert result.exit_code == 1 and result.output.count("\n") == 1 and result.output.startswith("error: --mlflow")
    assert not os.path.exists(s["runs"]) or runs.list_runs(s["runs"]) == []


def test_a_flag_without_its_extra_says_how_to_install_it(s, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    result = invoke(s, "train", s["config"], "--data-dir", s["data"], "--tensorboard")
    assert result.exit_code == 1
    assert result.output.strip() == "error: --tensorboard needs tensorboardX: pip install -e '.[tensorboard]'"


def test_a_configs_track_section_turns_tracking_on(s):
    config = write_config(s["tmp"] / "tracked.yaml", train__epochs=1, track={"tensorboard": True})
    result = invoke(s, "train", config, "--data-dir", s["data"], "--quiet")
    assert result.exit_code == 0, result.output
    assert os.path.isdir(os.path.join(runs.list_runs(s["runs"])[-1], "tb"))


# --- TensorBoard ------------------------------------------------------------------------

def tensorboard_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.join(run_dir, "tb"))
    acc.Reload()
    return {tag: [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_every_epochs_scalars_the_hparams_and_the_images(s):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    run_dir, _ = train(s, "--tensorboard")
    scalars = tensorboard_scalars(run_dir)
    results = {k: scalars.pop(k) for k in list(scalars) if k.startswith("hparam/")}
    assert scalars == {k: [(e, v) for e, v in rows] for k, rows in folder_metrics(run_dir).items()}
    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    assert results["hparam/final_test_acc"] == [(3, summary["final_test_acc"])]
    acc = EventAccumulator(os.path.join(run_dir, "tb"))
    acc.Reload()
    assert "curves" in acc.Tags()["images"]
    n_filters = runs.load_run_config(run_dir)["model"]["layers"][0]["conv"]["filters"]
    (grid,) = acc.Images("filters")  # one picture: the first convolution's kernels side by side
    assert grid.width >= n_filters * 3 and grid.height >= 3
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content).session_start_info
    cfg = runs.load_run_config(run_dir)
    assert start.hparams["train.lr"].number_value == pytest.approx(cfg["train"]["lr"])
    assert start.hparams["model.layers.0.conv.filters"].number_value == cfg["model"]["layers"][0]["conv"]["filters"]


def wait_for(url, process, seconds=90):
    end = time.time() + seconds
    while time.time() < end:
        if process.poll() is not None:
            raise AssertionError(f"{url}: the server exited ({process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url}: no answer in {seconds}s")


@pytest.mark.slow
def test_a_real_tensorboard_serves_the_runs_scalars(s):
    import json
    run_dir, _ = train(s, "--tensorboard")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", s["runs"], "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = os.path.relpath(os.path.join(run_dir, "tb"), s["runs"])
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run={run}&tag=train_loss"
        for _ in range(60):  # tensorboard loads the logdir a moment after it starts serving
            body = wait_for(url.replace("/scalars?", "/tags?").split("&")[0].replace("run=" + run, ""), server)
            if run in json.loads(body):
                break
            time.sleep(1)
        points = json.loads(wait_for(url, server))
        assert [(step, pytest.approx(value, rel=1e-6)) for _, step, value in points] == \
            folder_metrics(run_dir)["train_loss"]
    finally:
        server.terminate()
        server.wait(30)


# --- in a real browser -------------------------------------------------------------------

def shows(page, *texts, timeout=60000):
    """Wait until the rendered page's visible text holds every one of `texts`."""
    import json
    page.wait_for_function(f"() => {json.dumps(list(texts))}.every(t => document.body.innerText.includes(t))",
                           timeout=timeout)


@pytest.mark.slow
def test_the_mlflow_ui_in_headless_chromium_shows_the_run_and_a_logged_metric(s):
    from playwright.sync_api import sync_playwright
    assert os.path.exists(CHROMIUM), "Chromium missing: apt-get install -y chromium (.ci/run does)"
    os.makedirs(s["tmp"] / "store")
    run_dir, _ = train(s, "--mlflow", s["uri"])
    (run,) = all_runs(s["uri"])
    port = free_port()
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", s["uri"],
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", server)
        accuracy = runs.read_json(os.path.join(run_dir, "summary.json"))["final_test_acc"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
            shows(page, run.info.run_name, "test_acc")
            text = page.inner_text("body")
            page.screenshot(path=str(s["tmp"] / "mlflow-run.png"), full_page=True)
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}/runs")  # the run list
            shows(page, run.info.run_name)
            page.screenshot(path=str(s["tmp"] / "mlflow-runs.png"), full_page=True)
            browser.close()
        assert run.info.run_name in text and "test_acc" in text
        shown = {f"{accuracy:.{d}f}".rstrip("0") for d in (2, 3, 4)} | {str(accuracy)}
        assert any(v in text for v in shown), (accuracy, text[:2000])
        assert os.path.getsize(s["tmp"] / "mlflow-run.png") > 10_000
    finally:
        server.terminate()
        server.wait(30)
