"""The cue test: how well do a few cheap cues name an instance's class, with no model at all?

A k-nearest-neighbour classifier (standardised features, majority vote) is trained on some
sequences and scored on the others (2-fold by sequence), for every non-empty subset of the cue
groups. Its macro accuracy (mean per-class recall over the classes present) says how much of the
class a benchmark gives away through size, place or motion: on real streets these cues overlap
between classes, so the classifier stays far from 1.0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from m2s.errors import DataError


def knn_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 5, balanced: bool = True
) -> np.ndarray:
    """Majority vote of the `k` nearest training rows (Euclidean on features standardised by the
    training rows); a tied vote goes to the tied class whose neighbours rank nearer.

    `balanced`: each neighbour votes with the inverse of its class's training frequency, so a
    class with many instances (car) does not win merely by being common; macro accuracy then
    measures how separable the classes are, not how imbalanced the draw is."""
    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    train_y = np.asarray(train_y, dtype=np.int64)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise DataError("knn_predict needs 2-D feature tables with the same columns")
    if train_x.shape[0] == 0:
        raise DataError("knn_predict: no training rows")
    if test_x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std[std == 0] = 1.0  # a constant cue carries no information; keep it from dividing by zero
    k = min(k, train_x.shape[0])
    tree = cKDTree((train_x - mean) / std)
    _, idx = tree.query((test_x - mean) / std, k=k)
    idx = idx.reshape(test_x.shape[0], k)
    classes, yi = np.unique(train_y, return_inverse=True)
    votes = np.zeros((test_x.shape[0], classes.size), dtype=np.float64)
    # one vote each, plus a tie-breaker smaller than one vote that favours nearer neighbours
    weight = 1.0 + (k - np.arange(k)) / (k * (k + 1.0))
    per_class = 1.0 / np.bincount(yi, minlength=classes.size) if balanced else np.ones(classes.size)
    vote = np.tile(weight, test_x.shape[0]) * per_class[yi[idx].ravel()]
    np.add.at(votes, (np.repeat(np.arange(test_x.shape[0]), k), yi[idx].ravel()), vote)
    return classes[votes.argmax(axis=1)]


def per_class_recall(truth: np.ndarray, pred: np.ndarray) -> dict[int, float]:
    """Recall of every class present in `truth`."""
    truth = np.asarray(truth, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    return {int(c): float((pred[truth == c] == c).mean()) for c in np.unique(truth)}


def macro_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in `truth` (chance: 1 / classes)."""
    recall = per_class_recall(truth, pred)
    if not recall:
        raise DataError("macro accuracy of nothing: no test rows")
    return float(np.mean(list(recall.values())))


def two_fold_groups(groups: np.ndarray) -> list[np.ndarray]:
    """Masks of the two folds: the first half of the sorted distinct groups, and the rest."""
    names = np.unique(groups)
    if names.size < 2:
        raise DataError(f"the cue test needs at least 2 sequences to train on one and score another, got {names.size}")
    first = names[: (names.size + 1) // 2]
    a = np.isin(groups, first)
    return [a, ~a]


def cross_predict(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int = 5) -> np.ndarray:
    """Each fold's rows predicted by a classifier trained on the other fold."""
    pred = np.empty(y.shape[0], dtype=np.int64)
    for test in two_fold_groups(groups):
        pred[test] = knn_predict(x[~test], y[~test], x[test], k)
    return pred


def scorable(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Rows whose class also has instances in the other fold: a class met in one fold only can
    never be predicted there, which would lower macro accuracy for a reason unrelated to cues."""
    keep = np.zeros(y.shape[0], dtype=bool)
    for test in two_fold_groups(groups):
        keep[test] = np.isin(y[test], np.unique(y[~test]))
    return keep


@dataclass(frozen=True)
class CueResult:
    cues: tuple[str, ...]
    macro_accuracy: float
    recall: dict[int, float]  # per class id present


def cue_test(cues: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray, k: int = 5) -> list[CueResult]:
    """2-fold-by-group k-NN macro accuracy for every non-empty subset of the named cue groups
    (each an (N,) or (N,d) array), in order of subset size then name order."""
    names = list(cues)
    if not names:
        raise DataError("cue test: no cues")
    y = np.asarray(y, dtype=np.int64)
    groups = np.asarray(groups)
    cols = {n: np.asarray(v, dtype=np.float64).reshape(y.shape[0], -1) for n, v in cues.items()}
    for n, v in cols.items():
        if not np.isfinite(v).all():
            raise DataError(f"cue test: cue {n!r} has non-finite values")
    ok = scorable(y, groups)
    if not ok.any():
        raise DataError("cue test: no class has instances in both folds")
    out = []
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(names, size):
            x = np.hstack([cols[n] for n in subset])
            pred = cross_predict(x, y, groups, k)[ok]
            out.append(CueResult(subset, macro_accuracy(y[ok], pred), per_class_recall(y[ok], pred)))
    return out
