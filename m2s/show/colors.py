"""Official SemanticKITTI colours, taken from the label manifest's `color_map` (BGR, as in the
official config) and turned into RGB lookup tables indexed by train id."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2s.errors import ConfigError
from m2s.labels import LabelManifest

# Colours of the views that are not class colours (RGB).
BACKGROUND = np.array([255, 255, 255], dtype=np.uint8)
EMPTY_RANGE = np.array([24, 24, 24], dtype=np.uint8)  # range-image pixels no point hit
CORRECT = np.array([200, 200, 200], dtype=np.uint8)  # error view: right class
WRONG = np.array([230, 0, 0], dtype=np.uint8)  # error view: wrong class
IGNORED = np.array([120, 120, 230], dtype=np.uint8)  # error view: ground truth is "unlabeled"
TARGET_ROWS = np.array([175, 175, 175], dtype=np.uint8)  # fused view: the scan's own rows


def bgr_to_rgb(bgr: list[int] | tuple[int, int, int]) -> np.ndarray:
    return np.asarray(bgr, dtype=np.uint8)[::-1].copy()


@dataclass(frozen=True)
class ClassColors:
    """RGB colour of every train id: the official colour of its `learning_map_inv` raw id."""

    train_rgb: np.ndarray  # uint8 (C, 3)
    names: list[str]

    def of_train(self, train_ids: np.ndarray) -> np.ndarray:
        return self.train_rgb[np.asarray(train_ids, dtype=np.int64)]


def class_colors(labels: LabelManifest) -> ClassColors:
    """Colour table from the manifest (the official `color_map`, stored BGR, returned RGB)."""
    missing = [raw for raw in labels.learning_map_inv.values() if raw not in labels.color_map]
    if missing:
        raise ConfigError(f"label manifest has no color_map entry for raw id(s) {missing}")
    table = np.stack([bgr_to_rgb(labels.color_map[labels.learning_map_inv[i]]) for i in range(labels.num_classes)])
    return ClassColors(train_rgb=table, names=list(labels.train_names))


def source_frame_colors(offsets: np.ndarray) -> np.ndarray:
    """RGB per fused row by its source frame's offset to the target (1 = previous scan, -1 = next):
    a fixed qualitative palette, so the same offset has the same colour in every image."""
    from matplotlib import colormaps

    palette = (colormaps["tab10"](np.arange(10))[:, :3] * 255).round().astype(np.uint8)
    # tab10 index 7 is grey: skip it so fused rows never look like the target's own grey rows.
    palette = np.delete(palette, 7, axis=0)
    idx = np.where(offsets > 0, 2 * (offsets - 1), 2 * (-offsets) - 1)  # 1,2,3.. -> 0,2,4; -1,-2 -> 1,3
    return palette[np.mod(idx, palette.shape[0])]
