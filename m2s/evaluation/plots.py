"""PNG figures of an evaluation: per-class IoU bars, normalised confusion matrices, IoU by distance.

Uses matplotlib's object API on the Agg canvas (no pyplot state, safe without a display).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from m2s.evaluation.report import EvaluationReport
from m2s.io_utils import atomic_path

HARD_COLOR = "#d62728"
HARD_SHADE = "#fde0dd"


def safe_name(name: str) -> str:
    """A file-name-safe version of a model name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "model"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def _colors(n: int) -> list[tuple[float, float, float, float]]:
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_class_iou(report: EvaluationReport, path: str | Path) -> Path:
    """Grouped bars of per-class IoU (%) for the compared models; hard classes shaded and in red."""
    models = [m for m in report.models.values() if m.iou]
    classes = report.classes
    hard = set(report.hard_classes)
    x = np.arange(len(classes))
    n = max(len(models), 1)
    width = 0.8 / n
    fig = Figure(figsize=(max(10.0, 0.75 * len(classes) + 2), 5.5))
    ax = fig.add_subplot()
    for i, c in enumerate(classes):
        if c in hard:
            ax.axvspan(i - 0.5, i + 0.5, color=HARD_SHADE, zorder=0, lw=0)
    for k, (m, color) in enumerate(zip(models, _colors(len(models)), strict=True)):
        vals = [100.0 * m.iou.get(c, 0.0) for c in classes]
        miou = f"{100 * m.miou:.1f}" if m.miou is not None else "n/a"
        hard_miou = f"{100 * m.hard_miou:.1f}" if m.hard_miou is not None else "n/a"
        ax.bar(
            x - 0.4 + (k + 0.5) * width,
            vals,
            width,
            color=color,
            zorder=2,
            label=f"{m.name}  (mIoU {miou}, hard {hard_miou})",
        )
    if models:
        for i, c in enumerate(classes):
            if not any(m.present.get(c, True) for m in models):
                ax.text(i, 1.5, "no GT", ha="center", va="bottom", fontsize=7, color="0.4", rotation=90)
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    for tick, c in zip(ax.get_xticklabels(), classes, strict=True):
        if c in hard:
            tick.set_color(HARD_COLOR)
            tick.set_fontweight("bold")
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title("Per-class IoU (hard classes shaded, red labels)")
    ax.grid(axis="y", alpha=0.3, zorder=1)
    if models:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=min(n, 3), frameon=False)
    return _save(fig, Path(path))


def plot_confusion(report: EvaluationReport, model: str, path: str | Path, train_names: list[str]) -> Path:
    """Row-normalised confusion matrix (rows: ground truth of the evaluated classes, columns: every
    predicted train id incl. 'unlabeled', since predicting it on a labelled point is an error)."""
    m = report.models[model]
    conf = np.asarray(m.confusion, dtype=np.float64)  # conf[pred, gt]
    gt_ids = [train_names.index(c) for c in report.classes]
    mat = conf[:, gt_ids].T  # rows gt, cols pred
    totals = mat.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(totals > 0, mat / np.where(totals > 0, totals, 1), np.nan)
    hard = set(report.hard_classes)

    fig = Figure(figsize=(12, 10.5))
    ax = fig.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad="#eeeeee")  # grey rows: class absent from ground truth
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(np.arange(len(train_names)))
    ax.set_xticklabels(train_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(gt_ids)))
    ax.set_yticklabels(report.classes, fontsize=8)
    for tick in ax.get_yticklabels():
        if tick.get_text() in hard:
            tick.set_color(HARD_COLOR)
            tick.set_fontweight("bold")
    rows, cols = np.nonzero(np.nan_to_num(norm) >= 0.01)  # annotate only cells that carry mass
    for r, c in zip(rows, cols, strict=True):
        v = norm[r, c]
        ax.text(
            float(c),
            float(r),
            f"{100 * v:.0f}",
            ha="center",
            va="center",
            fontsize=6,
            color="white" if v > 0.6 else "black",
        )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title(f"Confusion matrix of {model} (% of each ground-truth class; grey: no ground truth)")
    cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cbar.set_label("fraction of ground-truth points")
    return _save(fig, Path(path))


def plot_iou_by_distance(report: EvaluationReport, path: str | Path) -> Path:
    """mIoU and hard-class mIoU per distance band, one line per model (means over the classes present
    in each band, since far bands lack many classes), with the point count per band."""
    raw_bands = report.distance.get("bands", [])
    bands = [str(b) for b in raw_bands] if isinstance(raw_bands, list) else []
    models = [m for m in report.models.values() if m.iou_by_distance]
    x = np.arange(len(bands))
    fig = Figure(figsize=(13, 5))
    axes = fig.subplots(1, 2, sharey=True)
    specs = [
        ("miou_present", "mIoU over present classes"),
        ("hard_miou_present", "hard-class mIoU over present classes"),
    ]
    for ax, (field, title) in zip(axes, specs, strict=True):
        for m, color in zip(models, _colors(len(models)), strict=True):
            ys = [getattr(m.iou_by_distance[b], field) if b in m.iou_by_distance else None for b in bands]
            y = np.array([np.nan if v is None else 100.0 * v for v in ys])
            ax.plot(x, y, marker="o", color=color, label=m.name)
        ax.set_xticks(x)
        ax.set_xticklabels(bands)
        ax.set_xlabel(f"{report.distance.get('measure', 'horizontal')} distance from the sensor")
        ax.set_title(title)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("IoU (%)  (n: labelled points per band)")
    if models:
        first = models[0]
        counts = [first.iou_by_distance[b].points if b in first.iou_by_distance else 0 for b in bands]
        for xi, cnt in zip(x, counts, strict=True):
            axes[0].annotate(f"n={cnt:,}", (xi, 2), ha="center", fontsize=7, color="0.4")
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(
            handles, names, loc="lower center", ncol=min(len(models), 4), frameon=False, bbox_to_anchor=(0.5, -0.08)
        )
    fig.suptitle("IoU by distance band")
    return _save(fig, Path(path))


def write_plots(report: EvaluationReport, folder: str | Path, train_names: list[str]) -> list[Path]:
    """Write every figure under `folder`; returns their paths."""
    folder = Path(folder)
    if not any(m.scans for m in report.models.values()):
        return []  # nothing was scored (e.g. only the test split): no figures to draw
    paths = [
        plot_class_iou(report, folder / "class_iou.png"),
        plot_iou_by_distance(report, folder / "iou_by_distance.png"),
    ]
    for name, m in report.models.items():
        if m.scans:
            paths.append(plot_confusion(report, name, folder / f"confusion_{safe_name(name)}.png", train_names))
    return paths
