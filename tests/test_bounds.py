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
    result = CliRunner().invoke(main, ["certify", plain, "--method", "ibp,crown-ibp,crown", "--eps", "0.01", "--json",
                                       "--limit", "30"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    accuracy = {r["method"]: r["accuracy"] for r in report["results"]}
    assert list(accuracy) == ["ibp", "crown-ibp", "crown", "best"] and report["ibp_layers"] == []
    assert accuracy["best"] >= max(accuracy["ibp"], accuracy["crown-ibp"], accuracy["crown"])
    result = CliRunner().invoke(main, ["certify", plain, "--method", "deepz"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "ibp, crown-ibp, crown" in result.output


def test_the_api_gives_the_certified_accuracy_which_at_eps_zero_is_the_clean_one(rng):
    from cnnrun import api
    net = network()
    x, labels = rng.random((12, 1, 7, 7)), rng.integers(0, 4, 12)
    clean = float(np.mean(net.logits(x).argmax(axis=1) == labels))
    assert api.certified_accuracy(net, x, labels, 0.0) == clean
    assert api.certified_accuracy(net, x, labels, 0.2) <= clean


# --- CROWN ---------------------------------------------------------------------------------

RELU_NET = [("normalize", {"mean": 0.3, "std": 0.4}), ("conv", {"filters": 4, "kernel": 3, "padding": 1}),
            ("batch_norm", {}), "relu", ("conv", {"filters": 5, "kernel": 3, "stride": 2}), "relu",
            ("avgpool", {"kernel": 2, "stride": 1}), "flatten", ("dense", {"units": 9}), "relu",
            ("dropout", {"rate": 0.5}), ("dense", {"units": 4}), "softmax"]


def relu_network(specs=RELU_NET, shape=(1, 9, 9), seed=3):
    net = Network(specs, shape, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(5)
    for name, b in net.named_buffers().items():
        b[...] = rng.uniform(0.2, 2, b.shape) if name.endswith("var") else rng.normal(0, 0.5, b.shape)
    return net


@pytest.mark.parametrize("method", ["crown-ibp", "crown"])
@pytest.mark.parametrize("kind", ["relu", "every"])
def test_crown_margins_are_never_above_a_sampled_margin(rng, method, kind):
    net, shape = (relu_network(), (1, 9, 9)) if kind == "relu" else (network(), (1, 7, 7))
    x, labels = rng.random((6, *shape)), rng.integers(0, 4, 6)
    margins, fallback = bounds.margins(net, x, labels, 0.04, method)
    assert fallback == ([] if kind == "relu" else ["4.residual", "5.maxpool", "6.tanh", "10.sigmoid"])
    lower, upper = bounds.input_box(x, 0.04)
    for i in range(300):
        point = lower + (upper - lower) * rng.random(x.shape)
        if i < 20:
            point = np.where(rng.random(x.shape) < 0.5, lower, upper)
        z = net.logits(point)
        assert np.all(z[np.arange(6), labels][:, None] - z >= margins - 1e-10)


@pytest.mark.parametrize("method", ["crown-ibp", "crown"])
def test_crown_at_eps_zero_gives_the_exact_margins_and_widens_with_eps(rng, method):
    net = relu_network()
    x, labels = rng.random((5, 1, 9, 9)), rng.integers(0, 4, 5)
    z = net.logits(x)
    np.testing.assert_allclose(bounds.margins(net, x, labels, 0.0, method)[0], z[np.arange(5), labels][:, None] - z,
                               atol=1e-10)
    previous = None
    for eps in (0.001, 0.01, 0.05):
        m = bounds.margins(net, x, labels, eps, method)[0]
        if previous is not None:
            assert np.all(m <= previous + 1e-10)
        previous = m


def test_crown_is_tighter_than_ibp_on_relu_networks(rng):
    net = relu_network()
    x = rng.random((10, 1, 9, 9))
    labels = net.logits(x).argmax(axis=1)
    ibp = bounds.margins(net, x, labels, 0.02, "ibp")[0]
    for method in ("crown-ibp", "crown"):
        crown = bounds.margins(net, x, labels, 0.02, method)[0]
        others = np.arange(4) != labels[:, None]
        assert np.mean(crown[others] > ibp[others]) > 0.9


def ibp_boxes(layers, domain):
    """The input box of each of `layers`, then the last one's output box."""
    boxes = [domain]
    for layer in layers:
        boxes.append(bounds.propagate([layer], *boxes[-1]))
    return boxes


def test_crowns_intermediate_boxes_hold_every_sampled_point_and_tighten_ibps_unstable_neurons(rng):
    net = relu_network()
    x = rng.random((3, 1, 9, 9))
    domain = bounds.input_box(x, 0.01)  # some neurons stable, some not
    layers = net.layers[:9]  # up to the dense layer before the third relu: two relus inside
    boxes = ibp_boxes(layers, domain)
    low, up = bounds.crown_box(layers, bounds.relaxations(layers, boxes), domain, boxes[-1])
    for _ in range(200):
        h = domain[0] + (domain[1] - domain[0]) * rng.random(x.shape)
        for layer in layers:
            h = layer.forward(h)
        assert np.all(h >= low - 1e-10) and np.all(h <= up + 1e-10)
    unstable = (boxes[-1][0] < 0) & (boxes[-1][1] > 0)
    assert 5 < unstable.sum() < unstable.size
    assert np.all(low[~unstable] == boxes[-1][0][~unstable]) and np.all(up[~unstable] == boxes[-1][1][~unstable])
    assert np.mean((up - low)[unstable] < (boxes[-1][1] - boxes[-1][0])[unstable]) > 0.5


@pytest.mark.parametrize("budget", [2 ** 25, 700])  # all pairs at once, or a few at a time
def test_crown_box_gives_each_unstable_neuron_the_bound_of_every_row_carried_back_at_once(rng, monkeypatch, budget):
    monkeypatch.setattr(bounds, "CROWN_BUDGET", budget)
    net = relu_network()
    x = rng.random((4, 1, 9, 9))
    domain = bounds.input_box(x, 0.08)
    layers = net.layers[:9]
    boxes = ibp_boxes(layers, domain)
    low, up = bounds.crown_box(layers, bounds.relaxations(layers, boxes), domain, boxes[-1])
    eye = np.eye(9)[None].repeat(4, axis=0)                        # every neuron of every image, one by one
    lowest = bounds.concretize(*bounds.crown_back(layers, bounds.relaxations(layers, boxes), eye, np.zeros((4, 9))), *domain)
    highest = -bounds.concretize(*bounds.crown_back(layers, bounds.relaxations(layers, boxes), -eye, np.zeros((4, 9))), *domain)
    unstable = (boxes[-1][0] < 0) & (boxes[-1][1] > 0)
    np.testing.assert_allclose(low[unstable], np.maximum(lowest, boxes[-1][0])[unstable], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(up[unstable], np.minimum(highest, boxes[-1][1])[unstable], rtol=1e-12, atol=1e-12)


def test_crown_carries_rows_back_through_each_affine_layer_as_its_matrix_would(rng):
    net = relu_network()
    for layer, in_shape, out_shape in zip(net.layers, net.shapes, net.shapes[1:]):
        if layer.kind not in bounds.CROWN_AFFINE:
            continue
        A = rng.standard_normal((3, *out_shape))
        back, offset = bounds._affine_back(layer, A)
        g = rng.random((1, *in_shape))
        out = layer.replica().forward(g)
        np.testing.assert_allclose((A * out).reshape(3, -1).sum(axis=1),
                                   (back * g).reshape(3, -1).sum(axis=1) + offset, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_the_strongest_attacks_never_push_a_margin_below_any_methods_bound(rng):
    from cnnrun.robustness import attacks
    net = relu_network()
    x = rng.random((12, 1, 9, 9))
    labels = net.logits(x).argmax(axis=1)
    y = np.eye(4)[labels]
    eps = 0.03
    found = [attacks.attack(net, x, y, method, eps, queries=300) for method in ("apgd-ce", "apgd-t", "square")]
    for method in ("ibp", "crown-ibp", "crown"):
        margins = bounds.margins(net, x, labels, eps, method)[0]
        for x_adv in found:
            assert np.abs(x_adv - x).max() <= eps + 1e-12
            z = net.logits(x_adv)
            assert np.all(z[np.arange(12), labels][:, None] - z >= margins - 1e-10)


@pytest.mark.parametrize("method, intermediate", [("crown", "crown"), ("crown-ibp", "ibp")])
def test_crown_equals_its_reference_written_as_matrices(rng, method, intermediate):
    net = Network(["flatten", ("dense", {"units": 7}), "relu", ("dense", {"units": 6}), "relu", ("dense", {"units": 5}),
                   "relu", ("dense", {"units": 4}), "softmax"], (1, 3, 3), seed=0, dtype=np.float64)
    dense = [layer for layer in net.layers if layer.kind == "dense"]
    for layer in dense:
        layer.params["b"][...] = rng.normal(0, 0.3, layer.params["b"].shape)
    x, labels = rng.random((7, 1, 3, 3)), rng.integers(0, 4, 7)
    for eps in (0.0, 0.03, 0.1, 0.3):
        fast = bounds.margins(net, x, labels, eps, method)[0]
        reference = bounds.reference_crown([d.params["W"] for d in dense], [d.params["b"] for d in dense],
                                           x.reshape(7, -1), labels, eps, intermediate)
        np.testing.assert_allclose(fast, reference, rtol=1e-12, atol=1e-12)
