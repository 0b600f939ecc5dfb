"""Draws docs/images/im2col.png, the picture of plain im2col in "How it works":
a 4x4 input, its four 3x3 windows (stride 1), the columns they become, and the one
matrix product that gives the output.

    python scripts/draw_im2col.py
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from cnnrun.nn import kernels  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]  # one per window (output position)


def grid(ax, values, title, colors=None):
    rows, cols = values.shape
    for r in range(rows):
        for c in range(cols):
            face = colors[r][c] if colors is not None else "white"
            ax.add_patch(Rectangle((c, rows - 1 - r), 1, 1, facecolor=face, edgecolor="gray", alpha=0.35))
            ax.text(c + 0.5, rows - 0.5 - r, f"{values[r, c]:g}", ha="center", va="center", fontsize=9)
    ax.set(xlim=(0, cols), ylim=(0, rows), title=title, aspect="equal")
    ax.axis("off")


def main():
    x = np.arange(16, dtype=float).reshape(1, 1, 4, 4)
    cols = np.empty((1, 9, 4))
    kernels.im2col(x, (3, 3), (1, 1), cols)  # the function the engine runs
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.2), gridspec_kw={"width_ratios": [4, 4, 5]})
    grid(axes[0], x[0, 0], "input x (4x4), four 3x3 windows")
    for k, (a, b) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # window k's top-left corner
        axes[0].add_patch(Rectangle((b + 0.06 * k, 1 - a + 0.06 * k), 3 - 0.12 * k, 3 - 0.12 * k, fill=False,
                                    edgecolor=COLORS[k], linewidth=2))
    grid(axes[1], cols[0], "columns (9 x 4): window k\nflattened into column k",
         [[COLORS[c] for c in range(4)] for _ in range(9)])
    axes[2].axis("off")
    axes[2].text(0.0, 0.62, "W (F x 9)  @  columns (9 x 4)\n      =  y (F x 4)  ->  (F, 2, 2)", fontsize=12,
                 family="monospace")
    axes[2].text(0.0, 0.28, "one matrix product per sample:\nevery output position is one column,\n"
                 "every filter one row of W", fontsize=10)
    fig.suptitle("im2col: unfold the windows into columns, then one matrix product", y=1.08)
    out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images", "im2col.png")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
