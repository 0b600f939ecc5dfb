"""Options that a test must see used: each would be noticed if the command ignored it."""

import os

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun import runs
from cnnrun.robustness import attacks
from cnnrun.cli import main
from idx import make_digits, write_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("options")
    data = make_digits(tmp / "data", n_train=256, n_test=64)
    config = write_config(tmp / "tiny.yaml", train__epochs=2)
    s = dict(data=str(data), config=config, runs=str(tmp / "runs"), tmp=tmp)
    assert invoke(s, "train", config, "--data-dir", data, "--quiet").exit_code == 0
    s["run"] = runs.list_runs(s["runs"])[0]
    return s


def invoke(s, *args, runs_dir=True):
    return CliRunner().invoke(main, [str(a) for a in args] + (["--runs-dir", s["runs"]] if runs_dir else []))


@pytest.fixture
def calls(monkeypatch):
    """Every call of `attacks.attack`, with its options and the state of its generator."""
    seen, real = [], attacks.attack

    def spy(net, x, y, method, eps, rng=None, **options):
        seen.append(dict(method=method, eps=eps, rng_state=rng.bit_generator.state, **options))
        return real(net, x, y, method, eps, rng=rng, **options)

    monkeypatch.setattr(attacks, "attack", spy)
    return seen


@pytest.mark.slow
def test_attack_passes_steps_step_size_restarts_targets_and_seed_to_the_attack(run, calls):
    result = invoke(run, "attack", run["run"], "--method", "bim,pgd,apgd-t", "--eps", "0.1", "--steps", 3,
                    "--step-size", 0.02, "--restarts", 2, "--targets", 3, "--seed", 7, "--limit", 16,
                    "--data-dir", run["data"])
    assert result.exit_code == 0, result.output
    assert [c["method"] for c in calls] == ["bim", "pgd", "apgd-t"]
    for c in calls:
        assert (c["steps"], c["step_size"], c["restarts"], c["targets"]) == (3, 0.02, 2, 3)
        assert c["rng_state"] == np.random.default_rng(7).bit_generator.state
    [folder] = [os.path.join(run["run"], "attacks", d) for d in os.listdir(os.path.join(run["run"], "attacks"))
                if d.endswith("bim-pgd-apgd-t")]
    rows = {r["method"]: r for r in runs.read_json(os.path.join(folder, "results.json"))["results"]}
    assert rows["bim"]["steps"] == 3 and rows["pgd"]["restarts"] == 2


def test_bim_with_several_steps_is_stronger_than_one_and_stays_in_the_ball(run):
    _, _, net = runs.load_run(run["run"], run["runs"])
    from cnnrun.data import mnist
    x, labels = mnist.load(run["data"], dataset="digits")["test"]
    y = np.eye(10, dtype=np.float32)[labels]
    from cnnrun.nn.losses import cross_entropy_per_sample
    loss = {}
    for steps in (1, 10):
        x_adv = attacks.attack(net, x, y, "bim", 0.2, steps=steps, step_size=0.05)
        assert np.abs(x_adv - x).max() <= 0.2 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        loss[steps] = cross_entropy_per_sample(net.logits(x_adv), labels)[0].mean()
    assert loss[10] > loss[1] * 1.5, loss


def test_pgd_with_another_seed_starts_elsewhere(run):
    _, _, net = runs.load_run(run["run"], run["runs"])
    from cnnrun.data import mnist
    x, labels = mnist.load(run["data"], dataset="digits")["test"]
    y = np.eye(10, dtype=np.float32)[labels]
    a, b = (attacks.attack(net, x, y, "pgd", 0.1, steps=1, rng=np.random.default_rng(s)) for s in (0, 1))
    assert not np.array_equal(a, b)


def test_export_checks_as_many_test_images_as_asked(run):
    result = invoke(run, "export", run["run"], "--check-images", 7, "--output", run["tmp"] / "m.onnx",
                    "--data-dir", run["data"])
    assert result.exit_code == 0, result.output
    assert "onnxruntime agrees with cnnrun on 7 test images" in result.output


def test_predict_classifies_several_images_in_one_call(run, tmp_path):
    from PIL import Image
    paths = []
    for i, cell in enumerate([(0, 0), (1, 2), (2, 1)]):
        picture = np.zeros((28, 28), np.uint8)
        picture[cell[0] * 7:(cell[0] + 1) * 7, cell[1] * 7:(cell[1] + 1) * 7] = 255
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(picture).save(paths[-1])
    result = invoke(run, "predict", run["run"], *paths)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(p) for p in paths]


def test_predict_refuses_a_network_that_is_not_grayscale(run, tmp_path):
    from cnnrun.config import build_network, validate
    cfg = validate(dict(name="rgb", model=dict(input_shape=[3, 28, 28], layers=[
        "flatten", {"dense": {"units": 10}}, "softmax"]), train=dict(epochs=1, lr=0.1), data={}))
    run_dir = runs.new_run_dir(run["runs"], "rgb", cfg)
    build_network(cfg).save(os.path.join(run_dir, "weights.npz"))
    from PIL import Image
    Image.new("L", (28, 28), 0).save(tmp_path / "x.png")
    result = invoke(run, "predict", run_dir, tmp_path / "x.png")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (f"error: {run_dir}: the network takes 3-channel images; "
                                                      "predict handles grayscale only")


@pytest.mark.parametrize("args,message", [
    (["CONFIG", "--resume", "RUN"], "give either CONFIG (a new run) or --resume RUN_DIR, not both or neither"),
    (["--resume", "RUN", "--set", "train.lr=0.5"], "--resume continues a run as configured; only --epochs may change"),
    (["--resume", "RUN", "--seed", "3"], "--resume continues a run as configured; only --epochs may change"),
])
def test_train_refuses_resume_with_a_config_or_changes_and_changes_nothing(run, args, message):
    before = open(os.path.join(run["run"], "metrics.csv")).read()
    args = [run["config"] if a == "CONFIG" else run["run"] if a == "RUN" else a for a in args]
    result = invoke(run, "train", *args, "--data-dir", run["data"])
    assert result.exit_code == 1 and result.output.strip() == f"error: {message}"
    assert open(os.path.join(run["run"], "metrics.csv")).read() == before


@pytest.mark.parametrize("verb", ["train", "eval", "attack", "sweep", "runs", "verify"])
def test_a_mistyped_option_is_exit_2_with_the_help_hint(run, verb):
    result = CliRunner().invoke(main, [verb, "--epochz", "3"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "No such option '--epochz'" in lines[0] and f"(see: cnnrun {verb} --help)" in lines[0]
