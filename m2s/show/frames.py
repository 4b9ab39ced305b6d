"""The data behind one rendered frame: the scan, its ground truth, its fused block and the
predictions of each model (through :class:`m2s.inference.Predictor`, the evaluation's path)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m2s.data.semantickitti import Sequence, normalize_sequence_id, open_sequences
from m2s.errors import ConfigError, DataError
from m2s.labels import LabelManifest, split_label_word
from m2s.show.config import RangeGeometry


@dataclass(frozen=True)
class ModelPrediction:
    name: str
    input_kind: str  # what the model saw: "single" or "fused"
    pred: np.ndarray  # int64 (N,) train id of every point of the scan


@dataclass(frozen=True)
class FrameData:
    sequence: str
    frame: int
    points: np.ndarray  # float32 (N,4): the scan
    gt_train: np.ndarray | None  # int64 (N,), None without labels
    instance: np.ndarray | None  # uint32 (N,) instance ids, None without labels
    hard: np.ndarray | None  # bool (N,): point of a hard class (raw id), None without labels
    fused_points: np.ndarray | None  # float32 (F,4): the fused rows (cache only)
    fused_source: np.ndarray | None  # int32 (F,): frame each fused row came from
    fused_instance: np.ndarray | None  # uint32 (F,)
    predictions: tuple[ModelPrediction, ...] = ()


class _CacheLookup:
    """(sequence, frame) -> block of a fused cache (read-only use of the public reader)."""

    def __init__(self, path: Path) -> None:
        from m2s.fuse import open_fused_cache

        # A viewer reads a few blocks: no whole-cache sha256 pass (hours on a full SemanticKITTI
        # cache); the manifest, the files' presence and every block read are still checked.
        self.cache = open_fused_cache(path, verify=False)
        self.path = path
        self.position = {(s, f): i for i, (s, f) in enumerate(self.cache.index)}

    def block(self, sequence: str, frame: int) -> Any:
        i = self.position.get((sequence, frame))
        if i is None:
            have = sorted({s for s, _ in self.cache.index})
            raise DataError(f"{self.path}: fused cache has no frame {frame} of sequence {sequence} (sequences {have})")
        return self.cache.read_block(i)


def _dataset_manifest_geometry(root: Path) -> RangeGeometry | None:
    """The sensor of an `m2s synth` dataset (its manifest config), or None for other data."""
    mp = root / "manifest.json"
    if not mp.is_file():
        return None
    try:
        cfg = json.loads(mp.read_text()).get("config", {})
        return RangeGeometry(
            height=int(cfg["beams"]),
            width=int(cfg["columns"]),
            fov_up_deg=float(cfg["elevation_top_deg"]),
            fov_down_deg=float(cfg["elevation_bottom_deg"]),
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        return None


def sensor_geometry(data: Path | None, cache: Path | None) -> RangeGeometry | None:
    """Range-image geometry of the data's own sensor when it is known (a synthetic dataset, given
    directly or as the fused cache's input), else None (use the configured default)."""
    roots: list[Path] = []
    if data is not None:
        roots.append(Path(data))
    if cache is not None:
        try:
            inputs = json.loads((Path(cache) / "manifest.json").read_text()).get("inputs", [])
            roots += [Path(i["path"]) for i in inputs if i.get("kind") == "raw-dataset"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            pass
    for root in roots:
        geometry = _dataset_manifest_geometry(root)
        if geometry is not None:
            return geometry
    return None


def _ground_truth(words: np.ndarray | None, labels: LabelManifest, hard_raw: np.ndarray, where: str):
    if words is None:
        return None, None, None
    semantic, instance = split_label_word(words)
    return labels.to_train(words, source=where), instance, np.isin(semantic, hard_raw)


def load_frames(
    labels: LabelManifest,
    sequence: str,
    frames: Seq[int],
    *,
    data: Path | None = None,
    cache: Path | None = None,
    predictors: Seq[Any] = (),
) -> Iterator[FrameData]:
    """Yield the requested frames with ground truth (when labelled), the fused rows (with a cache)
    and each predictor's prediction. Predictors are :class:`m2s.inference.Predictor`-like objects
    with ``name``, ``label_digest``, ``loaded.input_kind`` (or ``input_kind``) and ``predict``; a
    model trained on fused blocks gets the fused block when a cache is given, else the scan."""
    if data is None and cache is None:
        raise ConfigError("give a dataset (--data) and/or a fused cache (--cache) to render")
    seq_id = normalize_sequence_id(sequence)
    digest = labels.digest()
    for p in predictors:
        if p.label_digest != digest:
            raise ConfigError(
                f"model {p.name!r} was trained with label manifest digest {p.label_digest[:12]}, but the rendering "
                f"uses {digest[:12]}: its class ids mean other classes; pass the matching --labels"
            )
    lookup = _CacheLookup(Path(cache)) if cache is not None else None
    seq: Sequence | None = open_sequences(Path(data), [seq_id])[0] if data is not None else None
    if lookup is not None:
        hard_raw = np.asarray(lookup.cache.hard_raw_ids, dtype=np.int64)
        if lookup.cache.label_digest != digest:
            raise ConfigError(f"{cache}: fused with another label manifest (digest {lookup.cache.label_digest[:12]})")
    else:
        hard_raw = labels.hard_raw_ids_derived
    if seq is not None:
        missing = [f for f in frames if f not in set(seq.frames)]
        if missing:
            raise DataError(f"{seq.path}: no scan for frame(s) {missing} (frames {seq.frames[0]}..{seq.frames[-1]})")
    for frame in frames:
        fused_points = fused_source = fused_instance = None
        if lookup is not None:
            block = lookup.block(seq_id, int(frame))
            n = int(block.n_target)
            points, words = block.points[:n], block.label[:n]
            fused_points, fused_source = block.points[n:], block.source[n:]
            fused_instance = split_label_word(block.label[n:])[1]
            where = f"{cache} sequence {seq_id} frame {frame}"
            block_points = block.points
        else:
            assert seq is not None
            points = seq.read_scan(int(frame))
            words = seq.read_labels(int(frame), expected_count=points.shape[0]) if seq.has_labels else None
            where = str(seq.label_path(int(frame)))
            block_points = None
        gt, instance, hard = _ground_truth(words, labels, hard_raw, where)
        preds = []
        for p in predictors:
            kind = getattr(getattr(p, "loaded", p), "input_kind", "single")
            use_fused = kind == "fused" and block_points is not None
            x = np.ascontiguousarray(block_points if use_fused else points, dtype=np.float32)
            pred = np.asarray(p.predict([x])[0])[: points.shape[0]].astype(np.int64, copy=False)
            preds.append(ModelPrediction(p.name, "fused" if use_fused else "single", pred))
        yield FrameData(
            sequence=seq_id,
            frame=int(frame),
            points=np.asarray(points, dtype=np.float32),
            gt_train=gt,
            instance=instance,
            hard=hard,
            fused_points=fused_points,
            fused_source=fused_source,
            fused_instance=fused_instance,
            predictions=tuple(preds),
        )
