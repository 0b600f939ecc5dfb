"""Looking inside a network: attributions, Grad-CAM, feature maps, class pictures, the
loss landscape, and the `explain` / `landscape` verbs with their page."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun import explain, landscape, training
from cnnrun.cli import main
from cnnrun.nn.network import Network

from test_newcomer import CHROMIUM

SPECS = [("conv", {"filters": 4, "kernel": 3, "padding": 1}), "relu", ("maxpool", {"kernel": 2}),
         ("conv", {"filters": 6, "kernel": 3, "stride": 2}), "relu", "flatten", ("dense", {"units": 12}), "relu",
         ("dense", {"units": 5}), "softmax"]


def network(dtype=np.float64, seed=0, specs=SPECS, shape=(1, 12, 12)):
    return Network(specs, shape, seed=seed, dtype=dtype)


def images(n, shape=(1, 12, 12), seed=1):
    return np.random.default_rng(seed).random((n, *shape))


def test_saliency_is_the_logits_input_gradient_by_finite_differences():
    net, x = network(), images(1)[0]
    for target in range(5):
        grad = explain.saliency(net, x, target)
        h, numeric = 1e-6, np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            up, down = x.copy(), x.copy()
            up[idx] += h
            down[idx] -= h
            z = explain.logits_of(net, np.stack([up, down]))[:, target]
            numeric[idx] = (z[0] - z[1]) / (2 * h)
        assert np.allclose(grad, numeric, atol=1e-6)


def test_integrated_gradients_are_complete_within_one_percent_at_the_default_steps():
    net = network(np.float32)
    for x in images(6, seed=3):
        for target in range(5):
            ig = explain.integrated_gradients(net, x, target)
            z = explain.logits_of(net, np.stack([x, np.zeros_like(x)]))[:, target]
            assert abs(ig.sum() - (z[0] - z[1])) <= 0.01 * abs(z[0] - z[1]) + 1e-4


def test_integrated_gradients_with_one_step_are_the_midpoint_gradient_times_the_input():
    net, x = network(), images(1)[0]
    assert np.allclose(explain.integrated_gradients(net, x, 2, steps=1), x * explain.saliency(net, x / 2, 2))


def test_smoothgrad_with_no_noise_is_the_saliency_and_its_noise_is_seeded():
    net, x = network(), images(1)[0]
    assert np.allclose(explain.smoothgrad(net, x, 1, samples=3, noise=0.0), explain.saliency(net, x, 1))
    a, b = (explain.smoothgrad(net, x, 1, samples=8, seed=s) for s in (0, 0))
    assert np.array_equal(a, b) and not np.allclose(a, explain.smoothgrad(net, x, 1, samples=8, seed=1))


@pytest.mark.slow
@pytest.mark.parametrize("size", [(12, 12), (13, 9)])
def test_grad_cam_equals_pytorchs_with_hooks_on_the_twin(size):
    import torch
    import torch.nn.functional as F
    from cnnrun.torch_twin import twin

    net = network(shape=(1, *size))
    model = twin(net)
    index = explain.last_conv_index(net)
    assert index == 3
    for x in images(3, (1, *size)):
        for target in (0, 3):
            kept = {}

            def hook(module, inputs, output):
                output.retain_grad()
                kept["A"] = output
            handle = model[index].register_forward_hook(hook)
            model(torch.tensor(x[None]))[0, target].backward()
            handle.remove()
            A = kept["A"]
            weights = A.grad.mean(dim=(2, 3), keepdim=True)
            coarse = torch.relu((weights * A).sum(dim=1))
            full = F.interpolate(coarse[None], size=size, mode="bilinear", align_corners=False)[0, 0]
            cam, ours_coarse, name = explain.grad_cam(net, x, target)
            assert name == "3.conv"
            assert np.allclose(ours_coarse, coarse[0].detach().numpy(), atol=1e-10)
            assert np.allclose(cam, full.detach().numpy(), atol=1e-10)


def test_each_feature_map_is_the_layers_output_as_the_reference_engine_computes_it():
    fast, x = network(), images(3)
    reference = Network(SPECS, (1, 12, 12), seed=0, dtype=np.float64, engine="reference")
    ours, theirs = explain.layer_outputs(fast, x), explain.layer_outputs(reference, x)
    assert [name for name, _ in ours] == [f"{i}.{spec if isinstance(spec, str) else spec[0]}"
                                          for i, spec in enumerate(SPECS)]
    for (_, a), (_, b) in zip(ours, theirs):
        assert np.allclose(a, b, atol=1e-12)
    assert np.allclose(ours[-1][1], fast.forward(x), atol=1e-14)  # the last one: the probabilities


def test_feature_maps_leave_a_network_in_training_mode_and_its_buffers_as_they_were():
    specs = [("conv", {"filters": 3, "kernel": 3}), ("batch_norm", {}), "relu", ("dropout", {"rate": 0.5}),
             "flatten", ("dense", {"units": 4}), "softmax"]
    net = network(specs=specs, shape=(1, 8, 8)).train()
    before = {k: v.copy() for k, v in net.named_buffers().items()}
    x = images(4, (1, 8, 8))
    a, b = explain.layer_outputs(net, x), explain.layer_outputs(net, x)  # dropout off: the same twice
    assert net.training and all(np.array_equal(a[i][1], b[i][1]) for i in range(len(a)))
    assert all(np.array_equal(before[k], v) for k, v in net.named_buffers().items())
    net.eval()
    assert np.allclose(a[-1][1], net.forward(x))


def test_class_visualisation_raises_its_classs_logit_until_the_network_calls_it_that_class(trained):
    from cnnrun import api
    _, net = api.load_run(trained["run"])
    called = 0
    for target in range(10):
        image, scores = explain.class_visualisation(net, target, steps=100)
        assert image.shape == (1, 28, 28) and 0 <= image.min() and image.max() <= 1
        assert scores[-1] > scores[0] + 1.0
        z = explain.logits_of(net, image[None])[0]
        assert z[target] == pytest.approx(scores[-1], rel=1e-5)
        called += int(z.argmax()) == target
    assert called >= 8


def test_a_fooling_image_is_classified_as_its_target(trained):
    from cnnrun import api
    cfg, net = api.load_run(trained["run"])
    x, labels = api.load_data(cfg, trained["data"])["test"]
    correct = np.flatnonzero(net.forward(x).argmax(axis=1) == labels)[:4]
    assert len(correct) == 4
    for i in correct:
        target = (int(labels[i]) + 1) % 10
        pushed, steps, reached = explain.fooling_image(net, x[i], target)
        assert reached and steps > 0
        assert int(explain.logits_of(net, pushed[None])[0].argmax()) == target
        assert 0 <= pushed.min() and pushed.max() <= 1


def test_an_adversarial_twin_stays_within_eps_and_its_distances_start_at_the_input():
    net = network(np.float32)
    x = images(1)[0].astype(np.float32)
    label = int(explain.logits_of(net, x[None])[0].argmax())
    x_adv = explain.adversarial_twin(net, x, label, 0.1)
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert np.array_equal(x_adv, explain.adversarial_twin(net, x, label, 0.1))  # seeded
    rows = explain.layer_distances(net, x, x_adv)
    assert [name for name, _ in rows][0] == "0.conv" and len(rows) == len(SPECS)
    assert all(d >= 0 for _, d in rows)


def test_bad_targets_are_one_line_errors():
    from cnnrun.errors import CnnrunError
    net, x = network(), images(1)[0]
    for target in (5, -1, 2.0, True):
        with pytest.raises(CnnrunError, match="classes 0 to 4"):
            explain.saliency(net, x, target)


# --- the landscape ----------------------------------------------------------------------

def test_directions_are_filter_normalised_and_leave_vectors_alone():
    net = network()
    params = net.named_parameters()
    d = landscape.filter_normalised_direction(params, np.random.default_rng(5))
    w, dw = params["0.conv.W"], d["0.conv.W"]
    assert np.allclose(np.linalg.norm(dw.reshape(len(dw), -1), axis=1), np.linalg.norm(w.reshape(len(w), -1), axis=1))
    w, dw = params["6.dense.W"], d["6.dense.W"]  # (D, units): one filter per unit, a column
    assert np.allclose(np.linalg.norm(dw, axis=0), np.linalg.norm(w, axis=0))
    assert not np.allclose(np.linalg.norm(dw, axis=1), np.linalg.norm(w, axis=1))
    assert all(not d[name].any() for name in params if params[name].ndim == 1)  # biases: no component


def test_the_planes_centre_and_the_lines_ends_are_the_networks_own_losses():
    net, initial_net = network(np.float32), network(np.float32, seed=7)
    x, labels = images(40).astype(np.float32), np.arange(40) % 5
    loss, acc, _ = training.evaluate(net, x, labels)
    initial = {k: v.copy() for k, v in initial_net.named_parameters().items()}
    before = {k: v.copy() for k, v in net.named_parameters().items()}
    losses, accs, directions = landscape.plane(net, x, labels, np.linspace(-1, 1, 5))
    for name, w in before.items():  # drawn apart from the weights (the same seed 0 drew those)
        for d in directions:
            if w.ndim > 1:
                assert abs(np.sum(d[name] * w)) < 0.5 * np.linalg.norm(d[name]) * np.linalg.norm(w)
    assert losses[2, 2] == loss and accs[2, 2] == acc
    assert losses.shape == (5, 5) and not np.allclose(losses, loss)
    rows = landscape.line(net, initial, x, labels, [0.0, 1.0])
    assert rows[0][1] == pytest.approx(training.evaluate(initial_net, x, labels)[0], rel=1e-6)
    assert rows[1][1] == loss
    assert all(np.array_equal(before[k], v) for k, v in net.named_parameters().items())  # put back


# --- the verbs ----------------------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def trained(setup):
    result = run("train", setup["config"], "--data-dir", setup["data"], "--runs-dir", setup["runs"], "-q",
                 "--epochs", 2)
    assert result.exit_code == 0, result.output
    (name,) = os.listdir(setup["runs"])
    return dict(setup, run=os.path.join(setup["runs"], name))


def test_explain_writes_every_picture_and_a_page_of_them(trained):
    result = run("explain", trained["run"], "--index", 3, "--index", 5, "--eps", 0.1, "--classes",
                 "--data-dir", trained["data"])
    assert result.exit_code == 0, result.output
    folder = os.path.join(trained["run"], "explain")
    for key in ("test-3", "test-5"):
        meta = json.load(open(os.path.join(folder, key, "explain.json")))
        assert meta["pictures"] == ["layers.png", "attributions.png", "distances.png", "layers-adversarial.png"]
        assert all(os.path.getsize(os.path.join(folder, key, p)) > 1000 for p in meta["pictures"])
        assert sum(meta["probabilities"]) == pytest.approx(1, abs=1e-5) and meta["eps"] == 0.1
    page = open(os.path.join(folder, "index.html")).read()
    assert page.count("<img ") == 2 * 4 + 2 and "src=\"data:image/png;base64," in page and "src=\"http" not in page


def test_explain_json_reads_a_users_picture_as_predict_does(trained):
    from PIL import Image
    picture = trained["tmp"] / "mine.png"
    Image.fromarray(np.full((40, 30), 255, np.uint8)).save(picture)
    result = run("explain", trained["run"], str(picture), "--json", "--target", 2)
    assert result.exit_code == 0, result.output
    (line,) = result.output.strip().splitlines()
    data = json.loads(line)
    assert data["image"] == "image-mine" and data["target"] == 2 and len(data["probabilities"]) == 10


@pytest.mark.parametrize("args, message", [
    (["--index", 64], "--index 64: the test set has images 0 to 63"),
    (["--target", 10], "target class 10: the network has classes 0 to 9"),
    (["broken.png"], "broken.png"),
])
def test_explain_refuses_bad_input_in_one_line(trained, args, message):
    (trained["tmp"] / "broken.png").write_bytes(b"not a picture")
    args = [str(trained["tmp"] / a) if a == "broken.png" else a for a in args]
    result = run("explain", trained["run"], *args, "--data-dir", trained["data"])
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_landscape_writes_its_tables_and_its_centre_is_the_test_loss(trained):
    result = run("landscape", trained["run"], trained["run"], "--images", 20, "--resolution", 3, "--line-points", 3,
                 "--data-dir", trained["data"], "--runs-dir", trained["runs"])
    assert result.exit_code == 0, result.output
    folder = os.path.join(trained["run"], "landscape")
    rows = open(os.path.join(folder, "plane.csv")).read().splitlines()
    assert rows[0] == "a,b,loss,accuracy" and len(rows) == 1 + 9
    from cnnrun import api
    cfg, net = api.load_run(trained["run"])
    x, labels = api.load_data(cfg, trained["data"])["test"]
    centre = float(rows[5].split(",")[2])
    assert centre == pytest.approx(api.evaluate(net, x[:20], labels[:20])["loss"], rel=1e-12)
    assert os.path.exists(os.path.join(trained["runs"], "landscape-comparison", "landscape.png"))
    even = run("landscape", trained["run"], "--resolution", 4, "--data-dir", trained["data"])
    assert even.exit_code == 1 and "must be odd" in even.output


@pytest.mark.slow
def test_the_explain_page_loads_every_picture_in_a_browser_without_an_error(trained):
    from playwright.sync_api import sync_playwright
    result = run("explain", trained["run"], "--index", 0, "--eps", 0.1, "--classes", "--data-dir", trained["data"])
    assert result.exit_code == 0, result.output
    page_path = os.path.join(trained["run"], "explain", "index.html")
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: requests.append(r.url))
        page.goto("file://" + os.path.abspath(page_path))
        counts = page.evaluate("[document.images.length, Array.from(document.images).filter("
                               "i => i.complete && i.naturalWidth > 0).length]")
        browser.close()
    assert counts[0] == 6 and counts[1] == counts[0]
    assert errors == [] and all(u.startswith(("file://", "data:")) for u in requests)
