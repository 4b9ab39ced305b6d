"""Predictions in the SemanticKITTI benchmark submission layout.

    ROOT/sequences/SS/predictions/FFFFFF.label   uint32, one word per original scan point

Words carry the raw semantic id (learning_map_inv of the predicted train id) in the low 16 bits and
instance 0, which is what the benchmark server and `evaluate_semantics.py` read back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m2s.data.semantickitti import write_labels
from m2s.labels import LabelManifest


def prediction_path(root: str | Path, sequence: str, frame: int) -> Path:
    return Path(root) / "sequences" / sequence / "predictions" / f"{int(frame):06d}.label"


class LabelExporter:
    """Writes one `.label` file per scan (atomically); holds nothing per scan in memory."""

    def __init__(self, root: str | Path, labels: LabelManifest) -> None:
        self.root = Path(root)
        self.labels = labels
        self.count = 0

    def write(self, sequence: str, frame: int, pred_train: np.ndarray) -> Path:
        path = prediction_path(self.root, sequence, frame)
        write_labels(path, self.labels.to_raw(pred_train))
        self.count += 1
        return path
