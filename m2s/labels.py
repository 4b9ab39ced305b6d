"""The label manifest: raw SemanticKITTI ids, the train-id mapping and the hard classes.

Label words in `.label` files are uint32: the semantic raw id in the low 16 bits and the
instance id in the high 16 bits. Mapping to train ids is a lookup table indexed by the raw id
(vectorised, never a per-point dict).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from m2s.errors import ConfigError, DataError

DEFAULT_MANIFEST_PATH = Path(__file__).resolve().parents[1] / "data_manifests" / "semantic-kitti.yaml"

SEMANTIC_MASK = np.uint32(0xFFFF)
IGNORE_INDEX = 0  # train id of "unlabeled"; the evaluator and the losses ignore it


def split_label_word(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split uint32 label words into (semantic raw id, instance id), both uint32."""
    words = np.asarray(words, dtype=np.uint32)
    return words & SEMANTIC_MASK, words >> np.uint32(16)


def make_label_word(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split_label_word`."""
    semantic = np.asarray(semantic, dtype=np.uint32)
    instance = np.asarray(instance, dtype=np.uint32)
    return (instance << np.uint32(16)) | (semantic & SEMANTIC_MASK)


class LabelManifest(BaseModel):
    """Official SemanticKITTI label configuration plus the m2s hard-class additions."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    labels: dict[int, str]
    color_map: dict[int, list[int]]
    content: dict[int, float]
    learning_map: dict[int, int]
    learning_map_inv: dict[int, int]
    learning_ignore: dict[int, bool]
    split: dict[str, list[int]]
    hard_classes: list[str]
    hard_raw_ids: list[int] = []

    @model_validator(mode="after")
    def _check_consistency(self) -> LabelManifest:
        missing = sorted(set(self.labels) - set(self.learning_map))
        if missing:
            raise ValueError(f"raw ids without a learning_map entry: {missing}")
        n = self.num_classes
        if sorted(self.learning_map_inv) != list(range(n)):
            raise ValueError("learning_map_inv must cover train ids 0..N-1 exactly")
        unknown = [c for c in self.hard_classes if c not in self.train_names]
        if unknown:
            raise ValueError(f"hard_classes names unknown train classes: {unknown}")
        if self.hard_raw_ids and sorted(self.hard_raw_ids) != self.hard_raw_ids_derived.tolist():
            raise ValueError(
                "hard_raw_ids disagree with learning_map: expected "
                f"{self.hard_raw_ids_derived.tolist()}, got {sorted(self.hard_raw_ids)}"
            )
        return self

    # ---- derived views ------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.learning_map_inv)

    @cached_property
    def train_names(self) -> list[str]:
        """Name of each train id (0 = unlabeled)."""
        return [self.labels[self.learning_map_inv[i]] for i in range(len(self.learning_map_inv))]

    @cached_property
    def ignored_train_ids(self) -> np.ndarray:
        return np.array(sorted(k for k, v in self.learning_ignore.items() if v), dtype=np.int64)

    @cached_property
    def evaluated_train_ids(self) -> np.ndarray:
        return np.array([i for i in range(self.num_classes) if not self.learning_ignore.get(i, False)], dtype=np.int64)

    @cached_property
    def raw_to_train_lut(self) -> np.ndarray:
        """int64 table indexed by raw semantic id; -1 marks ids absent from the manifest."""
        lut = np.full(max(self.learning_map) + 1, -1, dtype=np.int64)
        keys = np.fromiter(self.learning_map.keys(), dtype=np.int64)
        vals = np.fromiter(self.learning_map.values(), dtype=np.int64)
        lut[keys] = vals
        return lut

    @cached_property
    def train_to_raw_lut(self) -> np.ndarray:
        lut = np.zeros(self.num_classes, dtype=np.uint32)
        for train_id, raw in self.learning_map_inv.items():
            lut[train_id] = raw
        return lut

    @cached_property
    def hard_train_ids(self) -> np.ndarray:
        return np.array(sorted(self.train_names.index(n) for n in self.hard_classes), dtype=np.int64)

    @cached_property
    def hard_raw_ids_derived(self) -> np.ndarray:
        return self.raw_ids_of_train_classes(self.hard_classes)

    @cached_property
    def moving_raw_ids(self) -> np.ndarray:
        return np.array(sorted(k for k, v in self.labels.items() if v.startswith("moving-")), dtype=np.int64)

    def raw_ids_of_train_classes(self, names: list[str]) -> np.ndarray:
        """Every raw id that learning_map sends to one of the named train classes."""
        unknown = [n for n in names if n not in self.train_names]
        if unknown:
            raise ConfigError(f"unknown class name(s) {unknown}; known: {self.train_names[1:]}")
        ids = {self.train_names.index(n) for n in names}
        return np.array(sorted(k for k, v in self.learning_map.items() if v in ids), dtype=np.int64)

    def train_ids_of(self, names: list[str]) -> np.ndarray:
        unknown = [n for n in names if n not in self.train_names]
        if unknown:
            raise ConfigError(f"unknown class name(s) {unknown}; known: {self.train_names[1:]}")
        return np.array(sorted(self.train_names.index(n) for n in names), dtype=np.int64)

    # ---- mapping ------------------------------------------------------------------------
    def to_train(self, words_or_semantic: np.ndarray, *, source: str | Path | None = None) -> np.ndarray:
        """Map label words (or raw semantic ids) to int64 train ids via the lookup table.

        Raw ids the manifest does not know are refused rather than silently mapped to
        unlabeled, naming `source` when given.
        """
        semantic = np.asarray(words_or_semantic).astype(np.uint32, copy=False) & SEMANTIC_MASK
        lut = self.raw_to_train_lut
        if semantic.size:
            too_big = semantic >= lut.shape[0]
            train = np.where(too_big, -1, lut[np.minimum(semantic, lut.shape[0] - 1)])
            if (train < 0).any():
                bad = np.unique(semantic[train < 0])[:10].tolist()
                where = f" in {source}" if source is not None else ""
                raise DataError(f"unknown raw semantic id(s) {bad}{where}")
            return train
        return np.zeros(0, dtype=np.int64)

    def to_raw(self, train_ids: np.ndarray) -> np.ndarray:
        """Map train ids back to raw ids (uint32) via learning_map_inv."""
        train_ids = np.asarray(train_ids, dtype=np.int64)
        if train_ids.size and (train_ids.min() < 0 or train_ids.max() >= self.num_classes):
            raise DataError(f"train ids outside 0..{self.num_classes - 1}")
        return self.train_to_raw_lut[train_ids]

    def is_hard_raw(self, semantic: np.ndarray, hard_raw_ids: np.ndarray | None = None) -> np.ndarray:
        ids = self.hard_raw_ids_derived if hard_raw_ids is None else hard_raw_ids
        return np.isin(np.asarray(semantic) & SEMANTIC_MASK, ids)

    def digest(self) -> str:
        """sha256 of what decides a model's outputs: the train-id mapping and names."""
        payload = {
            "learning_map": {str(k): v for k, v in sorted(self.learning_map.items())},
            "learning_map_inv": {str(k): v for k, v in sorted(self.learning_map_inv.items())},
            "learning_ignore": {str(k): v for k, v in sorted(self.learning_ignore.items())},
            "names": self.train_names,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def split_sequences(self, split: str) -> list[str]:
        if split not in self.split:
            raise ConfigError(f"unknown split {split!r}; known: {sorted(self.split)}")
        return [f"{s:02d}" for s in self.split[split]]


def load_label_manifest(path: str | Path | None = None) -> LabelManifest:
    """Load a label manifest YAML (default: the shipped `data_manifests/semantic-kitti.yaml`)."""
    p = Path(path) if path is not None else DEFAULT_MANIFEST_PATH
    if not p.is_file():
        raise ConfigError(f"label manifest not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"label manifest {p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"label manifest {p} is not a mapping")
    raw.setdefault("hard_classes", [])
    try:
        return LabelManifest(**raw)
    except ValueError as exc:
        raise ConfigError(f"label manifest {p} is invalid: {exc}") from exc
