"""What a sweep reports (results.csv, summary.csv/.md, the epoch summaries, the curves), on a
sweep folder whose runs were trained here without a cluster: every figure is recomputed from
the run folders' own summary.json and metrics.csv. (tests/test_sweep.py runs real sweeps.)"""

import csv
import os

import numpy as np
import pytest

from cnnrun import runs, sweep
from idx import make_digits, write_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """configs a (3 epochs) and b (2 epochs), grid train.lr = 0.05, 0.1, seeds 0-2: 12 runs,
    every one tested after each epoch. Trained as a worker would, except that run 001 stops
    after epoch 1 (interrupted) and run 002 never starts."""
    tmp = tmp_path_factory.mktemp("sweep-results")
    data = str(make_digits(tmp / "data", n_train=128, n_test=64))
    a = write_config(tmp / "a.yaml", name="a", train__epochs=3, train__eval_every=1)
    b = write_config(tmp / "b.yaml", name="b", train__epochs=2, train__eval_every=1, train__batch_size=64)
    spec = sweep.check_spec(dict(name="study", configs=[a, b], seeds="0-2", grid={"train.lr": [0.05, 0.1]}),
                            "test")
    entries, configs = sweep.expand(spec)
    sweep_dir = sweep.create_sweep(str(tmp / "runs"), spec, entries, configs)
    threads = os.environ.get("CNNRUN_THREADS")
    try:
        for i, entry in enumerate(entries):
            if i != 2:
                result = sweep.train_task(os.path.join(sweep_dir, entry["run"]), data, until=1 if i == 1 else None)
                assert result["status"] == ("paused" if i == 1 else "finished"), result
    finally:  # train_task sets the worker's thread count
        os.environ.pop("CNNRUN_THREADS") if threads is None else os.environ.update(CNNRUN_THREADS=threads)
    return sweep_dir, entries


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def number(cell):
    return None if cell == "" else float(cell)


def run_figures(sweep_dir, entry):
    run_dir = os.path.join(sweep_dir, entry["run"])
    return runs.read_json(os.path.join(run_dir, "summary.json"), {}), runs.read_metrics(run_dir)


@pytest.mark.slow
def test_results_csv_has_a_row_per_planned_run_with_its_own_summary_figures(folder):
    sweep_dir, entries = folder
    sweep.write_results(sweep_dir)
    rows = read_csv(os.path.join(sweep_dir, "results.csv"))
    assert [r["run"] for r in rows] == [e["run"] for e in entries]
    for row, entry in zip(rows, entries):
        summary, metrics = run_figures(sweep_dir, entry)
        assert (row["config"], row["seed"]) == (entry["name"], str(entry["seed"]))
        assert row["setting"] == row["overrides"] == f"train.lr={entry['setting']['train.lr']}"
        if not summary:  # never started
            assert (row["status"], row["epochs_done"], row["final_test_acc"]) == ("not started", "0", "")
            continue
        assert row["status"] == summary["status"] and int(row["epochs_done"]) == len(metrics)
        assert int(row["epochs_planned"]) == {"a": 3, "b": 2}[entry["name"]]
        for key in ("final_test_acc", "best_test_acc", "wall_time_s"):
            assert number(row[key]) == summary[key], key
        assert number(row["best_test_acc"]) == max(m["test_acc"] for m in metrics)
    assert [r["status"] for r in rows].count("finished") == 10


def test_the_summary_is_n_mean_sample_std_min_max_and_epochs_of_the_finished_runs_per_setting(folder):
    sweep_dir, entries = folder
    table = sweep.write_results(sweep_dir)
    groups = {}
    for entry in entries:
        summary, _ = run_figures(sweep_dir, entry)
        members = groups.setdefault((entry["name"], f"train.lr={entry['setting']['train.lr']}"), [])
        if summary.get("status") == "finished":
            members.append((summary["final_test_acc"], summary["epochs_done"]))
    assert [(r["config"], r["setting"]) for r in table] == list(groups)
    written = read_csv(os.path.join(sweep_dir, "summary.csv"))
    markdown = open(os.path.join(sweep_dir, "summary.md")).read().splitlines()
    assert len(written) == len(table) == 4 and len(markdown) == 2 + 4
    for row, cells, line in zip(table, written, markdown[2:]):
        accs = [acc for acc, _ in groups[(row["config"], row["setting"])]]
        assert row["n"] == len(accs) == (1 if (row["config"], row["setting"]) == ("a", "train.lr=0.05") else 3)
        assert row["mean"] == pytest.approx(np.mean(accs), rel=1e-12)
        assert row["std"] == (pytest.approx(np.std(accs, ddof=1), rel=1e-12) if len(accs) > 1 else None)
        assert (row["min"], row["max"]) == (min(accs), max(accs))
        assert row["epochs"] == {"a": "3", "b": "2"}[row["config"]]
        assert int(cells["n"]) == row["n"] and cells["epochs"] == row["epochs"]
        for key in ("mean", "std", "min", "max"):
            assert number(cells[key]) == (None if row[key] is None else pytest.approx(row[key], abs=6e-5)), key  # 4 decimals
        assert line.startswith(f"| {row['config']} | {row['setting']} | {row['n']} | ")
    assert len({round(r["mean"], 12) for r in table}) > 1  # the settings differ: a wrong group would show


def test_the_summary_at_an_epoch_takes_every_run_tested_then_finished_or_not(folder):
    sweep_dir, entries = folder
    for epoch in (1, 3):
        table = sweep.write_results(sweep_dir, at_epoch=epoch)
        written = read_csv(os.path.join(sweep_dir, f"summary-epoch-{epoch}.csv"))
        assert os.path.exists(os.path.join(sweep_dir, f"summary-epoch-{epoch}.md"))
        for row, cells in zip(table, written):
            accs = []
            for entry in entries:
                if (entry["name"], f"train.lr={entry['setting']['train.lr']}") == (row["config"], row["setting"]):
                    accs += [m["test_acc"] for m in run_figures(sweep_dir, entry)[1] if m["epoch"] == epoch]
            assert row["n"] == len(accs) and int(cells["n"]) == len(accs)
            if accs:
                assert row["mean"] == pytest.approx(np.mean(accs), rel=1e-12) and row["epochs"] == str(epoch)
                assert (row["min"], row["max"]) == (min(accs), max(accs))
                assert row["std"] == (pytest.approx(np.std(accs, ddof=1), rel=1e-12) if len(accs) > 1 else None)
            else:
                assert row["mean"] is None and cells["mean"] == "" and row["epochs"] == ""
        if epoch == 1:  # the paused run 001 (a, lr 0.05, seed 1) counts here
            assert [r["n"] for r in table] == [2, 3, 3, 3]
        else:  # b never reached epoch 3
            assert [r["n"] for r in table] == [1, 3, 0, 0]


def test_the_mean_curves_are_the_mean_and_sample_std_of_each_groups_tested_epochs(folder, monkeypatch):
    sweep_dir, entries = folder
    rows = sweep.result_rows(sweep_dir)
    lines = sweep.curve_groups(sweep_dir, rows)
    assert [label for label, *_ in lines] == [f"{c} [train.lr={lr}]" for c in "ab" for lr in (0.05, 0.1)]
    for (label, epochs, mean, std), key in zip(lines, [(c, lr) for c in "ab" for lr in (0.05, 0.1)]):
        curves = [{m["epoch"]: m["test_acc"] for m in run_figures(sweep_dir, e)[1]}
                  for e in entries if (e["name"], e["setting"]["train.lr"]) == key]
        assert epochs == sorted(set().union(*curves)) == list(range(1, {"a": 4, "b": 3}[key[0]]))
        for epoch, m, s in zip(epochs, mean, std):
            values = [c[epoch] for c in curves if epoch in c]
            assert m == pytest.approx(np.mean(values), rel=1e-12)
            assert s == (pytest.approx(np.std(values, ddof=1), rel=1e-12) if len(values) > 1 else 0.0)
    drawn = []
    monkeypatch.setattr(sweep.plots, "mean_curves", lambda lines, path, title: drawn.append((lines, path, title)))
    sweep.write_results(sweep_dir)
    assert drawn == [(lines, os.path.join(sweep_dir, "curves.png"),
                      "study: test accuracy, mean and one standard deviation over seeds")]
    monkeypatch.undo()
    sweep.write_results(sweep_dir)
    assert os.path.getsize(os.path.join(sweep_dir, "curves.png")) > 10000


def test_a_sweep_without_grid_or_set_has_the_default_setting_no_overrides_and_curves_named_by_config(tmp_path):
    config = write_config(tmp_path / "plain.yaml", name="plain", train__epochs=1)
    spec = sweep.check_spec(dict(configs=[config], seeds=[0, 1]), "test")
    sweep_dir = sweep.create_sweep(str(tmp_path / "runs"), spec, *sweep.expand(spec))  # nothing trained
    rows = sweep.result_rows(sweep_dir)
    assert [(r["setting"], r["overrides"], r["status"]) for r in rows] == [("default", "", "not started")] * 2
    assert [label for label, *_ in sweep.curve_groups(sweep_dir, rows)] == ["plain"]


def test_a_setting_is_labelled_key_value_and_one_finished_run_has_no_std():
    assert sweep.setting_label({}) == "default"
    assert sweep.setting_label({"train.lr": 0.1, "seed": 3}) == "train.lr=0.1 seed=3"
    row = dict(config="a", setting="default", run="x", status="finished", final_test_acc=0.5, epochs_done=2)
    assert sweep.summary_rows([row]) == [
        dict(config="a", setting="default", n=1, mean=0.5, std=None, min=0.5, max=0.5, epochs="2")]


def test_every_column_of_a_sweeps_summary_is_the_statistics_of_its_runs():
    """Hand-made result rows with distinct accuracies: n, mean, sample std, min, max and
    epochs per (config, setting), recomputed here; unfinished runs are left out."""
    rows = [dict(run=f"r{i}", config=c, setting=st, status=status, final_test_acc=acc, epochs_done=ep)
            for i, (c, st, status, acc, ep) in enumerate([
                ("a", "default", "finished", 0.91, 3), ("a", "default", "finished", 0.97, 3),
                ("a", "default", "finished", 0.94, 4), ("a", "default", "interrupted", 0.99, 1),
                ("a", "train.lr=0.1", "finished", 0.80, 3), ("b", "default", "diverged", None, 2)])]
    table = {(r["config"], r["setting"]): r for r in sweep.summary_rows(rows)}
    accs = [0.91, 0.97, 0.94]
    a = table[("a", "default")]
    assert (a["n"], a["epochs"]) == (3, "3/4")
    assert a["mean"] == pytest.approx(np.mean(accs)) and a["std"] == pytest.approx(np.std(accs, ddof=1))
    assert (a["min"], a["max"]) == (0.91, 0.97)
    one = table[("a", "train.lr=0.1")]
    assert (one["n"], one["mean"], one["std"], one["min"], one["max"]) == (1, 0.80, None, 0.80, 0.80)
    assert table[("b", "default")]["n"] == 0 and table[("b", "default")]["mean"] is None
