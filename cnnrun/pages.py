"""Pictures of what a network computes (explain.py, landscape.py) and the one HTML page
per run that shows them, every picture embedded: it opens from disk, offline."""

import base64
import html
import json
import os

import numpy as np

from cnnrun.fileio import write_atomic
from cnnrun.plots import pyplot, save

MAX_CHANNELS = 16  # channel maps drawn per layer


def _show(ax, image, cmap="gray", vmin=0, vmax=1, title=None):
    """One `(C, H, W)` image (or `(H, W)` map) on `ax`: grayscale, or RGB for 3 channels."""
    image = np.asarray(image, np.float64)
    if image.ndim == 3 and image.shape[0] == 3:
        ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
    else:
        ax.imshow(image.reshape(image.shape[-2:]) if image.ndim == 3 else image, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def mosaic(maps, gap=1):
    """Up to MAX_CHANNELS maps `(C, h, w)` side by side, each scaled to [0, 1] over its own
    range, `gap` pixels of NaN (drawn blank) between them: `(h, n * (w + gap) - gap)`."""
    maps = np.asarray(maps[:MAX_CHANNELS], np.float64)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    scaled = (maps - low) / np.where(span > 0, span, 1)
    n, h, w = scaled.shape
    out = np.full((h, n * (w + gap) - gap), np.nan)
    for c in range(n):  # at most MAX_CHANNELS: drawing, not a hot path
        out[:, c * (w + gap):c * (w + gap) + w] = scaled[c]
    return out


def layer_maps(outputs, image, probs, class_names, path, title):
    """Every layer's output for one image: a row per layer (up to MAX_CHANNELS channel maps
    of a `(C, H, W)` output side by side, each scaled to its own range; a vector as one
    strip), and the class probabilities as bars."""
    plt = pyplot()
    maps = [(name, np.asarray(out[0], np.float64)) for name, out in outputs[:-1]]  # the last: probabilities
    heights = [2.2] + [1.3 if a.ndim == 3 else 0.5 for _, a in maps] + [1.3]
    fig, axes = plt.subplots(len(heights), 1, figsize=(12, sum(heights) * 0.75),
                             gridspec_kw=dict(height_ratios=heights, hspace=0.7))
    _show(axes[0], image, title="input")
    axes[0].set_anchor("W")
    for ax, (name, a) in zip(axes[1:], maps):
        shown = mosaic(a) if a.ndim == 3 else a.reshape(1, -1)
        ax.imshow(shown, cmap="viridis", aspect="equal" if a.ndim == 3 else "auto", interpolation="nearest")
        ax.set_anchor("W")
        ax.set_xticks([]), ax.set_yticks([])
        channels = f", first {MAX_CHANNELS} of {len(a)} channels" if a.ndim == 3 and len(a) > MAX_CHANNELS else ""
        ax.set_title(f"{name} {a.shape}{channels}", fontsize=8, loc="left")
    ax = axes[-1]
    k = len(probs)
    ax.bar(range(k), probs, color=["C3" if i == int(np.argmax(probs)) else "C0" for i in range(k)])
    ax.set_xticks(range(k))
    ax.set_xticklabels(class_names[:k], fontsize=7, rotation=90 if k > 12 else 0)
    ax.set_ylim(0, 1)
    ax.set_title("probabilities", fontsize=8, loc="left")
    fig.suptitle(title)
    save(fig, path)


def attribution_row(axes, image, maps, cam, names):
    """One row: the image, then each attribution map (signed: red positive, blue negative;
    magnitudes: a heat scale), then Grad-CAM over the image."""
    _show(axes[0], image, title=names[0])
    for ax, (label, m, signed) in zip(axes[1:], maps):
        m = np.asarray(m, np.float64)
        m = m.sum(axis=0) if m.ndim == 3 else m  # channels summed (RGB images)
        if signed:
            top = max(float(np.abs(m).max()), 1e-12)
            _show(ax, m, cmap="bwr", vmin=-top, vmax=top, title=label)
        else:
            _show(ax, m, cmap="hot", vmin=0, vmax=max(float(m.max()), 1e-12), title=label)
    ax = axes[len(maps) + 1]
    _show(ax, image, title=names[1])
    ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=max(float(cam.max()), 1e-12))


def attributions(rows, path, title):
    """`rows`: `[(image, maps, cam, (image title, cam title)), ...]`, one row per image
    (the clean one, and its adversarial twin); maps as `attribution_row` takes them."""
    plt = pyplot()
    columns = len(rows[0][1]) + 2
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 1.7, len(rows) * 1.9), squeeze=False)
    for ax_row, (image, maps, cam, names) in zip(axes, rows):
        attribution_row(ax_row, image, maps, cam, names)
    fig.suptitle(title)
    save(fig, path)


def distances(rows, path, title):
    """A bar per layer: how far the adversarial image's output is from the clean one's."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(rows)), 3))
    ax.bar(range(len(rows)), [d for _, d in rows])
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([n for n, _ in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("||a(x_adv) - a(x)|| / ||a(x)||")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=9)
    save(fig, path)


def image_row(images, captions, path, title):
    """Images side by side with a caption each (class visualisations, fooling images)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(images), figsize=(1.5 * len(images), 1.9), squeeze=False)
    for ax, image, caption in zip(axes[0], images, captions):
        _show(ax, image, title=caption)
    fig.suptitle(title)
    save(fig, path)


def landscapes(items, path):
    """`items`: `[(title, line rows [(alpha, loss, acc)], coordinates, losses (n, n)), ...]`,
    one column per run: the loss along the line from the initial weights (top) and its
    contours on the plane of two filter-normalised directions (bottom), one scale for all."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(items), figsize=(4.4 * len(items) + 0.8, 8), squeeze=False, layout="constrained")
    top = max(float(np.percentile(losses, 95)) for _, _, _, losses in items)
    levels = np.linspace(0, max(top, 1e-6), 25)
    for column, (title, line_rows, coords, losses) in enumerate(items):
        ax = axes[0, column]
        a = [r[0] for r in line_rows]
        ax.plot(a, [r[1] for r in line_rows], marker="o", ms=3)
        ax.axvline(0, color="gray", lw=0.6), ax.axvline(1, color="gray", lw=0.6)
        ax.set(xlabel="alpha: initial (0) to final (1) weights", ylabel="test loss", yscale="log", title=title)
        ax.grid(alpha=0.3)
        ax = axes[1, column]
        filled = ax.contourf(coords, coords, np.minimum(losses, levels[-1]), levels=levels, cmap="viridis")
        ax.contour(coords, coords, losses, levels=levels[::3], colors="white", linewidths=0.4)
        ax.plot([0], [0], "r+", ms=10)
        ax.set(xlabel="direction 2", ylabel="direction 1", aspect="equal", title="loss around the final weights")
    fig.colorbar(filled, ax=axes[1, :].tolist(), shrink=0.8, label="test loss", format="%.2g")
    save(fig, path)


# --- the page ------------------------------------------------------------------------

PAGE_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}
img{max-width:100%;border:1px solid #ddd;margin:0.3em 0}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}h2{border-bottom:1px solid #aaa}"""


def embed(path):
    """An `<img>` holding the PNG at `path` as a data URI (the page needs no other file)."""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    alt = html.escape(os.path.basename(path))
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def write_page(folder, title):
    """(Re)write `folder/index.html` from every explained image in `folder` (each a
    subfolder with `explain.json` and its PNGs) and the class pictures, if drawn."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for name in sorted(os.listdir(folder)):
        meta_path = os.path.join(folder, name, "explain.json")
        if not os.path.isfile(meta_path):
            continue
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            meta["title"], meta["summary"], meta["class_names"], meta["probabilities"], meta["pictures"]
        except (OSError, ValueError, KeyError, TypeError):  # damaged, or of another version: left out
            continue
        parts.append(f"<h2>{html.escape(meta['title'])}</h2><p>{html.escape(meta['summary'])}</p>")
        names, probs = meta["class_names"], meta["probabilities"]
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr><tr>"
                     + "".join(f"<td>{p:.3f}</td>" for p in probs) + "</tr></table>")
        for picture in meta["pictures"]:
            parts.append(embed(os.path.join(folder, name, picture)))
    for picture, heading in (("classes.png", "What each class looks like to the network"),
                             ("fooling.png", "Fooling images")):
        if os.path.isfile(os.path.join(folder, picture)):
            parts.append(f"<h2>{heading}</h2>" + embed(os.path.join(folder, picture)))
    parts.append("</body></html>")
    path = os.path.join(folder, "index.html")
    write_atomic(path, "\n".join(parts).encode())
    return path
