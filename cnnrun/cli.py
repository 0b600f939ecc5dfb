"""The `cnnrun` command line: each verb parses its options, calls the library, prints."""

import json
import os
import shlex
import signal
import sys
import time

import click

from cnnrun import __version__
from cnnrun.errors import CnnrunError, interrupted

# Only what every command needs is imported here: NumPy, the engine and (above all)
# matplotlib are imported by the verbs that use them, so `cnnrun --version`, `runs` and
# `--help` start at once.


class Group(click.Group):
    """A click group that turns a `CnnrunError`, an operating-system error (a folder that
    cannot be written, a full disk) or running out of memory into one line on stderr
    and exit code 1, and Ctrl-C (or SIGTERM) into exit code 130. Any other exception is
    a bug: one line saying so, exit code 1."""

    def parse_args(self, ctx, args):
        ctx.meta["cnnrun.argv"] = list(args)  # what was typed after `cnnrun` (recorded in a run's summary)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            try:
                return super().invoke(ctx)
            except Exception as e:
                if interrupted(e):  # Ctrl-C that landed inside an import
                    raise KeyboardInterrupt from None
                raise
        except (click.exceptions.Exit, click.exceptions.Abort):  # click's own ends: its exit code
            raise
        except CnnrunError as e:
            fail(str(e))
        except click.UsageError as e:  # a mistyped option: one line, and where to read more
            command = f"cnnrun {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "cnnrun"
            click.echo(f"error: {e.format_message()} (see: {command} --help)", err=True)
            sys.exit(2)
        except click.ClickException as e:  # click's other errors (a file it could not open): one line
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except OSError as e:
            fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        except MemoryError:
            fail("out of memory; try a smaller train.batch_size or a smaller network")
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # a bug, not bad input: still one line (CNNRUN_DEBUG=1 shows the traceback)
            if os.environ.get("CNNRUN_DEBUG"):
                raise
            fail(f"internal error, a bug in cnnrun ({type(e).__name__}: {e}); "
                 f"CNNRUN_DEBUG=1 shows where, and a report of it is welcome")


def fail(message):
    """One line on stderr, whatever the message holds (a YAML parser's message spans several)."""
    click.echo("error: " + " ".join(str(message).split()), err=True)
    sys.exit(1)


def format_table(headers, rows):
    """Plain-text table with columns padded to fit."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


weights_option = click.option(
    "--weights", type=click.Choice(["final", "best"], case_sensitive=False), default="final", show_default=True,
    help="final: the run's last weights (weights.npz, or its checkpoint's); best: the epoch train.select chose "
         "on the validation split (best.npz).")


def engine_option(f):
    return click.option("--engine", type=click.Choice(["fast", "reference"], case_sensitive=False), default="fast", show_default=True,
                        help="fast: layers.py on kernels.py. reference: nn/reference.py, every layer written "
                             "as its equations; the same numbers to float tolerance, several times slower.")(f)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnrun")
def main():
    """Train, evaluate and attack convolutional networks written by hand in NumPy.

    Every verb takes a YAML config (see configs/) or a run folder; `cnnrun VERB --help`
    explains each one.
    """
    from cnnrun.nn import parallel

    parallel.keep_freed_memory()
    signal.signal(signal.SIGTERM, stop_as_on_ctrl_c)


def stop_as_on_ctrl_c(signum, frame):
    """SIGTERM (`kill`, a batch system's time limit) stops a verb the way Ctrl-C does:
    a run keeps its last finished epoch and says how to resume."""
    raise KeyboardInterrupt


@main.command(name="bench", short_help="Training and evaluation samples/s, per-layer times.")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--batch-size", type=click.IntRange(min=1), help="Override the config's batch size.")
@click.option("--repeats", type=click.IntRange(min=1), default=7, show_default=True,
              help="Timed repeats; the median is reported.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Untimed repeats first.")
@click.option("--against", type=click.Choice(["torch"], case_sensitive=False),
              help="Also time the PyTorch twin (same layers, same weights) in alternation with "
                   "cnnrun and print both and their ratio (needs pip install -e '.[bench]').")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--engine", type=click.Choice(["fast", "reference"], case_sensitive=False), default="fast", show_default=True,
              help="The engine to time; reference (nn/reference.py) also times the fast one and prints "
                   "how many times slower the reference is.")
def bench_cmd(config, batch_size, repeats, warmup, against, as_json, engine):
    """Measure training and evaluation throughput of CONFIG's network (samples/s).

    Uses random float32 inputs of the config's shape, so no data is needed, and
    shows a per-layer table of forward and backward time. The training step uses
    the config's optimizer; with adversarial training configured, making the
    adversarial examples is timed too and reported beside the plain step.
    """
    from cnnrun.bench import OPENBLAS_FORCING, against_torch, benchmark
    from cnnrun.config import build_network, load_config

    if against:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise CnnrunError("--against torch needs PyTorch: pip install -e '.[bench]'") from None
    cfg = load_config(config)
    batch_size = batch_size or cfg["train"]["batch_size"]
    net = build_network(cfg, batch_size=batch_size, engine=engine)
    result = benchmark(net, cfg["train"], batch_size, repeats, warmup)
    result["config"], result["engine"] = cfg["name"], engine
    if engine == "reference":
        fast = benchmark(build_network(cfg, batch_size=batch_size), cfg["train"], batch_size, repeats, warmup)
        result["fast"] = {k: fast[k] for k in ("train_samples_per_s", "eval_samples_per_s")}
    if against:
        result["against_torch"] = against_torch(net, cfg["train"], batch_size, repeats, warmup)
    if as_json:
        click.echo(json.dumps(result))
        return
    rows = [(l["index"], l["kind"], "x".join(map(str, l["output_shape"])), f"{l['forward_ms']:.2f}",
             "fused" if l["backward_ms"] is None else f"{l['backward_ms']:.2f}",
             f"{l['gemm_ms']:.2f}" if l["gemm_ms"] else "", l["plan"] or "") for l in result["layers"]]
    click.echo(format_table(["#", "layer", "output", "forward ms", "backward ms", "of which GEMM ms",
                             "kernels (kernels.conv_plan)"], rows))
    shown = {f"{l['index']}.{l['kind']}": l["plan"] for l in result["layers"]}
    differ = {name: plan for name, plan in result["part_plans"].items() if plan != shown.get(name)}
    if differ:  # the table times whole batches (and blocks whole); a training step runs parts of it on its threads
        click.echo("in a training step, each part of the batch runs the kernels "
                   + "; ".join(f"{name}: {plan}" for name, plan in differ.items()))
    click.echo(f"\n{cfg['name']}: {result['parameters']:,} parameters, batch {result['batch_size']}, "
               f"{result['threads']} threads (CNNRUN_THREADS), median of {repeats}")
    click.echo(f"train: {result['train_samples_per_s']:,.0f} samples/s ({result['train_step_ms']:.1f} ms/step, "
               f"{result['optimizer']})")
    if "adversarial_batch_ms" in result:
        click.echo(f"adversarial training: {result['adversarial_train_samples_per_s']:,.0f} samples/s "
                   f"(+{result['adversarial_batch_ms']:.1f} ms/step making the adversarial examples)")
    click.echo(f"eval:  {result['eval_samples_per_s']:,.0f} samples/s ({result['eval_step_ms']:.1f} ms/batch)")
    click.echo(f"GEMMs: {result['gemm_ms']:.1f} ms of the fastest training step "
               f"({result['train_step_range_ms'][0]:.1f} ms; {100 * result['gemm_share']:.0f} %), the same matrix "
               f"products timed alone (fastest of {repeats})")
    blas = result["blas"]
    click.echo(f"BLAS:  {blas['library']} {blas['version']}, {blas['kernels']} kernels"
               + (f" (OPENBLAS_CORETYPE={blas['forced']} chose them)" if blas["forced"] else ""))
    if blas["forced"] and blas.get("own_kernels") and blas["own_kernels"] != blas["kernels"]:
        unset = " ".join(f"-u {name}" for name in OPENBLAS_FORCING)
        click.echo(f"       this CPU's own pick is {blas['own_kernels']} (to time on it: env {unset} cnnrun bench ...)")
    if engine == "reference":
        fast = result["fast"]
        click.echo(f"reference engine: {fast['train_samples_per_s'] / result['train_samples_per_s']:.1f}x slower "
                   f"than the fast one in training ({fast['train_samples_per_s']:,.0f} samples/s fast), "
                   f"{fast['eval_samples_per_s'] / result['eval_samples_per_s']:.1f}x in evaluation")
    for line in result["warnings"]:
        click.echo(f"warning: {line}", err=True)
    if against:
        vs = result["against_torch"]
        rows = [(name, f"{vs[name]['cnnrun']:,.0f}", f"{vs[name]['torch']:,.0f}", f"{vs[name]['ratio']:.2f}x")
                for name in ("train", "eval", "attack_step")]
        click.echo(f"\nagainst PyTorch {vs['torch_version']} ({vs['torch_threads']} threads), timed in "
                   f"alternation, median of {repeats}:")
        click.echo(format_table(["samples/s", "cnnrun", "PyTorch", "cnnrun / PyTorch"], rows))


@main.command(name="gradcheck", short_help="Backward pass vs finite differences (float64).")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True,
              help="Random samples in the checked batch.")
@click.option("--samples", type=click.IntRange(min=1), default=20, show_default=True,
              help="Entries checked per tensor.")
@click.option("--seed", type=int, default=0, show_default=True)
@engine_option
def gradcheck_cmd(config, batch_size, samples, seed, engine):
    """Check CONFIG's backward pass against finite differences (float64).

    Each layer on its own, then the whole network on the cross-entropy loss:
    every parameter tensor and the input gradient. Exits 1 if any check fails.
    """
    import numpy as np

    from cnnrun.config import build_network, load_config
    from cnnrun.nn import one_hot
    from cnnrun.nn.gradcheck import TOLERANCE, check_all

    cfg = load_config(config)
    net = build_network(cfg, dtype=np.float64, seed=seed, batch_size=batch_size, engine=engine)
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size,) + net.input_shape)
    k = net.output_shape[0]
    y = one_hot(rng.integers(0, k, batch_size), k, np.float64)
    rows = check_all(net, x, y, rng, samples)
    failed = [r for r in rows if not r[2] <= TOLERANCE]
    click.echo(format_table(["layer", "tensor", "max rel error", "result"],
                            [(w, t, f"{e:.2e}", "pass" if e <= TOLERANCE else "FAIL") for w, t, e in rows]))
    click.echo(f"\n{cfg['name']}: {len(rows) - len(failed)} of {len(rows)} checks pass "
               f"(tolerance {TOLERANCE:g})")
    if failed:
        sys.exit(1)


def runs_dir_option(f):
    return click.option("--runs-dir", type=click.Path(file_okay=False), default="runs", show_default=True,
                        help="Folder holding the run folders.")(f)


def tracking_options(f):
    """--mlflow [URI] and --tensorboard (cnnrun/tracking.py)."""
    f = click.option("--tensorboard", is_flag=True,
                     help="Also write TensorBoard event files in RUN_DIR/tb/ (needs pip install -e "
                          "'.[tensorboard]'); view them with: tensorboard --logdir RUNS_DIR.")(f)
    return click.option("--mlflow", "mlflow", is_flag=False, flag_value="", default=None, metavar="[URI]",
                        help="Also log to MLflow (needs pip install -e '.[mlflow]'): URI, else "
                             "$MLFLOW_TRACKING_URI, else sqlite:///RUNS_DIR/mlflow.db. The run folder stays the "
                             "record; a tracker that fails is one warning, never a failed run.")(f)


def trackers_for(mlflow, tensorboard, runs_dir, cfg=None):
    """The trackers the flags (or else the config's `track:` section) ask for."""
    from cnnrun.tracking import make_trackers
    track = (cfg or {}).get("track") or {}
    if mlflow is None and track.get("mlflow"):
        mlflow = "" if track["mlflow"] is True else track["mlflow"]
    return make_trackers(mlflow, tensorboard or bool(track.get("tensorboard")), runs_dir,
                         log=lambda line: click.echo(line, err=True))


def echo_where(trackers):
    """After a verb that logged: where each tracker logged, and how to look (stderr)."""
    for line in trackers.where():
        click.echo(line, err=True)


def data_dir_option(f):
    return click.option("--data-dir", type=click.Path(file_okay=False),
                        help="Folder of the data set's files (default: $CNNRUN_DATA_DIR, the config's data.dir, "
                             "then ~/.cache/cnnrun/mnist; downloaded there if missing).")(f)


@main.command(name="train", short_help="Train a config in a new run folder (or --resume).")
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.option("--epochs", type=click.IntRange(min=1), help="Override train.epochs (with --resume: train on to N).")
@click.option("--seed", type=click.IntRange(min=0), help="Override the config's seed.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value (repeatable; the value is YAML): a key such as train.lr=0.05, "
                   "or a layer's argument by its index, e.g. model.layers[0].conv.filters=4.")
@click.option("--resume", "resume_dir", type=click.Path(),
              help="Continue the run in this folder (instead of CONFIG): from its checkpoint, from the "
                   "start if it has none, or just its final weights; a finished run is left as it is.")
@data_dir_option
@runs_dir_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no per-epoch lines.")
@engine_option
@tracking_options
def train_cmd(config, epochs, seed, overrides, resume_dir, data_dir, runs_dir, quiet, engine, mlflow, tensorboard):
    """Train CONFIG's network on its data set (data.dataset: MNIST unless it names another)
    in a new run folder under --runs-dir.

    Evaluates on the test set every train.eval_every epochs and after the last;
    writes config.yaml, metrics.csv, checkpoint.npz, weights.npz, summary.json and
    curves.png. Ctrl-C stops after saving; --resume RUN_DIR continues exactly.
    """
    from cnnrun import runs
    from cnnrun.config import apply_override, build_network, load_config
    from cnnrun.data import check_data_fits, load_data, with_data_location
    from cnnrun.data import augment
    from cnnrun.training import check_adversarial, check_batches
    from cnnrun.runner import Stopped, resume_action, train_run

    if (config is None) == (resume_dir is None):
        raise CnnrunError("give either CONFIG (a new run) or --resume RUN_DIR, not both or neither")
    if resume_dir:
        if overrides or seed is not None:
            raise CnnrunError("--resume continues a run as configured; only --epochs may change")
        run_dir = runs.resolve_run(resume_dir, runs_dir)
        cfg = runs.load_run_config(run_dir)
        if epochs is not None:
            cfg = apply_override(cfg, f"train.epochs={epochs}", "--epochs")
        action = resume_action(run_dir, cfg["train"]["epochs"])  # refuses a shrink, changing nothing
        if action == "nothing":
            click.echo(f"{run_dir}: already finished ({cfg['train']['epochs']} epochs); nothing to do")
            return
        if action == "repair":
            click.echo(f"{run_dir}: weights.npz is damaged; writing it again from the checkpoint, which holds "
                       f"the same numbers", err=True)
    else:
        cfg = load_config(config)
        for assignment in overrides:
            cfg = apply_override(cfg, assignment)
        if epochs is not None:
            cfg = apply_override(cfg, f"train.epochs={epochs}", "--epochs")
        if seed is not None:
            cfg = apply_override(cfg, f"seed={seed}", "--seed")
    net = build_network(cfg)  # a config that does not build, or would not fit in memory, fails before any data is read
    trackers = trackers_for(mlflow, tensorboard, runs_dir, cfg)  # a bad URI too
    of_run = bool(resume_dir)  # a resumed run reads the data it recorded, unless --data-dir says otherwise
    data = load_data(cfg, data_dir, progress=not quiet, of_run=of_run)
    cfg = with_data_location(cfg, data_dir, of_run)  # config.yaml says where the data is: eval, attack, resume find it
    for images, labels in data.values():  # and data that does not fit it, before a run folder is made
        check_data_fits(net, images, labels)
    check_batches(net, len(data["train"][0]), cfg["train"]["batch_size"])
    check_adversarial(net, cfg["train"]["adversarial"])
    if cfg["data"]["augment"]:
        augment.check(cfg["data"]["augment"], net.input_shape)
    if not resume_dir:
        run_dir = runs.new_run_dir(runs_dir, cfg["name"], cfg)
    show = not quiet
    if show:
        click.echo(f"{'resuming' if resume_dir else 'training'} {cfg['name']} in {run_dir} "
                   f"({len(data['train'][0])} training, {len(data['test'][0])} test images)")
    command = " ".join(["cnnrun"] + [shlex.quote(str(a)) for a in click.get_current_context().meta["cnnrun.argv"]])
    try:
        summary = train_run(cfg, run_dir, data, resume=bool(resume_dir), progress=show and sys.stderr.isatty(),
                            log=click.echo if show else (lambda _: None), command=command, engine=engine,
                            trackers=trackers)
    except Stopped as e:
        click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    acc = summary["final_test_acc"]
    click.echo(f"done: {cfg['name']} test accuracy {acc:.4f} (best {summary['best_test_acc']:.4f} at epoch "
               f"{summary['best_epoch']}), {summary['wall_time_s']:.0f}s, "
               f"{summary['train_samples_per_s'] or 0:,.0f} samples/s -> {run_dir}")
    echo_where(trackers)


@main.command(name="eval", short_help="Test accuracy, per class, confusion matrix, mistakes.")
@click.argument("run_dir", type=click.Path(), required=False)
@data_dir_option
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@engine_option
@weights_option
@tracking_options
def eval_cmd(run_dir, data_dir, runs_dir, as_json, engine, weights, mlflow, tensorboard):
    """Evaluate a run's weights on the test set (default: the latest run).

    Prints accuracy, loss and per-class accuracy; saves eval.json, confusion.png
    (confusion matrix) and misclassified.png (a grid of mistakes) in the run folder.
    """
    from cnnrun.data import check_data_fits, load_data
    from cnnrun.reports import evaluate_run

    trackers = trackers_for(mlflow, tensorboard, runs_dir)
    run_dir, cfg, net = load_run(run_dir, runs_dir, engine=engine, weights=weights.lower())
    x, labels = load_data(cfg, data_dir, progress=not as_json, splits=("test",), of_run=True)["test"]
    check_data_fits(net, x, labels)
    result = evaluate_run(run_dir, cfg, net, x, labels)
    trackers.sync_run(run_dir)
    echo_where(trackers)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{cfg['name']} ({run_dir}): test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}, "
               f"{result['errors']} errors in {result['n']}")
    click.echo(format_table(["class", "accuracy", "n"], [(c, f"{acc:.4f}", n) for c, (acc, n) in
                                                         enumerate(zip(result["per_class_accuracy"],
                                                                       result["class_counts"]))]))
    click.echo(f"saved eval.json, confusion.png, misclassified.png in {run_dir}")


def echo_sweep_summary(table, at_epoch, verb, sweep_dir):
    """Print a sweep's summary rows (at epoch `at_epoch` if given) and the files written."""
    from cnnrun.reports import cell
    from cnnrun.sweep import SUMMARY_COLUMNS

    if at_epoch is not None:
        click.echo(f"test accuracy at epoch {at_epoch}:")
    click.echo(format_table(SUMMARY_COLUMNS, [[cell(r[c]) for c in SUMMARY_COLUMNS] for r in table]))
    extra = f", summary-epoch-{at_epoch}.csv/.md" if at_epoch is not None else ""
    click.echo(f"{verb} results.csv, summary.csv, summary.md{extra} and curves.png in {sweep_dir}")


@main.command(name="plot", short_help="Redraw a run's plots; compare several runs.")
@click.argument("run_dirs", nargs=-1, type=click.Path())
@runs_dir_option
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for the comparison of several runs [default: RUNS_DIR/comparison].")
@click.option("--at-epoch", type=click.IntRange(min=1),
              help="Sweeps: also summarise every run's test accuracy at this epoch, finished or not "
                   "(summary-epoch-N.csv/.md).")
def plot_cmd(run_dirs, runs_dir, out, at_epoch):
    """Redraw a run's plots (default: the latest); with several runs, compare them.

    Per run: curves.png (test accuracy, training error) and filters.png (first conv
    layer). Several runs: comparison.png with a line per run, and comparison.md /
    comparison.csv tables (network, epochs, final and best test accuracy).
    A sweep folder: its results.csv, summary.csv/.md and curves.png, from its runs;
    with --at-epoch N, also the seeds compared at epoch N while some still train.
    """
    from cnnrun import runs
    from cnnrun.reports import COMPARISON_COLUMNS, compare_runs, redraw_run

    from cnnrun import sweep

    run_dirs = [runs.locate(d, runs_dir) for d in run_dirs]  # names as `cnnrun runs` prints them
    sweeps = [d for d in run_dirs if sweep.is_sweep(d)]
    if at_epoch is not None:
        if not run_dirs:
            raise CnnrunError("--at-epoch summarises sweep folders: give one or more")
        for d in run_dirs:
            if d not in sweeps:
                raise CnnrunError(f"{d}: not a sweep folder (--at-epoch summarises sweep folders only)")
    for d in sweeps:
        echo_sweep_summary(sweep.write_results(d, at_epoch), at_epoch, "redrew", d)
    run_dirs = [d for d in run_dirs if d not in sweeps]
    if sweeps and not run_dirs:
        return
    dirs = [runs.resolve_run(d, runs_dir) for d in run_dirs] or [runs.resolve_run(None, runs_dir)]
    table = []
    for d in dirs:
        _, cfg, net = runs.load_run(d, runs_dir, need_weights=False)  # no weights yet: curves only
        table.append(redraw_run(d, cfg, net))
        click.echo(f"redrew {d}")
    if len(dirs) > 1:
        out = out or os.path.join(runs_dir, "comparison")
        click.echo(format_table(COMPARISON_COLUMNS, compare_runs(table, out)))
        click.echo(f"saved comparison.png, comparison.md, comparison.csv in {out}")


@main.command(name="runs", short_help="List runs: epochs, accuracy, status.")
@runs_dir_option
def runs_cmd(runs_dir):
    """List the runs in --runs-dir: epochs done, test accuracy, status."""
    from cnnrun import runs, sweep

    found, sweeps = runs.list_runs(runs_dir), sweep.list_sweeps(runs_dir)
    if not found and not sweeps:
        click.echo(f"no runs in {runs_dir}")
        return
    rows = []
    for d in found:
        s = runs.read_json(os.path.join(d, "summary.json"), {})
        acc = [s.get("final_test_acc"), s.get("best_test_acc")]
        rows.append((os.path.basename(d), s.get("name", "?"), f"{s.get('epochs_done', 0)}/{s.get('epochs_planned', '?')}",
                     *("" if not isinstance(a, (int, float)) else f"{a:.4f}" for a in acc), runs.run_status(s, d)))
    if rows:
        click.echo(format_table(["run", "config", "epochs", "final acc", "best acc", "status"], rows))
    if sweeps:
        rows = []
        for d in sweeps:
            try:
                results = sweep.result_rows(d)
            except CnnrunError as e:
                rows.append((os.path.basename(d), "?", f"unreadable: {e}"))
                continue
            counts = {}
            for r in results:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            rows.append((os.path.basename(d), len(results), ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))))
        click.echo(("\n" if found else "") + format_table(["sweep", "runs", "status"], rows))


@main.command(name="configs", short_help="List the configs shipped with cnnrun; print one.")
@click.argument("name", required=False)
def configs_cmd(name):
    """List the configs that ship with cnnrun (give one by name to train, bench or sweep
    it: `cnnrun train net2`); with NAME, print that config's YAML, to copy and edit:
    `cnnrun configs net2 > my-net.yaml`.
    """
    from cnnrun.config import find_config, read_yaml, shipped_configs

    if name:
        path = find_config(name)
        read_yaml(path)  # a file that is not YAML is one error line
        with open(path, encoding="utf-8") as f:
            click.echo(f.read(), nl=False)
        return
    rows = []
    for key, path in shipped_configs().items():
        raw = read_yaml(path)
        with open(path, encoding="utf-8") as f:
            first = next((line[1:].strip() for line in f if line.startswith("#")), "")
        if isinstance(raw, dict) and "configs" in raw:
            what = f"sweep of {len(raw['configs'])} configs"
        else:
            train = raw.get("train", {}) if isinstance(raw, dict) else {}
            what = f"{len(raw['model']['layers'])} layers, {train.get('epochs', '?')} epochs"
        rows.append((key, what, first))
    click.echo(format_table(["config", "what", "description"], rows))
    click.echo("\ntrain one by name: cnnrun train net2; print it: cnnrun configs net2")


@main.command(name="verify", short_help="Check that a run's files are what was written.")
@click.argument("run_dirs", nargs=-1, type=click.Path())
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file checked.")
def verify_cmd(run_dirs, runs_dir, as_json):
    """Check every file of run folders or sweep folders (default: every run and sweep in
    --runs-dir): config.yaml and metrics.csv readable, summary.json a summary, and
    weights.npz and checkpoint.npz the very bytes written (the SHA-256 that summary.json
    recorded) and loadable into the config's network.

    Prints each file's state: intact, missing, unrecorded (no digest: written by a cnnrun
    before 0.2.0) or damaged. Exits 1 if anything is damaged. A finished run whose
    weights.npz is damaged is repaired by `cnnrun train --resume RUN_DIR` from an intact
    checkpoint.
    """
    from cnnrun import runs, sweep

    if run_dirs:
        folders = []
        for d in run_dirs:
            d = runs.locate(d, runs_dir)
            if sweep.is_sweep(d):
                _, entries = sweep.load_sweep(d)
                folders += [os.path.join(d, e["run"]) for e in entries]
            else:
                folders.append(runs.resolve_run(d, runs_dir))
    else:
        folders = runs.list_runs(runs_dir)
        for d in sweep.list_sweeps(runs_dir):
            folders += [os.path.join(d, e["run"]) for e in sweep.load_sweep(d)[1]]
        if not folders:
            raise CnnrunError(f"{runs_dir}: no runs to verify")
    rows = []
    for d in folders:
        checks = runs.verify_run(d) if runs.is_run(d) else [("config.yaml", "missing", f"{d}: not a run folder")]
        rows += [(d, name, state, detail) for name, state, detail in checks]
    if as_json:
        for d, name, state, detail in rows:
            click.echo(json.dumps(dict(run=d, file=name, state=state, detail=detail)))
    else:
        click.echo(format_table(["run", "file", "state", "detail"],
                                [(d, n, st, det if st != "intact" else "") for d, n, st, det in rows]))
    damaged = sorted({d for d, _, state, _ in rows if state == "damaged"})
    runs_word = "run" if len(folders) == 1 else "runs"
    if damaged:
        click.echo(f"{len(damaged)} of {len(folders)} {runs_word} damaged: {', '.join(damaged)}", err=True)
        sys.exit(1)
    if not as_json:
        click.echo(f"{len(folders)} {runs_word}: every file intact or not yet written")


@main.command(name="predict", short_help="Classify your own digit images.")
@click.argument("args", nargs=-1, required=True, metavar="[RUN_DIR] IMAGE...")
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
def predict_cmd(args, runs_dir, as_json):
    """Classify your own digit images (PNG/JPEG, any size) with a run's weights
    (RUN_DIR: a path, a name `cnnrun runs` prints or a unique prefix; default: the
    latest run).

    Each image is made MNIST-like: grayscale, inverted if the digit is dark on
    light, scaled into 20x20 and centred in 28x28.
    """
    import numpy as np

    from cnnrun.images import read_image, to_mnist

    run_dir, images = split_run_and_files(args, runs_dir)
    if not images:
        raise CnnrunError(f"give one or more images after the run folder, e.g. cnnrun predict {args[0]} digit.png")
    run_dir, cfg, net = load_run(run_dir, runs_dir, batch_size=len(images))
    c, h, w = net.input_shape
    if c != 1:
        raise CnnrunError(f"{run_dir}: the network takes {c}-channel images; predict handles grayscale only")
    batch = np.stack([to_mnist(read_image(p), (h, w)) for p in images])[:, None]
    probs = net.forward(batch)
    for path, p in zip(images, probs):
        label = int(p.argmax())
        if as_json:
            click.echo(json.dumps(dict(image=path, label=label, probabilities=[round(float(v), 6) for v in p])))
        else:
            click.echo(f"{path}: {label} ({p[label]:.3f})   " + " ".join(f"{i}:{v:.2f}" for i, v in enumerate(p)))


def split_run_and_files(args, runs_dir):
    """`[RUN_DIR] IMAGE...` -> `(run or None, images)`: the first argument is an image when
    its name ends as a picture's does (.png, .jpg, ... as Pillow reads them) and it is
    not a folder; otherwise it names the run."""
    from PIL import Image

    first = args[0]
    picture = os.path.splitext(first)[1].lower() in Image.registered_extensions()
    if picture and not os.path.isdir(first):
        return None, list(args)
    return first, list(args[1:])


def load_run(run_dir, runs_dir, **options):
    """`runs.load_run`, saying on stderr when the run is not finished (its checkpoint's weights)."""
    from cnnrun import runs

    run_dir, cfg, net = runs.load_run(run_dir, runs_dir, **options)
    note = runs.unfinished_note(run_dir) if options.get("weights", "final") == "final" else None
    if note:
        click.echo(note, err=True)
    return run_dir, cfg, net


def parse_eps(values):
    """`--eps 0.1 --eps 0.2,0.3` -> [0.1, 0.2, 0.3], each in [0, 1]."""
    out = []
    for value in values:
        for part in str(value).split(","):
            try:
                top, slash, bottom = part.partition("/")  # 8/255 is 0.0314
                eps = float(top) / float(bottom) if slash else float(part)
            except (ValueError, ZeroDivisionError):
                raise CnnrunError(f"--eps {part!r}: expected a number in [0, 1], or a fraction such as 8/255") from None
            if not 0 <= eps <= 1:
                hint = f"; did you mean {eps:g}/255 = {eps / 255:.3f}?" if 1 < eps <= 255 else ""
                raise CnnrunError(f"--eps {eps:g}: must be in [0, 1] (pixel units of images scaled to [0, 1]){hint}")
            out.append(eps)
    return sorted(set(out))


@main.command(name="attack", short_help="FGSM / BIM / PGD / APGD / FAB-T / Square / AutoAttack accuracy per eps.")
@click.argument("run_dirs", nargs=-1, type=click.Path())
@click.option("--eps", "eps_values", multiple=True, default=["0.1"], show_default=True,
              help="Perturbation size in pixel units (images in [0, 1]): a number or a fraction such as 8/255; "
                   "repeatable or a comma list (0.05,0.1,0.2,0.3).")
@click.option("--method", "methods", multiple=True, default=["fgsm"], show_default=True,
              help="fgsm, bim (iterative FGSM), pgd (BIM from random starts), apgd-ce (APGD on cross-entropy), "
                   "apgd-t (targeted APGD on the DLR loss), fab-t (targeted FAB: smallest perturbation across "
                   "the boundary), square (gradient-free random search, --queries forward passes), autoattack "
                   "(AutoAttack's standard suite: apgd-ce, apgd-t, fab-t, square, each on what the ones before "
                   "left; the figure to set beside published ones) or autoattack-apgd (its first two only: about "
                   "a fifth of the time on a robust network, but no gradient-free attack, so it can be fooled "
                   "by masked gradients); repeatable or a comma list.")
@click.option("--steps", type=click.IntRange(min=1), help="Steps of the iterative attacks [default: 40 for bim and "
                                                          "pgd, 100 for the APGD methods and fab-t].")
@click.option("--queries", type=click.IntRange(min=1), default=5000, show_default=True,
              help="square (alone or in autoattack): queries, each one forward pass of the images still robust.")
@click.option("--masking-check/--no-masking-check", default=True, show_default=True,
              help="With autoattack: also run it at eps 0.5 on the first 100 images, where every image should "
                   "fall, and warn if some do not (or if Square broke images the gradient attacks left).")
@click.option("--step-size", type=click.FloatRange(min=0, min_open=True),
              help="Step of bim and pgd [default: 2.5 * eps / steps].")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Random starts of pgd and the APGD methods (per target for apgd-t).")
@click.option("--targets", type=click.IntRange(min=1), default=9, show_default=True,
              help="apgd-t and fab-t: target the N most likely other classes in turn.")
@click.option("--limit", type=click.IntRange(min=1), help="Attack only the first N test images [default: all].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of pgd's random starts.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for the comparison of several runs [default: RUNS_DIR/attack-comparison].")
@data_dir_option
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@weights_option
@tracking_options
def attack_cmd(run_dirs, eps_values, methods, steps, queries, masking_check, step_size, restarts, targets, limit,
               seed, out, data_dir, runs_dir, as_json, weights, mlflow, tensorboard):
    """Attack a run's network with adversarial examples (default: the latest run).

    Reports, per method and eps, the accuracy on the attacked test images and the
    attack's success rate among the images classified right when clean; for
    autoattack, the robust accuracy after each of its attacks. Saves results (JSON,
    CSV), stages.csv, per_image.csv (each image's prediction, and which attack of a
    suite broke it), accuracy-vs-eps plot and example grids in a new folder
    RUN_DIR/attacks/...; with several runs, also a comparison plot and table.

    On a robust network autoattack takes minutes per 1,000 images: FAB-T and Square
    run on every image the gradient attacks leave robust (times: docs/attacks.md).
    """
    from cnnrun.robustness.attacks import METHODS
    from cnnrun.data import check_data_fits, load_data
    from cnnrun.reports import attack_run, compare_attacks

    eps_list = parse_eps(eps_values)
    methods = [m.strip().lower() for value in methods for m in value.split(",")]  # PGD is pgd
    for m in methods:
        if m not in METHODS:
            raise CnnrunError(f"--method {m!r}: expected one of {', '.join(METHODS)}")
    trackers = trackers_for(mlflow, tensorboard, runs_dir)
    loaded = [load_run(d, runs_dir, weights=weights.lower()) for d in (run_dirs or [None])]
    x, labels = load_data(loaded[0][1], data_dir, progress=not as_json, splits=("test",), of_run=True)["test"]
    x, labels = x[:limit], labels[:limit]
    for _, _, net in loaded:
        check_data_fits(net, x, labels)
    progress = not as_json and sys.stderr.isatty()
    reports = [attack_run(run_dir, cfg, net, x, labels, methods, eps_list, progress, seed=seed,
                          masking_check=masking_check, steps=steps, step_size=step_size, restarts=restarts,
                          targets=targets, queries=queries) for run_dir, cfg, net in loaded]
    for r in reports:
        for line in r["warnings"]:
            click.echo(f"warning: {r['network']}: {line}", err=True)
    for run_dir, _, _ in loaded:
        trackers.sync_run(run_dir)
    echo_where(trackers)
    if as_json:
        click.echo(json.dumps(reports[0] if len(reports) == 1 else reports))
        return
    for r in reports:
        click.echo(f"{r['network']} ({r['run']}): clean accuracy {r['clean_accuracy']:.4f} on {r['n']} images")
        click.echo(format_table(["method", "eps", "accuracy", "success rate"],
                                [(q["method"], f"{q['eps']:g}", f"{q['accuracy']:.4f}", f"{q['success_rate']:.4f}")
                                 for q in r["results"]]))
        for q in r["results"]:
            if "after_each" in q:
                click.echo(f"{q['method']} at eps {q['eps']:g}, robust after each attack: " + " -> ".join(
                    f"{name} {acc:.4f} ({q['seconds_each'][name]:.0f} s)" for name, acc in q["after_each"].items()))
        click.echo(f"saved in {r['folder']}\n")
    if len(reports) > 1:
        out = out or os.path.join(runs_dir, "attack-comparison")
        columns, rows = compare_attacks(reports, methods, eps_list, out)
        click.echo(format_table(columns, rows))
        click.echo(f"saved comparison.png, comparison.md and comparison.csv in {out}")


@main.command(name="certify", short_help="Certified accuracy per eps by interval bounds: no attack can do better.")
@click.argument("run_dirs", nargs=-1, type=click.Path())
@click.option("--eps", "eps_values", multiple=True, default=["0.1"], show_default=True,
              help="Radius of the Linf ball in pixel units (images in [0, 1]): a number or a fraction such as "
                   "8/255; repeatable or a comma list (0.1,0.3).")
@click.option("--method", "methods", multiple=True, default=["ibp"], show_default=True,
              help="ibp: interval bound propagation (Gowal et al. 2018), each layer's output box from its input's; "
                   "crown-ibp: CROWN's linear bounds for the margins over IBP's boxes (Zhang et al. 2020), as fast "
                   "and tighter; crown: CROWN (Zhang et al. 2018) for every unstable relu input too, the tightest "
                   "and the slowest. Repeatable or a comma list; with several, also 'best': each "
                   "margin's tightest bound among them.")
@click.option("--limit", type=click.IntRange(min=1), help="Certify only the first N test images [default: all].")
@data_dir_option
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON, in the shape of attack's.")
@weights_option
@tracking_options
def certify_cmd(run_dirs, eps_values, methods, limit, data_dir, runs_dir, as_json, weights, mlflow, tensorboard):
    """Certify a run's network (default: the latest run) on the test images.

    For each image and eps, a lower bound of every margin z_y - z_k over the whole Linf
    ball around the image (intersected with [0, 1]); an image is certified when it is
    classified correctly and every bound is above 0: no perturbation within eps, found
    by any attack, can change its class. The certified accuracy is a lower bound of the
    robust accuracy, as an attack's accuracy is an upper one. Saves results (JSON,
    CSV), per_image.csv and certified_vs_eps.png (beside the run's latest attack, if
    any) in a new folder RUN_DIR/certify/... .
    """
    from cnnrun.data import check_data_fits, load_data
    from cnnrun.reports import certify_run

    eps_list = parse_eps(eps_values)
    from cnnrun.robustness.bounds import METHODS

    methods = list(dict.fromkeys(m.strip().lower() for value in methods for m in value.split(",")))
    for m in methods:
        if m not in METHODS:
            raise CnnrunError(f"--method {m!r}: expected one of {', '.join(METHODS)}")
    trackers = trackers_for(mlflow, tensorboard, runs_dir)
    loaded = [load_run(d, runs_dir, weights=weights.lower()) for d in (run_dirs or [None])]
    x, labels = load_data(loaded[0][1], data_dir, progress=not as_json, splits=("test",), of_run=True)["test"]
    x, labels = x[:limit], labels[:limit]
    reports = []
    for run_dir, cfg, net in loaded:
        check_data_fits(net, x, labels)
        reports.append(certify_run(run_dir, cfg, net, x, labels, eps_list, methods,
                                   progress=not as_json and sys.stderr.isatty()))
        trackers.sync_run(run_dir)
    echo_where(trackers)
    if as_json:
        click.echo(json.dumps(reports[0] if len(reports) == 1 else reports))
        return
    rows = [(r["network"], q["method"], f"{q['eps']:g}", f"{q['accuracy']:.4f}", q["n"], f"{q['seconds']:.1f}")
            for r in reports for q in r["results"]]
    click.echo(format_table(["network", "method", "eps", "certified accuracy", "images", "seconds"], rows))
    for r in reports:
        if r["ibp_layers"]:
            click.echo(f"{r['network']}: CROWN bounded these layers by IBP (it does not pass them): "
                       f"{', '.join(r['ibp_layers'])}")
        click.echo(f"{r['network']}: results, per-image bounds and certified_vs_eps.png in {r['folder']}")


@main.command(name="sweep", short_help="Many runs (configs x grid x seeds) on Dask, locally or on a cluster.")
@click.argument("sources", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--seeds", help="Seeds: a range 0-4 or a list 0,1,2 [default: the spec's, else 0].")
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2",
              help="Train every value of a config key, e.g. --grid train.lr=0.005,0.01 (repeatable: "
                   "the product of all).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value in every run, e.g. --set train.epochs=20 (repeatable).")
@click.option("--name", help="Name of the sweep folder [default: the spec's name, else 'sweep'].")
@click.option("--resume", "resume_dir", type=click.Path(),
              help="Continue this sweep folder: finished runs are skipped, stopped ones resume.")
@click.option("--until-epoch", type=click.IntRange(min=1),
              help="Train every run only up to this epoch and pause it there (seeds advance in step; "
                   "--resume goes on).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes of the local cluster, one BLAS thread each [default: the number of cores].")
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="Send the runs to this existing Dask scheduler instead of starting a local cluster.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10, show_default=True,
              help="Seconds to wait for the scheduler and its first worker.")
@click.option("--dashboard", is_flag=True, help="Serve the local cluster's Dask dashboard on port 8787.")
@data_dir_option
@runs_dir_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no per-run lines.")
@tracking_options
def sweep_cmd(sources, seeds, grid, overrides, name, resume_dir, until_epoch, workers, scheduler, timeout, dashboard,
              data_dir, runs_dir, quiet, mlflow, tensorboard):
    """Train every combination of configs, grid settings and seeds as ordinary runs, in
    parallel on Dask distributed, in a sweep folder RUNS_DIR/sweeps/TIMESTAMP-NAME/.

    SOURCES is a sweep spec (a YAML file listing `configs`, `seeds`, `grid` and `set`)
    or one or more configs. The sweep folder holds each run's folder, sweep.yaml (the
    plan), results.csv, summary.csv/.md (mean, standard deviation, min and max of the
    final test accuracy per config and setting) and curves.png. Runs use one BLAS
    thread each; a run whose worker dies is rescheduled and resumes from its checkpoint.
    With little time for long runs, --until-epoch N brings every run to epoch N first
    (compare them there with `cnnrun plot SWEEP_DIR --at-epoch N`), and a later
    --resume, with a larger N or none, goes on.
    """
    from cnnrun import runs, sweep
    from cnnrun.config import find_config, parse_assignment

    sweep.require_dask()
    if resume_dir:
        if sources or seeds or grid or overrides or name:
            raise CnnrunError("--resume continues a sweep as planned; give no configs, --seeds, --grid, --set "
                              "or --name with it")
        resume_dir = runs.locate(resume_dir, runs_dir)
        sweep.check_runs(resume_dir)  # a damaged folder is one line, before any cluster starts
        sweep_dir = resume_dir
    else:
        if not sources:
            raise CnnrunError("give a sweep spec or one or more configs (or --resume SWEEP_DIR)")
        sources = [find_config(p) for p in sources]  # a path, or a shipped config's name
        spec_files = [p for p in sources if sweep.is_spec_file(p)]
        if spec_files and len(sources) > 1:
            raise CnnrunError(f"{spec_files[0]}: a sweep spec is given alone, not with other files")
        if spec_files:
            raw, spec_dir = sweep.load_spec(spec_files[0]), os.path.dirname(os.path.abspath(spec_files[0]))
            source = spec_files[0]
        else:
            raw, spec_dir, source = dict(configs=list(sources)), None, "sweep"
        spec = sweep.check_spec(raw, source)
        if seeds is not None:
            spec["seeds"] = sweep.parse_seeds(seeds, "--seeds")
        for text in grid:
            key, values = sweep.parse_grid_option(text)
            spec["grid"][key] = values
        for text in overrides:  # checked against each config when the plan is expanded
            key, value = parse_assignment(text)
            spec["set"][key] = value
        if name is not None:
            spec["name"] = name
        spec = sweep.check_spec(spec, "the sweep")
        entries, configs = sweep.expand(spec, spec_dir)
        if data_dir or os.environ.get("CNNRUN_DATA_DIR"):  # each run's config.yaml says where its data is
            from cnnrun.data import with_data_location
            configs = [with_data_location(c, data_dir) for c in configs]
    if resume_dir:  # the runs' `track:` section, as the sweep was planned
        _, planned = sweep.load_sweep(resume_dir)
        first = runs.load_run_config(os.path.join(resume_dir, planned[0]["run"])) if planned else None
    else:
        first = configs[0] if configs else None
    trackers = trackers_for(mlflow, tensorboard, runs_dir, first)
    cluster = sweep.Cluster(scheduler, workers, dashboard, timeout)
    stopped = local = False
    with cluster as client:
        if not resume_dir:
            sweep_dir = sweep.create_sweep(runs_dir, spec, entries, configs)
        _, entries = sweep.load_sweep(sweep_dir)
        todo = sweep.pending_runs(sweep_dir, entries, until_epoch)
        up_to = f" up to epoch {until_epoch}" if until_epoch else ""
        click.echo(f"sweep {os.path.basename(sweep_dir)}: {len(todo)} of {len(entries)} runs to train{up_to} on "
                   f"{cluster.describe()} -> {sweep_dir}")
        try:
            table, failures = sweep.run_sweep(sweep_dir, client, data_dir, progress=not quiet and sys.stderr.isatty(),
                                              log=(lambda _: None) if quiet else click.echo, until=until_epoch,
                                              trackers=trackers)
        except BaseException as e:
            if not interrupted(e):
                raise
            stopped, local = True, cluster.stop_now()
    if stopped:  # the cluster is closed: no worker of it can still write a run's summary
        if local:
            sweep.mark_interrupted(sweep_dir, entries)
        click.echo(f"interrupted; resume with: cnnrun sweep --resume {shlex.quote(sweep_dir)}", err=True)
        sys.exit(130)
    echo_sweep_summary(table, until_epoch, "saved", sweep_dir)
    untested = [e for e in entries if until_epoch
                and sweep.accuracy_at_epoch(os.path.join(sweep_dir, e["run"]), until_epoch) is None]
    if untested:
        click.echo(f"{len(untested)} run(s) have no test accuracy at epoch {until_epoch}: a run is tested "
                   f"every train.eval_every epochs (and a diverged one stops early)")
    if failures:
        raise CnnrunError(f"{len(failures)} run(s) failed, first {failures[0][0]}: {failures[0][1]}; "
                          f"resume with: cnnrun sweep --resume {shlex.quote(sweep_dir)}")


@main.command(name="export", short_help="Write a run's network as an ONNX model, checked by onnxruntime.")
@click.argument("run_dir", type=click.Path(), required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="The .onnx file [default: RUN_DIR/model.onnx].")
@click.option("--check-images", type=click.IntRange(min=1), default=100, show_default=True,
              help="Test images onnxruntime must classify as cnnrun does before the file is written.")
@data_dir_option
@runs_dir_option
@weights_option
@tracking_options
def export_cmd(run_dir, output, check_images, data_dir, runs_dir, weights, mlflow, tensorboard):
    """Export a run's network (default: the latest run) to ONNX (opset 17).

    The model takes `image`, float32 (N, C, H, W) in [0, 1] with a dynamic batch
    axis, and gives `probabilities` and `logits` (N, K); a `normalize` layer is
    included, so it reads raw pixels as `cnnrun predict` does. Before writing, the
    model must pass onnx.checker and give, in onnxruntime, the same probabilities
    (within 1e-5) as cnnrun on the run's first test images.
    """
    from cnnrun import __version__, export, runs
    from cnnrun.data import check_data_fits, load_data
    from cnnrun.fileio import write_atomic

    export.require_onnx()
    trackers = trackers_for(mlflow, tensorboard, runs_dir)
    weights = weights.lower()
    run_dir, cfg, net = load_run(run_dir, runs_dir, weights=weights)
    x = load_data(cfg, data_dir, progress=False, splits=("test",), of_run=True)["test"][0][:check_images]
    check_data_fits(net, x)
    summary = runs.read_json(os.path.join(run_dir, "summary.json"), {})
    metadata = dict(config=cfg["name"], run=os.path.basename(os.path.abspath(run_dir)),
                    test_accuracy=summary.get("final_test_acc"), cnnrun_version=__version__, weights=weights)
    data, difference = export.export(net, x, metadata)
    output = output or os.path.join(run_dir, "model.onnx" if weights == "final" else "model-best.onnx")
    write_atomic(output, data)
    click.echo(f"wrote {output} ({len(data):,} bytes, opset {export.OPSET}); onnxruntime agrees with cnnrun on "
               f"{len(x)} test images (largest probability difference {difference:.1e})")
    trackers.sync_run(run_dir)
    echo_where(trackers)


@main.command(name="track", short_help="Log run folders or sweeps to MLflow / TensorBoard, afterwards.")
@click.argument("paths", nargs=-1, type=click.Path())
@runs_dir_option
@tracking_options
def track_cmd(paths, runs_dir, mlflow, tensorboard):
    """Log run folders, or sweep folders (a parent run and a child per run), to the
    trackers given (default: every run and sweep under --runs-dir), from what the
    folders hold: config, metrics.csv, summary, eval and attack results, pictures,
    weights and model.onnx. Run again, it logs only what is new: no run or step twice.
    """
    from cnnrun import runs, sweep

    if mlflow is None and not tensorboard:
        raise CnnrunError("give --mlflow [URI], --tensorboard or both")
    trackers = trackers_for(mlflow, tensorboard, runs_dir)
    if not paths:
        paths = [d for d in runs.list_runs(runs_dir)] + sweep.list_sweeps(runs_dir)
        if not paths:
            raise CnnrunError(f"no runs or sweeps in {runs_dir}")
    folders = []
    for path in paths:
        path = runs.locate(path, runs_dir)
        if sweep.is_sweep(path):
            _, entries = sweep.load_sweep(path)
            folders.append((path, [os.path.join(path, e["run"]) for e in entries]))
        else:
            folders.append((None, [runs.resolve_run(path, runs_dir)]))
    started, count = time.perf_counter(), 0
    for sweep_dir, run_dirs in folders:
        run_dirs = [d for d in run_dirs if runs.is_run(d)]
        if sweep_dir:
            trackers.sync_sweep(sweep_dir, run_dirs)
        else:
            trackers.sync_run(run_dirs[0])
        count += len(run_dirs)
        if not trackers:
            sys.exit(1)
    new = len(trackers.updated())
    click.echo(f"logged {new} of {count} run(s) anew in {time.perf_counter() - started:.1f}s"
               + ("" if new else ": every one was already logged, nothing new to add"))
    echo_where(trackers)


from cnnrun import cli_inside  # noqa: E402,F401  (adds the explain and landscape verbs to main)

if __name__ == "__main__":
    main()
