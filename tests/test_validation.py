"""A validation split held out of the training set, the best epoch's weights kept by a
validation figure (best.npz, digested, read by --weights best), and early stopping."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun import runs
from cnnrun.cli import main
from cnnrun.data import split_validation
from cnnrun.errors import CnnrunError
from idx import TINY_CONFIG, write_config


def test_the_validation_split_is_disjoint_the_same_for_every_run_and_the_rest_keep_their_order(rng):
    x, labels = np.arange(100)[:, None], np.arange(100)
    (xt, lt), (xv, lv) = split_validation(x, labels, 30)
    assert len(xt) == 70 and len(xv) == 30 and set(lt) | set(lv) == set(range(100)) and not set(lt) & set(lv)
    assert list(lt) == sorted(lt) and np.array_equal(xt[:, 0], lt)
    assert np.array_equal(split_validation(x, labels, 30)[1][1], lv)
    with pytest.raises(CnnrunError, match="data.validation: 100 images held out of a training set of 100"):
        split_validation(x, labels, 100)


def train(setup, name, runs_dir=None, **changes):
    data = dict(TINY_CONFIG["data"], validation=64)
    path = write_config(setup["tmp"] / f"{name}.yaml", name=name, data=data,
                        train=dict(TINY_CONFIG["train"], eval_every=1, **changes))
    result = CliRunner().invoke(main, ["train", path, "--data-dir", setup["data"], "--runs-dir",
                                       runs_dir or setup["runs"]])
    assert result.exit_code == 0, result.output
    return result, runs.list_runs(runs_dir or setup["runs"])[-1]


@pytest.mark.slow
def test_a_run_keeps_the_weights_of_its_best_validation_epoch_as_best_npz(setup):
    result, run_dir = train(setup, "select", select={"metric": "val_acc"})
    assert "(192 training, 64 test images)" in result.output and "val acc" in result.output
    rows = runs.read_metrics(run_dir)
    figures = [r["val_acc"] for r in rows]
    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    assert summary["selected"] == {"metric": "val_acc", "epoch": int(np.argmax(figures)) + 1, "value": max(figures)}
    assert runs.file_state(run_dir, "best.npz")[0] == "intact"
    best = CliRunner().invoke(main, ["eval", run_dir, "--weights", "best", "--json"])
    final = CliRunner().invoke(main, ["eval", run_dir, "--json"])
    assert best.exit_code == 0 and final.exit_code == 0, best.output
    if summary["selected"]["epoch"] != len(rows):  # another epoch's weights: other figures
        assert json.loads(best.output)["loss"] != json.loads(final.output)["loss"]
    assert json.loads(final.output)["loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-6)
    result = CliRunner().invoke(main, ["attack", run_dir, "--weights", "best", "--eps", "0.1", "--limit", "8"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["verify", run_dir]).exit_code == 0


def test_select_by_robust_accuracy_records_it_at_every_evaluation(setup):
    _, run_dir = train(setup, "robust", epochs=2,
                       select={"metric": "val_robust_acc", "attack": {"method": "pgd", "eps": 0.1, "steps": 3,
                                                                     "limit": 20}})
    rows = runs.read_metrics(run_dir)
    assert all(0 <= r["val_robust_acc"] <= r["val_acc"] + 1e-9 for r in rows)
    assert runs.read_json(os.path.join(run_dir, "summary.json"))["selected"]["metric"] == "val_robust_acc"


def test_early_stopping_ends_a_run_whose_validation_figure_stops_improving(setup):
    result, run_dir = train(setup, "early", epochs=8, lr=1e-12, early_stop={"patience": 2})
    assert "stopping early at epoch 3" in result.output
    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    assert summary["status"] == "finished" and summary["epochs_done"] == 3
    assert summary["stopped_early"] == {"epoch": 3, "patience": 2}
    assert len(runs.read_metrics(run_dir)) == 3 and os.path.isfile(os.path.join(run_dir, "weights.npz"))
    result = CliRunner().invoke(main, ["train", "--resume", run_dir])
    assert result.exit_code == 0 and "nothing to do" in result.output


@pytest.mark.parametrize("changes, message", [
    (dict(data=dict(TINY_CONFIG["data"], validation=256)),
     "data.validation: 256 images held out of a training set of 256 leaves none to train on"),
    (dict(train=dict(TINY_CONFIG["train"], select={"metric": "val_acc"})),
     "train.select: needs a validation split; set data.validation"),
    (dict(data=dict(TINY_CONFIG["data"], validation=10), train=dict(TINY_CONFIG["train"],
                                                                    select={"metric": "val_robust_acc"})),
     "train.select.attack: val_robust_acc needs an attack"),
    (dict(data=dict(TINY_CONFIG["data"], validation=10), train=dict(TINY_CONFIG["train"], early_stop={})),
     "train.early_stop.patience: missing; expected a positive integer"),
])
def test_bad_validation_settings_are_one_line(setup, changes, message):
    path = write_config(setup["tmp"] / "bad.yaml", **changes)
    result = CliRunner().invoke(main, ["train", path, "--data-dir", setup["data"], "--runs-dir", setup["runs"]])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert message in result.output


@pytest.mark.slow
def test_weights_best_on_a_run_without_selection_is_one_line(setup):
    result = CliRunner().invoke(main, ["train", setup["config"], "--data-dir", setup["data"], "--runs-dir",
                                       setup["runs"], "--quiet"])
    assert result.exit_code == 0, result.output
    for verb in ("eval", "attack", "export"):
        result = CliRunner().invoke(main, [verb, "--runs-dir", setup["runs"], "--weights", "best"])
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert "has no best.npz (its config has no train.select)" in result.output
