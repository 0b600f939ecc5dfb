"""Interval bounds: sound (every point of the box lands inside its layer's bounds, and
no margin at any sampled point falls below its bound), equal to interval arithmetic as
its definition, exact at eps 0; `certify` in the shape of `attack`."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun.cli import main
from cnnrun.errors import CnnrunError
from cnnrun.nn import Network
from cnnrun.robustness import bounds

# Every kind with an interval bound, in one network: images, a block with a shortcut,
# batch norm (negative gammas too), the monotone activations, pools, and vectors.
SPECS = [("normalize", {"mean": 0.3, "std": 0.4}), ("conv", {"filters": 4, "kernel": 3, "padding": 1}),
         ("batch_norm", {}), "relu",
         ("residual", {"layers": [{"conv": {"filters": 4, "kernel": 3, "stride": 2, "padding": 1}},
                                  {"batch_norm": {}}, {"leaky_relu": {"slope": 0.1}}],
                       "shortcut": [{"avgpool": {"kernel": 2, "stride": 2, "padding": 1}}]}),
         ("maxpool", {"kernel": 2, "stride": 1}), "tanh", ("dropout", {"rate": 0.5}), "flatten",
         ("dense", {"units": 6}), "sigmoid", ("dense", {"units": 4}), "softmax"]


def network(dtype=np.float64):
    net = Network(SPECS, (1, 7, 7), seed=3, dtype=dtype)
    rng = np.random.default_rng(5)
    for name, b in net.named_buffers().items():  # running statistics away from 0 and 1
        b[...] = rng.uniform(0.2, 2, b.shape) if name.endswith("var") else rng.normal(0, 0.5, b.shape)
    for name, p in net.named_parameters().items():
        if name.endswith("gamma"):
            p[...] = rng.normal(0, 1, p.shape)  # of either sign
    return net


def test_every_point_of_the_box_lands_inside_every_layers_bounds(rng):
    net = network()
    x = rng.random((3, 1, 7, 7))
    lower, upper = bounds.input_box(x, 0.05)
    boxes = [(lower, upper)]
    for layer in net.layers[:-1]:
        boxes.append(bounds.propagate([layer], *boxes[-1]))
    for _ in range(200):
        h = lower + (upper - lower) * rng.random(x.shape)
        if _ < 8:  # corners too
            h = np.where(rng.random(x.shape) < 0.5, lower, upper)
        for layer, (low, high) in zip(net.layers[:-1], boxes[1:]):
            h = layer.forward(h)
            assert np.all(h >= low - 1e-12) and np.all(h <= high + 1e-12), layer.kind


def test_no_margin_at_any_sampled_point_falls_below_its_bound(rng):
    net = network()
    x, labels = rng.random((8, 1, 7, 7)), rng.integers(0, 4, 8)
    margins = bounds.ibp_margins(net, x, labels, 0.03)
    assert np.all(margins[np.arange(8), labels] == 0)
    lower, upper = bounds.input_box(x, 0.03)
    for _ in range(200):
        z = net.logits(lower + (upper - lower) * rng.random(x.shape))
        assert np.all(z[np.arange(8), labels][:, None] - z >= margins - 1e-12)


def test_affine_bounds_equal_interval_arithmetic_as_its_definition(rng):
    net = network()
    x = rng.random((3, 1, 7, 7))
    lower, upper = bounds.input_box(x, 0.1)
    h = (lower, upper)
    for layer in net.layers[:-1]:
        ours, reference = bounds.propagate([layer], *h), bounds.reference_bounds(layer, *h)
        np.testing.assert_allclose(ours[0], reference[0], rtol=1e-12, atol=1e-12, err_msg=layer.kind)
        np.testing.assert_allclose(ours[1], reference[1], rtol=1e-12, atol=1e-12, err_msg=layer.kind)
        h = ours


def test_at_eps_zero_the_bounds_are_the_outputs_and_certified_means_correct(rng):
    net = network()
    x, labels = rng.random((10, 1, 7, 7)), rng.integers(0, 4, 10)
    lower, upper = bounds.propagate(net.layers[:-1], x, x)
    np.testing.assert_allclose(lower, net.logits(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(upper, net.logits(x), rtol=1e-12, atol=1e-12)
    margins = bounds.ibp_margins(net, x, labels, 0.0)
    z = net.logits(x)
    np.testing.assert_allclose(margins, z[np.arange(10), labels][:, None] - z, atol=1e-12)
    correct = z.argmax(axis=1) == labels
    np.testing.assert_array_equal(bounds.certified(net, x, labels, margins), correct)


def test_the_bounds_widen_with_eps_and_certificates_only_fall(rng):
    net = network()
    x = rng.random((20, 1, 7, 7))
    labels = net.logits(x).argmax(axis=1)
    counts = [bounds.certified(net, x, labels, bounds.ibp_margins(net, x, labels, eps)).sum()
              for eps in (0, 0.001, 0.01, 0.1)]
    assert counts[0] == 20 and counts == sorted(counts, reverse=True)


def test_layers_without_a_sound_bound_are_one_line():
    net = Network([("conv", {"filters": 2, "kernel": 3}), ("instance_norm", {}), "flatten", ("dense", {"units": 3}),
                   "softmax"], (1, 5, 5))
    with pytest.raises(CnnrunError, match="instance_norm: divides by each sample's own spread"):
        bounds.ibp_margins(net, np.zeros((1, 1, 5, 5), np.float32), np.array([0]), 0.1)
    net = Network(["flatten", ("dense", {"units": 3}), ("leaky_relu", {"slope": -0.5}), ("dense", {"units": 3}),
                   "softmax"], (1, 2, 2))
    with pytest.raises(CnnrunError, match="leaky_relu with slope -0.5 < 0 is not monotone"):
        bounds.ibp_margins(net, np.zeros((1, 1, 2, 2), np.float32), np.array([0]), 0.1)


@pytest.mark.slow
def test_certify_reports_in_the_shape_of_attack_and_writes_its_tables(setup):
    result = CliRunner().invoke(main, ["train", setup["config"], "--data-dir", setup["data"], "--runs-dir",
                                       setup["runs"], "--quiet"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["certify", "--runs-dir", setup["runs"], "--eps", "0,0.01", "--json"])
    assert result.exit_code == 1 and "instance_norm" in result.output  # the tiny config normalises per sample
    assert result.output.count("\n") == 1
    path = setup["tmp"] / "plain.yaml"
    from idx import write_config
    write_config(path, name="plain", model={"input_shape": [1, 28, 28], "layers": [
        {"conv": {"filters": 3, "kernel": 3, "stride": 2}}, "relu", "flatten", {"dense": {"units": 10}}, "softmax"]})
    assert CliRunner().invoke(main, ["train", str(path), "--data-dir", setup["data"], "--runs-dir", setup["runs"],
                                     "--quiet"]).exit_code == 0
    from cnnrun import runs
    (plain,) = [r for r in runs.list_runs(setup["runs"]) if r.endswith("-plain")]
    result = CliRunner().invoke(main, ["certify", plain, "--eps", "0,0.01", "--json", "--limit", "30"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [(r["method"], r["eps"], r["n"]) for r in report["results"]] == [("ibp", 0.0, 30), ("ibp", 0.01, 30)]
    assert report["results"][0]["accuracy"] >= report["results"][1]["accuracy"]
    with open(f"{report['folder']}/per_image.csv") as f:
        assert f.readline().strip() == "index,label,ibp@0,ibp@0 margin,ibp@0.01,ibp@0.01 margin"
    result = CliRunner().invoke(main, ["certify", plain, "--method", "crown"])
    assert result.exit_code == 1 and result.output.count("\n") == 1


def test_the_api_gives_the_certified_accuracy_which_at_eps_zero_is_the_clean_one(rng):
    from cnnrun import api
    net = network()
    x, labels = rng.random((12, 1, 7, 7)), rng.integers(0, 4, 12)
    clean = float(np.mean(net.logits(x).argmax(axis=1) == labels))
    assert api.certified_accuracy(net, x, labels, 0.0) == clean
    assert api.certified_accuracy(net, x, labels, 0.2) <= clean
