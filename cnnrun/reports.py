"""What `eval`, `plot` and `attack` compute and write into run folders (JSON, CSV, PNG)."""

import os
import time

import numpy as np
from tqdm import tqdm

from cnnrun import plots, runs
from cnnrun.data.datasets import class_names
from cnnrun.robustness import attacks
from cnnrun.fileio import write_atomic, write_csv
from cnnrun.runner import summarise
from cnnrun.training import evaluate

# The original study's test accuracies (its Table 1), shown beside ours.
ORIGINAL_ACCURACY = {"net1": 0.9123, "net2": 0.9625, "net3": 0.9768}


def cell(value):
    """A table cell: 4 decimals for floats, empty for None."""
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def write_tables(folder, stem, columns, rows):
    """`stem.md` (a Markdown table) and `stem.csv` with the same rows of cells."""
    rows = [[cell(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    write_atomic(os.path.join(folder, stem + ".md"), "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n")
    write_csv(os.path.join(folder, stem + ".csv"), columns, rows)
    return rows


def evaluate_run(run_dir, cfg, net, x, labels):
    """Test metrics, confusion matrix and mistakes; writes eval.json, confusion.png, misclassified.png."""
    loss, acc, probs = evaluate(net, x, labels)
    predicted = probs.argmax(axis=1)
    k = net.output_shape[0]
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)  # 10,000 increments: not a hot path
    wrong = np.flatnonzero(predicted != labels)
    names = class_names(cfg["data"]["dataset"], k)
    result = dict(run=run_dir, accuracy=acc, loss=loss, n=int(len(x)), errors=int(len(wrong)),
                  per_class_accuracy=[float(confusion[c, c] / max(confusion[c].sum(), 1)) for c in range(k)],
                  class_counts=confusion.sum(axis=1).tolist(), confusion_matrix=confusion.tolist(), classes=list(names))
    runs.write_json(os.path.join(run_dir, "eval.json"), result)
    plots.confusion_matrix(confusion, os.path.join(run_dir, "confusion.png"), f"{cfg['name']}: test accuracy {acc:.4f}",
                           names)
    shown = wrong[:40]
    pictures = x[shown, 0] if x.shape[1] == 1 else x[shown].transpose(0, 2, 3, 1)  # grey, or RGB
    plots.image_grid(pictures, [f"#{i}: true {names[labels[i]]}\npred {names[predicted[i]]} "
                                f"(p {probs[i, predicted[i]]:.2f})" for i in shown],
                     os.path.join(run_dir, "misclassified.png"),
                     f"{cfg['name']}: {len(shown)} of {len(wrong)} misclassified test images",
                     note="#: the test image's index; p: the network's probability for its (wrong) prediction")
    return result


def redraw_run(run_dir, cfg, net):
    """Redraw curves.png and (given weights) filters.png; return the run's comparison row."""
    rows = runs.read_metrics(run_dir)
    if rows:
        plots.training_curves(rows, os.path.join(run_dir, "curves.png"), cfg["name"])
    convs = [layer for layer in net.layers if layer.kind == "conv"] if net else []
    if convs:
        plots.filters(convs[0].params["W"], os.path.join(run_dir, "filters.png"), f"{cfg['name']}: first-layer filters")
    s = summarise(rows)
    return dict(network=cfg["name"], run=os.path.basename(run_dir),
                epochs=f"{rows[-1]['epoch'] if rows else 0}/{cfg['train']['epochs']}",
                final_test_acc=s["final_test_acc"], best_test_acc=s["best_test_acc"],
                original=ORIGINAL_ACCURACY.get(cfg["name"]), rows=rows)


COMPARISON_COLUMNS = ["network", "epochs", "final_test_acc", "best_test_acc", "original", "run"]


def compare_runs(table, out):
    """comparison.png (a line per run) and comparison.md/.csv in `out`; returns the table's cells."""
    os.makedirs(out, exist_ok=True)
    names = [t["network"] for t in table]
    plots.comparison([(f"{t['network']} ({t['run']})" if names.count(t["network"]) > 1 else t["network"], t["rows"])
                      for t in table], os.path.join(out, "comparison.png"), "Test accuracy and training error per network")
    return write_tables(out, "comparison", COMPARISON_COLUMNS, [[t[c] for c in COMPARISON_COLUMNS] for t in table])


# eps at which every attack should break every MNIST image (a grey 0.5 image is in reach of
# any image): robust accuracy above 0 there means the attacks are not working.
LARGE_EPS = 0.5


def suite_warnings(method, eps, broken_by, n):
    """The masking checks of one suite result: Square, gradient-free, breaking images that
    the gradient attacks left robust, or images robust at LARGE_EPS. Returns lines."""
    stages = attacks.SUITES[method]
    out = []
    if "square" in stages:
        by_square = int(np.sum(broken_by == stages.index("square")))
        if by_square:
            out.append(f"{method} at eps {eps:g}: Square, which uses no gradients, broke {by_square} image(s) "
                       f"({by_square / n:.2%}) that {', '.join(stages[:-1])} left robust: the network's gradients may "
                       f"be masked, and gradient attacks alone would overstate its robustness")
    if eps >= LARGE_EPS:
        left = int(np.sum(broken_by == len(stages)))
        if left:
            out.append(f"{method} at eps {eps:g}: {left} image(s) ({left / n:.2%}) still robust; at this eps every "
                       f"image should fall (a grey image is in reach): the attacks are failing, e.g. on masked "
                       f"gradients")
    return out


def attack_run(run_dir, cfg, net, x, labels, methods, eps_list, progress=False, seed=0, masking_check=True,
               **options):
    """Attack `x` with every method and eps; write results.json/.csv, stages.csv (the
    robust accuracy after each attack of a suite), per_image.csv, accuracy_vs_eps.png and
    example grids into a new folder `run_dir/attacks/TIMESTAMP-METHODS/`. With a suite
    and `masking_check`, also runs it at eps LARGE_EPS on the first 100 images. Returns
    the report; its "warnings" are the masking checks that fired."""
    results, examples, warnings, stage_rows = [], {}, [], []
    shown = np.arange(min(10, len(x)))
    clean_p = evaluate(net, x, labels)[2]
    clean_pred = clean_p.argmax(axis=1)
    per_image = {"index": np.arange(len(x)), "label": labels, "clean_prediction": clean_pred}
    for method in methods:
        for eps in eps_list:
            with tqdm(total=len(x), desc=f"{cfg['name']} {method} eps {eps:g}", unit="img", leave=False,
                      disable=not progress) as bar:
                def on_stage(name, n_robust, spent):
                    bar.set_postfix_str(f"after {name}: {n_robust} robust in this batch", refresh=True)
                started = time.perf_counter()
                x_adv, adv_p, broken_by, seconds = attacks.evaluate_suite(
                    net, x, labels, method, eps, rng=np.random.default_rng(seed), on_batch=bar.update,
                    on_stage=on_stage, **options)
            adv_pred = adv_p.argmax(axis=1)
            accuracy, success = attacks.robustness(labels, clean_pred, adv_pred)
            steps = None if method == "fgsm" else options.get("steps") or attacks.DEFAULT_STEPS[method]
            result = dict(method=method, eps=eps, accuracy=accuracy, success_rate=success, n=int(len(x)),
                          steps=options.get("queries", 5000) if method == "square" else steps,
                          restarts=options.get("restarts") if method not in ("fgsm", "bim", "fab-t", "square")
                          else None, seconds=round(time.perf_counter() - started, 3))
            per_image[f"{method}@{eps:g}"] = adv_pred
            if broken_by is not None:
                names = ("clean",) + attacks.SUITES[method] + ("",)
                per_image[f"{method}@{eps:g} broken_by"] = np.array(names)[broken_by + 1]
                stages = attacks.SUITES[method]
                result["after_each"] = {name: float(np.mean(broken_by > k)) for k, name in enumerate(stages)}
                result["seconds_each"] = seconds
                stage_rows += [dict(method=method, eps=eps, attack=name, robust_accuracy=acc,
                                    broken=int(np.sum(broken_by == k)), seconds=seconds[name])
                               for k, (name, acc) in enumerate(result["after_each"].items())]
                warnings += suite_warnings(method, eps, broken_by, len(x))
            results.append(result)
            examples[(method, eps)] = (x_adv[shown, 0], clean_pred[shown], clean_p[shown].max(1),
                                       adv_pred[shown], adv_p[shown].max(1))
    suites = [m for m in methods if m in attacks.SUITES]
    masking = None
    if masking_check and suites and max(eps_list) < LARGE_EPS:
        first = slice(0, min(100, len(x)))
        _, _, broken_by, _ = attacks.evaluate_suite(net, x[first], labels[first], suites[0], LARGE_EPS,
                                                    rng=np.random.default_rng(seed), **options)
        masking = dict(method=suites[0], eps=LARGE_EPS, n=len(broken_by),
                       robust=int(np.sum(broken_by == len(attacks.SUITES[suites[0]]))))
        warnings += suite_warnings(suites[0], LARGE_EPS, broken_by, len(broken_by))
    folder = runs.new_run_dir(os.path.join(run_dir, "attacks"), "-".join(methods))
    report = dict(run=run_dir, network=cfg["name"], clean_accuracy=float(np.mean(clean_pred == labels)),
                  n=int(len(x)), results=results, large_eps_check=masking, warnings=warnings, folder=folder)
    write_csv(os.path.join(folder, "results.csv"),
              ["method", "eps", "accuracy", "success_rate", "n", "steps", "restarts", "seconds"], results)
    if stage_rows:
        write_csv(os.path.join(folder, "stages.csv"),
                  ["method", "eps", "attack", "robust_accuracy", "broken", "seconds"], stage_rows)
    columns = list(per_image)
    write_csv(os.path.join(folder, "per_image.csv"), columns,
              [dict(zip(columns, values)) for values in zip(*(per_image[c].tolist() for c in columns))])
    plots.accuracy_vs_eps(accuracy_lines(report, methods), os.path.join(folder, "accuracy_vs_eps.png"),
                          f"{cfg['name']}: accuracy under attack")
    for (method, eps), (adv, cp, cc, ap, ac) in examples.items():
        plots.adversarial_examples(x[shown, 0], adv, labels[shown], cp, cc, ap, ac, eps,
                                   os.path.join(folder, f"examples-{method}-eps{eps:g}.png"),
                                   f"{cfg['name']}: {method.upper()} at eps {eps:g}")
    runs.write_json(os.path.join(folder, "results.json"), report)  # last: its presence marks a complete folder
    return report


def accuracy_lines(report, methods, prefix=""):
    """`[(label, eps list, accuracy list)]`, one per method, for `plots.accuracy_vs_eps`."""
    return [(prefix + m, [r["eps"] for r in report["results"] if r["method"] == m],
             [r["accuracy"] for r in report["results"] if r["method"] == m]) for m in methods]


def compare_attacks(reports, methods, eps_list, out):
    """One plot of accuracy against eps (a line per network and method) and a table, in `out`.
    Returns `(columns, rows)` of the table."""
    os.makedirs(out, exist_ok=True)
    lines = [line for r in reports for line in accuracy_lines(r, methods, prefix=f"{r['network']} ")]
    plots.accuracy_vs_eps(lines, os.path.join(out, "comparison.png"), "Accuracy under attack per network")
    columns = ["network", "method"] + [f"eps {e:g}" for e in eps_list]
    rows = [[r["network"], m] + [q["accuracy"] for q in r["results"] if q["method"] == m]
            for r in reports for m in methods]
    return columns, write_tables(out, "comparison", columns, rows)


def certify_run(run_dir, cfg, net, x, labels, eps_list, methods=("ibp",), progress=False, batch_size=None):
    """Certified accuracy of `net` on `x` at each eps by each bound method
    (robustness/bounds.py: ibp, crown-ibp, crown); with several methods also "best", each
    margin's tightest bound among them (all are sound, so their maximum is). Writes
    results.json/.csv, per_image.csv (per image, method and eps: certified or not, and the
    smallest margin bound) and certified_vs_eps.png (with the attacks' lines of the run's
    latest attack folder, when it has one) into a new folder `run_dir/certify/TIMESTAMP-...`.
    Returns the report, shaped as attack's, with the layers CROWN bounded by IBP."""
    from cnnrun.robustness import bounds

    names = list(methods) + (["best"] if len(methods) > 1 else [])
    results, per_image, fallback = [], {"index": np.arange(len(x)), "label": labels}, set()
    for eps in eps_list:
        proven = {m: [] for m in names}
        smallest = {m: [] for m in names}
        seconds = dict.fromkeys(names, 0.0)
        with tqdm(total=len(x) * len(methods), desc=f"{cfg['name']} eps {eps:g}", unit="img", leave=False,
                  disable=not progress) as bar:
            for method in methods:
                size = batch_size or bounds.BATCH[method]
                for i in range(0, len(x), size):
                    xb, lb = x[i:i + size], labels[i:i + size]
                    started = time.perf_counter()
                    margins, fell_back = bounds.margins(net, xb, lb, eps, method)
                    seconds[method] += time.perf_counter() - started
                    fallback.update(fell_back)
                    smallest[method].append(margins)
                    bar.update(len(xb))
        for method in methods:
            smallest[method] = np.concatenate(smallest[method])
        if len(methods) > 1:
            smallest["best"] = np.maximum.reduce([smallest[m] for m in methods])
            seconds["best"] = sum(seconds[m] for m in methods)
        for method in names:
            margins = smallest[method]
            certified = bounds.certified(net, x, labels, margins)
            others = np.where(np.arange(margins.shape[1]) == labels[:, None], np.inf, margins)
            results.append(dict(method=method, eps=eps, accuracy=float(certified.mean()), n=int(len(x)),
                                seconds=round(seconds[method], 3)))
            per_image[f"{method}@{eps:g}"] = certified.astype(int)
            per_image[f"{method}@{eps:g} margin"] = others.min(axis=1)
    folder = runs.new_run_dir(os.path.join(run_dir, "certify"), "-".join(methods))
    report = dict(run=run_dir, network=cfg["name"], n=int(len(x)), results=results, folder=folder,
                  ibp_layers=sorted(fallback))
    write_csv(os.path.join(folder, "results.csv"), ["method", "eps", "accuracy", "n", "seconds"], results)
    columns = list(per_image)
    write_csv(os.path.join(folder, "per_image.csv"), columns,
              [dict(zip(columns, values)) for values in zip(*(per_image[c].tolist() for c in columns))])
    lines = [(f"certified ({m})", [r["eps"] for r in results if r["method"] == m],
              [r["accuracy"] for r in results if r["method"] == m]) for m in names]
    attacked = latest_attack_report(run_dir)
    if attacked:  # the bracket: certified below, the attacks above
        attack_methods = list(dict.fromkeys(r["method"] for r in attacked["results"]))
        lines += accuracy_lines(attacked, attack_methods, prefix="attack: ")
    plots.accuracy_vs_eps(lines, os.path.join(folder, "certified_vs_eps.png"),
                          f"{cfg['name']}: certified accuracy (below) and accuracy under attack (above)")
    runs.write_json(os.path.join(folder, "results.json"), report)
    return report


def latest_attack_report(run_dir):
    """The results.json of the run's latest complete attack folder, or None."""
    folder = os.path.join(run_dir, "attacks")
    if not os.path.isdir(folder):
        return None
    for name in sorted(os.listdir(folder), reverse=True):
        report = runs.read_json(os.path.join(folder, name, "results.json"), None)
        if report:
            return report
    return None
