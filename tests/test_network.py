"""The network as a whole: loss, end-to-end gradients, float32, save/load, build errors."""

import os

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from cnnrun.config import build_network, load_config
from cnnrun.errors import CnnrunError
from cnnrun.nn import SGD, Adam, Network, exponential_lr, parallel, softmax_cross_entropy
from cnnrun.nn.gradcheck import TOLERANCE, check_all, check_network
from cnnrun.sweep import is_spec_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f"configs/{name}" for name in os.listdir(os.path.join(ROOT, "configs"))
                 if name.endswith(".yaml") and not is_spec_file(os.path.join(ROOT, "configs", name)))


def config(name):
    return load_config(os.path.join(ROOT, name))


def one_hot(labels, k=10):
    return np.eye(k)[labels]


def test_fused_softmax_cross_entropy_gradient_matches_finite_differences(rng):
    logits, y = rng.standard_normal((5, 7)), one_hot(rng.integers(0, 7, 5), 7)
    loss, dlogits = softmax_cross_entropy(logits, y)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[y == 1])), rel=1e-12)
    h = 1e-6
    for i, j in [(0, 0), (2, 3), (4, 6)]:
        up, down = logits.copy(), logits.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric = (softmax_cross_entropy(up, y)[0] - softmax_cross_entropy(down, y)[0]) / (2 * h)
        assert dlogits[i, j] == pytest.approx(numeric, abs=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_logits_give_finite_loss_and_gradients(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype)
    y = np.array([[0, 1, 0], [1, 0, 0]], dtype)
    loss, dlogits = softmax_cross_entropy(logits, y)
    assert np.isfinite(loss) and loss == pytest.approx((2e4 + 2e4 + np.log(2)) / 2, rel=1e-6)
    assert np.all(np.isfinite(dlogits))


def expected_tensors(layers, prefix=""):
    """The parameter tensors a config's layers must have, derived from the config itself."""
    names = []
    for i, entry in enumerate(layers):
        (kind, args), = entry.items()
        name = f"{prefix}{i}.{kind}"
        if kind in ("conv", "dense"):
            names += [f"{name}.W"] + ([f"{name}.b"] if args["bias"] else [])
        if kind in ("instance_norm", "batch_norm") and args["affine"]:
            names += [f"{name}.gamma", f"{name}.beta"]
        if kind == "residual":
            names += expected_tensors(args["layers"], f"{name}.body.")
            if args["shortcut"] != "identity":
                names += expected_tensors(args["shortcut"], f"{name}.shortcut.")
    return names


@pytest.mark.parametrize("path", CONFIGS)
def test_every_shipped_network_and_its_input_gradient_pass_gradcheck(path, rng):
    cfg = config(path)
    net = build_network(cfg, dtype=np.float64)
    x, y = rng.random((2,) + net.input_shape), one_hot(rng.integers(0, 10, 2))
    rows = check_all(net, x, y, rng, samples=8)
    expected = expected_tensors(cfg["model"]["layers"])
    assert [tensor for where, tensor, _ in rows if where == "network"] == expected + ["input"]
    assert len([r for r in rows if r[0] != "network"]) == len(expected) + len(cfg["model"]["layers"])
    worst = max(rows, key=lambda r: r[2])
    assert worst[2] < TOLERANCE, worst


def test_network_gradient_with_strided_padded_layers(rng):
    specs = [("conv", dict(filters=3, kernel=[3, 2], stride=2, padding=1)), ("instance_norm", {}),
             ("relu", {}), ("maxpool", dict(kernel=3, stride=2, padding=1)),
             ("conv", dict(filters=4, kernel=2, bias=False)), ("flatten", {}), ("dense", dict(units=5)),
             ("relu", {}), ("dense", dict(units=3, init="glorot")), ("softmax", {})]
    net = Network(specs, (2, 13, 11), seed=3, dtype=np.float64)
    rows = check_network(net, rng.random((3, 2, 13, 11)), one_hot(rng.integers(0, 3, 3), 3), rng)
    assert max(e for _, e in rows) < TOLERANCE


def test_training_runs_in_float32_end_to_end(rng):
    net = build_network(config("configs/net2.yaml"))
    x = rng.random((4, 1, 28, 28))  # float64 in: the network casts to its own dtype
    loss, logits, dx = net.loss_and_backward(x, one_hot(rng.integers(0, 10, 4)), need_input_grad=True)
    assert logits.dtype == np.float32 and dx.dtype == np.float32
    assert all(g.dtype == np.float32 for _, g in net.param_grad_pairs())
    assert net.forward(x).dtype == np.float32


def test_sgd_steps_reduce_the_loss_on_a_fixed_batch(rng):
    net = build_network(config("configs/net1.yaml"))
    x, y = rng.random((16, 1, 28, 28)), one_hot(rng.integers(0, 10, 16))
    sgd = SGD(lr=0.1)
    first = net.loss_and_backward(x, y)[0]
    for _ in range(20):
        net.loss_and_backward(x, y)
        sgd.step(net.param_grad_pairs())
    assert net.loss_and_backward(x, y)[0] < 0.5 * first


def test_sgd_update_and_exponential_schedule():
    p, g = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    SGD(lr=0.1).step([(p, g)])
    np.testing.assert_allclose(p, [0.95, 2.1])
    assert exponential_lr(0.01, 0.9, 0) == 0.01
    assert exponential_lr(0.01, 0.9, 3) == pytest.approx(0.01 * 0.729)


def test_sgd_momentum_accumulates_a_velocity_per_parameter():
    p, g = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    sgd = SGD(lr=0.1, momentum=0.9)
    sgd.step([(p, g)])  # v = g
    sgd.step([(p, g)])  # v = 0.9 g + g
    np.testing.assert_allclose(p, [1.0, 2.0] - 0.1 * (1 + 1.9) * g)
    np.testing.assert_allclose(sgd.velocity[0], 1.9 * g)


def test_adam_follows_the_paper_over_three_steps_even_for_tiny_gradients():
    """param -= lr * m_hat / (sqrt(v_hat) + eps), computed by hand, with eps outside the root."""
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    grads = [np.array([1e-7, -2.0]), np.array([3e-7, 1.0]), np.array([-1e-7, 0.5])]
    p = np.array([0.5, -0.5])
    adam, expected, m, v = Adam(lr=lr), p.copy(), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        adam.step([(p, g)])
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        expected = expected - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(p, expected, rtol=1e-12)
    first = Adam(lr=lr)
    q = np.array([0.0])
    first.step([(q, np.array([1e-7]))])
    assert -q[0] == pytest.approx(lr * 1e-7 / (1e-7 + 1e-8), rel=1e-9)  # 9.1e-4, not 2.4e-4


def test_adam_steps_match_the_formula_with_bias_correction():
    p, g1, g2 = np.array([1.0, -1.0]), np.array([0.5, -2.0]), np.array([1.0, 1.0])
    adam = Adam(lr=0.1)
    adam.step([(p, g1)])
    np.testing.assert_allclose(p, [1.0 - 0.1, -1.0 + 0.1], rtol=1e-6)  # first step: lr * sign(g)
    adam.step([(p, g2)])
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2
    expected = np.array([0.9, -0.9]) - 0.1 * (m / 0.19) / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    np.testing.assert_allclose(p, expected, rtol=1e-6)


def test_input_gradient_without_parameter_gradients_is_the_same_and_leaves_grads_alone(rng):
    net = build_network(config("configs/net3.yaml"), dtype=np.float64)
    x, y = rng.random((3, 1, 28, 28)), one_hot(rng.integers(0, 10, 3))
    _, _, dx = net.loss_and_backward(x, y, need_input_grad=True)
    before = {name: g.copy() for name, (_, g) in zip(net.named_parameters(), net.param_grad_pairs())}
    _, _, dx_only = net.loss_and_backward(x + 0.1, y, need_input_grad=True, need_param_grads=False)
    _, _, dx_again = net.loss_and_backward(x, y, need_input_grad=True, need_param_grads=False)
    np.testing.assert_array_equal(dx_again, dx)
    assert not np.allclose(dx_only, dx)
    for name, (_, g) in zip(net.named_parameters(), net.param_grad_pairs()):
        np.testing.assert_array_equal(g, before[name])


def test_same_seed_same_weights_and_outputs(rng):
    a, b = (build_network(config("configs/net3.yaml")) for _ in range(2))
    c = build_network(config("configs/net3.yaml"), seed=1)
    x = rng.random((3, 1, 28, 28))
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    assert not np.array_equal(a.named_parameters()["0.conv.W"], c.named_parameters()["0.conv.W"])


def test_parameters_have_qualified_names():
    net = build_network(config("configs/net2.yaml"))
    names = list(net.named_parameters())
    assert names[:4] == ["0.conv.W", "0.conv.b", "1.instance_norm.gamma", "1.instance_norm.beta"]
    assert names[-2:] == ["9.dense.W", "9.dense.b"]


def test_save_load_round_trip_restores_every_parameter(tmp_path, rng):
    a = build_network(config("configs/net2.yaml"), seed=1)
    b = build_network(config("configs/net2.yaml"), seed=2)
    path = tmp_path / "weights.npz"
    a.save(path)
    assert os.listdir(tmp_path) == ["weights.npz"]  # no temporary file left behind
    b.load(path)
    x = rng.random((2, 1, 28, 28))
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(a.named_parameters())


def test_load_names_every_parameter_that_does_not_fit(tmp_path):
    build_network(config("configs/net2.yaml")).save(tmp_path / "w.npz")
    with pytest.raises(CnnrunError) as e:
        build_network(config("configs/net3.yaml")).load(tmp_path / "w.npz")
    message = str(e.value)
    assert "4.conv.W is (16, 8, 3, 3), the config needs (32, 16, 3, 3)" in message
    assert "11.dense.W missing" in message


def test_load_of_missing_or_corrupt_file_is_a_clear_error(tmp_path):
    net = build_network(config("configs/net1.yaml"))
    with pytest.raises(CnnrunError, match="no such weights file"):
        net.load(tmp_path / "nothing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(CnnrunError, match="not a readable .npz"):
        net.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("specs,shape,message", [
    ([("conv", dict(filters=4, kernel=7)), ("softmax", {})], (1, 5, 5),
     r"layer 0 \(conv\): input shape \(1, 5, 5\): kernel 7x7 is larger than the padded input 5x5"),
    ([("conv", dict(filters=4, kernel=3)), ("dense", dict(units=10)), ("softmax", {})], (1, 8, 8),
     r"layer 1 \(dense\): input shape \(4, 6, 6\): expects flat vectors .*add a flatten"),
    ([("conv", dict(filters=4, kernel=3)), ("pool", {}), ("softmax", {})], (1, 8, 8),
     r"layer 1 \(pool\): unknown layer"),
    ([("conv", dict(filters=4, kernel=3, dilation=2)), ("softmax", {})], (1, 8, 8),
     r"layer 0 \(conv\): .*unexpected keyword argument 'dilation'"),
    ([("maxpool", dict(kernel=2)), ("maxpool", dict(kernel=2)), ("maxpool", dict(kernel=2))], (1, 4, 4),
     r"layer 2 \(maxpool\): input shape \(1, 1, 1\): kernel 2x2 is larger"),
    ([("flatten", {}), ("dense", dict(units=3))], (1, 4, 4), r"last layer must be softmax"),
])
def test_build_errors_name_the_layer_and_shapes(specs, shape, message):
    with pytest.raises(CnnrunError, match=message):
        Network(specs, shape)


def test_a_bug_inside_a_layers_build_is_not_reported_as_a_config_error(monkeypatch):
    from cnnrun.nn import layers

    def broken(self, in_shape):
        raise TypeError("a bug")

    monkeypatch.setattr(layers.Dense, "build", broken)
    with pytest.raises(TypeError, match="a bug"):
        Network([("flatten", {}), ("dense", {"units": 3}), ("softmax", {})], (1, 4, 4))


@pytest.mark.parametrize("specs,shape,batch,where", [
    ([("conv", dict(filters=2_000_000_000, kernel=3)), ("flatten", {}), ("softmax", {})], (1, 28, 28), 128,
     r"layer 0 \(conv\): needs about"),
    ([("flatten", {}), ("dense", dict(units=3_000_000_000)), ("softmax", {})], (1, 28, 28), 1,
     r"layer 1 \(dense\): needs about"),
    ([("conv", dict(filters=8, kernel=3)), ("flatten", {}), ("dense", dict(units=10)), ("softmax", {})], (1, 28, 28),
     10 ** 9, r"layer 0 \(conv\): needs about .* a batch of 1000000000"),
    ([("conv", dict(filters=8, kernel=3, padding=100_000)), ("flatten", {}), ("softmax", {})], (1, 28, 28), 1,
     r"layer 0 \(conv\)"),
])
def test_a_network_too_large_for_memory_is_refused_before_allocation(specs, shape, batch, where):
    with pytest.raises(CnnrunError, match=where + r".*this machine has .* available"):
        Network(specs, shape, batch_size=batch, memory_limit=24 * 2 ** 30)


def test_the_memory_estimate_lets_the_shipped_networks_through(rng):
    for path in CONFIGS:
        net = build_network(config(path))
        assert 0 < sum(net.memory_bytes(128)) < 2 ** 30


def test_a_batch_runs_in_parts_of_at_most_64_and_at_least_two():
    for n in (1, 2, 63, 64, 65, 128, 150, 1000):
        parts = parallel.parts(n)
        assert parts[0].start == 0 and parts[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
        assert max(p.stop - p.start for p in parts) <= parallel.PART_SIZE
        assert len(parts) == max(-(-n // parallel.PART_SIZE), min(n, 2))


@pytest.mark.parametrize("n,parts", [(50, 2), (150, 3)])
def test_a_batch_gives_the_same_numbers_on_one_thread_or_two(n, parts, rng):
    """On 2 threads the parts run side by side; the logits, loss, input gradient and
    summed parameter gradients are bit for bit those of 1 thread, whatever BLAS was set to."""
    x, y = rng.random((n, 1, 28, 28)).astype(np.float32), one_hot(rng.integers(0, 10, n)).astype(np.float32)
    results = []
    for threads, blas_threads in ((1, 2), (2, 1)):
        net = build_network(config("configs/net4.yaml"))
        net.threads = threads
        with threadpool_limits(blas_threads, user_api="blas"):
            loss, logits, dx = net.loss_and_backward(x, y, need_input_grad=True)
        results.append((loss, logits, dx, net.named_gradients()))
    (loss1, logits1, dx1, grads1), (loss2, logits2, dx2, grads2) = results
    assert len(net.parts) == parts and loss1 == loss2
    assert np.array_equal(logits1, logits2) and np.array_equal(dx1, dx2)
    assert all(np.array_equal(grads1[name], grads2[name]) for name in grads1)


def test_the_parts_gradient_is_the_whole_batch_gradient(rng):
    """Summing the parts' parameter gradients gives the gradient of the whole batch's mean loss."""
    net = Network([("conv", dict(filters=2, kernel=3)), ("relu", {}), ("flatten", {}), ("dense", dict(units=3)),
                   ("softmax", {})], (1, 5, 5), dtype=np.float64, threads=2)
    x, y = rng.standard_normal((130, 1, 5, 5)), one_hot(rng.integers(0, 3, 130), 3)
    net.loss_and_backward(x, y)
    assert len(net.parts) == 3
    whole = {name: g.copy() for name, g in net.named_gradients().items()}
    sums = {name: np.zeros_like(g) for name, g in whole.items()}
    for part in net.parts:  # each part alone, its loss weighted by its share of the batch
        n = part.stop - part.start
        net.loss_and_backward(x[part], y[part])
        for name, g in net.named_gradients().items():
            sums[name] += g * n / 130
    for name in whole:
        np.testing.assert_allclose(whole[name], sums[name], rtol=1e-10, atol=1e-12)


def test_a_bad_thread_count_in_the_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CNNRUN_THREADS", "two")
    with pytest.raises(CnnrunError, match="CNNRUN_THREADS='two': expected a whole number"):
        parallel.default_threads()
    monkeypatch.setenv("CNNRUN_THREADS", "3")
    assert parallel.default_threads() == 3


def test_no_input_gradient_is_made_before_the_first_layer_with_parameters(rng):
    """In training, nothing before the first convolution needs a gradient: the conv
    after a normalize and a parameterless instance norm is asked for none, and the
    parameter gradients are those of a full backward pass."""
    net = Network([("normalize", dict(mean=0.1, std=0.3)), ("instance_norm", dict(affine=False)),
                   ("conv", dict(filters=2, kernel=3)), ("flatten", {}), ("dense", dict(units=3)), ("softmax", {})],
                  (1, 6, 6), dtype=np.float64)
    x, y = rng.standard_normal((4, 1, 6, 6)), one_hot(rng.integers(0, 3, 4), 3)
    _, _, dx = net.loss_and_backward(x, y, need_input_grad=True)
    with_input = {name: g.copy() for name, g in net.named_gradients().items()}
    asked = []
    conv = net.replicas[0][2]
    original = conv.backward
    conv.backward = lambda dy, need_dx=True, need_grads=True: asked.append(need_dx) or original(dy, need_dx, need_grads)
    _, _, none = net.loss_and_backward(x, y)
    assert dx is not None and none is None and asked == [False]
    for name, g in net.named_gradients().items():
        np.testing.assert_array_equal(g, with_input[name])


def test_an_empty_batch_gives_empty_logits():
    net = build_network(config("configs/net3.yaml"))
    assert net.logits(np.zeros((0, 1, 28, 28), np.float32)).shape == (0, 10)


def kind(spec):
    """A layer spec's kind: `relu` or the key of `{maxpool: {...}}`."""
    return spec if isinstance(spec, str) else next(iter(spec))


@pytest.mark.parametrize("name", ["configs/net2.yaml", "configs/net4.yaml"])
def test_maxpool_then_relu_trains_bit_for_bit_like_relu_then_maxpool(name, rng):
    """The configs pool before relu (cheaper); max and relu commute, ties included,
    so both orders give the same logits and the same weights after training steps."""
    pooled_first = config(name)
    layers = pooled_first["model"]["layers"]
    relu_first = load_config(os.path.join(ROOT, name))
    swapped = []
    for spec in layers:
        if kind(spec) == "relu" and swapped and kind(swapped[-1]) == "maxpool":
            swapped.insert(len(swapped) - 1, spec)
        else:
            swapped.append(spec)
    assert swapped != layers  # the config does pool before a relu
    relu_first["model"]["layers"] = swapped
    x = rng.random((150, 1, 28, 28)).astype(np.float32)
    x[x < 0.7] = 0  # flat black patches: ties in the pooling windows
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 150)]
    results = []
    for cfg in (pooled_first, relu_first):
        net, optimizer = build_network(cfg), SGD(0.05)
        for _ in range(3):
            net.loss_and_backward(x, y)
            optimizer.step(net.param_grad_pairs())
        results.append([net.logits(x)] + [p.copy() for p, _ in net.param_grad_pairs()])
    for a, b in zip(*results):
        assert np.array_equal(a, b)
