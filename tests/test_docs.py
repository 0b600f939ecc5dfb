"""The documentation cannot rot: the site builds strictly, every command of the
tutorial and every code block of the pages that teach runs, and the README stays a
front page."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import real_mnist_dir

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SMALL = ["--set", "data.train_limit=300", "--set", "data.test_limit=100"]


def code_blocks(page, language):
    return re.findall(rf"^```{language}\n(.*?)^```", (DOCS / page).read_text(), re.S | re.M)


@pytest.mark.slow
def test_the_site_builds_with_no_warning_and_generates_its_reference_pages(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    configs = (site / "configs" / "index.html").read_text()
    for text in ("init_gain", "instance_norm", "train.lr_decay", "warmup"):  # from the validator's rules
        assert text in configs, text
    cli = (site / "cli" / "index.html").read_text()
    for text in ("--engine", "--until-epoch", "--check-images"):  # from click
        assert text in cli, text
    assert "load_run" in (site / "python" / "index.html").read_text()  # from the docstrings


@pytest.mark.slow
def test_every_command_of_the_tutorial_runs_and_makes_the_pictures_it_shows(tmp_path):
    data = real_mnist_dir()
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    commands = [line for block in code_blocks("getting-started.md", "bash") for line in block.splitlines()
                if line.startswith("cnnrun ")]
    assert len(commands) >= 7, commands
    env = dict(os.environ, CNNRUN_DATA_DIR=data, MPLBACKEND="Agg")
    for command in commands:
        extra = SMALL + ["--quiet"] if command.split()[1] in ("train", "sweep") else []
        result = subprocess.run(["bash", "-c", " ".join([command] + extra)], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr[-2000:])
    runs_dir = tmp_path / "runs"
    shown = {"curves.png": "*-net2/curves.png", "confusion.png": "*-net2/confusion.png",
             "accuracy_vs_eps.png": "*-net2/attacks/*/accuracy_vs_eps.png",
             "examples-pgd.png": "*-net2/attacks/*/examples-pgd-*.png",
             "comparison.png": "comparison/comparison.png", "sweep-curves.png": "sweeps/*/curves.png"}
    page = (DOCS / "getting-started.md").read_text()
    for image, made in shown.items():
        assert f"images/{image}" in page and (DOCS / "images" / image).is_file(), image
        assert list(runs_dir.glob(made)), f"the tutorial shows {image} but its commands made no {made}"


def run_blocks(page, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    namespace = {}
    for block in code_blocks(page, "python"):
        exec(compile(block, f"{page} block", "exec"), namespace)  # noqa: S102: our own docs
    return namespace


def test_every_step_of_how_it_works_runs_and_checks_itself(monkeypatch):
    namespace = run_blocks("how-it-works.md", ROOT, monkeypatch)
    assert "conv_loops" in namespace and "maxpool_backward_loops" in namespace


def test_every_step_of_the_certified_robustness_page_runs_and_checks_itself(monkeypatch):
    namespace = run_blocks("certified.md", ROOT, monkeypatch)
    assert "crown" in namespace and "ratios" in namespace


@pytest.mark.slow
def test_the_python_page_runs_on_real_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNRUN_DATA_DIR", real_mnist_dir())
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    namespace = run_blocks("python.md", tmp_path, monkeypatch)
    assert (Path(namespace["run_dir"]) / "weights.npz").is_file()
    assert namespace["loss"] > 0


def test_the_readme_is_a_front_page_whose_links_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)", readme)
    local = [link for link in links if not link.startswith("http")]
    assert local, "the README links to the documentation"
    for link in local:
        assert (ROOT / link).exists(), link
