"""The evaluation report: per-model results, `metrics.json`, the comparison table and its CSV.

IoUs and accuracies are fractions in [0, 1] in `metrics.json`; the table and CSV show percent.
Undefined values (a mean over no class, no timing) are JSON null, never NaN.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from m2s.errors import ArtifactError
from m2s.evaluation.metrics import SemanticScores, finite_or_none
from m2s.io_utils import atomic_write_text
from m2s.labels import LabelManifest

REPORT_FORMAT = 1
METRICS_FILE = "metrics.json"
TABLE_FILE = "evaluation.csv"


class BandResult(BaseModel):
    """Scores of one distance band (a confusion matrix per band)."""

    lower_m: float
    upper_m: float | None  # None: open-ended last band
    points: int  # labelled (non-ignored) ground-truth points in the band
    miou: float | None
    miou_present: float | None
    hard_miou_present: float | None
    iou: dict[str, float | None]  # evaluated classes; None where the class has no ground truth in the band
    confusion: list[list[int]]


class ModelResult(BaseModel):
    name: str
    artifact_id: str | None = None
    input: Literal["single", "fused"]
    miou: float | None = None  # official: mean over all evaluated classes, absent ones count 0
    miou_present: float | None = None  # mean over evaluated classes present in the ground truth
    hard_miou: float | None = None  # mean over the manifest's hard classes (official convention)
    hard_miou_present: float | None = None
    accuracy: float | None = None
    iou: dict[str, float] = Field(default_factory=dict)  # evaluated classes, by name
    present: dict[str, bool] = Field(default_factory=dict)
    iou_by_distance: dict[str, BandResult] = Field(default_factory=dict)
    confusion: list[list[int]] = Field(default_factory=list)  # conf[pred][gt], 20x20, raw counts
    ms_per_scan_median: float | None = None
    scans: int = 0  # labelled scans that entered the metrics
    scans_predicted: int = 0  # every scan predicted (incl. unlabeled sequences)
    points: int = 0  # points of the labelled scans (the original scan's points only)
    points_labelled: int = 0  # of those, points whose ground truth is an evaluated class
    exported_to: str | None = None  # relative folder of the benchmark-layout predictions


class EvaluationReport(BaseModel):
    format: int = REPORT_FORMAT
    label_digest: str
    classes: list[str]  # the evaluated classes, in train-id order
    hard_classes: list[str]
    ignored_classes: list[str]
    distance: dict[str, object]  # {"measure": "horizontal", "edges_m": [...], "bands": [...]}
    sequences: list[str]
    unlabeled_sequences: list[str]  # predicted (and exported) but not scored
    models: dict[str, ModelResult]

    def model_names(self) -> list[str]:
        return list(self.models)


def model_result(
    *,
    name: str,
    input_kind: Literal["single", "fused"],
    labels: LabelManifest,
    scores: SemanticScores,
    confusion: np.ndarray,
    band_scores: list[SemanticScores],
    band_confusions: np.ndarray,
    band_names: list[str],
    edges: list[float],
    timings_ms: list[float],
    scans: int,
    scans_predicted: int,
    points: int,
    artifact_id: str | None = None,
    exported_to: str | None = None,
) -> ModelResult:
    """Assemble one model's result from its accumulated confusions."""
    evaluated = labels.evaluated_train_ids.tolist()
    hard = labels.hard_train_ids.tolist()
    names = labels.train_names
    scored = scans > 0
    bands: dict[str, BandResult] = {}
    if scored:
        for i, (bname, bs) in enumerate(zip(band_names, band_scores, strict=True)):
            bands[bname] = BandResult(
                lower_m=float(edges[i]),
                upper_m=float(edges[i + 1]) if i + 1 < len(edges) else None,
                points=bs.labelled_points,
                miou=finite_or_none(bs.miou) if bs.labelled_points else None,
                miou_present=bs.miou_present,
                hard_miou_present=bs.mean_iou_of(hard, present_only=True),
                iou={names[c]: (bs.iou[c] if bs.present[c] else None) for c in evaluated},
                confusion=band_confusions[i].tolist(),
            )
    return ModelResult(
        name=name,
        artifact_id=artifact_id,
        input=input_kind,
        miou=finite_or_none(scores.miou) if scored else None,
        miou_present=scores.miou_present if scored else None,
        hard_miou=scores.mean_iou_of(hard) if scored else None,
        hard_miou_present=scores.mean_iou_of(hard, present_only=True) if scored else None,
        accuracy=scores.accuracy if scored else None,
        iou={names[c]: scores.iou[c] for c in evaluated} if scored else {},
        present={names[c]: scores.present[c] for c in evaluated} if scored else {},
        iou_by_distance=bands,
        confusion=confusion.tolist(),
        ms_per_scan_median=finite_or_none(float(np.median(timings_ms))) if timings_ms else None,
        scans=scans,
        scans_predicted=scans_predicted,
        points=points,
        points_labelled=scores.labelled_points,
        exported_to=exported_to,
    )


def write_metrics_json(path: str | Path, report: EvaluationReport) -> Path:
    path = Path(path)
    atomic_write_text(path, report.model_dump_json(indent=2) + "\n")
    return path


def read_metrics_json(path: str | Path) -> EvaluationReport:
    path = Path(path)
    try:
        return EvaluationReport.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no evaluation metrics file") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise ArtifactError(f"{path}: invalid evaluation metrics: {exc}") from None


# ---- comparison table ---------------------------------------------------------------------------
class TableRow(BaseModel):
    """One row of the side-by-side table: a class IoU or a summary metric, one value per model."""

    metric: str
    kind: Literal["class", "summary"]
    unit: Literal["%", "ms"]
    hard: bool = False
    no_ground_truth: bool = False  # class absent from the ground truth: IoU 0 by the official rule
    higher_is_better: bool = True
    values: list[float | None]  # per model, in the report's model order
    deltas: list[float | None]  # value - first model's value; deltas[0] is always None

    def improved(self, i: int) -> bool | None:
        """Whether model i is better than the first model on this row (None: equal or undefined)."""
        d = self.deltas[i]
        if d is None or d == 0:
            return None
        return (d > 0) == self.higher_is_better


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def comparison_rows(report: EvaluationReport) -> list[TableRow]:
    """Rows for the side-by-side table: per-class IoU, then mIoU, mIoU (present), hard mIoU,
    accuracy and speed; deltas are to the first model."""
    models = list(report.models.values())
    hard = set(report.hard_classes)
    scored = [m for m in models if m.present]
    # All models are scored on the same points, so any scored model tells which classes occur.
    present = scored[0].present if scored else {}

    def row(metric: str, kind: str, unit: str, vals: list[float | None], **extra: Any) -> TableRow:
        base = vals[0] if vals else None
        deltas = [None] + [None if (v is None or base is None) else v - base for v in vals[1:]]
        return TableRow(metric=metric, kind=kind, unit=unit, values=vals, deltas=deltas, **extra)

    rows = [
        row(
            c,
            "class",
            "%",
            [_pct(m.iou.get(c)) for m in models],
            hard=c in hard,
            no_ground_truth=bool(present) and not present.get(c, False),
        )
        for c in report.classes
    ]
    rows.append(row("mIoU", "summary", "%", [_pct(m.miou) for m in models]))
    rows.append(row("mIoU (present classes)", "summary", "%", [_pct(m.miou_present) for m in models]))
    rows.append(row("hard mIoU", "summary", "%", [_pct(m.hard_miou) for m in models], hard=True))
    rows.append(row("accuracy", "summary", "%", [_pct(m.accuracy) for m in models]))
    rows.append(
        row("ms / scan (median)", "summary", "ms", [m.ms_per_scan_median for m in models], higher_is_better=False)
    )
    return rows


def table_csv(report: EvaluationReport) -> str:
    """The comparison table as CSV: one row per metric, one column per model and per delta."""
    names = report.model_names()
    header = ["metric", "kind", "unit", "hard"] + names + [f"{n} - {names[0]}" for n in names[1:]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)

    def cell(x: float | None) -> str:
        return "" if x is None else f"{x:.4f}"

    for r in comparison_rows(report):
        w.writerow(
            [r.metric, r.kind, r.unit, int(r.hard)] + [cell(v) for v in r.values] + [cell(d) for d in r.deltas[1:]]
        )
    return buf.getvalue()


def write_table_csv(path: str | Path, report: EvaluationReport) -> Path:
    path = Path(path)
    atomic_write_text(path, table_csv(report))
    return path
