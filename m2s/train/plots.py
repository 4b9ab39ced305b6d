"""`plots/training.png` of a model artifact: each loss term and the validation mIoU / hard mIoU per
epoch, from the engine's epoch records (the `epoch` lines of `log.jsonl`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from m2s.io_utils import atomic_path

TRAINING_PLOT = "plots/training.png"


def epoch_series(history: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(epochs, mean train value of each loss term per epoch, validation metric per epoch) — NaN
    where an epoch has no value (a term that appears later, an epoch without validation)."""
    records = [h for h in history if h.get("event", "epoch") == "epoch"]
    epochs = np.array([int(h["epoch"]) for h in records], dtype=np.int64)
    terms = sorted({k for h in records for k in h.get("train", {})}, key=lambda k: (k != "loss", k))
    train = {k: np.array([h.get("train", {}).get(k, np.nan) for h in records], dtype=np.float64) for k in terms}
    val = {
        k: np.array([h["val"][k] if "val" in h else np.nan for h in records], dtype=np.float64)
        for k in ("miou", "hard_miou")
    }
    return epochs, train, val


def plot_training(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Two panels: loss terms (log scale when all positive) and validation mIoU / hard mIoU (%)."""
    epochs, train, val = epoch_series(history)
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax_l, ax_v = fig.subplots(1, 2)
    cmap = colormaps["tab10"]
    for i, (name, values) in enumerate(train.items()):
        ax_l.plot(epochs, values, marker="o", ms=3, lw=2.2 if name == "loss" else 1.3, color=cmap(i % 10), label=name)
    finite = np.concatenate([v[np.isfinite(v)] for v in train.values()]) if train else np.zeros(0)
    if finite.size and (finite > 0).all():
        ax_l.set_yscale("log")
    ax_l.set_title("training loss terms (epoch mean)")
    ax_l.set_xlabel("epoch")
    if train:
        ax_l.legend(fontsize=7, ncol=2)
    for name, color in (("miou", "#1f77b4"), ("hard_miou", "#d62728")):
        v = 100 * val[name]
        ok = np.isfinite(v)
        label = "mIoU" if name == "miou" else "hard-class mIoU"
        ax_v.plot(epochs[ok], v[ok], marker="o", ms=3, color=color, label=label)
    ax_v.set_title("validation")
    ax_v.set_xlabel("epoch")
    ax_v.set_ylabel("%")
    if np.isfinite(val["miou"]).any():
        ax_v.legend(fontsize=8)
    else:
        ax_v.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax_v.transAxes)
    for ax in (ax_l, ax_v):
        ax.grid(alpha=0.3)
        if epochs.size:
            ax.set_xticks(epochs if epochs.size <= 20 else epochs[:: int(np.ceil(epochs.size / 20))])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
