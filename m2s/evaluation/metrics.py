"""Semantic-segmentation metrics with the exact definitions of the official SemanticKITTI evaluator.

The official `evaluate_semantics.py` (semantic-kitti-api, `auxiliary/np_ioueval.py`) defines:

* ``conf[pred, gt]`` counted over every point (rows = prediction, columns = ground truth);
* the *columns* of ignored classes are zeroed before any statistic, so points whose ground truth is
  ignored never count, while a prediction of an ignored class on a labelled point is a false
  negative of that point's class;
* ``tp = diag``, ``fp = row_sum - tp``, ``fn = col_sum - tp``;
* ``IoU = tp / (tp + fp + fn + 1e-15)``: a class absent from ground truth *and* predictions scores 0
  and still enters the mIoU over all evaluated classes;
* ``accuracy = sum(tp) / (sum(tp[incl]) + sum(fp[incl]) + 1e-15)``: predictions of an ignored class
  leave the denominator.

Everything here reproduces those definitions; ``miou_present`` (mean over classes that occur in the
ground truth) is an additional, clearly separate number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from pydantic import BaseModel, ConfigDict

from m2s.errors import DataError

EPS = 1e-15  # the official evaluator's epsilon, kept so IoUs agree to the last digit

# Distance bands (metres) from the sensor: [0,10), [10,20), [20,30), [30,50), [50,inf).
DEFAULT_DISTANCE_EDGES: tuple[float, ...] = (0.0, 10.0, 20.0, 30.0, 50.0)


class SemanticScores(BaseModel):
    """Official-style scores derived from one confusion matrix (lists are indexed by train id)."""

    model_config = ConfigDict(frozen=True)

    iou: list[float]  # all classes; ignored classes are 0 by construction of the official formula
    tp: list[int]
    fp: list[int]
    fn: list[int]
    present: list[bool]  # evaluated class with at least one ground-truth point
    miou: float  # official: mean over every evaluated class (absent ones count as 0)
    miou_present: float | None  # mean over evaluated classes present in the ground truth
    accuracy: float
    labelled_points: int  # points whose ground truth is an evaluated class

    def mean_iou_of(self, class_ids: Sequence[int] | np.ndarray, *, present_only: bool = False) -> float | None:
        """Mean IoU over a subset of classes (e.g. the hard classes); None when the subset is empty."""
        ids = [int(c) for c in class_ids]
        if present_only:
            ids = [c for c in ids if self.present[c]]
        if not ids:
            return None
        return float(np.mean([self.iou[c] for c in ids]))


def scores_from_confusion(conf: np.ndarray, ignore: Sequence[int] | np.ndarray) -> SemanticScores:
    """Compute :class:`SemanticScores` from ``conf[pred, gt]`` exactly as the official evaluator."""
    conf = np.array(conf, dtype=np.int64, copy=True)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise DataError(f"confusion matrix must be square, got shape {conf.shape}")
    n = conf.shape[0]
    ignore_ids = np.asarray(ignore, dtype=np.int64).reshape(-1)
    include = np.ones(n, dtype=bool)
    include[ignore_ids] = False

    conf[:, ignore_ids] = 0  # ignored ground truth never counts (official getStats)
    tp = np.diag(conf).copy()
    fp = conf.sum(axis=1) - tp
    fn = conf.sum(axis=0) - tp
    iou = tp / (tp + fp + fn + EPS)
    gt_count = conf.sum(axis=0)
    present = include & (gt_count > 0)

    miou = float(iou[include].mean()) if include.any() else float("nan")
    miou_present = float(iou[present].mean()) if present.any() else None
    accuracy = float(tp.sum() / (tp[include].sum() + fp[include].sum() + EPS))
    return SemanticScores(
        iou=[float(v) for v in iou],
        tp=[int(v) for v in tp],
        fp=[int(v) for v in fp],
        fn=[int(v) for v in fn],
        present=[bool(v) for v in present],
        miou=miou,
        miou_present=miou_present,
        accuracy=accuracy,
        labelled_points=int(gt_count[include].sum()),
    )


def _check_ids(ids: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0:
        return ids.astype(np.int64)
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"{what} must be integer train ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{what} contain train id(s) outside 0..{num_classes - 1} (min {lo}, max {hi})")
    return ids


class ConfusionAccumulator:
    """Running ``conf[pred, gt]`` over a split; one ``np.bincount`` per update."""

    def __init__(self, num_classes: int, ignore: Sequence[int] | np.ndarray = (0,)) -> None:
        if num_classes < 1:
            raise DataError("num_classes must be positive")
        self.num_classes = int(num_classes)
        self.ignore = np.asarray(ignore, dtype=np.int64).reshape(-1)
        self._conf = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @property
    def confusion(self) -> np.ndarray:
        """A copy of the raw matrix (ignored columns NOT zeroed, like the official conf_matrix)."""
        return self._conf.copy()

    def update(self, pred_train: np.ndarray, gt_train: np.ndarray) -> None:
        c = self.num_classes
        pred = _check_ids(pred_train, c, "predictions")
        gt = _check_ids(gt_train, c, "ground-truth labels")
        if pred.shape != gt.shape:
            raise DataError(f"{pred.shape[0]} predictions for {gt.shape[0]} ground-truth points")
        self._conf += np.bincount(pred * c + gt, minlength=c * c).reshape(c, c)

    def merge(self, other: ConfusionAccumulator) -> ConfusionAccumulator:
        """Add another accumulator's counts into this one (e.g. per-worker or per-sequence); returns self."""
        if other.num_classes != self.num_classes or not np.array_equal(other.ignore, self.ignore):
            raise DataError("cannot merge confusion accumulators with different classes or ignore sets")
        self._conf += other._conf
        return self

    def result(self) -> SemanticScores:
        return scores_from_confusion(self._conf, self.ignore)


def horizontal_distance(points: np.ndarray) -> np.ndarray:
    """Distance from the sensor in the ground plane, sqrt(x^2 + y^2) in the LiDAR frame.

    Horizontal rather than 3D range so that a band means "this far away on the map", independent of
    the sensor's mounting height (ground points right under the sensor are ~1.7 m away in 3D).
    """
    pts = np.asarray(points)
    return np.hypot(pts[:, 0], pts[:, 1])


def band_labels(edges: Sequence[float]) -> list[str]:
    """Human names of the bands, e.g. ``['0-10 m', ..., '50+ m']``."""
    e = [float(x) for x in edges]
    names = [f"{_fmt(a)}-{_fmt(b)} m" for a, b in pairwise(e)]
    return names + [f"{_fmt(e[-1])}+ m"]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class BandedConfusion:
    """One ``conf[pred, gt]`` per distance band, accumulated with a single bincount per update."""

    def __init__(
        self,
        num_classes: int,
        ignore: Sequence[int] | np.ndarray = (0,),
        edges: Sequence[float] = DEFAULT_DISTANCE_EDGES,
    ) -> None:
        e = np.asarray(edges, dtype=np.float64)
        if e.ndim != 1 or e.size < 1 or e[0] != 0.0 or np.any(np.diff(e) <= 0) or not np.isfinite(e).all():
            raise DataError(f"distance band edges must start at 0 and increase strictly, got {list(edges)}")
        self.edges = e
        self.num_classes = int(num_classes)
        self.ignore = np.asarray(ignore, dtype=np.int64).reshape(-1)
        self.num_bands = e.size  # the last band is open-ended
        self._conf = np.zeros((self.num_bands, self.num_classes, self.num_classes), dtype=np.int64)

    @property
    def labels(self) -> list[str]:
        return band_labels(self.edges.tolist())

    @property
    def confusion(self) -> np.ndarray:
        return self._conf.copy()

    def band_of(self, distance: np.ndarray) -> np.ndarray:
        # side="right": a point exactly at 10 m belongs to [10, 20).
        return np.searchsorted(self.edges[1:], np.asarray(distance, dtype=np.float64), side="right")

    def update(self, pred_train: np.ndarray, gt_train: np.ndarray, distance: np.ndarray) -> None:
        c = self.num_classes
        pred = _check_ids(pred_train, c, "predictions")
        gt = _check_ids(gt_train, c, "ground-truth labels")
        dist = np.asarray(distance).reshape(-1)
        if not (pred.shape == gt.shape == dist.shape):
            raise DataError(f"predictions {pred.shape}, labels {gt.shape} and distances {dist.shape} differ in length")
        band = self.band_of(dist).astype(np.int64)
        flat = (band * c + pred) * c + gt
        self._conf += np.bincount(flat, minlength=self.num_bands * c * c).reshape(self.num_bands, c, c)

    def merge(self, other: BandedConfusion) -> BandedConfusion:
        if other._conf.shape != self._conf.shape or not np.array_equal(other.edges, self.edges):
            raise DataError("cannot merge banded confusions with different bands or classes")
        self._conf += other._conf
        return self

    def results(self) -> list[SemanticScores]:
        return [scores_from_confusion(m, self.ignore) for m in self._conf]


def finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN: undefined means become null."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)
