"""Hostile and damaged input: every one is a single `error:` line and exit code 1, and
nothing already written is touched."""

import os

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cnnrun import runs
from cnnrun.cli import main
from idx import TINY_CONFIG, make_digits, write_config


@pytest.fixture
def setup(tmp_path):
    data = make_digits(tmp_path / "data", n_train=64, n_test=16)
    config = write_config(tmp_path / "tiny.yaml", train__epochs=1)
    s = dict(data=str(data), config=config, runs=str(tmp_path / "runs"), tmp=tmp_path)
    result = cli(s, "train", config, "--data-dir", s["data"], "--quiet")
    assert result.exit_code == 0, result.output
    s["run"] = runs.list_runs(s["runs"])[0]
    return s


def cli(s, *args, runs_dir=True):
    args = [str(a) for a in args] + (["--runs-dir", s["runs"]] if runs_dir else [])
    return CliRunner().invoke(main, args)


def assert_one_line_error(result, message):
    """Exit code 1 and one `error:` line naming `message`: a CnnrunError or an OS error the
    CLI turned into one, never an exception that escaped it, nor a bug reported as one."""
    assert isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert "internal error" not in result.output, result.output
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0], lines[0]


def config_with(tmp, **changes):
    return write_config(tmp / "changed.yaml", **changes)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "/abs", "x" * 200, "tab\there", ""])
def test_a_config_name_that_is_not_one_plain_path_component_is_refused(setup, name):
    result = cli(setup, "train", config_with(setup["tmp"], name=name), "--data-dir", setup["data"])
    assert_one_line_error(result, "name: expected one plain file-name component")
    assert runs.list_runs(setup["runs"]) == [setup["run"]]
    result = cli(setup, "train", setup["config"], "--set", f"name={name}", "--data-dir", setup["data"])
    assert result.exit_code == 1 and "name" in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize("changes,message", [
    (dict(model__layers=[{"conv": {"filters": 2_000_000_000, "kernel": 3}}, "flatten", "softmax"]),
     "layer 0 (conv): needs about"),
    (dict(model__layers=["flatten", {"dense": {"units": 3_000_000_000}}, "softmax"]), "layer 1 (dense): needs about"),
    (dict(train__batch_size=10 ** 12), "activations for a batch of 1000000000000"),
    (dict(model__input_shape=[1, 10 ** 6, 10 ** 6]), "needs about"),
])
def test_sizes_that_cannot_be_served_are_refused_before_allocation(setup, changes, message):
    config = config_with(setup["tmp"], **changes)
    for verb in (["train", config, "--data-dir", setup["data"]], ["bench", config, "--repeats", 1]):
        result = cli(setup, *verb, runs_dir=verb[0] == "train")
        assert_one_line_error(result, message)
        assert "available" in result.output


def test_bench_and_gradcheck_refuse_a_batch_that_does_not_fit(setup):
    assert_one_line_error(cli(setup, "bench", setup["config"], "--batch-size", 10 ** 12, runs_dir=False),
                          "a batch of 1000000000000")
    assert_one_line_error(cli(setup, "gradcheck", setup["config"], "--batch-size", 10 ** 12, runs_dir=False),
                          "a batch of 1000000000000")


def test_predict_refuses_a_huge_image_before_decoding_it(setup, tmp_path):
    import zlib
    import struct

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    for side in (6000, 100000):  # PNG headers claiming side x side pixels (the pixel data never needs to exist)
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
               + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
        (tmp_path / "huge.png").write_bytes(png)
        assert_one_line_error(cli(setup, "predict", setup["run"], tmp_path / "huge.png"), "pixels")



@pytest.mark.parametrize("size", [(1, 1), (1, 500), (300, 1)])
def test_predict_says_an_image_one_pixel_wide_or_high_is_too_small(setup, tmp_path, size):
    from PIL import Image
    Image.new("L", size, 255).save(tmp_path / "tiny.png")
    result = cli(setup, "predict", setup["run"], tmp_path / "tiny.png")
    assert_one_line_error(result, f"{size[0]}x{size[1]} pixels is too small for a digit")


@pytest.mark.parametrize("verb", [["eval"], ["attack"], ["plot"], ["predict"], ["train", "--resume"]])
def test_a_run_folder_that_is_missing_or_a_file_is_a_clear_error(setup, verb, tmp_path):
    (tmp_path / "afile").write_text("x")
    extra = [setup["config"]] if verb == ["predict"] else []
    for where, message in ((tmp_path / "nothing", "no such run folder"), (tmp_path / "afile", "is a file, not a run"),
                           (tmp_path, "not a run folder")):
        assert_one_line_error(cli(setup, *verb, where, *extra), message)


def test_runs_dir_that_is_a_file_is_a_clear_error(setup, tmp_path):
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(main, ["train", setup["config"], "--data-dir", setup["data"], "--quiet",
                                       "--runs-dir", str(tmp_path / "afile" / "runs")])
    assert_one_line_error(result, "cannot create the folder")
    for verb in (["eval"], ["runs"], ["plot"], ["attack"]):  # click's own check: a usage error, exit 2
        result = CliRunner().invoke(main, verb + ["--runs-dir", str(tmp_path / "afile")])
        assert isinstance(result.exception, SystemExit) and result.exit_code == 2, (verb, result.exception)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "is a file" in lines[0], result.output
    from cnnrun.errors import CnnrunError
    with pytest.raises(CnnrunError, match="afile: not a folder"):  # and the library's, for callers from Python
        runs.resolve_run(None, str(tmp_path / "afile"))


def test_an_unwritable_run_folder_is_one_line_and_loses_nothing(setup):
    if os.geteuid() == 0:  # root writes anywhere: make the folder a place no one can write instead
        target = os.path.join(setup["run"], "attacks")
        with open(target, "w") as f:
            f.write("in the way")
    else:
        os.chmod(setup["run"], 0o500)
    before = open(os.path.join(setup["run"], "weights.npz"), "rb").read()
    result = cli(setup, "attack", setup["run"], "--data-dir", setup["data"])
    assert_one_line_error(result, "")
    assert open(os.path.join(setup["run"], "weights.npz"), "rb").read() == before


@pytest.mark.parametrize("damage", ["config", "metrics", "summary", "checkpoint", "weights"])
@pytest.mark.slow
def test_a_damaged_run_folder_is_a_clear_error_or_harmless(setup, damage):
    run = setup["run"]
    target = {"config": "config.yaml", "metrics": "metrics.csv", "summary": "summary.json",
              "checkpoint": "checkpoint.npz", "weights": "weights.npz"}[damage]
    with open(os.path.join(run, target), "wb") as f:
        f.write(b"\x00\xff garbage [unclosed")
    for verb in (["eval", run, "--data-dir", setup["data"]], ["plot", run], ["runs"],
                 ["train", "--resume", run, "--data-dir", setup["data"], "--quiet"]):
        result = cli(setup, *verb)
        assert result.exception is None or isinstance(result.exception, SystemExit), (verb, result.exception)
        assert "internal error" not in result.output, (verb, result.output)
        if result.exit_code != 0:
            assert_one_line_error(result, "")


def test_a_summary_that_is_not_a_mapping_is_harmless(setup):
    with open(os.path.join(setup["run"], "summary.json"), "w") as f:
        f.write("[1, 2, 3]")
    result = cli(setup, "runs")
    assert result.exit_code == 0 and os.path.basename(setup["run"]) in result.output


def test_data_dir_in_the_config_must_be_a_path(setup):
    cfg = dict(TINY_CONFIG, data=dict(TINY_CONFIG["data"], dir=["not", "a", "path"]))
    path = setup["tmp"] / "bad-dir.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert_one_line_error(cli(setup, "train", path), "data.dir: expected a path")


@pytest.mark.parametrize("name,content,message", [
    ("metrics.csv", "epoch,lr,train_loss,train_acc,test_loss,test_acc,seconds\n1,0.1,2.0\n", "line 2 has no train_acc"),
    ("config.yaml", "name: tiny\nmodel: {input_shape: [1, 28\n", "cannot read the run's config"),
])
def test_a_truncated_run_file_is_one_line_naming_it(setup, name, content, message):
    with open(os.path.join(setup["run"], name), "w") as f:
        f.write(content)
    for verb in (["plot", setup["run"]], ["train", "--resume", setup["run"], "--epochs", 3, "--data-dir", setup["data"]]):
        assert_one_line_error(cli(setup, *verb), message)


def test_a_config_that_is_not_text_is_one_line(setup):
    path = setup["tmp"] / "binary.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    for verb in (["train", path, "--data-dir", setup["data"]], ["bench", path], ["sweep", path]):
        assert_one_line_error(cli(setup, *verb, runs_dir=verb[0] != "bench"), "binary.yaml: not a text file")


def test_a_network_with_fewer_outputs_than_the_data_has_classes_is_refused_before_a_run_folder(setup):
    config = config_with(setup["tmp"], model__layers=["flatten", {"dense": {"units": 9}}, "softmax"])
    result = cli(setup, "train", config, "--data-dir", setup["data"])
    assert_one_line_error(result, "the data has labels 0-9 but the network has 9 outputs")
    assert runs.list_runs(setup["runs"]) == [setup["run"]]


@pytest.mark.parametrize("verb", [["eval"], ["attack", "--limit", 4], ["export"], ["train", "--epochs", 2]])
def test_data_whose_images_do_not_fit_the_runs_network_is_one_line(setup, verb):
    other = make_digits(setup["tmp"] / "data-32", n_train=16, n_test=8, size=32)
    args = verb[:1] + (["--resume"] if verb[0] == "train" else []) + [setup["run"]] + verb[1:]
    result = cli(setup, *args, "--data-dir", other)
    assert_one_line_error(result, "the data's images are (1, 32, 32) but model.input_shape is [1, 28, 28]")


def test_an_output_file_in_a_folder_that_does_not_exist_is_one_line_naming_it(setup):
    target = setup["tmp"] / "no-such-folder" / "model.onnx"
    result = cli(setup, "export", setup["run"], "--output", target, "--data-dir", setup["data"])
    assert_one_line_error(result, f"{target}: cannot write (No such file or directory)")


@pytest.mark.parametrize("value", [np.nan, np.inf, "text"])
def test_weights_holding_nan_infinity_or_text_are_refused_by_every_verb_that_loads_them(setup, value):
    path = os.path.join(setup["run"], "weights.npz")
    with np.load(path) as stored:
        weights = {k: stored[k] for k in stored.files}
    name = sorted(k for k in weights if k.endswith(".W"))[0]
    weights[name] = np.full(weights[name].shape, value)
    np.savez(path, **weights)
    summary_path = os.path.join(setup["run"], "summary.json")  # as if written so: the digest matches
    summary = runs.read_json(summary_path)
    summary["digests"]["weights.npz"] = [runs.file_digest(path)]
    runs.write_json(summary_path, summary)
    for verb in (["eval"], ["attack", "--limit", 4], ["export"]):
        result = cli(setup, verb[0], setup["run"], *verb[1:], "--data-dir", setup["data"])
        assert_one_line_error(result, f"damaged weights: {name} hold NaN, infinite or non-numeric values")


def test_the_real_console_script_prints_one_line_and_no_traceback(setup, tmp_path):
    """Through a real process, not CliRunner (which keeps an escaped exception in
    `result.exception` and prints no traceback): damaged weights, a run folder that is a
    file, a config that is not text."""
    import subprocess
    import sys
    with open(os.path.join(setup["run"], "weights.npz"), "wb") as f:
        f.write(b"\x00 not a zip")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    for args in (["eval", setup["run"], "--data-dir", setup["data"]], ["eval", str(tmp_path / "afile")],
                 ["train", str(tmp_path / "binary.yaml")], ["verify", setup["run"]]):
        done = subprocess.run([sys.executable, "-m", "cnnrun.cli", *args, "--runs-dir", setup["runs"]],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
        if args[0] != "verify":
            assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_help_exits_0_and_a_mistyped_option_exits_2_as_the_console_script_runs_them(capsys):
    """`--help` ends through click's own Exit(0): it must reach the shell as exit 0 with
    the help on stdout, not as an error line; a mistyped option is exit 2 with the hint.
    `main.main(args)` is what the console script runs (CliRunner turns exits into
    results on its own terms)."""
    from cnnrun.cli import main
    for verb in [[]] + [[name] for name in main.commands]:
        with pytest.raises(SystemExit) as done:
            main.main([*verb, "--help"], prog_name="cnnrun")
        out, err = capsys.readouterr()
        assert done.value.code == 0 and err == "", (verb, err)
        assert out.startswith("Usage: cnnrun"), (verb, out[:200])
    with pytest.raises(SystemExit) as done:
        main.main(["eval", "--no-such-option"], prog_name="cnnrun")
    out, err = capsys.readouterr()
    assert done.value.code == 2 and "cnnrun eval --help" in err and "internal error" not in err, err
    with pytest.raises(SystemExit) as done:
        main.main(["--version"], prog_name="cnnrun")
    assert done.value.code == 0 and capsys.readouterr().out.startswith("cnnrun")
