"""YAML config -> validated config dict, with every default filled in.

A config has five sections; a layer reads like its constructor call:

    name: net2
    seed: 0
    data: {dataset: mnist, dir: null, train_limit: null, test_limit: null}
    model:
      input_shape: [1, 28, 28]
      layers:
        - conv: {filters: 8, kernel: 3, padding: 1}
        - relu
        ...
        - softmax
    train: {epochs: 100, batch_size: 128, lr: 0.01, lr_decay: 0.992, eval_every: 5,
            loss: categorical_crossentropy}

Any problem is one `CnnrunError` naming the file, the key path and what was expected.
"""

import copy
import inspect
import os
import re

import numpy as np
import yaml

from cnnrun.errors import CnnrunError
from cnnrun.nn.network import LAYERS, Network
from cnnrun.nn.rules import (
    BOOL, LAYER_LIST, NON_NEGATIVE_INT, NON_NEGATIVE_NUMBER, POSITIVE_INT, POSITIVE_NUMBER, SHAPE, SHORTCUT, STRING, UNIT,
    choice, is_number, optional,
)

NAME = ("one plain file-name component: letters, digits, '-', '_' and '.' (at most 100), not '.' or '..'",
        lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,100}", v) is not None
        and v not in (".", ".."))
PATH = ("a path (a non-empty string)", lambda v: isinstance(v, str) and v != "" and "\0" not in v)
DECAY = ("a number in (0, 1]", lambda v: is_number(v) and 0 < v <= 1)
MAPPING_OR_NULL = ("a mapping or null", lambda v: v is None or isinstance(v, dict))


# Section -> key -> (rule, default). A default of REQUIRED must be given.
REQUIRED = object()
SECTIONS = {
    "data": {
        "dataset": (STRING, "mnist"),
        "dir": (optional(PATH), None),
        "train_limit": (optional(POSITIVE_INT), None),
        "test_limit": (optional(POSITIVE_INT), None),
        "augment": (MAPPING_OR_NULL, None),  # data/augment.py: shift, flip, rotate
        "validation": (optional(POSITIVE_INT), None),  # images held out of the training set
    },
    "model": {
        "input_shape": (SHAPE, REQUIRED),
        "layers": (("a non-empty list of layers", lambda v: isinstance(v, list) and len(v) > 0), REQUIRED),
    },
    "train": {
        "epochs": (POSITIVE_INT, REQUIRED),
        "batch_size": (POSITIVE_INT, 128),
        "lr": (POSITIVE_NUMBER, REQUIRED),
        "lr_decay": (DECAY, 1.0),
        "optimizer": (choice("sgd", "adam", "adamw", "rmsprop"), "sgd"),
        "momentum": (("a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1), 0.0),  # sgd, rmsprop
        "nesterov": (BOOL, False),  # sgd with momentum
        "weight_decay": (optional(NON_NEGATIVE_NUMBER), None),  # null: PyTorch's default (adamw 0.01, else 0)
        "weight_decay_params": (choice("all", "weights"), "all"),  # weights: conv and dense W only
        "schedule": (MAPPING_OR_NULL, None),  # null: lr * lr_decay ** epoch
        "select": (MAPPING_OR_NULL, None),  # keep the best epoch's weights as best.npz, by SELECT
        "early_stop": (MAPPING_OR_NULL, None),  # stop after `patience` evaluations without a better one
        "eval_every": (POSITIVE_INT, 5),
        "loss": (choice("categorical_crossentropy"), "categorical_crossentropy"),
        "adversarial": (MAPPING_OR_NULL, None),
    },
}
# train.adversarial: adversarial training on a share `ratio` of every batch (fgsm, pgd), or
# TRADES (Zhang et al. 2019): cross-entropy on the clean batch plus beta times the KL
# divergence to the outputs on a perturbed one, found by `steps` steps (whole batches).
ADVERSARIAL = {
    "method": (choice("fgsm", "pgd", "trades", "ibp"), "fgsm"),
    "eps": (UNIT, REQUIRED),
    "ratio": (("a number in (0, 1]", lambda v: is_number(v) and 0 < v <= 1), 0.5),  # not trades: whole batches
    "random_start": (BOOL, False),  # fgsm only
    "step_size": (optional(POSITIVE_NUMBER), None),
    "steps": (POSITIVE_INT, 10),
    "warmup": (NON_NEGATIVE_INT, 0),
    "eps_schedule": (MAPPING_OR_NULL, None),  # eps at every step, as train.schedule sets the rate
    "beta": (POSITIVE_NUMBER, 6.0),  # trades only
    "kappa": (UNIT, 0.5),  # ibp only: the clean loss's weight at the full eps (1 at eps 0)
}
# train.select: which epoch's weights best.npz keeps, by a validation figure (data.validation);
# val_robust_acc is the accuracy under `attack` (a train.adversarial-like mapping).
SELECT = {
    "metric": (choice("val_acc", "val_robust_acc"), "val_acc"),
    "attack": (MAPPING_OR_NULL, None),
}
SELECT_ATTACK = {
    "method": (choice("fgsm", "pgd"), "pgd"),
    "eps": (UNIT, REQUIRED),
    "steps": (POSITIVE_INT, 10),
    "step_size": (optional(POSITIVE_NUMBER), None),
    "limit": (optional(POSITIVE_INT), 1000),  # the first N validation images
}
EARLY_STOP = {"patience": (POSITIVE_INT, REQUIRED)}
# data.augment: the transformations of every training batch (data/augment.py).
AUGMENT = {
    "shift": (NON_NEGATIVE_INT, 0),
    "flip": (UNIT, 0.0),
    "rotate": (("a number of degrees in [0, 180]", lambda v: is_number(v) and 0 <= v <= 180), 0.0),
}
# train.schedule: the learning rate at every step (nn/optim.py, learning_rate), by name.
SCHEDULE_RULES = {
    "constant": {},
    "exponential": {"gamma": (DECAY, REQUIRED)},
    "step": {"step_size": (POSITIVE_INT, REQUIRED), "gamma": (DECAY, 0.1)},
    "multistep": {"milestones": (("a list of epochs in increasing order",
                                  lambda v: isinstance(v, list) and len(v) > 0 and all(NON_NEGATIVE_INT[1](m) for m in v)
                                  and all(a < b for a, b in zip(v, v[1:]))), REQUIRED), "gamma": (DECAY, 0.1)},
    "cosine": {"warmup_epochs": (NON_NEGATIVE_NUMBER, 0), "min_lr": (NON_NEGATIVE_NUMBER, 0.0)},
    "onecycle": {"pct_start": (("a number in (0, 1)", lambda v: is_number(v) and 0 < v < 1), 0.3),
                 "div_factor": (POSITIVE_NUMBER, 25.0), "final_div_factor": (POSITIVE_NUMBER, 1e4)},
    "cyclic": {"peak_epoch": (optional(POSITIVE_NUMBER), None)},  # null: 2/5 of the epochs
    "piecewise": {"points": (("a list of [epoch, rate] pairs, the epochs increasing from 0",
                              lambda v: isinstance(v, list) and len(v) > 0
                              and all(isinstance(p, list) and len(p) == 2 and all(map(is_number, p)) and p[1] >= 0
                                      for p in v)
                              and v[0][0] == 0 and all(a[0] < b[0] for a, b in zip(v, v[1:]))), REQUIRED)},
}
# track: what `train` and `sweep` log to, as their --mlflow and --tensorboard flags do
# (mlflow: true for the default URI, or a tracking URI); a flag on the command line wins.
TRACK = {
    "mlflow": (("true, false or a tracking URI", lambda v: isinstance(v, (bool, str)) or v is None), False),
    "tensorboard": (BOOL, False),
}
TOP_LEVEL = {"name": (NAME, REQUIRED), "seed": (NON_NEGATIVE_INT, 0), "track": (MAPPING_OR_NULL, None)}


def _fields(values, rules, path, source):
    """Check `values` (a dict) against `rules`; return a copy with defaults filled."""
    where = f"{source}: {path}" if path else source
    if not isinstance(values, dict):
        raise CnnrunError(f"{where}: expected a mapping of keys, got {values!r}")
    unknown = sorted(set(values) - set(rules))
    if unknown:
        raise CnnrunError(f"{source}: {path + '.' if path else ''}{unknown[0]}: unknown key; "
                          f"expected one of {', '.join(rules)}")
    out = {}
    for key, ((what, check), default) in rules.items():
        key_path = f"{path}.{key}" if path else key
        if key not in values:
            if default is REQUIRED:
                raise CnnrunError(f"{source}: {key_path}: missing; expected {what}")
            out[key] = copy.deepcopy(default)
        elif not check(values[key]):
            raise CnnrunError(f"{source}: {key_path}: expected {what}, got {values[key]!r}")
        else:
            out[key] = values[key]
    return out


def _layer(entry, path, source):
    """`relu` or `{conv: {filters: 8, ...}}` -> `{"conv": {...all arguments...}}`."""
    if isinstance(entry, str):
        kind, args = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        kind, args = next(iter(entry.items()))
        args = {} if args is None else args
    else:
        raise CnnrunError(f"{source}: {path}: expected a layer name or `name: {{arguments}}`, got {entry!r}")
    if kind not in LAYERS:
        raise CnnrunError(f"{source}: {path}: unknown layer {kind!r}; known: {', '.join(LAYERS)}")
    layer = LAYERS[kind]
    rules = {}
    for name, p in inspect.signature(layer).parameters.items():  # the rules sit on the layer class
        if name not in layer.args:
            raise CnnrunError(f"{source}: {path}.{kind}.{name}: the layer declares no rule for this "
                              f"argument (a bug in cnnrun: add it to {layer.__name__}.args)")
        rules[name] = (layer.args[name], REQUIRED if p.default is inspect.Parameter.empty else p.default)
    fields = _fields(args, rules, f"{path}.{kind}", source)
    for name, value in fields.items():  # a residual block's lists of layers, checked as a network's
        if layer.args[name] in (LAYER_LIST, SHORTCUT) and isinstance(value, list):
            fields[name] = [_layer(entry, f"{path}.{kind}.{name}[{j}]", source) for j, entry in enumerate(value)]
    return {kind: fields}


def _schedule(train, source, path="train.schedule"):
    """`train.schedule` (or the schedule at `path`) checked against its name's rules, defaults filled."""
    settings = dict(train["schedule"])
    name = settings.pop("name", None)
    if name not in SCHEDULE_RULES:
        raise CnnrunError(f"{source}: {path}.name: expected one of {', '.join(SCHEDULE_RULES)}, got {name!r}")
    settings = {"name": name, **_fields(settings, SCHEDULE_RULES[name], path, source)}
    if name == "cyclic" and settings["peak_epoch"] is None:
        settings["peak_epoch"] = 0.4 * train["epochs"]
    if name == "cyclic" and settings["peak_epoch"] >= train["epochs"]:
        raise CnnrunError(f"{source}: {path}.peak_epoch: {settings['peak_epoch']} must come before the "
                          f"last epoch ({train['epochs']})")
    if name == "cosine" and settings["warmup_epochs"] >= train["epochs"]:
        raise CnnrunError(f"{source}: {path}.warmup_epochs: {settings['warmup_epochs']} leaves no epoch "
                          f"for the cosine (train.epochs is {train['epochs']})")
    return settings


def validate(raw, source="config"):
    """Check a parsed config; return it resolved (defaults filled, layers in full)."""
    if not isinstance(raw, dict):
        raise CnnrunError(f"{source}: expected a mapping with sections {', '.join(SECTIONS)}")
    all_rules = dict(TOP_LEVEL)
    all_rules.update({s: (("a mapping", lambda v: isinstance(v, dict)), REQUIRED) for s in SECTIONS})
    config = _fields(raw, all_rules, "", source)
    for section, rules in SECTIONS.items():
        config[section] = _fields(config[section], rules, section, source)
    train = config["train"]
    if train["optimizer"] not in ("sgd", "rmsprop") and train["momentum"]:
        raise CnnrunError(f"{source}: train.momentum: applies to optimizers 'sgd' and 'rmsprop' only "
                          f"(Adam keeps its own moving averages); remove it or set it to 0")
    if train["nesterov"] and (train["optimizer"] != "sgd" or not train["momentum"]):
        raise CnnrunError(f"{source}: train.nesterov: needs optimizer 'sgd' with a momentum above 0")
    if config["data"]["augment"] is not None:
        config["data"]["augment"] = _fields(config["data"]["augment"], AUGMENT, "data.augment", source)
    if train["schedule"] is not None:
        train["schedule"] = _schedule(train, source)
    for key in ("select", "early_stop"):
        if train[key] is not None and not config["data"]["validation"]:
            raise CnnrunError(f"{source}: train.{key}: needs a validation split; set data.validation to the "
                              f"number of training images to hold out, e.g. 5000")
    if train["select"] is not None:
        train["select"] = _fields(train["select"], SELECT, "train.select", source)
        attack = train["select"]["attack"]
        if train["select"]["metric"] == "val_robust_acc" and attack is None:
            raise CnnrunError(f"{source}: train.select.attack: val_robust_acc needs an attack, "
                              f"e.g. {{method: pgd, eps: 0.3, steps: 10}}")
        if attack is not None:
            train["select"]["attack"] = _fields(attack, SELECT_ATTACK, "train.select.attack", source)
    if train["early_stop"] is not None:
        train["early_stop"] = _fields(train["early_stop"], EARLY_STOP, "train.early_stop", source)
    if config["train"]["adversarial"] is not None:
        config["train"]["adversarial"] = _fields(config["train"]["adversarial"], ADVERSARIAL,
                                                 "train.adversarial", source)
    adversarial = config["train"]["adversarial"]
    if adversarial is not None and adversarial["eps_schedule"] is not None:
        if adversarial["warmup"]:
            raise CnnrunError(f"{source}: train.adversarial: warmup and eps_schedule both ramp eps; keep one")
        adversarial["eps_schedule"] = _schedule(dict(config["train"], schedule=adversarial["eps_schedule"]), source,
                                                "train.adversarial.eps_schedule")
    if config["track"] is not None:
        config["track"] = _fields(config["track"], TRACK, "track", source)
    config["model"]["layers"] = [_layer(entry, f"model.layers[{i}]", source)
                                 for i, entry in enumerate(config["model"]["layers"])]
    return config


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-3` as a number as YAML 1.2 does (YAML 1.1, and so
    plain PyYAML, reads a number without a dot as a string)."""


YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                 list("-+0123456789."))


def parse_yaml(text_or_file):
    """YAML text (or an open file) -> Python values, safely (no objects, no code)."""
    return yaml.load(text_or_file, Loader=YamlLoader)


def read_yaml(path, what="config file"):
    """A YAML file's content (safely parsed); a missing, unreadable or invalid file is one error
    naming it, with the line and column of a syntax error."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_yaml(f)
    except FileNotFoundError:
        raise CnnrunError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise CnnrunError(f"{path}: is a directory, not a {what}") from None
    except UnicodeDecodeError:
        raise CnnrunError(f"{path}: not a text file, so not a {what}") from None
    except OSError as e:
        raise CnnrunError(f"{path}: cannot read the {what} ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CnnrunError(f"{path}: invalid YAML{at}: {getattr(e, 'problem', None) or e}") from None


# The configs that ship inside the package (the repository's configs/ is a link to them).
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def shipped_configs():
    """`{name: path}` of the configs shipped with cnnrun (net1 ... robust-trades, study)."""
    if not os.path.isdir(SHIPPED_DIR):
        return {}
    return {f[:-5]: os.path.join(SHIPPED_DIR, f) for f in sorted(os.listdir(SHIPPED_DIR)) if f.endswith(".yaml")}


def find_config(path):
    """A config given as a file path, or by the name of a shipped config (`net2`,
    `net2.yaml`): the path of the file to read. A path that exists always wins."""
    path = str(path)
    if os.path.exists(path):
        return path
    shipped = shipped_configs()
    name = os.path.basename(path)[:-5] if path.endswith(".yaml") else path
    if name in shipped and (os.sep not in path or path == os.path.join("configs", name + ".yaml")):
        return shipped[name]
    if os.sep not in path and not path.endswith((".yaml", ".yml")):
        raise CnnrunError(f"{path}: no such config file, nor a shipped config; shipped: {', '.join(shipped)} "
                          f"(`cnnrun configs` lists them)")
    return path


def load_config(path):
    """Read and validate a YAML config file, given by its path or a shipped config's name."""
    path = find_config(path)
    return validate(read_yaml(path), str(path))


def _key_path(key):
    """`"model.layers[0].conv.filters"` -> `["model", "layers", 0, "conv", "filters"]`."""
    parts = []
    for part in key.split("."):
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)", part)
        if not match:
            return None
        parts.append(match.group(1))
        parts += [int(i) for i in re.findall(r"\d+", match.group(2))]
    return parts


def apply_override(config, assignment, source="--set"):
    """`"train.lr=0.05"` -> a new validated config with that value (parsed as YAML).

    The key is a dotted path; a layer is reached by its index in the layer list:
    `model.layers[0].conv.filters=4`, or replaced whole: `model.layers[2]=relu`.
    """
    key, value = parse_assignment(assignment, source)
    return set_value(config, key, value, source, f"{source} {assignment!r}")


def parse_assignment(assignment, source="--set"):
    """`"train.lr=0.05"` -> `("train.lr", 0.05)`: a key path and its value parsed as YAML
    (what `--set` takes, in `train` and `sweep` alike)."""
    key, sep, text = assignment.partition("=")
    if not sep or not _key_path(key):
        raise CnnrunError(f"{source} {assignment!r}: expected KEY=VALUE, e.g. train.lr=0.05 "
                          f"or model.layers[0].conv.filters=4")
    try:
        return key, parse_yaml(text)
    except yaml.YAMLError:
        raise CnnrunError(f"{source} {assignment!r}: the value is not valid YAML") from None


def set_value(config, key, value, source="--set", shown=None):
    """A new validated config with the value at dotted `key` (see `apply_override`) replaced.
    Errors start with `source` (`shown` for a key path that does not exist)."""
    parts, shown = _key_path(key), shown or source
    if not parts:
        raise CnnrunError(f"{shown}: {key!r} is not a key path like train.lr or model.layers[0].conv.filters")
    raw = copy.deepcopy(config)
    node = raw
    for depth, part in enumerate(parts):
        where = key if depth == len(parts) - 1 else ".".join(map(str, parts[:depth + 1]))
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                size = f"has {len(node)} entries" if isinstance(node, list) else "is not a list"
                raise CnnrunError(f"{shown}: {where}: no such entry (the list {size})")
        elif not isinstance(node, dict) or (depth < len(parts) - 1 and part not in node):
            raise CnnrunError(f"{shown}: {where}: no such section")
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]
    return validate(raw, f"{source} {key}")


def layer_specs(config):
    """The config's layers as `[(kind, kwargs), ...]` for `Network`."""
    return [next(iter(entry.items())) for entry in config["model"]["layers"]]


def available_memory():
    """Bytes of memory available to a new allocation (MemAvailable on Linux, else all RAM)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def build_network(config, dtype=np.float32, seed=None, batch_size=None, engine="fast"):
    """The config's network with freshly initialised weights (seeded by the config),
    on the fast engine or the reference one (`engine="reference"`, nn/reference.py).

    Before any parameter is allocated, the memory that training at `batch_size`
    (default: the config's) would need is estimated; more than the machine has
    available is a one-line error naming the largest layer.
    """
    seed = config["seed"] if seed is None else seed
    batch_size = config["train"]["batch_size"] if batch_size is None else batch_size
    return Network(layer_specs(config), config["model"]["input_shape"], seed=seed, dtype=dtype,
                   batch_size=batch_size, memory_limit=available_memory(), engine=engine)
