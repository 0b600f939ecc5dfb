"""Pictures: training curves, comparisons, confusion matrices, image grids, filters (PNG)."""

import io

import numpy as np

from cnnrun.fileio import write_atomic


class Figures:
    """What the drawing code needs of pyplot (`subplots`, `figure`), made on matplotlib's
    `Figure` directly: no backend is chosen and no global list of figures kept, so drawing
    a run's pictures changes nothing in a notebook's or a program's own matplotlib (its
    inline plots keep working) and never opens a window."""

    @staticmethod
    def figure(figsize=None, layout=None):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, layout=layout)
        FigureCanvasAgg(fig)  # its own Agg canvas (the figure's, not a global backend): PNGs, text sizes
        return fig

    @staticmethod
    def subplots(nrows=1, ncols=1, *, figsize=None, layout=None, squeeze=True, **kwargs):
        fig = Figures.figure(figsize, layout)
        return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)


def pyplot():
    """`Figures`, imported on first use: matplotlib takes most of a second to import, which a
    command that draws nothing should not pay."""
    return Figures


def save(fig, path):
    """Write a figure as PNG atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())


def _curves(axes, rows, label=None):
    tested = [r for r in rows if r.get("test_acc") is not None]
    epochs, acc = [r["epoch"] for r in tested], [r["test_acc"] for r in tested]
    (line,) = axes[0].plot(epochs, acc, marker="o", ms=4, label=label)
    if len(tested) <= 3:  # a short run: say the few figures, not just draw them
        for e, a in zip(epochs, acc):
            axes[0].annotate(f"{a:.4f}", (e, a), textcoords="offset points", xytext=(4, 4), fontsize=8,
                             color=line.get_color())
    axes[1].plot([r["epoch"] for r in rows], [1 - r["train_acc"] for r in rows], marker="o" if len(rows) <= 20
                 else None, ms=3, label=label)


def _decorate(axes, title, last_epoch):
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    axes[0].set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy (epochs tested)")
    axes[1].set(xlabel="epoch", ylabel="training error (1 - accuracy)", title="Training error (every epoch)")
    errors = [y for line in axes[1].get_lines() for y in line.get_ydata() if y > 0]
    if errors and max(errors) > 10 * min(errors):  # over a decade: a log axis, labelled 1, 2, 5 per decade
        axes[1].set_yscale("log")
        axes[1].yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes[1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes[1].yaxis.set_minor_formatter(NullFormatter())
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlim(0.5, max(last_epoch, 1) + 0.5)  # from the first epoch, whatever was tested
        ax.grid(alpha=0.3)
    axes[0].figure.suptitle(title)


def curves_figure(rows, title):
    """The figure of `training_curves`, not yet saved."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")  # room for both y labels
    _curves(axes, rows)
    _decorate(axes, title, max((r["epoch"] for r in rows), default=1))
    rates = [(r["epoch"], r["lr"]) for r in rows if r.get("lr") is not None]
    if rates:  # the schedule, on its own axis beside the training error
        rate_axis = axes[1].twinx()
        rate_axis.plot(*zip(*rates), color="grey", linestyle="--", linewidth=1)
        rate_axis.set_ylabel("learning rate (at the epoch's last step, dashed)", color="grey")
        rate_axis.tick_params(axis="y", colors="grey")
        rate_axis.set_ylim(bottom=0)
    return fig


def training_curves(rows, path, title):
    """Test accuracy (evaluation epochs) and training error against epoch, for one run."""
    save(curves_figure(rows, title), path)


def comparison(runs, path, title="Comparison"):
    """`runs`: list of `(label, metric rows)`; one line per run on both panels."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    for label, rows in runs:
        _curves(axes, rows, label)
    _decorate(axes, title, max((r["epoch"] for _, rows in runs for r in rows), default=1))
    axes[0].legend(title="run")
    save(fig, path)


def confusion_matrix(matrix, path, title, names=None):
    """`matrix[true, predicted]` counts as a heat map with the counts written in; the
    classes labelled by `names` (default: their numbers)."""
    plt = pyplot()
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted class", ylabel="true class", title=title)
    if names is not None:
        ax.set_xticklabels(names, rotation=90 if max(map(len, names)) > 2 else 0, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
    fig.colorbar(im, ax=ax, label="test images")
    save(fig, path)


def image_grid(images, captions, path, title, columns=8, cmap="gray", vmin=0, vmax=1, colorbar=None, note=None,
               caption_colors=None):
    """Images `(N, H, W)` in a grid, each with its caption; `colorbar` labels a colour
    scale beside the grid, `note` is a line under it saying how to read it."""
    plt = pyplot()
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.5 + 0.6), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    shown = None
    for i, (ax, image, caption) in enumerate(zip(axes.flat, images, captions)):
        shown = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(caption, fontsize=7, color=caption_colors[i] if caption_colors else "black")
    if colorbar and shown is not None:
        fig.colorbar(shown, ax=axes, shrink=0.8, label=colorbar)
    fig.suptitle(title)
    if note:
        fig.supxlabel(note, fontsize=8)
    save(fig, path)


def filters(W, path, title):
    """First-layer kernels `(F, C, kh, kw)`: channel 0 of each, on a shared colour scale."""
    limit = float(np.abs(W).max()) or 1.0
    image_grid(W[:, 0], [f"filter {i}" for i in range(len(W))], path, title,
               columns=min(8, len(W)), cmap="RdBu_r", vmin=-limit, vmax=limit,
               colorbar="weight",
               note="each kernel's weights" + (" on the input's first channel" if W.shape[1] > 1 else "")
               + ": red positive, blue negative, one colour scale for all")


def accuracy_vs_eps(lines, path, title):
    """`lines`: list of `(label, eps list, accuracy list)`; accuracy against eps, one line each."""
    plt = pyplot()
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
    true label and the clean and adversarial predictions with their probability; the
    perturbation row has a colour bar from -eps to +eps."""
    plt = pyplot()
    n = len(clean)
    fig, axes = plt.subplots(3, n, figsize=(n * 1.35 + 1.2, 5.2), squeeze=False, layout="constrained")
    limit = max(eps, 1e-8)
    shown = None
    for i in range(n):
        delta = adversarial[i] - clean[i]
        fooled = adv_pred[i] != labels[i]
        panels = [(clean[i], "gray", 0, 1, f"true {labels[i]}\npred {clean_pred[i]} (p {clean_conf[i]:.2f})", "black"),
                  (delta, "RdBu_r", -limit, limit, "", "black"),
                  (adversarial[i], "gray", 0, 1, f"pred {adv_pred[i]} (p {adv_conf[i]:.2f})",
                   "red" if fooled else "black")]
        for ax, (image, cmap, lo, hi, caption, color) in zip(axes[:, i], panels):
            im = ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi)
            if cmap == "RdBu_r":
                shown = im
            ax.set_title(caption, fontsize=7, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[:, 0], ("clean", "perturbation", "adversarial")):
        ax.set_ylabel(name, fontsize=9)
    if shown is not None:
        fig.colorbar(shown, ax=axes[1, :], shrink=0.9, label=f"added to the pixel\n(-{eps:g} to +{eps:g})")
    fig.suptitle(title)
    fig.supxlabel("p: the network's probability for its prediction. Red: the attack made it predict a wrong class. "
                  "Perturbation: red brightens a pixel, blue darkens it.", fontsize=8)
    save(fig, path)


def mean_curves(lines, path, title):
    """`lines`: list of `(label, epochs, mean, std)`; each mean line with a band of one std."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for label, epochs, mean, std in lines:
        mean, std = np.array(mean), np.array(std)
        (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=label)
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    from matplotlib.ticker import MaxNLocator

    ax.set(xlabel="epoch", ylabel="test accuracy (mean, band: one standard deviation)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(title="config and setting")
    save(fig, path)
