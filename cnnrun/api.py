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
           "robust_accuracy", "certified_accuracy", "layer_outputs", "saliency", "grad_cam", "initial_weights",
           "loss_landscape", "make_layer", "numeric_gradient", "Network"]


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


# --- inside a network (cnnrun explain / landscape) ------------------------------------

def layer_outputs(net, x):
    """`[(name, output), ...]`: every top-level layer's output for images `x` `(N, C, H, W)`,
    the last one the probabilities."""
    from cnnrun import explain

    return explain.layer_outputs(net, x)


def saliency(net, x, target, method="gradient", **options):
    """An attribution `(C, H, W)` of class `target`'s logit to the pixels of one image `x`
    `(C, H, W)`: `method` "gradient" (the logit's input gradient), "smoothgrad" (options
    samples, noise, seed) or "integrated_gradients" (options steps, baseline)."""
    from cnnrun import explain

    methods = {"gradient": explain.saliency, "smoothgrad": explain.smoothgrad,
               "integrated_gradients": explain.integrated_gradients}
    if method not in methods:
        raise ValueError(f"method {method!r}: expected one of {', '.join(methods)}")
    return methods[method](net, x, target, **options)


def grad_cam(net, x, target):
    """Grad-CAM of class `target` on the last convolution for one image `x` `(C, H, W)`:
    `(map (H, W) on the image's grid, coarse map (h, w), the layer's name)`."""
    from cnnrun import explain

    return explain.grad_cam(net, x, target)


def initial_weights(cfg):
    """`{name: array}`: the weights a run of `cfg` started from (its network rebuilt from
    the config's seed)."""
    return {name: p.copy() for name, p in build_network(cfg).named_parameters().items()}


def loss_landscape(net, x, labels, initial=None, coordinates=None, alphas=None, seed=0):
    """The loss of `net` on `x` around its weights: `{"line": [(alpha, loss, accuracy), ...]}`
    from `initial` weights (if given) along `alphas` (default -0.25 to 1.25), and
    `{"coordinates", "losses" (n, n), "accuracies"}` on the plane of two filter-normalised
    random directions (default coordinates: 21 points from -1 to 1)."""
    from cnnrun import landscape

    coordinates = np.linspace(-1, 1, 21) if coordinates is None else np.asarray(coordinates)
    out = {}
    if initial is not None:
        alphas = np.linspace(-0.25, 1.25, 31) if alphas is None else alphas
        out["line"] = landscape.line(net, initial, x, labels, alphas)
    losses, accs, _ = landscape.plane(net, x, labels, coordinates, seed=seed)
    out.update(coordinates=coordinates, losses=losses, accuracies=accs)
    return out


# --- one layer, for writing and checking a backward by hand ----------------------------

def make_layer(entry, input_shape, seed=0, dtype=np.float64):
    """One layer of the fast engine, as a config names it (`{"conv": {"filters": 2,
    "kernel": 3}}`, `"relu"`), built for `input_shape` (no N) with seeded parameters:
    `layer.forward(x)`, `layer.backward(dy)` (returns dx, fills `layer.grads`), `layer.params`."""
    from cnnrun.nn.layers import LAYERS, make_layer as build_layer

    layer = build_layer(LAYERS, entry, "layer")
    layer.build(tuple(input_shape))
    layer.init_params(np.random.default_rng(seed), np.dtype(dtype))
    return layer


def numeric_gradient(f, array, step=1e-6):
    """Central differences `(f(a + h) - f(a - h)) / 2h` of the scalar function `f()` for every
    entry of `array`, which `f` reads (perturbed in place and put back): `array`'s shape.
    Use float64."""
    from cnnrun.nn.gradcheck import perturbed

    grad = np.zeros(array.shape)
    for idx in np.ndindex(array.shape):
        up, down = perturbed(f, array, idx, step)
        grad[idx] = (up - down) / (2 * step)
    return grad
