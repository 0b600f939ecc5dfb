"""The command line: verbs run, and bad input is one line and exit code 1."""

import json
import os
import sys

import pytest
from click.testing import CliRunner

from cnnrun.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET1 = os.path.join(ROOT, "configs/net1.yaml")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_bench_json_reports_throughput_and_every_layer():
    result = run("bench", NET1, "--batch-size", 16, "--repeats", 1, "--warmup", 0, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["batch_size"] == 16 and data["optimizer"] == "sgd" and data["parameters"] == 8 * 9 + 8 + 1352 * 10 + 10
    assert data["train_samples_per_s"] == pytest.approx(16 / (data["train_step_ms"] / 1e3))
    assert data["eval_samples_per_s"] == pytest.approx(16 / (data["eval_step_ms"] / 1e3))
    assert "adversarial_batch_ms" not in data
    assert [layer["kind"] for layer in data["layers"]] == ["normalize", "conv", "maxpool", "relu", "flatten",
                                                           "dense", "softmax"]
    assert [layer["backward_ms"] is None for layer in data["layers"]] == [False] * 6 + [True]  # softmax: fused


def test_bench_names_the_blas_library_and_the_kernel_set_its_products_run_on():
    from threadpoolctl import threadpool_info
    blas = next(lib for lib in threadpool_info() if lib["user_api"] == "blas")  # NumPy's, loaded first
    result = run("bench", NET1, "--batch-size", 16, "--repeats", 1, "--warmup", 0, "--json")
    data = json.loads(result.output)["blas"]
    assert (data["library"], data["version"], data["kernels"]) == (blas["internal_api"], blas["version"],
                                                                   blas.get("architecture"))
    assert data["forced"] == (os.environ.get("OPENBLAS_CORETYPE") if blas["internal_api"] == "openblas" else None)
    table = run("bench", NET1, "--batch-size", 16, "--repeats", 1, "--warmup", 0).output
    assert f"BLAS:  {blas['internal_api']} {blas['version']}, {blas.get('architecture')} kernels" in table


@pytest.mark.slow
def test_bench_under_a_forced_kernel_set_names_the_cpus_own_pick_and_how_to_time_on_it():
    """OPENBLAS_CORETYPE=Nehalem (SSE only) forces older kernels than any AVX CPU's: bench
    says which set it timed, that the variable chose it, and the set OpenBLAS picks
    without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, as a fresh Python reports them."""
    import subprocess

    from cnnrun import bench

    def kernels(env):
        return subprocess.run([sys.executable, "-c", bench._KERNELS_SCRIPT], env=env, capture_output=True,
                              text=True, check=True).stdout.strip()

    free = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    forced = dict(free, OPENBLAS_CORETYPE="Nehalem")
    own, nehalem = kernels(free), kernels(forced)
    assert own != nehalem
    args = [sys.executable, "-m", "cnnrun.cli", "bench", NET1, "--batch-size", "16", "--repeats", "1", "--warmup", "0"]
    data = json.loads(subprocess.run(args + ["--json"], env=forced, capture_output=True, text=True,
                                     check=True).stdout)["blas"]
    assert (data["kernels"], data["forced"], data["own_kernels"]) == (nehalem, "Nehalem", own)
    table = subprocess.run(args, env=forced, capture_output=True, text=True, check=True).stdout
    assert f"{nehalem} kernels (OPENBLAS_CORETYPE=Nehalem chose them)" in table
    assert f"this CPU's own pick is {own} (to time on it: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in table
    unforced = json.loads(subprocess.run(args + ["--json"], env=free, capture_output=True, text=True,
                                         check=True).stdout)["blas"]
    assert (unforced["kernels"], unforced["forced"], "own_kernels" in unforced) == (own, None, False)


@pytest.mark.slow
def test_bench_against_torch_reports_both_sides_and_their_ratio(monkeypatch):
    monkeypatch.setenv("CNNRUN_THREADS", "2")
    result = run("bench", NET1, "--batch-size", 16, "--repeats", 2, "--warmup", 0, "--against", "torch", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["threads"] == 2
    versus = data["against_torch"]
    assert versus["torch_version"].startswith("2.13") and versus["torch_threads"] >= 1
    for step in ("train", "eval", "attack_step"):
        assert versus[step]["cnnrun"] > 0 and versus[step]["torch"] > 0
        assert versus[step]["ratio"] == pytest.approx(versus[step]["cnnrun"] / versus[step]["torch"])
    table = run("bench", NET1, "--batch-size", 16, "--repeats", 1, "--warmup", 0, "--against", "torch").output
    assert "against PyTorch" in table and "attack_step" in table


def test_bench_against_torch_without_pytorch_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails
    result = run("bench", NET1, "--repeats", 1, "--against", "torch")
    assert result.exit_code == 1
    assert result.output.strip() == "error: --against torch needs PyTorch: pip install -e '.[bench]'"


def test_bench_times_the_configured_optimizer_and_the_adversarial_step():
    result = run("bench", os.path.join(ROOT, "configs/robust-pgd.yaml"), "--batch-size", 16, "--repeats", 1,
                 "--warmup", 0, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["optimizer"] == "adam"
    # PGD-10 on the whole batch: 10 forward-backward passes of 16 images, against one.
    assert data["adversarial_batch_ms"] > data["eval_step_ms"]
    assert data["adversarial_train_samples_per_s"] == pytest.approx(
        16 / ((data["train_step_ms"] + data["adversarial_batch_ms"]) / 1e3))


def test_bench_table_names_layers_and_totals():
    result = run("bench", NET1, "--batch-size", 8, "--repeats", 1)
    assert result.exit_code == 0, result.output
    assert "maxpool" in result.output and "samples/s" in result.output


@pytest.mark.parametrize("i", [1, 2])
def test_gradcheck_passes_for_shipped_configs(i):
    result = run("gradcheck", os.path.join(ROOT, f"configs/net{i}.yaml"), "--samples", 5)
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and "checks pass" in result.output


def test_gradcheck_fails_loudly_on_a_broken_backward(monkeypatch):
    from cnnrun.nn import layers
    real = layers.ReLU.backward
    monkeypatch.setattr(layers.ReLU, "backward", lambda self, dy, **kw: 1.01 * real(self, dy, **kw))
    result = run("gradcheck", NET1, "--samples", 5)
    assert result.exit_code == 1
    assert "FAIL" in result.output


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {input_shape: [1, 8, 8], layers: [dropout]}\ntrain: {epochs: 1, lr: 0.1}\ndata: {}\n")
    for args in (["bench", tmp_path / "missing.yaml"], ["gradcheck", bad]):
        result = run(*args)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert "Traceback" not in result.output


def test_bench_times_each_layers_matrix_products_at_their_shapes():
    from cnnrun.bench import gemm_shapes
    from cnnrun.config import build_network, load_config
    net = build_network(load_config(NET1))  # normalize, conv 8 3x3 on 1x28x28, relu, pool, flatten, dense 10
    conv, dense = net.layers[1], net.layers[5]
    assert gemm_shapes(conv, 4, net.shapes[2], first=False) == [(8, 9, 4 * 26 * 26), (8, 4 * 26 * 26, 9),
                                                                (1, 8 * 9, 4 * 28 * 28)]
    assert gemm_shapes(conv, 4, net.shapes[2], first=True)[-1] == (8, 4 * 26 * 26, 9)  # no input gradient
    assert gemm_shapes(dense, 4, net.shapes[6], first=False) == [(4, 1352, 10), (1352, 4, 10), (4, 10, 1352)]
    assert gemm_shapes(net.layers[2], 4, net.shapes[3], first=False) == []
    data = json.loads(run("bench", NET1, "--batch-size", 8, "--repeats", 1, "--warmup", 0, "--json").output)
    assert [layer["gemm_ms"] > 0 for layer in data["layers"]] == [False, True, False, False, False, True, False]
    assert data["gemm_ms"] == pytest.approx(sum(layer["gemm_ms"] for layer in data["layers"]))
    assert data["gemm_share"] == pytest.approx(data["gemm_ms"] / data["train_step_range_ms"][0])


def test_bench_says_when_its_figures_are_not_steady():
    from cnnrun.bench import steadiness_warnings
    steady = dict(train_step_range_ms=[10.0, 11.0], load_per_core=0.1, gemm_share=0.6)
    assert steadiness_warnings(steady) == []
    spread = steadiness_warnings(dict(steady, train_step_range_ms=[10.0, 30.0]))
    assert "10.0 to 30.0 ms" in spread[0] and "busy" in spread[0] and "--repeats" in spread[-1]
    assert "loaded" in steadiness_warnings(dict(steady, load_per_core=1.5))[0]
    assert "not meaningful" in steadiness_warnings(dict(steady, gemm_share=4.94))[0]
    data = json.loads(run("bench", NET1, "--batch-size", 8, "--repeats", 3, "--warmup", 0, "--json").output)
    fastest, slowest = data["train_step_range_ms"]
    assert fastest <= data["train_step_ms"] <= slowest
    assert data["warnings"] == steadiness_warnings(data)


def test_bench_names_the_kernels_each_convolution_ran_and_those_of_a_training_steps_parts():
    data = json.loads(run("bench", "net2", "--repeats", 1, "--warmup", 0, "--json").output)
    plans = {layer["index"]: layer["plan"] for layer in data["layers"] if layer["plan"]}
    assert plans == {0: "columns (kept), dx scatter", 4: "wide, dx wide"}  # a whole batch of 128 in one go
    assert data["part_plans"] == {"0.conv": "columns (kept), dx scatter", "4.conv": "columns (kept), dx wide"}  # parts of 64
    table = run("bench", "net2", "--repeats", 1, "--warmup", 0).output
    assert "kernels (kernels.conv_plan)" in table
    assert "each part of the batch runs the kernels 4.conv: columns (kept), dx wide" in table
