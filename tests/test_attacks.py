"""Adversarial attacks and adversarial training."""

import json
import os
import time

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun import runs
from cnnrun.robustness import attacks
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    (["--method", "cw"], "--method 'cw': expected one of fgsm, bim, pgd, apgd-ce, apgd-t, fab-t, square, autoattack, autoattack-apgd"),
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

    def fake_bim(net, x, y, eps, *, steps, step_size, start):
        calls.append(1)
        return np.full(x.shape, float(len(calls)))

    def fake_logits(images):
        restart = images[:, 0, 0, 0]
        wrong = np.array([fooled_at.get(i, 99) <= r for i, r in enumerate(restart)])
        return np.stack([~wrong, wrong], axis=1).astype(float)

    monkeypatch.setattr(attacks, "bim", fake_bim)
    monkeypatch.setattr(net, "logits", fake_logits)
    out = attacks.pgd(net, x, y, 0.1, steps=1, step_size=0.1, restarts=3, rng=np.random.default_rng(0))
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


def test_dlr_targeted_gradient_matches_finite_differences(rng):
    from cnnrun.nn.losses import dlr_targeted
    logits = rng.standard_normal((6, 10)) * 3
    labels, targets = rng.integers(0, 10, 6), rng.integers(0, 10, 6)
    targets = np.where(targets == labels, (labels + 1) % 10, targets)
    losses, dlogits = dlr_targeted(logits, labels, targets)
    assert losses.shape == (6,)
    h = 1e-6
    for i, j in np.ndindex(logits.shape):  # every entry: pi1, pi3 and pi4 move too
        up, down = logits.copy(), logits.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric = (dlr_targeted(up, labels, targets)[0].sum() - dlr_targeted(down, labels, targets)[0].sum()) / (2 * h)
        assert dlogits[i, j] == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    np.testing.assert_allclose(dlr_targeted(5 * logits, labels, targets)[0], losses, rtol=1e-9)  # scale-invariant


def test_per_sample_cross_entropy_sums_to_the_batch_loss(rng):
    from cnnrun.nn import softmax_cross_entropy
    from cnnrun.nn.losses import cross_entropy_per_sample
    logits, labels = rng.standard_normal((5, 7)), rng.integers(0, 7, 5)
    losses, dlogits = cross_entropy_per_sample(logits, labels)
    loss, dmean = softmax_cross_entropy(logits, np.eye(7)[labels])
    assert losses.mean() == pytest.approx(loss) and np.allclose(dlogits, 5 * dmean)


@pytest.mark.parametrize("method", ["apgd-ce", "apgd-t", "autoattack"])
def test_apgd_stays_in_the_eps_ball_and_leaves_eps_zero_alone(tiny_run, method):
    net, x, labels = trained(tiny_run)
    y = np.eye(10, dtype=np.float32)[labels]
    x_adv = attacks.attack(net, x, y, method, 0.1, steps=10, targets=3)
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    np.testing.assert_array_equal(attacks.attack(net, x, y, method, 0.0, steps=5, targets=2), x)


def test_apgd_ce_finds_the_worst_case_of_a_linear_model():
    """For a linear two-class model the cross-entropy is largest at x - eps * sign(w0 - w1)
    (clipped to [0, 1]): APGD must fool exactly the images fooled there."""
    net = linear_net()
    rng = np.random.default_rng(3)
    x = rng.uniform(0.2, 0.8, (200, 1, 1, 4))
    y = np.eye(2)[net.forward(x).argmax(axis=1)]  # labels: the clean predictions
    eps = 0.15
    W = net.layers[1].params["W"]
    direction = np.sign(W[:, 0] - W[:, 1]).reshape(1, 1, 1, 4) * (2 * y[:, :1, None, None] - 1)
    worst = np.clip(x - eps * direction, 0, 1)
    expected = net.forward(worst).argmax(axis=1) != y.argmax(axis=1)
    found = net.forward(attacks.attack(net, x, y, "apgd-ce", eps, steps=20)).argmax(axis=1) != y.argmax(axis=1)
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(found, expected)


def test_autoattack_is_no_weaker_than_pgd_on_any_image(tiny_run):
    net, x, labels = trained(tiny_run)
    y = np.eye(10, dtype=np.float32)[labels]
    fooled = {m: net.forward(attacks.attack(net, x, y, m, 0.15, steps=20, rng=np.random.default_rng(0)))
              .argmax(axis=1) != labels for m in ("pgd", "autoattack")}
    assert fooled["pgd"].any()
    assert not (fooled["pgd"] & ~fooled["autoattack"]).any()


@pytest.mark.slow
def test_attack_verb_runs_the_apgd_methods(tiny_run):
    result = attack(tiny_run, "--eps", "0.1", "--method", "apgd-ce,autoattack", "--steps", 5, "--targets", 2,
                    "--queries", 50, "--limit", 20, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(r["method"], r["steps"], r["restarts"]) for r in report["results"]] == [("apgd-ce", 5, 1),
                                                                                     ("autoattack", 5, 1)]
    assert report["results"][1]["accuracy"] <= report["results"][0]["accuracy"]
    after = report["results"][1]["after_each"]
    assert list(after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(after.values()) == sorted(after.values(), reverse=True)
    assert after["square"] == report["results"][1]["accuracy"]
    # Square's successes and the large-eps check are reported on stderr and in the JSON alike
    assert all(f"warning: tiny: {line}" in result.stderr for line in report["warnings"])
    assert report["large_eps_check"]["eps"] == 0.5 and report["large_eps_check"]["n"] == 20


@pytest.mark.slow
def test_attack_writes_which_attack_of_the_suite_broke_each_image(tiny_run):
    import csv
    result = attack(tiny_run, "--eps", "0.1", "--method", "autoattack", "--steps", 5, "--targets", 2,
                    "--queries", 50, "--limit", 30, "--json", "--no-masking-check")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["large_eps_check"] is None
    with open(os.path.join(report["folder"], "per_image.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30
    broken_by = [r["autoattack@0.1 broken_by"] for r in rows]
    assert set(broken_by) <= {"clean", "apgd-ce", "apgd-t", "fab-t", "square", ""}
    robust = [r["autoattack@0.1"] == r["label"] for r in rows]
    assert [b == "" for b in broken_by] == robust  # robust exactly where no attack is named
    assert [b == "clean" for b in broken_by] == [r["clean_prediction"] != r["label"] for r in rows]
    assert sum(robust) / 30 == pytest.approx(report["results"][0]["accuracy"])
    with open(os.path.join(report["folder"], "stages.csv")) as f:
        stages = list(csv.DictReader(f))
    assert [s["attack"] for s in stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert [int(s["broken"]) for s in stages] == [broken_by.count(a) for a in ("apgd-ce", "apgd-t", "fab-t", "square")]


ADVERSARIES = [
    dict(method="fgsm", random_start=False, step_size=None, steps=10),
    dict(method="fgsm", random_start=True, step_size=0.375, steps=10),   # "fast" FGSM training
    dict(method="pgd", random_start=False, step_size=0.075, steps=10),
    dict(method="pgd", random_start=False, step_size=None, steps=10),    # the default step size
]


@pytest.mark.parametrize("changes", ADVERSARIES)
def test_adversarial_training_batches_have_a_higher_loss_than_noise_of_the_same_eps(tiny_run, changes):
    """What adversarial training feeds the network must be an attack, not its random
    start: the loss on the batch it makes is well above the loss on uniform noise of
    the same eps."""
    from cnnrun.nn.losses import cross_entropy_per_sample
    net, x, labels = trained(tiny_run)
    y = np.eye(10, dtype=np.float32)[labels]
    settings = dict(eps=0.3, ratio=1.0, warmup=0, **changes)
    adv = attacks.adversary(settings, np.random.default_rng(0))(net, x, y)
    noise = np.clip(x + np.random.default_rng(1).uniform(-0.3, 0.3, x.shape), 0, 1).astype(x.dtype)
    assert np.abs(adv - x).max() <= 0.3 + 1e-6
    loss_adv = cross_entropy_per_sample(net.logits(adv), labels)[0].mean()
    loss_noise = cross_entropy_per_sample(net.logits(noise), labels)[0].mean()
    assert loss_adv > 2 * loss_noise + 0.5, (changes, loss_adv, loss_noise)


def test_pgd_training_beats_noise_training_under_pgd_on_a_toy_problem(tmp_path):
    """The toy digits (a bright square per class on a noisy background) are robustly
    separable at eps 0.3. Six epochs of PGD training reach high accuracy under PGD-10
    there; the same training on uniform noise of the same eps stays near zero."""
    from cnnrun.config import build_network, validate
    from cnnrun.data import mnist
    from cnnrun.nn import SGD, one_hot
    from cnnrun.training import epoch_rng, train_epoch
    from idx import TINY_CONFIG
    make_digits(tmp_path / "d", n_train=512, n_test=200)
    data = mnist.load(str(tmp_path / "d"), "digits", None, None, progress=False, allow_download=False)
    (x, labels), (x_test, labels_test) = data["train"], data["test"]
    eps, noise_rng = 0.3, np.random.default_rng(1)

    def noise(net, xb, yb):
        return np.clip(xb + noise_rng.uniform(-eps, eps, xb.shape), 0, 1).astype(xb.dtype)

    pgd = attacks.adversary(dict(method="pgd", eps=eps, ratio=1.0, random_start=False, step_size=0.1, steps=5,
                                 warmup=0), np.random.default_rng(2))
    robust = {}
    for name, adversary in (("noise", noise), ("pgd", pgd)):
        net, optimizer = build_network(validate(dict(TINY_CONFIG))), SGD(0.1)
        for epoch in range(6):
            train_epoch(net, optimizer, x, labels, 32, epoch_rng(0, epoch), adversary=adversary)
        x_adv = attacks.attack(net, x_test, one_hot(labels_test, 10), "pgd", eps, steps=10,
                               rng=np.random.default_rng(0))
        robust[name] = float(np.mean(net.logits(x_adv).argmax(axis=1) == labels_test))
    assert robust["pgd"] > 0.9 and robust["noise"] < 0.3, robust


def test_dlr_targeted_and_accuracy_equal_their_definitions_on_a_hand_example():
    from cnnrun.nn.losses import accuracy, dlr_targeted, one_hot
    z = np.array([[5.0, 1.0, 4.0, 2.0, 0.0], [0.0, 3.0, 1.0, 2.0, 9.0]])
    # Row 0: y=0, t=2; classes by decreasing logit 0, 2, 3, 1: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    losses, _ = dlr_targeted(z, np.array([0, 1]), np.array([2, 3]))
    assert losses[0] == pytest.approx(-(5 - 4) / (5 - (2 + 1) / 2))
    assert losses[1] == pytest.approx(-(3 - 2) / (9 - (2 + 1) / 2))
    assert accuracy(z, np.array([0, 1])) == 0.5 and accuracy(z, np.array([0, 4])) == 1.0
    hot = one_hot(np.array([2, 0]), 4)
    assert hot.dtype == np.float32 and hot.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]


def test_the_default_step_size_is_madrys_two_and_a_half_eps_over_the_steps():
    assert attacks.default_step_size(0.3, 10) == pytest.approx(0.075)
    assert attacks.default_step_size(0.1, 40) == pytest.approx(0.00625)


@pytest.mark.parametrize("step_size,expected", [(None, 1.25 * 0.2), (0.1, 0.1)])
def test_fast_fgsm_training_is_one_step_of_bim_from_a_uniform_start_in_the_eps_ball(tiny_run, step_size, expected):
    """Wong et al. 2020: a start drawn uniformly in the eps-ball (not clipped to [0, 1]: the
    gradient is taken there), one signed step of 1.25 eps by default, its result projected
    onto the ball and [0, 1]; the same generator gives the same batch."""
    net, x, labels = trained(tiny_run)
    x, y = x[:10], np.eye(10, dtype=np.float32)[labels[:10]]
    settings = dict(method="fgsm", eps=0.2, ratio=0.5, random_start=True, step_size=step_size, steps=1, warmup=0)
    out = attacks.adversary(settings, np.random.default_rng(3))(net, x, y)
    start = (x[:5] + np.random.default_rng(3).uniform(-0.2, 0.2, x[:5].shape)).astype(x.dtype)
    assert start.min() < 0  # (the test images have black pixels: some starts lie outside [0, 1])
    np.testing.assert_array_equal(out[:5], attacks.bim(net, x[:5], y[:5], 0.2, steps=1, step_size=expected, start=start))
    assert out.min() >= 0 and np.abs(out - x).max() <= 0.2 + 1e-6
    np.testing.assert_array_equal(out[5:], x[5:])


def test_trades_training_without_a_step_size_takes_the_default_one(tiny_run):
    net, x, labels = trained(tiny_run)
    x, y = x[:8], np.eye(10, dtype=np.float32)[labels[:8]]
    settings = dict(method="trades", eps=0.3, ratio=1.0, random_start=False, step_size=None, steps=4, warmup=0)
    out = attacks.adversary(settings, np.random.default_rng(5))(net, x, y)
    expected = attacks.trades_adversary(net, x, 0.3, 4, attacks.default_step_size(0.3, 4), np.random.default_rng(5))
    np.testing.assert_array_equal(out, expected)


def test_attacking_in_batches_reports_each_batch_and_sums_each_suite_attacks_seconds(tiny_run, monkeypatch):
    """10 images in batches of 4: on_batch gets 4, 4, 2; each attack of the suite is timed
    over all batches (here a fake suite that says each attack took 1.5 s a batch), and
    on_stage sees every stage with its seconds."""
    net, x, labels = trained(tiny_run)
    x, labels = x[:10], labels[:10]

    def fake_suite(net, xb, yb, eps, *, suite, steps, on_stage=None, **options):
        for name in attacks.SUITES[suite]:
            on_stage(name, len(xb), 1.5)
        return xb, np.zeros(len(xb), int)

    monkeypatch.setattr(attacks, "run_suite", fake_suite)
    batches, stages = [], []
    _, _, _, seconds = attacks.evaluate_suite(net, x, labels, "autoattack-apgd", 0.1, batch_size=4,
                                              on_batch=batches.append, on_stage=lambda *a: stages.append(a))
    assert batches == [4, 4, 2]
    assert seconds == {"apgd-ce": 4.5, "apgd-t": 4.5}
    assert stages == [(name, n, 1.5) for n in (4, 4, 2) for name in ("apgd-ce", "apgd-t")]
    batches.clear()
    attacks.evaluate_attack(net, x, labels, "fgsm", 0.1, batch_size=4, on_batch=batches.append)
    assert batches == [4, 4, 2]


def test_a_suite_in_batches_gets_every_option_and_its_seconds_rounded_to_milliseconds(tiny_run, monkeypatch):
    """evaluate_suite hands restarts, targets, queries and the generator on to run_suite,
    the steps as given (or the suite's default), never a step size; seconds keep 3 decimals."""
    net, x, labels = trained(tiny_run)
    seen = []

    def fake_suite(net, xb, yb, eps, *, suite, steps, on_stage=None, **options):
        seen.append((steps, options))
        for name in attacks.SUITES[suite]:
            on_stage(name, len(xb), 0.123456)
        return xb, np.zeros(len(xb), int)

    monkeypatch.setattr(attacks, "run_suite", fake_suite)
    rng = np.random.default_rng(1)
    _, _, _, seconds = attacks.evaluate_suite(net, x[:6], labels[:6], "autoattack", 0.1, steps=7, step_size=0.5,
                                              restarts=2, targets=3, queries=77, rng=rng)
    assert seen == [(7, {"restarts": 2, "targets": 3, "queries": 77, "rng": rng})]
    assert seconds == {name: 0.123 for name in attacks.SUITES["autoattack"]}
    seen.clear()
    attacks.evaluate_suite(net, x[:6], labels[:6], "autoattack-apgd", 0.1, steps=None)
    assert seen == [(attacks.DEFAULT_STEPS["autoattack-apgd"], {})]


def test_attacking_at_eps_zero_returns_the_images_without_running_an_attack(tiny_run, monkeypatch):
    net, x, labels = trained(tiny_run)

    def no_attack(*args, **kwargs):
        raise AssertionError("an attack ran at eps 0")

    monkeypatch.setattr(attacks, "attack", no_attack)
    x_adv, probs = attacks.evaluate_attack(net, x[:8], labels[:8], "pgd", 0.0)
    np.testing.assert_array_equal(x_adv, x[:8].astype(net.dtype))
    np.testing.assert_array_equal(probs, net.forward(x[:8].astype(net.dtype)))


def test_attacks_in_batches_run_in_the_networks_dtype_whatever_the_images_dtype(tiny_run):
    net, x, labels = trained(tiny_run)
    for method in ("fgsm", "autoattack-apgd"):
        x_adv, probs = attacks.evaluate_attack(net, x[:8].astype(np.float64), labels[:8], method, 0.1, steps=2)
        assert x_adv.dtype == net.dtype == np.float32 and probs.dtype == np.float32, method


def test_pgd_is_bim_from_a_uniform_start_in_the_eps_ball_clipped_to_the_unit_box(tiny_run):
    """One restart of PGD is BIM from x + U(-eps, eps), clipped to [0, 1] before the first
    gradient (digits have pixels at 0 and 1, where the clip matters)."""
    net, x, labels = trained(tiny_run)
    x, y = x[:10], np.eye(10, dtype=np.float32)[labels[:10]]
    assert x.min() == 0 and x.max() == 1
    out = attacks.pgd(net, x, y, 0.2, steps=3, step_size=0.05, restarts=1, rng=np.random.default_rng(4))
    start = np.clip(x + np.random.default_rng(4).uniform(-0.2, 0.2, x.shape), 0, 1).astype(x.dtype)
    np.testing.assert_array_equal(out, attacks.bim(net, x, y, 0.2, steps=3, step_size=0.05, start=start))


def test_pgd_training_batches_are_one_pgd_run_with_the_configured_steps(tiny_run):
    """One restart, the default step size: at eps 0.1 that run leaves some of the 20 images
    robust, which a second restart would attack again."""
    net, x, labels = trained(tiny_run)
    x, y = x[:40], np.eye(10, dtype=np.float32)[labels[:40]]
    settings = dict(method="pgd", eps=0.1, ratio=0.5, random_start=True, step_size=None, steps=3, warmup=0)
    out = attacks.adversary(settings, np.random.default_rng(6))(net, x, y)
    expected = attacks.pgd(net, x[:20], y[:20], 0.1, steps=3, step_size=attacks.default_step_size(0.1, 3), restarts=1,
                           rng=np.random.default_rng(6))
    assert (net.logits(expected).argmax(axis=1) == labels[:20]).any()
    np.testing.assert_array_equal(out[:20], expected)
    np.testing.assert_array_equal(out[20:], x[20:])


def test_every_attack_feeds_the_network_images_in_its_own_dtype(tiny_run, monkeypatch):
    """float32 all the way: no attack hands the network a float64 image (twice the memory
    traffic), whether for a gradient or for a prediction."""
    net, x, labels = trained(tiny_run)
    x, y = x[:6], np.eye(10, dtype=np.float32)[labels[:6]]
    seen = set()
    for name in ("logits", "forward", "loss_and_backward"):
        original = getattr(net, name)

        def spy(images, *args, _original=original, **kwargs):
            seen.add(images.dtype)
            return _original(images, *args, **kwargs)

        monkeypatch.setattr(net, name, spy)
    for method in ("fgsm", "bim", "pgd", "apgd-ce", "apgd-t"):
        attacks.attack(net, x, y, method, 0.1, steps=2, rng=np.random.default_rng(0))
    for method in ("fgsm", "pgd", "trades"):
        settings = dict(method=method, eps=0.1, ratio=1.0, random_start=True, step_size=None, steps=2, warmup=0)
        attacks.adversary(settings, np.random.default_rng(0))(net, x, y)
    assert seen == {np.dtype(np.float32)}


def test_the_suite_defaults_to_one_restart_and_a_generator_seeded_with_0(tiny_run):
    net, x, labels = trained(tiny_run)
    x, y = x[:20], np.eye(10, dtype=np.float32)[labels[:20]]
    default = attacks.run_suite(net, x, y, 0.05, suite="autoattack-apgd", steps=3)
    explicit = attacks.run_suite(net, x, y, 0.05, suite="autoattack-apgd", steps=3, restarts=1, rng=np.random.default_rng(0))
    twice = attacks.run_suite(net, x, y, 0.05, suite="autoattack-apgd", steps=3, restarts=2, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(default[0], explicit[0])
    np.testing.assert_array_equal(default[1], explicit[1])
    assert not np.array_equal(twice[0], explicit[0])  # (a second restart would show)


def test_each_attack_of_the_suite_runs_on_the_images_still_robust_with_the_suites_settings(tiny_run, monkeypatch):
    """Stage k gets `active` = the images no stage before it broke (clean-misclassified
    ones never), the labels, steps, targets and queries given; on_stage(name, robust
    after it, seconds) counts what broken_by says."""
    net, x, labels = trained(tiny_run)
    x, y = x[:20], np.eye(10, dtype=np.float32)[labels[:20]]
    calls = []

    def spy(name, original):
        def wrapped(*args, **kwargs):
            calls.append((name, args, kwargs))
            return original(*args, **kwargs)
        return wrapped

    for name in ("apgd", "fab_t", "square"):
        monkeypatch.setattr(attacks, name, spy(name, getattr(attacks, name)))
    stages = []
    started = time.perf_counter()
    _, broken_by = attacks.run_suite(net, x, y, 0.05, suite="autoattack", steps=2, restarts=1, rng=np.random.default_rng(2),
                                     targets=2, queries=20, on_stage=lambda *a: stages.append(a))
    elapsed = time.perf_counter() - started
    assert [c[0] for c in calls] == ["apgd", "apgd", "fab_t", "square"]
    for k, (name, args, kwargs) in enumerate(calls):
        np.testing.assert_array_equal(kwargs["active"], broken_by >= k)
    (_, a_ce, k_ce), (_, a_t, k_t), (_, a_fab, k_fab), (_, a_sq, k_sq) = calls
    assert all(len(args) == 4 for _, args, _ in calls)  # (net, x, y, eps), and every setting by name
    assert (k_ce["steps"], k_ce["restarts"], k_ce.get("targets", 0)) == (2, 1, 0)
    assert (k_t["steps"], k_t["restarts"], k_t["targets"]) == (2, 1, 2)
    assert (k_fab["targets"], k_fab["steps"], k_sq["queries"]) == (2, 2, 20)
    for _, args, _ in calls:
        np.testing.assert_array_equal(args[2], y)
    assert [(s[0], s[1]) for s in stages] == [(name, int(np.sum(broken_by > k)))
                                              for k, name in enumerate(attacks.SUITES["autoattack"])]
    assert all(0 <= s[2] <= elapsed for s in stages)


def test_attack_hands_its_step_size_generator_and_queries_on(tiny_run, monkeypatch):
    """Each method is its own function with the settings given: bim and pgd with the step
    size, APGD and Square with the caller's generator, APGD-T and FAB-T with the
    targets, Square with the queries; a suite gets them all (a fake run_suite records them)."""
    net, x, labels = trained(tiny_run)
    x, y = x[:10], np.eye(10, dtype=np.float32)[labels[:10]]
    np.testing.assert_array_equal(attacks.attack(net, x, y, "bim", 0.1, steps=2, step_size=0.01),
                                  attacks.bim(net, x, y, 0.1, steps=2, step_size=0.01))
    np.testing.assert_array_equal(attacks.attack(net, x, y, "pgd", 0.1, steps=2, step_size=0.01, rng=np.random.default_rng(3)),
                                  attacks.pgd(net, x, y, 0.1, steps=2, step_size=0.01, rng=np.random.default_rng(3)))
    for method, alone in [("apgd-ce", lambda rng: attacks.apgd(net, x, y, 0.1, steps=2, restarts=1, rng=rng)),
                          ("apgd-t", lambda rng: attacks.apgd(net, x, y, 0.1, steps=2, rng=rng, targets=2)),
                          ("fab-t", lambda rng: attacks.fab_t(net, x, y, 0.1, targets=2, steps=2)),
                          ("square", lambda rng: attacks.square(net, x, y, 0.1, queries=20, rng=rng))]:
        np.testing.assert_array_equal(attacks.attack(net, x, y, method, 0.1, steps=2, targets=2, queries=20,
                                                     rng=np.random.default_rng(5)),
                                      alone(np.random.default_rng(5)), err_msg=method)
    seen = []
    monkeypatch.setattr(attacks, "run_suite", lambda *args, **kwargs: seen.append((args, kwargs)) or (args[1], None))
    rng = np.random.default_rng(4)
    attacks.attack(net, x, y, "autoattack", 0.1, steps=3, restarts=2, rng=rng, targets=4, queries=50)
    args, kwargs = seen[0]
    assert args[3] == 0.1 and kwargs == dict(suite="autoattack", steps=3, restarts=2, rng=rng, targets=4, queries=50)


def apgd_checkpoints(steps):
    """The iterations after which APGD checks its step size, as AutoAttack's code sets
    them: the first after 22 % of the steps, each next period 3 % of the steps shorter,
    but at least 6 % of them (each at least 1 iteration)."""
    checks, at, period = [], 0, max(int(0.22 * steps), 1)
    while at + period <= steps:
        at += period
        checks.append(at)
        period = max(period - max(int(0.03 * steps), 1), max(int(0.06 * steps), 1))
    return checks


def plain_apgd(net, x, label, eps, steps, noise, target=None, rho=0.75):
    """APGD (Croce & Hein 2020, Algorithm 1) for ONE image `(1, C, H, W)`, written out
    step by step with Python scalars, as a reference for attacks._apgd_run."""
    low, high = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    labels = np.array([label])

    def loss_and_gradient(image):
        logits = net.logits(image)
        if target is None:
            loss, dlogits = attacks.cross_entropy_per_sample(logits, labels)
        else:
            loss, dlogits = attacks.dlr_targeted(logits, labels, np.array([target]))
        grad = net.backward(dlogits.astype(net.dtype), need_input_grad=True, need_param_grads=False)
        return float(loss[0]), grad, bool(logits.argmax(axis=1)[0] != label)

    current = np.clip(x + eps * noise, low, high).astype(x.dtype)
    loss, grad, fooled = loss_and_gradient(current)
    x_fooled = current
    best_loss, x_best, grad_best = loss, current, grad
    step = np.float64(2.0 * eps)  # (as _apgd_run's per-image array: the step in float64)
    checks = apgd_checkpoints(steps)
    last_check, increases, halved_last, best_at_last = 0, 0, True, best_loss
    previous, previous_loss = current, loss
    for i in range(steps):
        a = 0.75 if i > 0 else 1.0  # momentum from the second step on
        z = np.clip(current + step * np.sign(grad), low, high)
        new = np.clip(current + a * (z - current) + (1 - a) * (current - previous), low, high).astype(x.dtype)
        previous, current = current, new
        loss, grad, wrong = loss_and_gradient(current)
        if wrong:
            fooled, x_fooled = True, current
        increases += loss > previous_loss
        previous_loss = loss
        if loss > best_loss:
            best_loss, x_best, grad_best = loss, current, grad
        if i + 1 in checks:
            halve = increases <= rho * (i + 1 - last_check) or (not halved_last and best_at_last >= best_loss)
            if halve:
                step /= 2.0
                current, grad = x_best, grad_best
            halved_last, best_at_last, last_check, increases = halve, best_loss, i + 1, 0
    return (x_fooled if fooled else x_best), fooled


def test_apgd_checks_its_step_size_where_autoattack_does():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # the paper's w_j for 100 steps
    assert apgd_checkpoints(40) == [8, 15, 21, 26, 30, 33, 35, 37, 39]
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert apgd_checkpoints(4) == [1, 2, 3, 4]


@pytest.mark.parametrize("eps,steps", [(0.1, 3), (0.1, 10), (0.1, 40), (0.3, 2), (0.3, 4), (0.3, 10)])
def test_apgd_on_one_image_is_algorithm_1_step_by_step(tiny_run, eps, steps):
    """Momentum, step halving, restarts from the best point and the box, image by
    image, against the plain loop above (CE, and DLR towards the likeliest wrong class)."""
    net, x, labels = trained(tiny_run)
    rng = np.random.default_rng(7)
    for i in range(10):
        xi, li = x[i:i + 1], labels[i]
        noise = rng.uniform(-1, 1, xi.shape)
        ranked = np.argsort(net.logits(xi)[0])[::-1]
        likeliest_other = int(next(c for c in ranked if c != li))
        for target in (None, likeliest_other):
            got, hit = attacks._apgd_run(net, xi, labels[i:i + 1], None if target is None else np.array([target]),
                                        eps, steps, noise)
            expected, fooled = plain_apgd(net, xi, li, eps, steps, noise, target)
            np.testing.assert_array_equal(got, expected)
            assert got.dtype == xi.dtype and bool(hit[0]) == fooled


def test_apgd_defaults_to_autoattacks_100_steps_and_one_restart(monkeypatch):
    seen = []
    monkeypatch.setattr(attacks, "_apgd_run", lambda net, x, labels, targets, eps, steps, noise:
                        seen.append(steps) or (x, np.zeros(len(x), bool)))
    net = linear_net()
    attacks.apgd(net, np.full((3, 1, 1, 4), 0.5), np.eye(2)[[0, 1, 0]], 0.1)
    assert seen == [100]


def test_apgd_without_a_generator_uses_one_seeded_with_0_and_apgd_t_needs_4_classes():
    net, x, y = linear_net(), np.random.default_rng(1).uniform(0, 1, (5, 1, 1, 4)), np.eye(2)[[0, 1, 0, 1, 1]]
    np.testing.assert_array_equal(attacks.apgd(net, x, y, 0.1, steps=3),
                                  attacks.apgd(net, x, y, 0.1, steps=3, rng=np.random.default_rng(0)))
    with pytest.raises(attacks.CnnrunError, match="apgd-t: the DLR loss needs at least 4 classes, the network has 2"):
        attacks.apgd(net, x, y, 0.1, steps=3, targets=1)


def test_apgd_t_never_targets_the_true_class_of_a_misclassified_image(tiny_run, monkeypatch):
    """An image whose true class is its 2nd most likely one: its first target is the
    class it is taken for instead."""
    net, x, _ = trained(tiny_run)
    x = x[:8]
    ranked = np.argsort(net.logits(x), axis=1)[:, ::-1]
    y = np.eye(10, dtype=np.float32)[ranked[:, 1]]  # every image "misclassified", its label 2nd
    seen = []
    monkeypatch.setattr(attacks, "_apgd_run", lambda net, x, labels, targets, eps, steps, noise:
                        seen.append((labels, targets)) or (x, np.zeros(len(x), bool)))
    attacks.apgd(net, x, y, 0.1, steps=2, targets=3)
    assert len(seen) == 3 and all(np.all(targets != labels) for labels, targets in seen)
    np.testing.assert_array_equal(seen[0][1], ranked[:, 0])
