"""Training runs end to end on a small made-up data set: run folders, resume, errors, verbs."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun import runner, runs
from cnnrun.cli import main
from helpers import cli, interrupt_call, metrics_without_seconds
from idx import write_config


def train(s, *extra):
    return cli(s, "train", s["config"], "--data-dir", s["data"], *extra)


def test_train_writes_a_complete_run_folder(setup):
    result = train(setup)
    assert result.exit_code == 0, result.output
    [run_dir] = runs.list_runs(setup["runs"])
    assert os.path.basename(run_dir).endswith("-tiny")
    for name in ("config.yaml", "metrics.csv", "checkpoint.npz", "weights.npz", "summary.json", "curves.png"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    rows = runs.read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["test_acc"] is not None for r in rows] == [False, True, False, True]
    assert rows[1]["lr"] == pytest.approx(0.1 * 0.9)
    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    assert summary["status"] == "finished" and summary["epochs_done"] == 4
    assert summary["final_test_acc"] == rows[-1]["test_acc"] > 0.5  # the toy set is learnable
    assert summary["numpy"] == np.__version__
    assert summary["command"] == f"cnnrun train {setup['config']} --data-dir {setup['data']} --runs-dir {setup['runs']}"
    assert runs.load_run_config(run_dir)["train"]["epochs"] == 4
    assert "epoch 4/4" in result.output and "done: tiny test accuracy" in result.output


def test_same_config_and_seed_give_the_same_numbers(setup):
    assert train(setup, "--quiet").exit_code == 0
    assert train(setup, "--quiet").exit_code == 0
    a, b = runs.list_runs(setup["runs"])
    assert a != b  # two runs in the same second get separate folders
    assert metrics_without_seconds(a) == metrics_without_seconds(b)


def test_overrides_and_seed_are_recorded_in_the_run_config(setup):
    result = train(setup, "--quiet", "--epochs", 1, "--seed", 7, "--set", "train.lr=0.05")
    assert result.exit_code == 0, result.output
    cfg = runs.load_run_config(runs.list_runs(setup["runs"])[0])
    assert (cfg["train"]["epochs"], cfg["seed"], cfg["train"]["lr"]) == (1, 7, 0.05)


# With momentum or Adam, the optimizer's state is resumed too.
@pytest.mark.parametrize("optimizer", [(), ("--set", "train.momentum=0.9"),
                                       ("--set", "train.optimizer=adam", "--set", "train.lr=0.01")])
def test_interrupted_run_resumes_to_exactly_the_uninterrupted_result(setup, monkeypatch, optimizer):
    assert train(setup, "--quiet", *optimizer).exit_code == 0
    [full] = runs.list_runs(setup["runs"])

    real = interrupt_call(monkeypatch, runner, "train_epoch", 3)  # Ctrl-C in the third epoch
    result = train(setup, "--quiet", *optimizer)
    assert result.exit_code == 130
    part = [d for d in runs.list_runs(setup["runs"]) if d != full][0]
    assert f"Resume with: cnnrun train --resume {part}" in result.output
    assert runs.read_json(os.path.join(part, "summary.json"))["status"] == "interrupted"
    assert not os.path.exists(os.path.join(part, "weights.npz"))
    assert [r["epoch"] for r in runs.read_metrics(part)] == [1, 2]

    monkeypatch.setattr(runner, "train_epoch", real)
    result = cli(setup, "train", "--resume", part, "--data-dir", setup["data"], "--quiet")
    assert result.exit_code == 0, result.output
    assert metrics_without_seconds(part) == metrics_without_seconds(full)
    with np.load(os.path.join(full, "weights.npz")) as a, np.load(os.path.join(part, "weights.npz")) as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert runs.read_json(os.path.join(part, "summary.json"))["status"] == "finished"


def test_resume_can_extend_a_finished_run(setup):
    assert train(setup, "--quiet", "--epochs", 2).exit_code == 0
    [run_dir] = runs.list_runs(setup["runs"])
    more = cli(setup, "train", "--resume", run_dir, "--epochs", 3, "--data-dir", setup["data"], "--quiet")
    assert more.exit_code == 0, more.output
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == [1, 2, 3]
    assert runs.read_json(os.path.join(run_dir, "summary.json"))["status"] == "finished"


def test_divergence_stops_with_the_epoch_and_batch_and_keeps_the_checkpoint(setup, monkeypatch):
    real, calls = runner.train_epoch, []

    def nan_image_in_second_epoch(net, sgd, x, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            x = x.copy()
            x[7] = np.nan  # a NaN input makes the loss of its batch NaN
        return real(net, sgd, x, *args, **kwargs)

    monkeypatch.setattr(runner, "train_epoch", nan_image_in_second_epoch)
    result = train(setup, "--quiet")
    assert result.exit_code == 1
    assert "training diverged at epoch 2, batch" in result.output
    assert "the last good checkpoint (epoch 1) is kept" in result.output
    [run_dir] = runs.list_runs(setup["runs"])
    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    assert summary["status"] == "diverged" and summary["diverged_at"]["epoch"] == 2
    batch = summary["diverged_at"]["batch"]  # counted from 1, as the epoch and the message count
    assert batch >= 1 and f"training diverged at epoch 2, batch {batch} (loss nan)" in result.output
    with np.load(os.path.join(run_dir, "checkpoint.npz")) as checkpoint:
        assert int(checkpoint["epoch"]) == 1 and np.isfinite(checkpoint["0.conv.W"]).all()
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_eval_plot_and_runs_verbs(setup):
    assert train(setup, "--quiet").exit_code == 0
    assert train(setup, "--quiet", "--epochs", 2).exit_code == 0
    first, second = runs.list_runs(setup["runs"])

    result = cli(setup, "eval", first, "--data-dir", setup["data"], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["n"] == 64 and 0.5 < report["accuracy"] <= 1 and report["loss"] > 0
    assert np.sum(report["confusion_matrix"]) == 64 and len(report["per_class_accuracy"]) == 10
    assert report["accuracy"] == runs.read_json(os.path.join(first, "summary.json"))["final_test_acc"]
    for name in ("eval.json", "confusion.png", "misclassified.png"):
        assert os.path.isfile(os.path.join(first, name))

    result = cli(setup, "eval", "--data-dir", setup["data"])  # the latest run by default
    assert result.exit_code == 0 and second in result.output

    result = cli(setup, "plot", first, second, "--out", setup["tmp"] / "cmp")
    assert result.exit_code == 0, result.output
    assert os.path.isfile(os.path.join(first, "filters.png"))
    with open(setup["tmp"] / "cmp" / "comparison.csv") as f:
        lines = f.read().splitlines()
    assert lines[0] == "network,epochs,final_test_acc,best_test_acc,original,run"
    assert lines[1].startswith("tiny,4/4,") and lines[2].startswith("tiny,2/2,")
    assert (setup["tmp"] / "cmp" / "comparison.png").stat().st_size > 10000
    assert "| network |" in (setup["tmp"] / "cmp" / "comparison.md").read_text()

    result = cli(setup, "runs")
    assert result.exit_code == 0
    assert os.path.basename(first) in result.output and "finished" in result.output


def test_predict_classifies_image_files(setup, tmp_path):
    """A hand-made run whose dense layer scores each class by its template: a vertical
    stroke is class 1, a horizontal one class 4; predict must say so for the picture files."""
    import matplotlib.image

    from cnnrun.config import build_network, validate
    from cnnrun.images import to_mnist

    strokes = {1: (slice(10, 50), slice(18, 22)), 4: (slice(28, 32), slice(2, 38))}
    pictures = {}
    for label, (rows, cols) in strokes.items():
        picture = np.ones((60, 40))
        picture[rows, cols] = 0.0  # a dark stroke on white paper
        pictures[label] = tmp_path / f"stroke{label}.png"
        matplotlib.image.imsave(pictures[label], picture, cmap="gray", vmin=0, vmax=1)
    cfg = validate(dict(name="templates", model=dict(input_shape=[1, 28, 28], layers=[
        "flatten", {"dense": {"units": 10, "bias": False}}, "softmax"]), train=dict(epochs=1, lr=0.1), data={}))
    net = build_network(cfg)
    W = net.layers[1].params["W"]
    W[...] = 0.0
    for label, path in pictures.items():
        W[:, label] = to_mnist(matplotlib.image.imread(path)[..., 0]).ravel()
    run_dir = runs.new_run_dir(setup["runs"], "templates", cfg)
    net.save(os.path.join(run_dir, "weights.npz"))
    for label, path in pictures.items():
        result = cli(setup, "predict", run_dir, path, "--json")
        assert result.exit_code == 0, result.output
        answer = json.loads(result.stdout)
        assert answer["label"] == label and answer["probabilities"][label] > 0.9
        assert "no digest recorded" in result.stderr  # hand-made weights: loaded, with a note


def test_a_partial_last_batch_counts_each_sample_once(rng):
    """70 samples in batches of 32 (32 + 32 + 6): with a zero learning rate, the epoch's
    mean loss and accuracy are exactly those of one pass over all 70."""
    from cnnrun.config import build_network, validate
    from cnnrun.nn import SGD
    from cnnrun.training import evaluate, train_epoch
    from idx import TINY_CONFIG

    net = build_network(validate(TINY_CONFIG))
    x, labels = rng.random((70, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 70)
    seen = []
    loss, acc = train_epoch(net, SGD(lr=0.0), x, labels, 32, np.random.default_rng(0),
                            on_batch=lambda *_: seen.append(1))
    test_loss, test_acc, _ = evaluate(net, x, labels)
    assert len(seen) == 3
    assert loss == pytest.approx(test_loss, rel=1e-5) and acc == test_acc


def test_plot_fails_on_weights_that_do_not_fit_the_config(setup):
    assert train(setup, "--quiet", "--epochs", 1).exit_code == 0
    [run_dir] = runs.list_runs(setup["runs"])
    cfg = runs.load_run_config(run_dir)
    cfg["model"]["layers"][0]["conv"]["filters"] = 5
    runs.save_config(run_dir, cfg)
    result = cli(setup, "plot", run_dir)
    assert result.exit_code == 1 and "weights do not fit the config: 0.conv.W" in result.output
    assert not os.path.exists(os.path.join(run_dir, "filters.png"))


def test_plot_of_a_run_without_weights_redraws_its_curves(setup):
    assert train(setup, "--quiet", "--epochs", 2).exit_code == 0
    [run_dir] = runs.list_runs(setup["runs"])
    for name in ("weights.npz", "checkpoint.npz", "curves.png"):
        os.remove(os.path.join(run_dir, name))
    result = cli(setup, "plot", run_dir)
    assert result.exit_code == 0, result.output
    assert os.path.isfile(os.path.join(run_dir, "curves.png"))


@pytest.mark.parametrize("args,message", [
    (["eval", "/no/such/run"], "/no/such/run: no such run folder"),
    (["eval"], "no runs yet"),
    (["plot", "/no/such/run"], "no such run folder"),
    (["train"], "give either CONFIG"),
    (["train", "/no/such.yaml"], "/no/such.yaml: no such config file"),
])
def test_user_errors_are_one_line(setup, args, message):
    result = cli(setup, *args)
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and message in result.output


def test_run_without_weights_or_with_mismatched_weights_is_a_clear_error(setup):
    assert train(setup, "--quiet", "--epochs", 1).exit_code == 0
    [run_dir] = runs.list_runs(setup["runs"])
    for name in ("weights.npz", "checkpoint.npz"):
        os.rename(os.path.join(run_dir, name), os.path.join(setup["tmp"], name))
    result = cli(setup, "eval", run_dir, "--data-dir", setup["data"])
    assert result.exit_code == 1 and "holds no weights" in result.output
    cfg = runs.load_run_config(run_dir)
    cfg["model"]["layers"][0]["conv"]["filters"] = 5
    runs.save_config(run_dir, cfg)
    os.rename(os.path.join(setup["tmp"], "weights.npz"), os.path.join(run_dir, "weights.npz"))
    result = cli(setup, "eval", run_dir, "--data-dir", setup["data"])
    assert result.exit_code == 1 and "weights do not fit the config: 0.conv.W" in result.output


def test_predict_rejects_an_unreadable_image(setup, tmp_path):
    assert train(setup, "--quiet", "--epochs", 1).exit_code == 0
    (tmp_path / "bad.png").write_bytes(b"not an image")
    result = cli(setup, "predict", runs.list_runs(setup["runs"])[0], tmp_path / "bad.png")
    assert result.exit_code == 1 and "bad.png: not a readable image" in result.output


@pytest.mark.slow
def test_net2_learns_real_mnist_quickly(tmp_path):
    from test_data import real_mnist_dir

    data_dir = real_mnist_dir()
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "net2.yaml")
    result = CliRunner().invoke(main, ["train", config, "--data-dir", data_dir, "--runs-dir", str(tmp_path),
                                       "--epochs", 1, "--set", "data.train_limit=20000",
                                       "--set", "data.test_limit=2000", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = runs.read_json(os.path.join(runs.list_runs(str(tmp_path))[0], "summary.json"))
    assert summary["test_samples"] == 2000 and summary["final_test_acc"] > 0.88


def test_curves_panels_leave_room_for_each_others_labels():
    from cnnrun import plots
    rows = [dict(epoch=e, train_acc=1 - 0.5 / e, test_acc=0.9 + e / 100 if e % 2 == 0 else None)
            for e in range(1, 9)]
    fig = plots.curves_figure(rows, "title")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    left, right = fig.axes
    right_label = right.yaxis.label.get_window_extent(renderer)
    left_box = left.get_tightbbox(renderer)
    assert right_label.x0 > left_box.x1  # the right panel's y label starts after the left panel ends


def test_best_accuracy_and_best_epoch_are_the_first_maximum_of_metrics():
    from cnnrun.runner import summarise
    rows = [dict(epoch=e, test_acc=a, test_loss=1 - (a or 0)) for e, a in
            enumerate([0.5, None, 0.9, 0.7, 0.9, None, 0.8], start=1)]
    s = summarise(rows)
    assert (s["best_test_acc"], s["best_epoch"]) == (0.9, 3)  # the first of two equal maxima
    assert (s["final_test_acc"], s["final_test_loss"]) == (0.8, pytest.approx(0.2))
    assert summarise([dict(epoch=1, test_acc=None, test_loss=None)])["best_epoch"] is None


def test_a_runs_summary_agrees_with_its_metrics_file(setup):
    config = write_config(setup["tmp"] / "every.yaml", train__epochs=5, train__eval_every=1, train__lr=0.3)
    assert cli(setup, "train", config, "--data-dir", setup["data"], "--quiet").exit_code == 0
    run_dir = runs.list_runs(setup["runs"])[-1]
    rows = runs.read_metrics(run_dir)
    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    accs = [r["test_acc"] for r in rows]
    assert summary["best_test_acc"] == max(accs) and summary["best_epoch"] == accs.index(max(accs)) + 1
    assert summary["final_test_acc"] == accs[-1] and summary["epochs_done"] == len(rows) == 5


def test_a_last_epoch_without_test_figures_is_evaluated_when_the_run_finishes(setup):
    """Paused at epoch 3 of 6 (eval_every 2: no test at 3), then finished there with
    --epochs 3: the last row gets its test figures, which the summary reports."""
    from cnnrun.config import apply_override, load_config
    from cnnrun.data import load_data
    from cnnrun.runner import train_run
    from cnnrun.training import evaluate
    cfg = apply_override(load_config(setup["config"]), "train.epochs=6")
    data = load_data(cfg, setup["data"], progress=False)
    run_dir = runs.new_run_dir(setup["runs"], "tiny", cfg)
    train_run(cfg, run_dir, data, progress=False, log=lambda _: None, until=3)
    assert runs.read_metrics(run_dir)[-1]["test_acc"] is None
    summary = train_run(apply_override(cfg, "train.epochs=3"), run_dir, data, resume=True, progress=False,
                        log=lambda _: None)
    last = runs.read_metrics(run_dir)[-1]
    _, cfg3, net = runs.load_run(run_dir, setup["runs"])
    loss, acc, _ = evaluate(net, *data["test"])
    assert last["epoch"] == 3 and last["test_acc"] == acc and last["test_loss"] == pytest.approx(loss)
    assert summary["status"] == "finished" and summary["final_test_acc"] == acc


def paused_run(setup, epochs=4, until=2):
    """A tiny run paused after `until` of `epochs` epochs (eval_every 2), with its config and data."""
    from cnnrun.config import apply_override, load_config
    from cnnrun.data import load_data
    cfg = apply_override(load_config(setup["config"]), f"train.epochs={epochs}")
    data = load_data(cfg, setup["data"], progress=False)
    run_dir = runs.new_run_dir(setup["runs"], "tiny", cfg)
    runner.train_run(cfg, run_dir, data, progress=False, log=lambda _: None, until=until)
    return cfg, data, run_dir


def test_resume_action_says_what_resuming_does(setup):
    """train (epochs left), finish (the checkpoint holds the last epoch), nothing
    (finished), repair (finished, final weights damaged), and a refusal to shrink."""
    cfg, data, run_dir = paused_run(setup)
    assert runner.resume_action(run_dir, 4) == "train"
    assert runner.resume_action(run_dir, 2) == "finish"
    with pytest.raises(runner.CnnrunError, match="already trained 2 epochs; it cannot be cut to 1"):
        runner.resume_action(run_dir, 1)
    runner.train_run(cfg, run_dir, data, resume=True, progress=False, log=lambda _: None)
    assert runner.resume_action(run_dir, 4) == "nothing"
    with open(os.path.join(run_dir, "weights.npz"), "wb") as f:
        f.write(b"garbage")
    assert runner.resume_action(run_dir, 4) == "repair"


def test_a_resumed_run_trains_only_the_epochs_it_lacks(setup, monkeypatch):
    """From the checkpoint, not from the start: the same final numbers would not show it."""
    cfg, data, run_dir = paused_run(setup)
    trained, run_epoch = [], runner.run_epoch
    monkeypatch.setattr(runner, "run_epoch", lambda net, opt, config, data, epoch, progress: (
        trained.append(epoch + 1), run_epoch(net, opt, config, data, epoch, progress))[1])
    runner.train_run(cfg, run_dir, data, resume=True, progress=False, log=lambda _: None)
    assert trained == [3, 4]
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == [1, 2, 3, 4]


def test_an_old_run_with_both_weight_files_unusable_is_refused_naming_both(setup):
    """A run folder without digests (written before they existed) whose weights.npz is
    unreadable and whose checkpoint holds its epoch but non-finite weights: nothing to
    repair from, said in one line."""
    cfg, data, run_dir = paused_run(setup, epochs=2, until=None)
    summary_path = os.path.join(run_dir, "summary.json")
    summary = runs.read_json(summary_path)
    del summary["digests"]
    runs.write_json(summary_path, summary)
    with open(os.path.join(run_dir, "weights.npz"), "wb") as f:
        f.write(b"garbage")
    checkpoint = os.path.join(run_dir, "checkpoint.npz")
    with np.load(checkpoint) as stored:
        arrays = {k: stored[k] for k in stored.files}
    name = next(k for k, a in arrays.items() if a.dtype.kind == "f" and a.size > 1)
    arrays[name] = np.full_like(arrays[name], np.nan)
    np.savez(checkpoint, **arrays)
    with pytest.raises(runner.CnnrunError, match="weights.npz and checkpoint.npz are both damaged; nothing to rebuild"):
        runner.resume_action(run_dir, 2)


def test_finishing_evaluates_only_a_last_epoch_without_test_figures_and_draws_the_final_curves(setup, monkeypatch):
    """4 epochs at eval_every 2: the test set is evaluated at epochs 2 and 4, not a third
    time when the run finishes; the last curves drawn are curves.png with every epoch."""
    evaluated, drawn = [], []
    evaluate, draw = runner.evaluate, runner.plots.training_curves
    monkeypatch.setattr(runner, "evaluate", lambda *a: (evaluated.append(1), evaluate(*a))[1])
    monkeypatch.setattr(runner.plots, "training_curves", lambda rows, path, name: (
        drawn.append((path, [dict(r) for r in rows])), draw(rows, path, name)))
    cfg, data, run_dir = paused_run(setup, epochs=4, until=None)
    assert len(evaluated) == 2
    path, rows = drawn[-1]
    assert path == os.path.join(run_dir, "curves.png") and rows == runs.read_metrics(run_dir)


@pytest.mark.parametrize("every,until,expected", [(0.0, None, [2, 4, 6]), (3600.0, None, [2, 6]),
                                                  (0.0, 5, [2, 4, 5, 6]), (3600.0, 5, [2, 5, 6])])
def test_curves_are_redrawn_after_tested_epochs_at_most_every_curves_every_s_and_when_the_run_stops(
        setup, monkeypatch, every, until, expected):
    """6 epochs at eval_every 2 (tested after 2, 4 and 6), straight through or paused after
    5 and resumed: drawn after a tested epoch unless the last drawing is under
    CURVES_EVERY_S old, at the pause, and once at the finish (the last epoch's)."""
    drawn = []
    draw = runner.plots.training_curves
    monkeypatch.setattr(runner, "CURVES_EVERY_S", every)
    monkeypatch.setattr(runner.plots, "training_curves", lambda rows, path, name: (
        drawn.append(len(rows)), draw(rows, path, name)))
    cfg, data, run_dir = paused_run(setup, epochs=6, until=until)
    runner.train_run(cfg, run_dir, data, resume=True, progress=False, log=lambda _: None)
    assert drawn == expected
    assert os.path.isfile(os.path.join(run_dir, "curves.png"))


def test_a_run_records_the_commit_of_the_cnnrun_checkout():
    """The commit git reports for the folder cnnrun is imported from (None outside a checkout)."""
    import re
    import subprocess
    here = os.path.dirname(os.path.abspath(runner.__file__))
    out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True)
    expected = out.stdout.strip() or None if out.returncode == 0 else None
    assert expected is None or re.fullmatch("[0-9a-f]{40}", expected)
    assert runner.git_commit() == expected


def test_each_epoch_shows_a_bar_of_its_batches_with_the_running_loss_and_accuracy(setup, monkeypatch):
    """One bar an epoch on stderr ("epoch 2/3", a tick a batch, unit "batch"), cleared when
    the epoch ends; its postfix ends at the epoch's training loss and accuracy. The last
    epoch is evaluated even when eval_every does not fall on it."""
    import sys
    bars = []

    class Bar:
        def __init__(self, **options):
            self.options, self.postfix, self.n = options, None, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def set_postfix(self, **values):
            self.postfix = values

        def update(self, n=1):
            self.n += n

    monkeypatch.setattr(runner, "tqdm", Bar)
    cfg, data, run_dir = paused_run(setup, epochs=3, until=None)   # eval_every 2
    batches = -(-len(data["train"][0]) // cfg["train"]["batch_size"])
    rows = runs.read_metrics(run_dir)
    assert [b.options["desc"] for b in bars] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    for bar, row in zip(bars, rows):
        assert bar.options["total"] == bar.n == batches > 1
        assert (bar.options["unit"], bar.options["leave"], bar.options["file"]) == ("batch", False, sys.stderr)
        assert bar.options["disable"] is True  # progress=False
        assert bar.postfix == dict(loss=f"{row['train_loss']:.4f}", acc=f"{row['train_acc']:.4f}", refresh=False)
    assert [r["test_acc"] is not None for r in rows] == [False, True, True]
    runner.run_epoch(runner.build_network(cfg), runner.make_optimizer(cfg["train"]), cfg, data, 0, progress=True)
    assert bars[-1].options["disable"] is False


def test_adversarial_training_follows_its_warmup_epoch_by_epoch(setup):
    """FGSM batches at eps 0.2 with warmup 2 train epoch 1 exactly as eps 0.1 does (half
    of eps) and epoch 2 unlike it; a clean run differs from the first epoch on."""
    from cnnrun.config import apply_override, load_config
    from cnnrun.data import load_data

    def losses(adversarial):
        cfg = apply_override(load_config(setup["config"]), "train.epochs=2")
        cfg = apply_override(cfg, f"train.adversarial={adversarial}")
        run_dir = runs.new_run_dir(setup["runs"], "tiny", cfg)
        runner.train_run(cfg, run_dir, load_data(cfg, setup["data"], progress=False), progress=False,
                         log=lambda _: None)
        return [r["train_loss"] for r in runs.read_metrics(run_dir)]

    warm = losses("{method: fgsm, eps: 0.2, warmup: 2}")
    half = losses("{method: fgsm, eps: 0.1}")
    clean = losses("null")
    assert warm[0] == half[0] and warm[1] != half[1]
    assert clean[0] != warm[0]


def test_the_summary_reports_training_samples_per_second_of_the_training_time(setup):
    """Samples trained over the seconds spent training: at least the samples over the
    whole wall time (which adds evaluation and writing)."""
    cfg, data, run_dir = paused_run(setup, epochs=2, until=None)
    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    # wall_time_s is a sum of per-epoch times rounded to 1 ms: allow that rounding (two epochs)
    wall_unrounded_at_most = summary["wall_time_s"] + 2 * 0.0006
    assert summary["train_samples_per_s"] >= 2 * len(data["train"][0]) / wall_unrounded_at_most > 0


def test_a_paused_run_says_how_many_epochs_it_has_and_plans_and_runs_lists_both(setup):
    _, _, run_dir = paused_run(setup, epochs=4, until=2)
    summary = runs.read_json(os.path.join(run_dir, "summary.json"))
    assert (summary["epochs_done"], summary["epochs_planned"]) == (2, 4)
    result = cli(setup, "runs")
    assert result.exit_code == 0 and "2/4" in result.output, result.output


def test_the_summary_of_a_resumed_run_keeps_its_history_and_says_it_is_running():
    """new_summary: status running, epochs planned, the engine; from the summary before
    a resumption: start time, wall time, the first command (the new one appended to
    resumed_with) and the checkpoint's digest only (the final weights are rewritten)."""
    import time

    config = {"name": "tiny", "train": {"epochs": 6, "adversarial": None}}
    data = {"train": (np.zeros((5, 1)), None), "test": (np.zeros((3, 1)), None)}
    previous = dict(started="2026-01-02T03:04:05", wall_time_s=12.5, command="cnnrun train a.yaml",
                    resumed_with=["cnnrun train --resume x"], train_samples_per_s=99.0,
                    digests={"checkpoint.npz": "abc", "weights.npz": "def"})
    s = runner.new_summary(config, [], 2, previous, data, "cnnrun train --resume y", True, "reference")
    assert (s["status"], s["epochs_done"], s["epochs_planned"], s["engine"]) == ("running", 2, 6, "reference")
    assert (s["started"], s["wall_time_s"], s["command"]) == ("2026-01-02T03:04:05", 12.5, "cnnrun train a.yaml")
    assert s["resumed_with"] == ["cnnrun train --resume x", "cnnrun train --resume y"]
    assert s["digests"] == {"checkpoint.npz": "abc"} and s["pid"] == os.getpid()
    assert (s["train_samples"], s["test_samples"]) == (5, 3)
    fresh = runner.new_summary(config, [], 0, {}, data, "cnnrun train a.yaml", False)
    assert (fresh["wall_time_s"], fresh["command"], fresh["resumed_with"], fresh["digests"]) == (
        0.0, "cnnrun train a.yaml", [], {})
    assert fresh["engine"] == "fast"
    assert abs(time.mktime(time.strptime(fresh["started"], "%Y-%m-%dT%H:%M:%S")) - time.time()) < 60


def test_training_into_an_empty_folder_makes_it_a_run_folder_first(setup):
    from cnnrun.config import load_config
    from cnnrun.data import load_data
    cfg = load_config(setup["config"])
    data = load_data(cfg, setup["data"], progress=False)
    run_dir = str(setup["tmp"] / "empty")
    os.mkdir(run_dir)
    runner.train_run(cfg, run_dir, data, progress=False, log=lambda _: None, until=1)
    assert runs.is_run(run_dir) and runs.load_run_config(run_dir)["train"]["epochs"] == cfg["train"]["epochs"]


def test_epoch_seconds_keep_milliseconds_and_samples_per_second_one_decimal(setup):
    _, _, run_dir = paused_run(setup, epochs=2, until=None)
    assert all(r["seconds"] == round(r["seconds"], 3) for r in runs.read_metrics(run_dir))
    rate = runs.read_json(os.path.join(run_dir, "summary.json"))["train_samples_per_s"]
    assert isinstance(rate, float) and rate == round(rate, 1)
