"""cnnrun from Python: the small surface a notebook may rely on.

    from cnnrun import api
    cfg = api.load_config("configs/net2.yaml", {"train.epochs": 2, "data.train_limit": 2000})
    run_dir = api.train(cfg)                     # an ordinary run folder, as `cnnrun train` makes
    cfg, net = api.load_run(run_dir)
    x, labels = api.load_data(cfg)["test"]
    print(api.evaluate(net, x, labels)["accuracy"])
    print(api.robust_accuracy(net, x[:200], labels[:200], "pgd", eps=0.1))

Everything else in the package may change between versions; these functions and
their arguments are documented in docs/python.md and kept.
"""

import numpy as np

from cnnrun import config as _config, data as _data, runner, runs, training
from cnnrun.robustness import attacks
from cnnrun.nn.network import Network

__all__ = ["load_config", "build_network", "load_data", "train", "load_run", "evaluate", "attack",
           "robust_accuracy", "certified_accuracy", "Network"]


def load_config(path, overrides=None):
    """A config file, validated, with every default filled in; `overrides` maps keys
    (`"train.lr"`, `"model.layers[0].conv.filters"`) to values, as `--set` does."""
    cfg = _config.load_config(path)
    for key, value in (overrides or {}).items():
        cfg = _config.set_value(cfg, key, value, source="overrides")
    return cfg


def build_network(cfg, engine="fast", dtype=np.float32, seed=None):
    """The config's network with fresh weights (seeded by the config, or `seed`).
    `engine`: "fast", or "reference" (nn/reference.py: the equations, slower)."""
    return _config.build_network(cfg, dtype=dtype, seed=seed, engine=engine)


def load_data(cfg, data_dir=None):
    """`{"train": (images, labels), "test": (images, labels)}`: images float32
    `(N, 1, 28, 28)` in [0, 1], labels int `(N,)`; the config's limits applied."""
    return _data.load_data(cfg, data_dir, progress=False)


def train(cfg, runs_dir="runs", data_dir=None, engine="fast", quiet=True):
    """Train `cfg` in a new run folder under `runs_dir` (exactly as `cnnrun train`) and
    return the folder's path; `summary.json` in it holds the final figures."""
    data = load_data(cfg, data_dir)
    cfg = _data.with_data_location(cfg, data_dir)  # the run folder says where its data is
    run_dir = runs.new_run_dir(runs_dir, cfg["name"], cfg)
    runner.train_run(cfg, run_dir, data, progress=not quiet, log=(lambda _: None) if quiet else print,
                     command="cnnrun.api.train", engine=engine)
    return run_dir


def load_run(run_dir, engine="fast", weights="final"):
    """`(config, network)` of a run folder, with its final weights (or its latest checkpoint),
    or with `weights="best"` those train.select kept (best.npz)."""
    _, cfg, net = runs.load_run(run_dir, runs_dir=".", engine=engine, weights=weights)
    return cfg, net


def evaluate(net, x, labels):
    """`{"loss", "accuracy", "probabilities" (N, K)}` of `net` on images `x` and int labels."""
    loss, acc, probs = training.evaluate(net, x, labels)
    return dict(loss=loss, accuracy=acc, probabilities=probs)


def attack(net, x, labels, method, eps, **options):
    """Adversarial versions of images `x` `(N, C, H, W)`, at most `eps` from them per pixel
    and in [0, 1]. `method`: fgsm, bim, pgd, apgd-ce, apgd-t, fab-t, square, autoattack
    (AutoAttack's standard suite) or autoattack-apgd; `options`: steps, step_size,
    restarts, targets, queries (as the `attack` verb's options)."""
    x_adv, _ = attacks.evaluate_attack(net, x, labels, method, eps, **options)
    return x_adv


def robust_accuracy(net, x, labels, method, eps, **options):
    """Accuracy of `net` on the adversarial versions of `x` that `method` makes."""
    _, probs = attacks.evaluate_attack(net, x, labels, method, eps, **options)
    return float(np.mean(probs.argmax(axis=1) == labels))


def certified_accuracy(net, x, labels, eps):
    """The share of images `x` whose class provably holds over the whole eps-ball
    (interval bound propagation): a lower bound of the robust accuracy."""
    from cnnrun.robustness import bounds

    return float(np.mean(bounds.certified(net, x, labels, bounds.ibp_margins(net, x, labels, eps))))
