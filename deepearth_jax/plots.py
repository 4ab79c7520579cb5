"""Pictures of a run: training curves and a confusion matrix (matplotlib, Agg backend, PNG files).

The split map lives beside the split code (`deepearth_jax.data.split.map`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["epoch"], r[key]) for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]
    if not points:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*points, strict=True)
    return np.asarray(x, float), np.asarray(y, float)


def plot_curves(rows: list[dict], out: str | Path, title: str = "training curves") -> Path:
    """Loss and accuracies against epoch, train and validation (what the loop evaluates), in one PNG.

    Panels: losses, top-1 and top-5 (and the temporal/spatial breakdown when present), and, for the masked
    autoencoder, retrieval accuracy. Older runs' `test/...` curves are drawn the same way.
    """
    keys = {k for r in rows for k in r}
    evals = [s for s in ("validation", "test") if f"{s}/count" in keys]
    panels = [("loss", [k for k in ("train/loss", *(f"{s}/loss" for s in evals)) if k in keys])]
    per_subset = ("top1", "top5", "temporal/top1", "spatial/top1")
    acc = [k for k in ("train/top1", *(f"{s}/{m}" for s in evals for m in per_subset)) if k in keys]
    if acc:
        panels.append(("accuracy", acc))
    retrieval = sorted(k for k in keys if "retrieval" in k and k.endswith(("top1", "top5")))
    if retrieval:
        panels.append(("retrieval accuracy", retrieval))
    recon = sorted(k for k in keys if k.startswith(("validation/", "test/")) and "recon" in k)
    if recon:
        panels.append(("reconstruction", recon))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    styles = {"train": "-", "validation": "--", "test": ":"}
    for ax, (name, series_keys) in zip(axes[0], panels, strict=True):
        for key in series_keys:
            x, y = _series(rows, key)
            if len(x):
                ax.plot(
                    x,
                    y,
                    styles.get(key.split("/")[0], "-"),
                    marker="o" if len(x) < 30 else None,
                    ms=3,
                    label=key,
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if name.endswith("accuracy"):
            ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_confusion(
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Sequence[str],
    out: str | Path,
    top: int = 20,
    title: str = "confusion matrix",
) -> Path:
    """Row-normalised confusion matrix of the `top` most frequent true classes (others pooled as "other")."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    counts = np.bincount(labels[labels >= 0], minlength=len(class_names))
    chosen = [int(c) for c in np.argsort(-counts, kind="stable")[:top] if counts[c] > 0]
    index = {c: i for i, c in enumerate(chosen)}
    k = len(chosen)
    matrix = np.zeros((k, k + 1))
    for y, p in zip(labels, predictions, strict=True):
        if y in index:
            matrix[index[y], index.get(int(p), k)] += 1
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.38 * k + 3)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    names = [class_names[c] for c in chosen]
    ax.set_xticks(range(k + 1), [*names, "other"], rotation=90, fontsize=7)
    ax.set_yticks(range(k), [f"{n} ({counts[c]})" for n, c in zip(names, chosen, strict=True)], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (test examples)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the true class")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
