"""Optimizers and learning-rate schedules step by step against torch.optim and
torch.optim.lr_scheduler on the PyTorch twin; and a resumed run that takes exactly the
rates and weights of an uninterrupted one."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.optim import lr_scheduler

from cnnrun import runner, runs, torch_twin
from cnnrun.cli import main
from cnnrun.config import validate
from cnnrun.nn import Network
from cnnrun.nn.optim import learning_rate, make_optimizer
from helpers import interrupt_call
from idx import TINY_CONFIG, write_config

SPECS = [("conv", {"filters": 3, "kernel": 3, "bias": False}), ("batch_norm", {}), "relu", "flatten", ("dense", {"units": 8}),
         "relu", ("dense", {"units": 3}), "softmax"]


def train_section(**changes):
    """A validated `train` section: TINY_CONFIG's with `changes`."""
    return validate(dict(TINY_CONFIG, train=dict(TINY_CONFIG["train"], **changes)))["train"]


OPTIMIZERS = {
    "sgd": dict(optimizer="sgd", lr=0.05),
    "sgd momentum, decay": dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-3),
    "sgd nesterov, weights decay": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-2,
                                        weight_decay_params="weights"),
    "adam": dict(optimizer="adam", lr=1e-2),
    "adam coupled decay": dict(optimizer="adam", lr=1e-2, weight_decay=1e-2),
    "adamw (default decay)": dict(optimizer="adamw", lr=1e-2),
    "adamw weights decay": dict(optimizer="adamw", lr=1e-2, weight_decay=0.1, weight_decay_params="weights"),
    "rmsprop": dict(optimizer="rmsprop", lr=1e-3),
    "rmsprop momentum, decay": dict(optimizer="rmsprop", lr=1e-3, momentum=0.5, weight_decay=1e-2),
    "sgd on onecycle": dict(optimizer="sgd", lr=0.1, momentum=0.9, schedule={"name": "onecycle"}),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fifty_steps_give_the_weights_torch_optim_gives(name, rng):
    train = train_section(lr_decay=1.0, **OPTIMIZERS[name])
    net = Network(SPECS, (1, 7, 7), seed=2, dtype=np.float64, threads=1).train()
    names = list(net.named_parameters())
    ours = make_optimizer(train, names, steps_per_epoch=10)
    model = torch_twin.twin(net).train()
    theirs = torch_twin.make_optimizer(model, dict(train, schedule=None), names=names)  # at lr, scaled by LambdaLR
    schedule = (lr_scheduler.LambdaLR(theirs, lambda step: learning_rate(train, step, 10) / train["lr"])
                if train["schedule"] else None)
    for step in range(50):
        x = rng.standard_normal((20, 1, 7, 7))
        labels = rng.integers(0, 3, 20)
        net.loss_and_backward(x, np.eye(3)[labels])
        ours.begin_step(step)
        ours.step(net.param_grad_pairs())
        theirs.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(labels)).backward()
        assert ours.lr == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12)
        theirs.step()
        if schedule:
            schedule.step()
    for (key, p), q in zip(net.named_parameters().items(), model.parameters()):
        q = q.detach().numpy()
        np.testing.assert_allclose(p, q.T if key.endswith("dense.W") else q, rtol=1e-9, atol=1e-12, err_msg=key)


def torch_scheduler(name, optimizer, epochs, steps):
    """torch's scheduler for each schedule of `SCHEDULES`, stepped after every training step."""
    total = epochs * steps
    if name == "exponential":
        return lr_scheduler.LambdaLR(optimizer, lambda k: 0.8 ** (k // steps))  # ExponentialLR, stepped per epoch
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=3 * steps, gamma=0.5)
    if name == "multistep":
        return lr_scheduler.MultiStepLR(optimizer, milestones=[2 * steps, 5 * steps], gamma=0.1)
    if name == "cosine":
        warm = 2 * steps
        return lr_scheduler.SequentialLR(optimizer, [
            lr_scheduler.LinearLR(optimizer, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1),
            lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warm, eta_min=1e-4)], milestones=[warm])
    if name == "onecycle":
        return lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total, cycle_momentum=False)
    if name == "cyclic":
        peak = round(3 * steps)
        return lr_scheduler.CyclicLR(optimizer, base_lr=0.0, max_lr=0.1, step_size_up=peak,
                                     step_size_down=total - peak, cycle_momentum=False)
    return lr_scheduler.LambdaLR(optimizer, lambda k: 1.0)


SCHEDULES = {
    "constant": {"name": "constant"},
    "exponential": {"name": "exponential", "gamma": 0.8},
    "step": {"name": "step", "step_size": 3, "gamma": 0.5},
    "multistep": {"name": "multistep", "milestones": [2, 5]},
    "cosine": {"name": "cosine", "warmup_epochs": 2, "min_lr": 1e-4},
    "onecycle": {"name": "onecycle"},
    "cyclic": {"name": "cyclic", "peak_epoch": 3},
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_gives_torchs_rate_at_every_step(name):
    epochs, steps = 8, 7
    train = train_section(lr=0.1, epochs=epochs, schedule=SCHEDULES[name])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = torch_scheduler(name, optimizer, epochs, steps)
    for step in range(epochs * steps):
        assert learning_rate(train, step, steps) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9,
                                                                  abs=1e-15), step
        optimizer.step()
        scheduler.step()


def test_piecewise_is_linear_between_its_points_in_fractional_epochs():
    train = train_section(lr=0.1, epochs=10, schedule={"name": "piecewise",
                                                       "points": [[0, 0.0], [2.5, 0.2], [10, 0.0]]})
    rates = [learning_rate(train, step, 4) for step in range(40)]
    assert rates[0] == 0 and rates[10] == pytest.approx(0.2) and rates[5] == pytest.approx(0.1)
    assert rates[25] == pytest.approx(0.2 * (10 - 25 / 4) / 7.5)


def test_no_schedule_is_the_old_exponential_decay_bit_for_bit():
    train = train_section(lr=0.01, lr_decay=0.992, epochs=100)
    for epoch in (0, 1, 7, 99):
        for step in (0, 468):
            assert learning_rate(train, epoch * 469 + step, 469) == 0.01 * 0.992 ** epoch


@pytest.mark.slow
def test_a_run_resumed_mid_cycle_mid_warm_up_with_augmentation_and_a_validation_split_is_exact(setup, monkeypatch):
    for schedule in ({"name": "cyclic", "peak_epoch": 2.5}, {"name": "cosine", "warmup_epochs": 2.5}):
        data = dict(TINY_CONFIG["data"], augment={"shift": 2, "rotate": 10}, validation=50)
        path = write_config(setup["tmp"] / "cycle.yaml", data=data, train=dict(
            TINY_CONFIG["train"], epochs=4, optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=1e-3,
            schedule=schedule, eval_every=1, select={"metric": "val_acc"}))
        args = ["--data-dir", setup["data"], "--quiet"]
        full_dir, part_dir = str(setup["tmp"] / f"full-{schedule['name']}"), str(setup["tmp"] / f"part-{schedule['name']}")
        assert CliRunner().invoke(main, ["train", path, *args, "--runs-dir", full_dir]).exit_code == 0
        real = interrupt_call(monkeypatch, runner, "train_epoch", 3)  # Ctrl-C in the third epoch: mid-cycle
        assert CliRunner().invoke(main, ["train", path, *args, "--runs-dir", part_dir]).exit_code == 130
        monkeypatch.setattr(runner, "train_epoch", real)
        (full,), (part,) = runs.list_runs(full_dir), runs.list_runs(part_dir)
        result = CliRunner().invoke(main, ["train", "--resume", part, "--quiet"])
        assert result.exit_code == 0, result.output
        a, b = runs.read_metrics(full), runs.read_metrics(part)
        assert [(r["lr"], r["train_loss"], r["test_loss"]) for r in a] == [(r["lr"], r["train_loss"], r["test_loss"])
                                                                           for r in b]
        assert len({r["lr"] for r in a}) == 4  # the rate moved every epoch
        assert all(r["val_acc"] is not None for r in a)
        with open(f"{full}/best.npz", "rb") as f, open(f"{part}/best.npz", "rb") as g:
            assert f.read() == g.read()


def test_adversarial_eps_follows_its_schedule_at_every_step():
    settings = validate(dict(TINY_CONFIG, train=dict(TINY_CONFIG["train"], epochs=4, adversarial={
        "method": "fgsm", "eps": 0.3, "eps_schedule": {"name": "piecewise", "points": [[0, 0.0], [2, 0.3]]}})))
    adversarial = settings["train"]["adversarial"]
    from cnnrun.robustness.attacks import eps_at
    assert [eps_at(adversarial, step, 10, 4) for step in (0, 5, 10, 20, 39)] == pytest.approx([0, 0.075, 0.15, 0.3, 0.3])
    assert eps_at(dict(adversarial, eps_schedule=None), 5, 10, 4) == 0.3


def test_an_adversary_makes_its_examples_at_the_scheduled_eps(rng):
    from cnnrun.robustness import attacks
    net = Network([("flatten", {}), ("dense", {"units": 3}), "softmax"], (1, 4, 4), dtype=np.float64)
    x, y = rng.random((6, 1, 4, 4)), np.eye(3)[rng.integers(0, 3, 6)]
    settings = dict(method="fgsm", eps=0.2, ratio=1.0, random_start=False, step_size=None, steps=1, warmup=0, beta=6,
                    eps_schedule={"name": "piecewise", "points": [[0, 0.0], [1, 0.2]]})
    transform = attacks.adversary(settings, np.random.default_rng(0), epoch=0, first_step=5, steps_per_epoch=10, epochs=2)
    assert np.abs(transform(net, x, y) - x).max() == pytest.approx(0.1)  # step 5 of 10: half way up the ramp
    assert np.abs(transform(net, x, y) - x).max() == pytest.approx(0.12)  # the next call is step 6


def test_warmup_and_eps_schedule_together_are_one_line():
    from cnnrun.errors import CnnrunError
    with pytest.raises(CnnrunError, match="train.adversarial: warmup and eps_schedule both ramp eps; keep one"):
        validate(dict(TINY_CONFIG, train=dict(TINY_CONFIG["train"], adversarial={
            "method": "pgd", "eps": 0.3, "warmup": 2, "eps_schedule": {"name": "constant"}})))
