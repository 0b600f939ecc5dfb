"""The verbs that look inside a trained network: `explain` and `landscape` (cli.py
imports this module, which adds them to its command group)."""

import json
import os
import sys
import time

import click

from cnnrun.cli import data_dir_option, load_run, main, runs_dir_option, split_run_and_files, weights_option
from cnnrun.errors import CnnrunError


def test_images(cfg, data_dir, indices, quiet):
    """The test images `indices` of the run's data set, and their labels; an index out
    of range is a one-line error."""
    import numpy as np

    from cnnrun.data import load_data

    x, labels = load_data(cfg, data_dir, progress=not quiet, splits=("test",), of_run=True)["test"]
    for i in indices:
        if not 0 <= i < len(x):
            raise CnnrunError(f"--index {i}: the test set has images 0 to {len(x) - 1}")
    return x[list(indices)], labels[list(indices)]


def own_images(net, paths):
    """The user's pictures made MNIST-like, as `predict` reads them: `(N, 1, H, W)`."""
    import numpy as np

    from cnnrun.images import read_image, to_mnist

    c, h, w = net.input_shape
    if c != 1:
        raise CnnrunError(f"the network takes {c}-channel images; explain reads your own pictures as "
                          f"grayscale only: use --index N for test images")
    return np.stack([to_mnist(read_image(p), (h, w)) for p in paths])[:, None].astype(np.float32)


def explain_one(net, x, label, target, names, key, folder, title, eps, steps, samples):
    """Every picture of one image (and, with `eps`, of its PGD twin) in `folder/key/`;
    returns the dict written as its `explain.json`."""
    import numpy as np

    from cnnrun import explain, pages

    out = os.path.join(folder, key)
    os.makedirs(out, exist_ok=True)
    outputs = explain.layer_outputs(net, x[None])
    probs = outputs[-1][1][0]
    predicted = int(np.argmax(probs))
    target = predicted if target is None else explain.check_class(net, target)

    def maps_of(image):
        grad = explain.saliency(net, image, target)
        ig = explain.integrated_gradients(net, image, target, steps=steps)
        cam, _, cam_layer = explain.grad_cam(net, image, target)
        z = explain.logits_of(net, np.stack([image, np.zeros_like(image)]))[:, target]
        maps = [("|saliency|", np.abs(grad), False), ("saliency sign", np.sign(grad), True),
                ("SmoothGrad", np.abs(explain.smoothgrad(net, image, target, samples=samples)), False),
                ("integrated gradients", ig, True)]
        return maps, cam, cam_layer, float(ig.sum()), float(z[0] - z[1])

    maps, cam, cam_layer, ig_sum, z_gap = maps_of(x)
    name_of = lambda k: names[k] if k < len(names) else str(k)  # noqa: E731
    rows = [(x, maps, cam, ("image", f"Grad-CAM ({cam_layer})"))]
    summary = (f"predicted {name_of(predicted)} ({probs[predicted]:.3f})"
               + (f", label {name_of(int(label))}" if label is not None else "")
               + f"; pictures for class {name_of(target)}; integrated gradients sum to {ig_sum:.4f}, "
                 f"z(x) - z(black) = {z_gap:.4f}")
    pages.layer_maps(outputs, x, probs, names, os.path.join(out, "layers.png"), f"{title}: every layer's output")
    pictures = ["layers.png", "attributions.png"]
    meta = dict(title=title, target=target, predicted=predicted, label=None if label is None else int(label),
                probabilities=[float(p) for p in probs], class_names=list(names), integrated_gradients_sum=ig_sum,
                logit_gap=z_gap, grad_cam_layer=cam_layer)
    if eps is not None:
        if label is None:
            label = predicted  # the user's own picture: attack the class the network gives it
        x_adv = explain.adversarial_twin(net, x, int(label), eps)
        adv_probs = explain.layer_outputs(net, x_adv[None])[-1][1][0]
        adv_maps, adv_cam, _, _, _ = maps_of(x_adv)
        adv_pred = int(np.argmax(adv_probs))
        rows.append((x_adv, adv_maps, adv_cam, (f"PGD eps {eps:g}: {name_of(adv_pred)} ({adv_probs[adv_pred]:.2f})",
                                                "Grad-CAM")))
        dist = explain.layer_distances(net, x, x_adv)
        pages.distances(dist, os.path.join(out, "distances.png"),
                        f"{title}: clean vs PGD at eps {eps:g}, layer by layer")
        pages.layer_maps(explain.layer_outputs(net, x_adv[None]), x_adv, adv_probs, names,
                         os.path.join(out, "layers-adversarial.png"), f"{title}, PGD at eps {eps:g}: every layer's output")
        pictures += ["distances.png", "layers-adversarial.png"]
        summary += f"; its PGD twin at eps {eps:g}: {name_of(adv_pred)} ({adv_probs[adv_pred]:.3f})"
        meta.update(eps=eps, adversarial_predicted=adv_pred, adversarial_probabilities=[float(p) for p in adv_probs],
                    layer_distances=dist)
    pages.attributions(rows, os.path.join(out, "attributions.png"), f"{title}: attributions for class {name_of(target)}")
    if abs(ig_sum - z_gap) > 0.01 * max(abs(z_gap), 1e-6):
        summary += f" (integrated gradients are {abs(ig_sum - z_gap) / max(abs(z_gap), 1e-6):.0%} off completeness"
        if any(layer.kind == "instance_norm" for layer in net.layers):
            summary += (": after an instance norm the logit jumps right next to the black image, which no "
                        "number of --steps samples)")
        else:
            summary += f" at {steps} steps: more --steps bring them closer)"
    meta.update(summary=summary, pictures=pictures)
    from cnnrun.fileio import write_atomic

    write_atomic(os.path.join(out, "explain.json"), json.dumps(meta, indent=1).encode())
    return meta


def explain_classes(net, names, folder, x=None, labels=None):
    """classes.png (one class visualisation per class) and, given test images, fooling.png
    (each of the first correct ones pushed to the next class). Returns a summary dict."""
    import numpy as np

    from cnnrun import explain, pages

    k = net.output_shape[0]
    shown, captions, rises = [], [], []
    for c in range(k):
        image, scores = explain.class_visualisation(net, c)
        shown.append(image)
        captions.append(f"{names[c] if c < len(names) else c}\nz {scores[0]:.1f} -> {scores[-1]:.1f}")
        rises.append((float(scores[0]), float(scores[-1])))
    pages.image_row(shown, captions, os.path.join(folder, "classes.png"),
                    "Class visualisation: gradient ascent on each class's logit")
    result = dict(classes=rises)
    if x is not None:
        fooled, fooled_captions = [], []
        for image, label in zip(x, labels):
            target = (int(label) + 1) % k
            pushed, steps, reached = explain.fooling_image(net, image, target)
            fooled += [image, pushed]
            fooled_captions += [f"{names[int(label)]}", f"-> {names[target]}: {'yes' if reached else 'no'}"
                                f" ({steps} steps)"]
        pages.image_row(fooled, fooled_captions, os.path.join(folder, "fooling.png"),
                        "Fooling images: a correct image pushed to the next class")
        result["fooling"] = len(fooled) // 2
    return result


@main.command(name="explain", short_help="What a network computes for an image: layers, saliency, Grad-CAM.")
@click.argument("args", nargs=-1, metavar="[RUN_DIR] [IMAGE...]")
@click.option("--index", "indices", multiple=True, type=click.IntRange(min=0),
              help="A test image by its index (repeatable) [default: 0 when no IMAGE is given].")
@click.option("--target", type=int, help="The class to explain [default: the predicted class].")
@click.option("--eps", type=click.FloatRange(0, 1, min_open=True),
              help="Also explain each image's PGD adversarial example at this eps, and how far apart the two "
                   "are layer by layer.")
@click.option("--steps", type=click.IntRange(min=1), default=64, show_default=True,
              help="Integrated gradients: points on the path from the black image.")
@click.option("--samples", type=click.IntRange(min=1), default=50, show_default=True,
              help="SmoothGrad: noisy copies averaged.")
@click.option("--classes", is_flag=True,
              help="Also draw what each class looks like to the network (gradient ascent on its logit) and "
                   "fooling images (test images pushed to another class).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder [default: RUN_DIR/explain].")
@data_dir_option
@runs_dir_option
@weights_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
def explain_cmd(args, indices, target, eps, steps, samples, classes, out, data_dir, runs_dir, weights, as_json):
    """Show what a run's network computes for test images (--index N) or your own
    pictures (as `predict` reads them): every layer's output as channel maps, the
    probabilities, and which pixels decide the class: saliency (the gradient of the
    class's logit; its size and its sign), SmoothGrad, integrated gradients (from a
    black image) and Grad-CAM on the last convolution. With --eps, the same for
    each image's PGD adversarial example, and the distance between the two layer by
    layer. PNGs in RUN_DIR/explain/<image>/ and one page, RUN_DIR/explain/index.html,
    with every picture in it (open it in a browser; it needs no network).
    """
    import numpy as np

    from cnnrun import pages
    from cnnrun.data.datasets import class_names

    started = time.perf_counter()
    run_dir, files = split_run_and_files(args, runs_dir) if args else (None, [])
    run_dir, cfg, net = load_run(run_dir, runs_dir, weights=weights.lower())
    names = class_names(cfg["data"]["dataset"], net.output_shape[0])
    if target is not None:
        from cnnrun.explain import check_class
        check_class(net, target)
    indices = list(indices) or ([] if files else [0])
    jobs = []
    test_x = test_labels = None
    if indices or classes:
        test_x, test_labels = test_images(cfg, data_dir, indices or [0, 1, 2], as_json)
        for i, image, label in zip(indices, test_x, test_labels):
            jobs.append((image, int(label), f"test-{i}", f"test image {i} ({names[int(label)]})"))
    if files:
        for path, image in zip(files, own_images(net, files)):
            stem = os.path.splitext(os.path.basename(path))[0]
            jobs.append((image, None, f"image-{stem}", os.path.basename(path)))
    folder = out or os.path.join(run_dir, "explain")
    os.makedirs(folder, exist_ok=True)
    progress = not as_json and sys.stderr.isatty()
    from tqdm import tqdm

    for image, label, key, title in tqdm(jobs, desc="explain", unit="image", disable=not progress):
        meta = explain_one(net, image, label, target, names, key, folder, title, eps, steps, samples)
        if as_json:
            click.echo(json.dumps(dict(image=key, **{k: meta[k] for k in ("predicted", "target", "probabilities",
                                                                         "integrated_gradients_sum", "logit_gap")})))
        else:
            click.echo(f"{title}: {meta['summary']}")
    if classes:
        correct = net.forward(test_x).argmax(axis=1) == test_labels
        result = explain_classes(net, names, folder, test_x[correct][:3], test_labels[correct][:3])
        if not as_json:
            click.echo("class visualisation, logit before -> after: " + ", ".join(
                f"{names[c]} {a:.1f}->{b:.1f}" for c, (a, b) in enumerate(result["classes"])))
    page = pages.write_page(folder, f"{cfg['name']}: inside the network ({run_dir})")
    if not as_json:
        click.echo(f"saved in {folder}; open {page} in a browser ({time.perf_counter() - started:.1f} s)")


@main.command(name="landscape", short_help="The loss around the trained weights: a line and a plane.")
@click.argument("run_dirs", nargs=-1, type=click.Path())
@click.option("--images", type=click.IntRange(min=1), default=500, show_default=True,
              help="Test images the loss is measured on (the first N).")
@click.option("--resolution", type=click.IntRange(min=3), default=21, show_default=True,
              help="Points per side of the plane's grid (odd: the final weights are on it).")
@click.option("--span", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="The plane spans [-SPAN, SPAN] along each direction (1: a step as large as each filter).")
@click.option("--line-points", type=click.IntRange(min=2), default=31, show_default=True,
              help="Points on the line from the initial weights (alpha -0.25) past the final ones (alpha 1.25).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the two random directions.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for the side-by-side picture of several runs [default: RUNS_DIR/landscape-comparison].")
@data_dir_option
@runs_dir_option
@weights_option
def landscape_cmd(run_dirs, images, resolution, span, line_points, seed, out, data_dir, runs_dir, weights):
    """Draw the loss around a run's trained weights (default: the latest run), on the
    first --images test images: along the straight line from its initial weights
    (rebuilt from its config and seed) to its final ones, and on a plane through the
    final weights along two random filter-normalised directions (Li et al. 2018).
    Writes line.csv, plane.csv and landscape.png in RUN_DIR/landscape/; with several
    runs (a robust one beside a plain one), also one picture of them side by side.
    """
    import numpy as np

    from tqdm import tqdm

    from cnnrun import landscape, pages
    from cnnrun.config import build_network
    from cnnrun.data import load_data
    from cnnrun.fileio import write_csv

    if resolution % 2 == 0:
        raise CnnrunError(f"--resolution {resolution}: must be odd, so that the final weights lie on the grid")
    loaded = [load_run(d, runs_dir, weights=weights.lower()) for d in (run_dirs or [None])]
    items = []
    for run_dir, cfg, net in loaded:
        x, labels = load_data(cfg, data_dir, progress=False, splits=("test",), of_run=True)["test"]
        x, labels = x[:images], labels[:images]
        initial = {name: p.copy() for name, p in build_network(cfg, batch_size=1).named_parameters().items()}
        alphas = np.linspace(-0.25, 1.25, line_points)
        coords = np.linspace(-span, span, resolution)
        started = time.perf_counter()
        with tqdm(total=line_points + resolution ** 2, desc=f"landscape {cfg['name']}", unit="point",
                  disable=not sys.stderr.isatty()) as bar:
            line_rows = landscape.line(net, initial, x, labels, alphas, on_point=lambda: bar.update())
            losses, accs, _ = landscape.plane(net, x, labels, coords, seed=seed, on_point=lambda: bar.update())
        seconds = time.perf_counter() - started
        folder = os.path.join(run_dir, "landscape")
        os.makedirs(folder, exist_ok=True)
        write_csv(os.path.join(folder, "line.csv"), ["alpha", "loss", "accuracy"], line_rows)
        write_csv(os.path.join(folder, "plane.csv"), ["a", "b", "loss", "accuracy"],
                  [(a, b, losses[i, j], accs[i, j]) for i, a in enumerate(coords) for j, b in enumerate(coords)])
        title = f"{cfg['name']} ({len(x)} test images)"
        pages.landscapes([(title, line_rows, coords, losses)], os.path.join(folder, "landscape.png"))
        centre = losses[resolution // 2, resolution // 2]
        click.echo(f"{cfg['name']} ({run_dir}): loss {centre:.4f} at the final weights, {line_rows[0][1]:.4f} at "
                   f"the initial ones; on the plane from {losses.min():.4f} to {losses.max():.4f}; "
                   f"{seconds:.1f} s; saved in {folder}")
        items.append((title, line_rows, coords, losses))
    if len(items) > 1:
        out = out or os.path.join(runs_dir, "landscape-comparison")
        os.makedirs(out, exist_ok=True)
        pages.landscapes(items, os.path.join(out, "landscape.png"))
        click.echo(f"saved the runs side by side in {os.path.join(out, 'landscape.png')}")

