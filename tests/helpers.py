"""What several test files do with a tiny run: call the CLI in its runs folder, compare metrics."""

from click.testing import CliRunner

from cnnrun import runs
from cnnrun.cli import main


def cli(s, *args):
    """`cnnrun ARGS --runs-dir` the fixture's runs folder."""
    return CliRunner().invoke(main, [str(a) for a in args] + ["--runs-dir", s["runs"]])


def metrics_without_seconds(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in runs.read_metrics(run_dir)]
