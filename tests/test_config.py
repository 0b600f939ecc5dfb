"""Config files: defaults, and one clear line for every kind of mistake."""

import os

import pytest
import yaml

from cnnrun.config import apply_override, build_network, layer_specs, load_config, validate
from cnnrun.errors import CnnrunError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def net2():
    with open(os.path.join(ROOT, "configs/net2.yaml")) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("i,epochs,decay,layers", [(1, 50, 0.985, 7), (2, 100, 0.992, 11),
                                                   (3, 150, 0.995, 13), (4, 200, 0.997, 19)])
def test_shipped_configs_follow_the_original_study(i, epochs, decay, layers):
    c = load_config(os.path.join(ROOT, f"configs/net{i}.yaml"))
    assert c["name"] == f"net{i}" and len(c["model"]["layers"]) == layers
    assert c["train"] == dict(epochs=epochs, batch_size=128, lr=0.01, lr_decay=decay,
                              optimizer="sgd", momentum=0.0, nesterov=False, weight_decay=None,
                              weight_decay_params="all", schedule=None, select=None, early_stop=None, eval_every=5,
                              loss="categorical_crossentropy",
                              adversarial=None)
    assert layer_specs(c)[-1] == ("softmax", {})


def test_layer_defaults_are_filled_in():
    c = validate(net2())
    assert c["model"]["layers"][0] == {"conv": dict(filters=8, kernel=3, stride=1, padding=1,
                                                    bias=True, init="he", init_gain=0.05)}
    assert c["model"]["layers"][1] == {"instance_norm": dict(eps=1e-5, affine=True)}
    assert c["model"]["layers"][2] == {"maxpool": dict(kernel=2, stride=None, padding=0)}
    assert c["model"]["layers"][3] == {"relu": {}}
    assert validate(c) == c  # a resolved config validates to itself


def with_change(change):
    raw = net2()
    change(raw)
    return raw


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(colour="blue"), r"config: colour: unknown key"),
    (lambda c: c["train"].update(nesterovv=True), r"config: train.nesterovv: unknown key"),
    (lambda c: c["train"].update(nesterov=True), r"train.nesterov: needs optimizer 'sgd' with a momentum above 0"),
    (lambda c: c["train"].update(schedule={"name": "cosinus"}),
     r"train.schedule.name: expected one of constant, exponential, step, multistep, cosine, onecycle, cyclic, "
     r"piecewise, got 'cosinus'"),
    (lambda c: c["train"].update(schedule={"name": "multistep", "milestones": [30, 10]}),
     r"train.schedule.milestones: expected a list of epochs in increasing order, got \[30, 10\]"),
    (lambda c: c["train"].update(schedule={"name": "cosine", "warmup": 1}),
     r"train.schedule.warmup: unknown key; expected one of warmup_epochs, min_lr"),
    (lambda c: c["train"].update(schedule={"name": "cosine", "warmup_epochs": 100}),
     r"train.schedule.warmup_epochs: 100 leaves no epoch for the cosine"),
    (lambda c: c["train"].update(schedule={"name": "piecewise", "points": [[0, 0.1], [5, 0.2], [3, 0]]}),
     r"train.schedule.points: expected a list of \[epoch, rate\] pairs, the epochs increasing from 0"),
    (lambda c: c["train"].update(weight_decay=-1), r"train.weight_decay: expected a non-negative number or null"),
    (lambda c: c["train"].update(momentum=1), r"train.momentum: expected a number in \[0, 1\), got 1"),
    (lambda c: c["train"].update(lr="fast"), r"config: train.lr: expected a positive number, got 'fast'"),
    (lambda c: c["train"].update(batch_size=0), r"train.batch_size: expected a positive integer, got 0"),
    (lambda c: c["train"].update(epochs=2.5), r"train.epochs: expected a positive integer, got 2.5"),
    (lambda c: c["train"].update(lr_decay=1.5), r"train.lr_decay: expected a number in \(0, 1\]"),
    (lambda c: c.pop("train"), r"config: train: missing; expected a mapping"),
    (lambda c: c["model"].pop("layers"), r"model.layers: missing"),
    (lambda c: c["model"].update(input_shape=[1, 0, 28]), r"model.input_shape: expected a list of positive"),
    (lambda c: c["model"]["layers"].insert(0, "dropot"), r"model.layers\[0\]: unknown layer 'dropot'"),
    (lambda c: c["model"]["layers"][0]["conv"].update(filters=-8),
     r"model.layers\[0\].conv.filters: expected a positive integer, got -8"),
    (lambda c: c["model"]["layers"][0]["conv"].update(kernel=[3, 3, 3]),
     r"model.layers\[0\].conv.kernel: expected a positive integer or a pair"),
    (lambda c: c["model"]["layers"][0]["conv"].update(dilation=2),
     r"model.layers\[0\].conv.dilation: unknown key; expected one of filters, kernel"),
    (lambda c: c["model"]["layers"][0]["conv"].pop("filters"), r"model.layers\[0\].conv.filters: missing"),
    (lambda c: c["train"].update(adversarial={"eps": 2}), r"train.adversarial.eps: expected a number in \[0, 1\]"),
    (lambda c: c["train"].update(adversarial={"eps": 0.3, "method": "cw"}),
     r"train.adversarial.method: expected 'fgsm' or 'pgd' or 'trades' or 'ibp', got 'cw'"),
    (lambda c: c["train"].update(adversarial={"method": "fgsm"}), r"train.adversarial.eps: missing"),
    (lambda c: c["model"]["layers"].__setitem__(1, {"instance_norm": {"affine": "yes"}}),
     r"model.layers\[1\].instance_norm.affine: expected true or false"),
    (lambda c: c["model"]["layers"][0]["conv"].update(init="xavier"),
     r"model.layers\[0\].conv.init: expected 'he' or 'glorot', got 'xavier'"),
    (lambda c: c["train"].update(optimizer="adam", momentum=0.9),
     r"train.momentum: applies to optimizers 'sgd' and 'rmsprop' only"),
    (lambda c: c["train"].update(lr=float("nan")), r"train.lr: expected a positive number, got nan"),
    (lambda c: c["train"].update(lr=float("inf")), r"train.lr: expected a positive number, got inf"),
    (lambda c: c.update(name="../escape"), r"config: name: expected one plain file-name component"),
    (lambda c: c.update(name="a/b"), r"name: expected one plain file-name component"),
    (lambda c: c.update(name=".."), r"name: expected one plain file-name component"),
    (lambda c: c.update(name="x" * 101), r"name: expected one plain file-name component"),
    (lambda c: c.update(name="net 2"), r"name: expected one plain file-name component"),
    (lambda c: c["data"].update(dir="a\0b"), r"data.dir: expected a path"),
])
def test_config_mistakes_name_the_key_path_and_expectation(change, message):
    with pytest.raises(CnnrunError, match=message):
        validate(with_change(change))


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(CnnrunError, match="nope.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: net\nmodel: [unclosed\n")
    with pytest.raises(CnnrunError, match=r"bad.yaml: invalid YAML at line \d+"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(with_change(lambda c: c["data"].update(train_limit=-1))))
    with pytest.raises(CnnrunError, match=r"wrong.yaml: data.train_limit: expected a positive integer or null"):
        load_config(wrong)


def test_override_sets_a_dotted_key_and_is_validated():
    c = validate(net2())
    assert apply_override(c, "train.lr=0.05")["train"]["lr"] == 0.05
    assert apply_override(c, "data.train_limit=1000")["data"]["train_limit"] == 1000
    assert c["train"]["lr"] == 0.01  # the original is left alone
    with pytest.raises(CnnrunError, match="train.lr: expected a positive number"):
        apply_override(c, "train.lr=-1")
    with pytest.raises(CnnrunError, match="expected KEY=VALUE"):
        apply_override(c, "train.lr")
    with pytest.raises(CnnrunError, match="unknown key"):
        apply_override(c, "train.speed=3")


def test_override_reaches_a_layer_by_its_index():
    c = validate(net2())
    changed = apply_override(c, "model.layers[0].conv.filters=4")
    assert changed["model"]["layers"][0]["conv"]["filters"] == 4
    assert build_network(changed).named_parameters()["0.conv.W"].shape == (4, 1, 3, 3)
    assert apply_override(c, "model.layers[2]=relu")["model"]["layers"][2] == {"relu": {}}
    with pytest.raises(CnnrunError, match=r"model.layers\[0\].conv.filters: expected a positive integer"):
        apply_override(c, "model.layers[0].conv.filters=-1")
    with pytest.raises(CnnrunError, match=r"model.layers.40: no such entry \(the list has 11 entries\)"):
        apply_override(c, "model.layers[40].conv.filters=4")
    with pytest.raises(CnnrunError, match=r"model.layers.0.dense: no such section"):
        apply_override(c, "model.layers[0].dense.units=4")
    with pytest.raises(CnnrunError, match="expected KEY=VALUE"):
        apply_override(c, "model.layers[x]=relu")


def test_a_layer_argument_without_a_rule_is_a_clear_error(monkeypatch):
    from cnnrun.nn import layers
    monkeypatch.setattr(layers.Dense, "args", {k: v for k, v in layers.Dense.args.items() if k != "init_gain"})
    with pytest.raises(CnnrunError, match=r"model.layers\[9\].dense.init_gain: the layer declares no rule"):
        validate(net2())


def test_config_shape_errors_surface_at_build_time():
    raw = with_change(lambda c: c["model"].update(input_shape=[1, 2, 2]))
    with pytest.raises(CnnrunError, match=r"layer 6 \(maxpool\): input shape \(16, 1, 1\)"):
        build_network(validate(raw))


def test_every_shipped_config_loads_and_builds():
    from cnnrun.sweep import is_spec_file
    names = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                   if f.endswith(".yaml") and not is_spec_file(os.path.join(ROOT, "configs", f)))
    assert {"net1.yaml", "net2.yaml", "net3.yaml", "net4.yaml", "robust-pgd.yaml"} <= set(names)
    for name in names:
        config = load_config(os.path.join(ROOT, "configs", name))
        assert build_network(config).output_shape == (10,)


def test_adversarial_config_is_resolved_with_defaults():
    raw = net2()
    raw["train"]["adversarial"] = {"method": "pgd", "eps": 0.3}
    assert validate(raw)["train"]["adversarial"] == dict(method="pgd", eps=0.3, ratio=0.5, random_start=False,
                                                         step_size=None, steps=10, warmup=0, eps_schedule=None,
                                                         beta=6.0, kappa=0.5)
    assert load_config(os.path.join(ROOT, "configs/robust-pgd.yaml"))["train"]["adversarial"]["method"] == "pgd"


def test_a_number_written_without_a_dot_is_a_number(tmp_path):
    raw = net2()
    path = tmp_path / "sci.yaml"
    path.write_text(yaml.safe_dump(raw).replace("lr: 0.01", "lr: 1e-2"))
    assert "lr: 1e-2" in path.read_text()
    assert load_config(path)["train"]["lr"] == 0.01
    assert apply_override(validate(raw), "train.lr=5e-3")["train"]["lr"] == 0.005
