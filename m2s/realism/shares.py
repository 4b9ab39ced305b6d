"""Class shares of labelled points, measured on a draw and expected from real SemanticKITTI.

The real shares come from the official config's `content:` ratios (share of all points per raw
id over the whole dataset), summed per train class through `learning_map`. Labelled shares are
normalised over the train ids != 0; the ignored share (train id 0: unlabeled, outlier,
other-structure, other-object) is a share of all points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2s.errors import DataError
from m2s.labels import IGNORE_INDEX, LabelManifest


@dataclass(frozen=True)
class Shares:
    """Per train id: share of labelled points (index 0 unused, 0.0) and the ignored share."""

    labelled: np.ndarray  # (C,) float64, sums to 1 over train ids 1..C-1
    ignored: float  # share of all points whose train id is 0

    def hard_total(self, hard_ids: np.ndarray) -> float:
        return float(self.labelled[hard_ids].sum())


def shares_from_counts(counts: np.ndarray) -> Shares:
    """Shares from point counts (or content weights) per train id, index 0 = ignored."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    kept = counts[1:].sum()
    if total <= 0 or kept <= 0:
        raise DataError("no labelled points to compute class shares from")
    labelled = counts.copy()
    labelled[IGNORE_INDEX] = 0.0
    return Shares(labelled=labelled / kept, ignored=float(counts[IGNORE_INDEX] / total))


def real_counts(labels: LabelManifest) -> np.ndarray:
    """`content:` ratios of the manifest summed per train id (weights, not counts)."""
    out = np.zeros(labels.num_classes, dtype=np.float64)
    for raw, ratio in labels.content.items():
        out[labels.learning_map[raw]] += ratio
    return out


def real_shares(labels: LabelManifest) -> Shares:
    """The shares of real SemanticKITTI, from the manifest's `content:` ratios."""
    return shares_from_counts(real_counts(labels))
