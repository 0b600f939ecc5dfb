"""A newcomer's path: the README's quick start as written, the shipped configs from a
wheel, run names as `runs` prints them, data a run remembers, and messages and pictures
that explain themselves."""

import functools
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnnrun import plots, runner, runs
from cnnrun.cli import main
from cnnrun.data import mnist
from helpers import cli, real_mnist_dir

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package


def quick_start_commands():
    """The commands of the README's quick start, as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("cnnrun ")]


def user_env(home):
    """A user's environment: HOME at `home`, no data variable, pictures without a screen."""
    env = {k: v for k, v in os.environ.items() if k not in ("CNNRUN_DATA_DIR", "XDG_CACHE_HOME")}
    return dict(env, HOME=str(home), MPLBACKEND="Agg")


def home_with_mnist(tmp_path):
    """`tmp_path/home` whose ~/mnist holds the four real MNIST files."""
    home = tmp_path / "home"
    (home / "mnist").mkdir(parents=True)
    real = real_mnist_dir()
    for name in mnist.FILES.values():
        path = mnist.find_file(real, name)
        os.symlink(os.path.abspath(path), home / "mnist" / os.path.basename(path))
    return home


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written_and_its_printed_resume_command_works(tmp_path):
    commands = quick_start_commands()
    verbs = [c.split()[1] for c in commands]
    assert {"configs", "train", "runs", "eval", "attack", "export"} <= set(verbs), commands
    assert verbs.index("train") < min(verbs.index(v) for v in ("runs", "eval", "attack", "export"))
    train_command = commands[verbs.index("train")]
    assert "--data-dir ~/mnist" in train_command
    home = home_with_mnist(tmp_path)
    work = tmp_path / "work"  # no configs/ here: the quick start names a shipped config
    work.mkdir()
    env = user_env(home)
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
    (run_dir,) = runs.list_runs(str(work / "runs"))
    assert runs.load_run_config(run_dir)["data"]["dir"] == str(home / "mnist")  # the run remembers its data
    assert (Path(run_dir) / "model.onnx").is_file() and (Path(run_dir) / "eval.json").is_file()

    # Ctrl-C during the training the quick start begins with, then the command it prints.
    # (Ctrl-C as a terminal delivers it: SIGINT's default handling, even where this test
    # itself runs in the background, which starts its children with SIGINT ignored.)
    train = subprocess.Popen(["bash", "-c", "exec " + train_command], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in train.stdout:
        if line.startswith("epoch 1/"):
            break
    train.send_signal(signal.SIGINT)
    out, err = train.communicate(timeout=300)
    assert train.returncode == 130, err
    printed = re.search(r"Resume with: (cnnrun train --resume \S+)", err).group(1)
    result = subprocess.run(["bash", "-c", printed], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "done:" in result.stdout, result.stderr[-2000:]


@pytest.mark.slow
def test_a_wheel_in_a_fresh_virtualenv_lists_and_trains_a_shipped_config_by_name(tmp_path):
    source = tmp_path / "source"  # a copy: building leaves build/ and *.egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "cnnrun", source / "cnnrun", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("cnnrun-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    # The dependencies (NumPy, click, ...) come from this environment, after the venv's own
    # packages: the cnnrun imported is the wheel's.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = os.path.dirname(np.__path__[0])
    Path(site, "outer-dependencies.pth").write_text(deps + "\n")
    work = tmp_path / "work"
    work.mkdir()
    env = user_env(tmp_path / "home")
    where = subprocess.run([str(python), "-c", "import cnnrun; print(cnnrun.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where
    cnnrun = str(venv / "bin" / "cnnrun")
    listed = subprocess.run([cnnrun, "configs"], cwd=work, env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and all(n in listed.stdout for n in ("net1", "net2", "robust-pgd", "study"))
    result = subprocess.run([cnnrun, "train", "net2", "--epochs", "1", "--data-dir", real_mnist_dir(),
                             "--set", "data.train_limit=1000", "--set", "data.test_limit=200", "--quiet"],
                            cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "done: net2 test accuracy" in result.stdout
    (run_dir,) = runs.list_runs(str(work / "runs"))
    assert runs.read_json(os.path.join(run_dir, "summary.json"))["epochs_done"] == 1


def test_a_config_is_a_path_or_a_shipped_name_and_configs_lists_them(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    listed = CliRunner().invoke(main, ["configs"])
    assert listed.exit_code == 0 and re.search(r"^net2 +11 layers, 100 epochs", listed.output, re.M)
    printed = CliRunner().invoke(main, ["configs", "net2"])
    assert printed.output == (ROOT / "cnnrun" / "configs" / "net2.yaml").read_text()
    for name in ("net1", "net1.yaml", "configs/net1.yaml"):
        result = CliRunner().invoke(main, ["gradcheck", name, "--samples", "2"])
        assert result.exit_code == 0, (name, result.output)
    result = cli(setup, "train", "net9", "--data-dir", setup["data"])
    assert result.exit_code == 1 and "net9: no such config file, nor a shipped config; shipped: certified-ibp-01, certified-ibp-03, certified-ibp, fashion, fast-fgsm, net1" in result.output
    assert cli(setup, "train", setup["config"], "--data-dir", setup["data"], "--quiet").exit_code == 0  # a path


def trained(setup, *extra):
    result = cli(setup, "train", setup["config"], "--data-dir", setup["data"], "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return runs.list_runs(setup["runs"])[-1]


@pytest.mark.slow
def test_every_verb_takes_a_run_by_the_name_runs_prints_or_a_unique_prefix(setup, tmp_path):
    first = trained(setup)
    name = os.path.basename(first)
    assert name in cli(setup, "runs").output
    for verb in ("eval", "plot", "verify"):
        for given in (name, first, name[:-1]):
            result = cli(setup, verb, given) if verb != "eval" else cli(setup, verb, given, "--data-dir",
                                                                        setup["data"])
            assert result.exit_code == 0 and "no such run" not in result.output, (verb, given, result.output)
    trained(setup)
    result = cli(setup, "eval", name[:9])  # the date: both runs
    assert result.exit_code == 1 and "matches 2 folders" in result.output and "give more of the name" in result.output
    result = cli(setup, "eval", "no-such-run")
    assert result.exit_code == 1 and "no such run folder, nor a run in" in result.output


@pytest.mark.slow
def test_a_run_remembers_its_data_so_eval_attack_export_and_resume_need_no_data_dir(setup, monkeypatch):
    monkeypatch.delenv("CNNRUN_DATA_DIR", raising=False)
    run_dir = trained(setup)
    assert runs.load_run_config(run_dir)["data"]["dir"] == os.path.abspath(setup["data"])
    for args in (["eval"], ["attack", "--eps", "0.1", "--method", "fgsm"], ["export", "--check-images", "4"],
                 ["train", "--resume", run_dir, "--epochs", "5", "--quiet"]):
        result = cli(setup, *args)
        assert result.exit_code == 0, (args, result.output)


def test_a_runs_recorded_data_comes_before_the_environment_and_data_dir_before_both(setup, tmp_path, monkeypatch):
    from idx import make_digits
    run_dir = trained(setup)
    other = make_digits(tmp_path / "other", n_train=40, n_test=7, seed=3)
    monkeypatch.setenv("CNNRUN_DATA_DIR", str(other))  # set for new runs, say in a shell profile
    assert cli(setup, "eval", "--json").output.count('"n": 64') == 1  # the run's own 64 test images
    assert '"n": 7' in cli(setup, "eval", "--json", "--data-dir", other).output
    result = cli(setup, "train", "--resume", run_dir, "--epochs", "5", "--quiet")
    assert result.exit_code == 0 and runs.load_run_config(run_dir)["data"]["dir"] == os.path.abspath(setup["data"])
    assert runs.read_json(os.path.join(run_dir, "summary.json"))["train_samples"] == 256


def test_predict_takes_images_alone_for_the_latest_run(setup, tmp_path):
    from PIL import Image
    run_dir = trained(setup)
    image = tmp_path / "digit.png"
    Image.fromarray((np.arange(28 * 28).reshape(28, 28) % 255).astype(np.uint8)).save(image)
    alone = cli(setup, "predict", image)
    assert alone.exit_code == 0 and alone.output.startswith(f"{image}: "), alone.output
    named = cli(setup, "predict", os.path.basename(run_dir), image)
    assert named.exit_code == 0 and named.output == alone.output
    result = cli(setup, "predict", run_dir)
    assert result.exit_code == 1 and "give one or more images after the run folder" in result.output


def test_a_mistyped_data_dir_is_an_error_and_creates_nothing(setup, tmp_path, monkeypatch):
    monkeypatch.delenv("CNNRUN_DATA_DIR", raising=False)
    typo = tmp_path / "mnsit"
    result = cli(setup, "train", setup["config"], "--data-dir", typo)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert f"{typo}: no such folder (named by --data-dir)" in result.output
    assert not typo.exists() and not os.path.exists(setup["runs"])


def test_a_failed_download_into_the_default_cache_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNRUN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder, named_by = mnist.data_source(None, None)
    assert named_by is None and folder == str(tmp_path / "cache" / "cnnrun" / "mnist")
    with pytest.raises(Exception, match="could not download"):
        mnist.load(folder, "mnist", mirrors=["http://127.0.0.1:9/"], progress=False)  # port 9: refused
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_eval_of_an_unfinished_run_says_so(setup, monkeypatch):
    real = runner.run_epoch

    def stop_in_epoch_2(net, optimizer, config, data, epoch, progress):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(net, optimizer, config, data, epoch, progress)

    monkeypatch.setattr(runner, "run_epoch", stop_in_epoch_2)
    assert cli(setup, "train", setup["config"], "--data-dir", setup["data"], "--quiet").exit_code == 130
    (run_dir,) = runs.list_runs(setup["runs"])
    result = cli(setup, "eval")
    assert result.exit_code == 0
    assert f"note: {run_dir} is not finished (interrupted, 1 of 4 epochs)" in result.output
    assert f"cnnrun train --resume {run_dir}" in result.output
    monkeypatch.setattr(runner, "run_epoch", real)
    assert cli(setup, "train", "--resume", run_dir, "--quiet").exit_code == 0
    assert "not finished" not in cli(setup, "eval").output


@pytest.mark.slow
def test_methods_and_choices_ignore_case_and_a_large_eps_suggests_its_fraction(setup):
    trained(setup)
    result = cli(setup, "attack", "--method", "PGD,Fgsm", "--eps", "8/255", "--steps", "2", "--json")
    assert result.exit_code == 0, result.output
    assert cli(setup, "eval", "--engine", "Reference").exit_code == 0
    result = cli(setup, "attack", "--eps", "25")
    assert result.exit_code == 1 and "did you mean 25/255 = 0.098?" in result.output
    result = cli(setup, "attack", "--eps", "1/0")
    assert result.exit_code == 1 and "a fraction such as 8/255" in result.output


def test_importing_the_command_line_loads_neither_matplotlib_nor_the_engine():
    code = "import sys, cnnrun.cli; print(sorted(m for m in ('matplotlib', 'numpy', 'cnnrun.nn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def captured_figures(monkeypatch):
    """Figures the plot functions save, kept open for inspection instead of written."""
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig))
    return figures


def test_short_runs_have_whole_epoch_ticks_from_the_first_epoch_and_say_their_figures(monkeypatch):
    rows = [dict(epoch=e, train_acc=0.7 + 0.05 * e, test_acc=0.85 if e == 3 else None) for e in (1, 2, 3)]
    fig = plots.curves_figure(rows, "net1")
    left, right = fig.axes
    for ax in (left, right):
        assert ax.get_xlim() == (0.5, 3.5)
        assert all(float(t).is_integer() for t in ax.get_xticks() if 0.5 <= t <= 3.5)
    assert [t.get_text() for t in left.texts] == ["0.8500"]  # the one tested epoch, written out
    assert right.get_yscale() == "linear"  # errors within one decade: no log axis of three labels
    long = [dict(epoch=e, train_acc=1 - 0.5 / e ** 1.5, test_acc=None) for e in range(1, 51)]
    assert plots.curves_figure(long, "x").axes[1].get_yscale() == "log"


def test_pictures_explain_themselves_with_colour_bars_and_captions(monkeypatch):
    figures = captured_figures(monkeypatch)
    rng = np.random.default_rng(0)
    clean = rng.random((3, 28, 28))
    adv = np.clip(clean + rng.choice([-0.1, 0.1], clean.shape), 0, 1)
    plots.adversarial_examples(clean, adv, [1, 2, 3], [1, 2, 3], [0.9] * 3, [1, 5, 3], [0.8] * 3, 0.1, "x", "t")
    plots.filters(rng.standard_normal((4, 1, 3, 3)), "x", "filters")
    (examples, filters) = figures
    bars = [ax for ax in examples.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "-0.1 to +0.1" in bars[0].get_ylabel()
    assert "probability" in examples._supxlabel.get_text() and "Red" in examples._supxlabel.get_text()
    assert [ax.get_ylabel() for ax in examples.axes[:9:3]] == ["clean", "perturbation", "adversarial"]
    red = [ax.title.get_color() for ax in examples.axes[6:9]]  # the adversarial row
    assert red == ["black", "red", "black"]  # only the fooled image's caption
    assert any(ax.get_label() == "<colorbar>" and ax.get_ylabel() == "weight" for ax in filters.axes)
    assert "red positive, blue negative" in filters._supxlabel.get_text()


@pytest.mark.slow
def test_tracking_says_where_it_logs_and_how_to_look(setup):
    uri = f"sqlite:///{setup['tmp'] / 'mlflow.db'}"
    result = cli(setup, "train", setup["config"], "--data-dir", setup["data"], "--quiet", "--mlflow", uri)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"MLflow: logging to {uri} (MLflow takes some seconds")
    assert f"to look: mlflow ui --backend-store-uri {uri}" in result.output


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_the_docs_site_renders_its_equations_with_no_request_to_another_host(tmp_path):
    from playwright.sync_api import sync_playwright
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(site)], cwd=ROOT,
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    page_html = (site / "how-it-works" / "index.html").read_text()
    assert 'cnnrun/nn/reference.py</span>' in page_html  # the reference code, shown beside its equations
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    outside, errors = [], []
    assert os.path.exists(CHROMIUM), "Chromium missing: apt-get install -y chromium (.ci/run does)"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page()

            def route(r):  # the network is off: only this site answers
                if r.request.url.startswith(base) or r.request.url.startswith("data:"):
                    r.continue_()
                else:
                    outside.append(r.request.url)
                    r.abort()
            page.route("**/*", route)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            for name in ("how-it-works/", ""):
                page.goto(base + name)
            page.goto(base + "how-it-works/")
            page.wait_for_function("document.querySelectorAll('mjx-container').length > 0", timeout=30000)
            rendered = page.evaluate("document.querySelectorAll('.arithmatex mjx-container').length")
            formulas = page.evaluate("document.querySelectorAll('.arithmatex').length")
            browser.close()
    finally:
        server.shutdown()
    assert outside == [] and errors == []
    assert formulas >= 5 and rendered == formulas  # every equation typeset, none left as raw TeX
