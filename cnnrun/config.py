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

import numpy as np
import yaml

from cnnrun.errors import CnnrunError
from cnnrun.nn.network import LAYERS, Network

# --- value checks: each returns True when the value is acceptable -------------


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_or_pair(minimum):
    def check(v):
        if _is_int(v):
            return v >= minimum
        return isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= minimum for x in v)
    return check


POSITIVE_INT = ("a positive integer", lambda v: _is_int(v) and v > 0)
NON_NEGATIVE_INT = ("a non-negative integer", lambda v: _is_int(v) and v >= 0)
POSITIVE_NUMBER = ("a positive number", lambda v: _is_number(v) and v > 0)
DECAY = ("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1)
BOOL = ("true or false", lambda v: isinstance(v, bool))
STRING = ("a string", lambda v: isinstance(v, str) and v != "")
SIZE = ("a positive integer or a pair [h, w] of them", _int_or_pair(1))
PADDING = ("a non-negative integer or a pair [h, w] of them", _int_or_pair(0))
SHAPE = ("a list of positive integers", lambda v: isinstance(v, list) and len(v) > 0
         and all(_is_int(x) and x > 0 for x in v))


def _optional(rule):
    what, check = rule
    return (f"{what} or null", lambda v: v is None or check(v))


def _choice(*options):
    return (" or ".join(repr(o) for o in options), lambda v: v in options)


# Section -> key -> (rule, default). A default of REQUIRED must be given.
REQUIRED = object()
SECTIONS = {
    "data": {
        "dataset": (STRING, "mnist"),
        "dir": (_optional(STRING), None),
        "train_limit": (_optional(POSITIVE_INT), None),
        "test_limit": (_optional(POSITIVE_INT), None),
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
        "optimizer": (_choice("sgd", "adam"), "sgd"),
        "momentum": (("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1), 0.0),  # sgd only
        "eval_every": (POSITIVE_INT, 5),
        "loss": (_choice("categorical_crossentropy"), "categorical_crossentropy"),
        "adversarial": ((("a mapping or null", lambda v: v is None or isinstance(v, dict))), None),
    },
}
# train.adversarial: adversarial training on a share `ratio` of every batch.
UNIT = ("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1)
ADVERSARIAL = {
    "method": (_choice("fgsm", "pgd"), "fgsm"),
    "eps": (UNIT, REQUIRED),
    "ratio": (("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1), 0.5),
    "random_start": (BOOL, False),
    "step_size": (_optional(POSITIVE_NUMBER), None),
    "steps": (POSITIVE_INT, 10),
    "warmup": (NON_NEGATIVE_INT, 0),
}
TOP_LEVEL = {"name": (STRING, REQUIRED), "seed": (NON_NEGATIVE_INT, 0)}

# Layer argument name -> rule; the allowed names come from each layer's constructor.
LAYER_ARGS = {
    "filters": POSITIVE_INT, "units": POSITIVE_INT, "kernel": SIZE,
    "stride": SIZE, "padding": PADDING, "bias": BOOL, "affine": BOOL,
    "eps": POSITIVE_NUMBER, "init": _choice("he", "glorot"), "init_gain": POSITIVE_NUMBER, "shape": SHAPE,
    "mean": ("a number", _is_number), "std": POSITIVE_NUMBER,
}


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
    signature = inspect.signature(LAYERS[kind].__init__)
    rules = {}
    for name, p in list(signature.parameters.items())[1:]:
        what, check = LAYER_ARGS[name]
        if name == "stride" and p.default is None:  # maxpool: the stride defaults to the kernel
            what, check = _optional((what, check))
        rules[name] = ((what, check), REQUIRED if p.default is inspect.Parameter.empty else p.default)
    return {kind: _fields(args, rules, f"{path}.{kind}", source)}


def validate(raw, source="config"):
    """Check a parsed config; return it resolved (defaults filled, layers in full)."""
    if not isinstance(raw, dict):
        raise CnnrunError(f"{source}: expected a mapping with sections {', '.join(SECTIONS)}")
    all_rules = dict(TOP_LEVEL)
    all_rules.update({s: (("a mapping", lambda v: isinstance(v, dict)), REQUIRED) for s in SECTIONS})
    config = _fields(raw, all_rules, "", source)
    for section, rules in SECTIONS.items():
        config[section] = _fields(config[section], rules, section, source)
    if config["train"]["adversarial"] is not None:
        config["train"]["adversarial"] = _fields(config["train"]["adversarial"], ADVERSARIAL,
                                                 "train.adversarial", source)
    config["model"]["layers"] = [_layer(entry, f"model.layers[{i}]", source)
                                 for i, entry in enumerate(config["model"]["layers"])]
    return config


def load_config(path):
    """Read and validate a YAML config file."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise CnnrunError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise CnnrunError(f"{path}: is a directory, not a config file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CnnrunError(f"{path}: invalid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    return validate(raw, str(path))


def apply_override(config, assignment, source="--set"):
    """`"train.lr=0.05"` -> a new validated config with that value (parsed as YAML)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise CnnrunError(f"{source} {assignment!r}: expected KEY=VALUE, e.g. train.lr=0.05")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise CnnrunError(f"{source} {assignment!r}: the value is not valid YAML") from None
    raw = copy.deepcopy(config)
    node, parts = raw, key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise CnnrunError(f"{source} {assignment!r}: {key}: no such section")
        node = node[part]
    node[parts[-1]] = value
    return validate(raw, f"{source} {key}")


def layer_specs(config):
    """The config's layers as `[(kind, kwargs), ...]` for `Network`."""
    return [next(iter(entry.items())) for entry in config["model"]["layers"]]


def build_network(config, dtype=np.float32, seed=None):
    """The config's network with freshly initialised weights (seeded by the config)."""
    seed = config["seed"] if seed is None else seed
    return Network(layer_specs(config), config["model"]["input_shape"], seed=seed, dtype=dtype)
