"""Adversarial attacks and adversarial training."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun import attacks, runs
from cnnrun.cli import main
from cnnrun.nn import Network
from idx import make_digits, write_config


def linear_net():
    """flatten -> dense (4 -> 2, no bias) -> softmax, with weights set by hand."""
    net = Network([("flatten", {}), ("dense", {"units": 2, "bias": False}), ("softmax", {})], (1, 1, 4),
                  dtype=np.float64)
    net.layers[1].params["W"][...] = [[1, -1], [-1, 1], [0.5, 0.5], [0, 1]]
    return net


def test_fgsm_gives_exactly_the_hand_computed_image_with_clipping():
    # For true class 0, dL/dx = p1 * (W[:, 1] - W[:, 0]) = p1 * [-2, 2, 0, 1]: sign [-1, 1, 0, 1].
    net = linear_net()
    x = np.array([[[[0.05, 0.95, 0.3, 0.5]]]])
    x_adv = attacks.fgsm(net, x, np.array([[1.0, 0.0]]), 0.1)
    np.testing.assert_array_equal(x_adv, np.clip(x + 0.1 * np.array([-1, 1, 0, 1]), 0, 1))
    assert x_adv[0, 0, 0, 0] == 0.0 and x_adv[0, 0, 0, 1] == 1.0  # clipped at both ends


@pytest.fixture
def tiny_run(tmp_path):
    data = make_digits(tmp_path / "data")
    config = write_config(tmp_path / "tiny.yaml")
    runs_dir = str(tmp_path / "runs")
    result = CliRunner().invoke(main, ["train", config, "--data-dir", str(data), "--runs-dir", runs_dir, "--quiet"])
    assert result.exit_code == 0, result.output
    return dict(data=str(data), runs=runs_dir, run=runs.list_runs(runs_dir)[0], config=config, tmp=tmp_path)


def trained(tiny_run):
    from cnnrun.data import mnist
    _, _, net = runs.load_run(tiny_run["run"], tiny_run["runs"])
    x, labels = mnist.load(tiny_run["data"], dataset="digits")["test"]
    return net, x, labels


def test_bim_with_one_step_of_eps_equals_fgsm(tiny_run):
    net, x, labels = trained(tiny_run)
    y = np.eye(10, dtype=np.float32)[labels]
    np.testing.assert_array_equal(attacks.bim(net, x, y, 0.2, steps=1, step_size=0.2), attacks.fgsm(net, x, y, 0.2))


def test_pgd_never_leaves_the_eps_ball_or_the_unit_range(tiny_run):
    net, x, labels = trained(tiny_run)
    y = np.eye(10, dtype=np.float32)[labels]
    x_adv = attacks.pgd(net, x, y, 0.1, steps=5, step_size=0.05, restarts=2, rng=np.random.default_rng(0))
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_eps_zero_leaves_accuracy_unchanged_and_attacks_hurt(tiny_run):
    net, x, labels = trained(tiny_run)
    clean = net.forward(x).argmax(axis=1)
    y = np.eye(10, dtype=np.float32)[labels]
    for method in attacks.METHODS:  # the attacks themselves run at eps 0, and must not move a pixel
        x_adv = attacks.attack(net, x, y, method, 0.0, steps=3, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(x_adv, x)
        np.testing.assert_array_equal(net.forward(x_adv).argmax(axis=1), clean)
    _, probs = attacks.evaluate_attack(net, x, labels, "pgd", 0.3, steps=10, rng=np.random.default_rng(0))
    accuracy, success = attacks.robustness(labels, clean, probs.argmax(axis=1))
    assert accuracy < np.mean(clean == labels) and success > 0


def test_robustness_counts_success_only_among_clean_correct_images():
    labels = np.array([0, 1, 2, 3])
    clean = np.array([0, 1, 2, 0])   # three right when clean
    adv = np.array([0, 2, 2, 3])     # one of those three flipped; the wrong one became right
    assert attacks.robustness(labels, clean, adv) == (0.75, pytest.approx(1 / 3))


def attack(tiny_run, *args):
    return CliRunner().invoke(main, ["attack", *map(str, args), "--data-dir", tiny_run["data"],
                                     "--runs-dir", tiny_run["runs"]])


def test_attack_verb_reports_writes_and_never_changes_the_run(tiny_run):
    run = tiny_run["run"]
    with open(os.path.join(run, "weights.npz"), "rb") as f:
        weights = f.read()
    with open(os.path.join(run, "metrics.csv")) as f:
        metrics = f.read()
    result = attack(tiny_run, "--eps", "0,0.1", "--eps", "0.3", "--method", "fgsm,pgd", "--steps", 3, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [(r["method"], r["eps"]) for r in report["results"]] == [
        ("fgsm", 0.0), ("fgsm", 0.1), ("fgsm", 0.3), ("pgd", 0.0), ("pgd", 0.1), ("pgd", 0.3)]
    assert report["results"][0]["accuracy"] == report["clean_accuracy"]
    folder = report["folder"]
    for name in ("results.json", "results.csv", "accuracy_vs_eps.png", "examples-fgsm-eps0.1.png",
                 "examples-pgd-eps0.3.png"):
        assert os.path.isfile(os.path.join(folder, name)), name
    again = json.loads(attack(tiny_run, "--eps", "0.1", "--limit", 20, "--json").output)
    assert again["folder"] != folder and again["n"] == 20  # a second attack never overwrites the first
    with open(os.path.join(run, "weights.npz"), "rb") as f:
        assert f.read() == weights
    with open(os.path.join(run, "metrics.csv")) as f:
        assert f.read() == metrics


def test_attack_compares_several_runs(tiny_run):
    result = CliRunner().invoke(main, ["train", tiny_run["config"], "--data-dir", tiny_run["data"], "--runs-dir",
                                       tiny_run["runs"], "--quiet", "--epochs", 1])
    assert result.exit_code == 0
    first, second = runs.list_runs(tiny_run["runs"])
    result = attack(tiny_run, first, second, "--eps", "0.1,0.2", "--out", tiny_run["tmp"] / "cmp")
    assert result.exit_code == 0, result.output
    assert (tiny_run["tmp"] / "cmp" / "comparison.png").is_file()
    table = (tiny_run["tmp"] / "cmp" / "comparison.md").read_text().splitlines()
    assert table[0] == "| network | method | eps 0.1 | eps 0.2 |" and len(table) == 4


@pytest.mark.parametrize("args,message", [
    (["--eps", "1.5"], "--eps 1.5: must be in [0, 1]"),
    (["--eps", "big"], "--eps 'big': expected a number"),
    (["--method", "cw"], "--method 'cw': expected one of fgsm, bim, pgd"),
])
def test_attack_option_errors_are_one_line(tiny_run, args, message):
    result = attack(tiny_run, *args)
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1


def test_adversary_replaces_the_configured_share_of_each_batch(tiny_run):
    net, x, labels = trained(tiny_run)
    x, y = x[:10], np.eye(10, dtype=np.float32)[labels[:10]]
    settings = dict(method="fgsm", eps=0.2, ratio=0.3, random_start=False, step_size=None, steps=10, warmup=0)
    out = attacks.adversary(settings, np.random.default_rng(0))(net, x, y)
    np.testing.assert_array_equal(out[:3], attacks.fgsm(net, x[:3], y[:3], 0.2))
    np.testing.assert_array_equal(out[3:], x[3:])
    for changes in (dict(random_start=True, step_size=0.25), dict(method="pgd", steps=3, step_size=0.05)):
        out = attacks.adversary({**settings, **changes}, np.random.default_rng(0))(net, x, y)
        assert np.abs(out - x).max() <= 0.2 + 1e-6 and not np.array_equal(out[:3], x[:3])


def test_adversarial_warmup_grows_eps_linearly_over_the_first_epochs(tiny_run):
    net, x, labels = trained(tiny_run)
    x, y = x[:10], np.eye(10, dtype=np.float32)[labels[:10]]
    settings = dict(method="fgsm", eps=0.2, ratio=1.0, random_start=False, step_size=None, steps=10, warmup=4)
    for epoch, eps in ((0, 0.05), (1, 0.1), (3, 0.2), (9, 0.2)):
        out = attacks.adversary(settings, np.random.default_rng(0), epoch)(net, x, y)
        np.testing.assert_array_equal(out, attacks.fgsm(net, x, y, eps))


def test_pgd_without_a_generator_uses_a_seeded_one(tiny_run):
    net, x, labels = trained(tiny_run)
    y = np.eye(10, dtype=np.float32)[labels]
    a = attacks.attack(net, x, y, "pgd", 0.1, steps=2)
    np.testing.assert_array_equal(a, attacks.attack(net, x, y, "pgd", 0.1, steps=2))


def test_pgd_keeps_for_each_image_the_first_restart_that_fools_the_network(monkeypatch):
    net = linear_net()
    x = np.full((3, 1, 1, 4), 0.5)
    y = np.eye(2)[[0, 0, 0]]
    # Restart r returns images filled with value r; the network is fooled by image 0 at
    # restart 1, by image 1 at restart 2, and never by image 2.
    fooled_at = {0: 1, 1: 2}
    calls = []

    def fake_bim(net, x, y, eps, steps, step_size, start):
        calls.append(1)
        return np.full(x.shape, float(len(calls)))

    def fake_logits(images):
        restart = images[:, 0, 0, 0]
        wrong = np.array([fooled_at.get(i, 99) <= r for i, r in enumerate(restart)])
        return np.stack([~wrong, wrong], axis=1).astype(float)

    monkeypatch.setattr(attacks, "bim", fake_bim)
    monkeypatch.setattr(net, "logits", fake_logits)
    out = attacks.pgd(net, x, y, 0.1, 1, 0.1, restarts=3, rng=np.random.default_rng(0))
    assert out[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]


def test_adversarial_training_makes_the_network_more_robust(tiny_run):
    """The same tiny run, plain and with FGSM training: the adversarially trained one
    keeps more of its accuracy under FGSM."""
    settings = {"method": "fgsm", "eps": 0.3, "ratio": 0.5}
    config = write_config(tiny_run["tmp"] / "adv.yaml", train__adversarial=settings)
    result = CliRunner().invoke(main, ["train", config, "--data-dir", tiny_run["data"], "--runs-dir",
                                       tiny_run["runs"], "--quiet"])
    assert result.exit_code == 0, result.output
    plain_run, adv_run = runs.list_runs(tiny_run["runs"])
    assert runs.read_json(os.path.join(adv_run, "summary.json"))["adversarial"]["eps"] == 0.3
    x, labels = trained(tiny_run)[1:]
    accuracy = {}
    for name, run in (("plain", plain_run), ("adversarial", adv_run)):
        net = runs.load_run(run, tiny_run["runs"])[2]
        clean = net.forward(x).argmax(axis=1)
        _, probs = attacks.evaluate_attack(net, x, labels, "fgsm", 0.3)
        accuracy[name] = attacks.robustness(labels, clean, probs.argmax(axis=1))[0]
    assert accuracy["adversarial"] > accuracy["plain"] + 0.2, accuracy
