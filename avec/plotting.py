"""Small plotting helpers shared by result objects (matplotlib, headless-safe)."""

from __future__ import annotations

from typing import Sequence


def pyplot():
    """matplotlib.pyplot; matplotlib itself falls back to Agg when there is no display."""
    import matplotlib.pyplot as plt

    return plt


def heatmap(values, ylabels: Sequence[str], xlabels: Sequence[str], title: str, ax=None, cmap: str = "RdBu_r",
            center: bool = True, xlabel: str = "", ylabel: str = "", cbar: str = "", annotations=None):
    """A labelled heatmap of a 2-D array ``[rows, cols]``; symmetric colour range when ``center``."""
    import numpy as np

    plt = pyplot()
    v = np.asarray(values, dtype=float)
    if ax is None:
        w = min(3 + 0.45 * v.shape[1], 16)
        h = min(2 + 0.28 * v.shape[0], 14)
        fig, ax = plt.subplots(figsize=(w, h))
    fig = ax.figure
    finite = v[np.isfinite(v)]
    lim = float(np.abs(finite).max()) if finite.size else 1.0
    kw = dict(vmin=-lim, vmax=lim) if center else {}
    im = ax.imshow(v, aspect="auto", cmap=cmap, interpolation="nearest", **kw)
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels(list(xlabels), rotation=60, ha="right", fontsize=7)
    step = max(1, len(ylabels) // 40)
    ax.set_yticks(range(0, len(ylabels), step))
    ax.set_yticklabels(list(ylabels)[::step], fontsize=7)
    if annotations is not None and v.size <= 600:
        for (i, j), text in np.ndenumerate(np.asarray(annotations, dtype=object)):
            ax.text(j, i, str(text), ha="center", va="center", fontsize=5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=cbar)
    return fig


def log_density_histogram(counts: Sequence[int], edges: Sequence[float], dense_threshold: float, title: str,
                          ylabel: str = "features", ax=None):
    """A histogram of log10 firing frequency (``counts`` [n_bins] over ``edges`` [n_bins + 1]) with the dense
    threshold marked: the one density picture of SAE evaluations and feature lists."""
    import math

    plt = pyplot()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.2))
    ax.stairs(counts, edges, fill=True, color="#4477aa")
    ax.axvline(math.log10(dense_threshold), color="#cc6677", ls="--", lw=1, label=f"dense (> {dense_threshold:g})")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return fig
