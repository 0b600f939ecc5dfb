"""Pictures: training curves, comparisons, confusion matrices, image grids, filters (PNG)."""

import io

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnnrun.fileio import write_atomic  # noqa: E402


def save(fig, path):
    """Write a figure as PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def _curves(axes, rows, label=None):
    tested = [r for r in rows if r.get("test_acc") is not None]
    axes[0].plot([r["epoch"] for r in tested], [r["test_acc"] for r in tested], marker="o", ms=3, label=label)
    axes[1].plot([r["epoch"] for r in rows], [1 - r["train_acc"] for r in rows], label=label)


def _decorate(axes, title):
    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy")
    axes[1].set(xlabel="epoch", ylabel="training error (1 - accuracy)", title="Training error", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].figure.suptitle(title)


def curves_figure(rows, title):
    """The figure of `training_curves`, not yet saved."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")  # room for both y labels
    _curves(axes, rows)
    _decorate(axes, title)
    return fig


def training_curves(rows, path, title):
    """Test accuracy (evaluation epochs) and training error against epoch, for one run."""
    save(curves_figure(rows, title), path)


def comparison(runs, path, title="Comparison"):
    """`runs`: list of `(label, metric rows)`; one line per run on both panels."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    for label, rows in runs:
        _curves(axes, rows, label)
    _decorate(axes, title)
    axes[0].legend()
    save(fig, path)


def confusion_matrix(matrix, path, title):
    """`matrix[true, predicted]` counts as a heat map with the counts written in."""
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax)
    save(fig, path)


def image_grid(images, captions, path, title, columns=8, cmap="gray", vmin=0, vmax=1):
    """Images `(N, H, W)` in a grid, each with its caption."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, y=1.0 + 0.1 / rows)  # above the first row's captions
    save(fig, path)


def filters(W, path, title):
    """First-layer kernels `(F, C, kh, kw)`: channel 0 of each, on a shared colour scale."""
    limit = float(np.abs(W).max()) or 1.0
    image_grid(W[:, 0], [f"filter {i}" for i in range(len(W))], path, title,
               columns=min(8, len(W)), cmap="RdBu_r", vmin=-limit, vmax=limit)


def accuracy_vs_eps(lines, path, title):
    """`lines`: list of `(label, eps list, accuracy list)`; accuracy against eps, one line each."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, eps, acc in lines:
        ax.plot(eps, acc, marker="o", label=label)
    ax.set(xlabel="eps (pixel units, images in [0, 1])", ylabel="accuracy on adversarial images",
           ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, path)


def adversarial_examples(clean, adversarial, labels, clean_pred, clean_conf, adv_pred, adv_conf, eps, path, title):
    """Columns of (clean image, perturbation, adversarial image), captioned with the
    true label and the clean and adversarial predictions with their confidence."""
    n = len(clean)
    fig, axes = plt.subplots(3, n, figsize=(n * 1.35, 4.6), squeeze=False)
    for i in range(n):
        delta = adversarial[i] - clean[i]
        panels = [(clean[i], "gray", 0, 1, f"true {labels[i]}\npred {clean_pred[i]} ({clean_conf[i]:.2f})"),
                  (delta, "RdBu_r", -max(eps, 1e-8), max(eps, 1e-8), "perturbation"),
                  (adversarial[i], "gray", 0, 1, f"adv {adv_pred[i]} ({adv_conf[i]:.2f})")]
        for ax, (image, cmap, lo, hi, caption) in zip(axes[:, i], panels):
            ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(caption, fontsize=7, color="red" if caption.startswith("adv") and
                         adv_pred[i] != labels[i] else "black")
            ax.axis("off")
    fig.suptitle(title)
    save(fig, path)


def mean_curves(lines, path, title):
    """`lines`: list of `(label, epochs, mean, std)`; each mean line with a band of one std."""
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for label, epochs, mean, std in lines:
        mean, std = np.array(mean), np.array(std)
        (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=label)
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="epoch", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend()
    save(fig, path)
