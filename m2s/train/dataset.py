"""Training data: scans of fused caches, augmented, range-filtered and voxelised in the workers.

A sample holds one or two *views* of a scan: `fused` (the whole block, what the teacher sees)
and `single` (the block's first `n_target` rows, the scan itself). Both views share the same
augmentation and the same absolute voxel grid, so every single-scan voxel is also a fused voxel
with the same integer coordinates (the distillation stage relies on that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from m2s.errors import ConfigError
from m2s.fuse import FusedBlock, FusedCache
from m2s.labels import LabelManifest
from m2s.train.config import AugmentConfig

# The grid lives in m2s.voxel; these names stay importable from here for older callers.
from m2s.voxel import (  # noqa: F401  (re-exports)
    VoxelConfig,
    batch_coords,
    grid_extent,
    in_range_mask,
    segment_mean,
    voxelize_points,
    voxelize_scan,
)

ViewName = Literal["fused", "single"]


def majority_label(labels: np.ndarray, index: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """Most frequent label per voxel; unlabeled (0) only when nothing else is in the voxel."""
    hist = np.bincount(index * num_classes + labels, minlength=n * num_classes).reshape(n, num_classes)
    labelled = hist[:, 1:]
    best = labelled.argmax(axis=1) + 1
    return np.where(labelled.max(axis=1) > 0, best, 0).astype(np.int64)


@dataclass
class View:
    """One voxelised view of a scan (numpy, produced in a DataLoader worker)."""

    coords: np.ndarray  # int32 (V,3)
    feats: np.ndarray  # float32 (V,4) mean x, y, z, remission
    point_to_voxel: np.ndarray  # int64 (N,) for the kept points
    point_labels: np.ndarray  # int64 (N,) train ids
    point_instance: np.ndarray  # int64 (N,) instance id of hard-class points, 0 otherwise
    voxel_labels: np.ndarray  # int64 (V,)
    voxel_instance: np.ndarray  # int64 (V,)
    voxel_count: np.ndarray  # int64 (V,) points per voxel (the density the graph KD reweights by)
    kept: np.ndarray  # int64 (N,) row of each kept point in the original view
    n_original: int
    # bool (N,): the kept point is one of the scan's own (True) or a row fusion appended (False)
    point_own: np.ndarray


@dataclass
class Sample:
    views: dict[str, View]
    index: int
    sequence: str
    frame: int
    original_xyz: np.ndarray | None = None  # single view's un-augmented points (validation only)
    original_labels: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def augment_points(xyz: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random rotation about z, flips, scaling and clipped jitter (float32 in, float32 out)."""
    transform = np.eye(3)
    if cfg.rotate_z:
        a = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(a), np.sin(a)
        transform = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ transform
    if cfg.flip_x and rng.random() < 0.5:
        transform = np.diag([-1.0, 1.0, 1.0]) @ transform
    if cfg.flip_y and rng.random() < 0.5:
        transform = np.diag([1.0, -1.0, 1.0]) @ transform
    transform = transform * rng.uniform(*cfg.scale)
    out = xyz @ transform.T.astype(np.float32)
    if cfg.jitter_std > 0:
        noise = rng.normal(0.0, cfg.jitter_std, size=xyz.shape).clip(-cfg.jitter_clip, cfg.jitter_clip)
        out = out + noise.astype(np.float32)
    return out.astype(np.float32)


class ScanDataset(Dataset):
    """Scans of one or more fused caches as voxelised views.

    `views` picks what each sample carries: ("fused",) for the teacher, ("single",) for the
    student/baseline, ("fused", "single") for distillation. Augmentation is seeded from
    (seed, epoch, index), so a sample is identical whichever worker loads it and a resumed run
    sees the same data as an uninterrupted one.
    """

    def __init__(
        self,
        caches: list[FusedCache],
        labels: LabelManifest,
        voxel: VoxelConfig,
        views: tuple[ViewName, ...],
        *,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        max_scans: int | None = None,
        keep_original: bool = False,
    ) -> None:
        if not caches:
            raise ConfigError("at least one fused cache is needed")
        grid_extent(voxel)
        self.caches = caches
        self.labels = labels
        self.voxel = voxel
        self.views = views
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.epoch = 0
        self.keep_original = keep_original
        self._index = [(ci, i) for ci, cache in enumerate(caches) for i in range(len(cache))]
        if max_scans is not None:
            # Evenly spread over the sequences rather than the first N frames of the first one.
            pick = np.linspace(0, len(self._index) - 1, num=min(max_scans, len(self._index))).round().astype(int)
            self._index = [self._index[i] for i in np.unique(pick)]
        self._hard_raw = [np.asarray(c.hard_raw_ids, dtype=np.int64) for c in caches]

    def __len__(self) -> int:
        return len(self._index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _make_view(
        self, xyz: np.ndarray, rem: np.ndarray, label_words: np.ndarray, hard_raw: np.ndarray, source: str, n_own: int
    ) -> View:
        kept, coords, p2v, feats = voxelize_scan(xyz, rem, self.voxel)
        words_k = label_words[kept]
        v = coords.shape[0]
        train = self.labels.to_train(words_k, source=source)
        semantic = (words_k & 0xFFFF).astype(np.int64)
        instance = (words_k >> 16).astype(np.int64)
        instance = np.where(np.isin(semantic, hard_raw), instance, 0)
        voxel_instance = np.zeros(v, dtype=np.int64)
        has_inst = instance > 0
        voxel_instance[p2v[has_inst]] = instance[has_inst]
        return View(
            coords=coords,
            feats=feats,
            point_to_voxel=p2v,
            point_labels=train,
            point_instance=instance,
            voxel_labels=majority_label(train, p2v, v, self.labels.num_classes),
            voxel_instance=voxel_instance,
            voxel_count=np.bincount(p2v, minlength=v).astype(np.int64),
            kept=kept,
            n_original=xyz.shape[0],
            point_own=kept < n_own,
        )

    def __getitem__(self, i: int) -> Sample:
        ci, bi = self._index[i]
        block = self.caches[ci].read_block(bi)
        source = self.caches[ci].source_name(bi)
        xyz = block.points[:, :3]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            xyz = augment_points(xyz, self.augment, rng)
        rem = block.points[:, 3]
        fused_rows = self._fused_rows(block, i)
        views: dict[str, View] = {}
        for name in self.views:
            rows = fused_rows if name == "fused" else slice(0, block.n_target)
            view = self._make_view(xyz[rows], rem[rows], block.label[rows], self._hard_raw[ci], source, block.n_target)
            if isinstance(rows, np.ndarray):  # a subset of the block: `kept` names block rows
                view.kept = rows[view.kept]
            views[name] = view
        sample = Sample(views=views, index=i, sequence=block.sequence, frame=block.frame)
        if self.keep_original:
            sample.original_xyz = block.points[: block.n_target, :3].copy()
            sample.original_labels = self.labels.to_train(block.label[: block.n_target], source=source)
        return sample

    def _fused_rows(self, block: FusedBlock, i: int) -> slice | np.ndarray:
        """All rows of the block, or (augment.appended_keep < 1) the own rows plus the appended
        rows of the instances drawn to keep theirs."""
        keep = self.augment.appended_keep if self.augment is not None else 1.0
        n = block.n_target
        if keep >= 1.0 or block.points.shape[0] == n:
            return slice(None)
        # A stream of its own: the geometric augmentation draws stay what they were.
        rng = np.random.default_rng([self.seed, self.epoch, i, 1])
        words = block.label[n:]
        instances, inverse = np.unique(words, return_inverse=True)  # label word = class + instance
        kept_instances = rng.random(size=int(instances.shape[0])) < keep
        return np.concatenate([np.arange(n), n + np.flatnonzero(kept_instances[inverse.reshape(-1)])])

    def class_frequencies(self, view: ViewName, max_scans: int) -> np.ndarray:
        """Train-id point counts over up to `max_scans` evenly spaced scans (no augmentation)."""
        counts = np.zeros(self.labels.num_classes, dtype=np.int64)
        pick = np.unique(np.linspace(0, len(self._index) - 1, num=min(max_scans, len(self._index))).round().astype(int))
        for i in pick:
            ci, bi = self._index[i]
            block = self.caches[ci].read_block(bi)
            rows = slice(None) if view == "fused" else slice(0, block.n_target)
            keep = in_range_mask(block.points[rows, :3], self.voxel)
            train = self.labels.to_train(block.label[rows][keep], source=self.caches[ci].source_name(bi))
            counts += np.bincount(train, minlength=self.labels.num_classes)
        return counts


# ---- batching ------------------------------------------------------------------------------
@dataclass
class ViewBatch:
    """A batch of one view as torch tensors; coordinates carry the batch index in column 0."""

    coords: torch.Tensor  # int32 (V,4) [b, x, y, z]
    feats: torch.Tensor  # float32 (V,4)
    point_to_voxel: torch.Tensor  # int64 (N,) into the batch's voxels
    point_labels: torch.Tensor  # int64 (N,)
    point_instance: torch.Tensor  # int64 (N,) unique across the batch (sample << 32 | id), 0 = none
    voxel_labels: torch.Tensor  # int64 (V,)
    voxel_instance: torch.Tensor  # int64 (V,) unique across the batch, 0 = none
    voxel_count: torch.Tensor  # int64 (V,)
    point_own: torch.Tensor  # bool (N,): a scan's own point (False: appended by fusion)
    points_per_sample: list[int]
    voxels_per_sample: list[int]

    def to(self, device: torch.device) -> ViewBatch:
        moved = {
            k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()
        }
        return ViewBatch(**cast(dict[str, Any], moved))


@dataclass
class Batch:
    views: dict[str, ViewBatch]
    samples: list[Sample]

    def to(self, device: torch.device) -> Batch:
        return Batch(views={k: v.to(device) for k, v in self.views.items()}, samples=self.samples)


def _unique_instance(instance: np.ndarray, b: int) -> np.ndarray:
    return np.where(instance > 0, (np.int64(b + 1) << 32) | instance, 0)


def collate_views(samples: list[Sample]) -> Batch:
    names = list(samples[0].views)
    views: dict[str, ViewBatch] = {}
    for name in names:
        vs = [s.views[name] for s in samples]
        voxel_offsets = np.cumsum([0] + [v.coords.shape[0] for v in vs])
        coords = batch_coords([v.coords for v in vs])
        views[name] = ViewBatch(
            coords=torch.from_numpy(coords),
            feats=torch.from_numpy(np.concatenate([v.feats for v in vs])),
            point_to_voxel=torch.from_numpy(
                np.concatenate([v.point_to_voxel + voxel_offsets[b] for b, v in enumerate(vs)])
            ),
            point_labels=torch.from_numpy(np.concatenate([v.point_labels for v in vs])),
            point_instance=torch.from_numpy(
                np.concatenate([_unique_instance(v.point_instance, b) for b, v in enumerate(vs)])
            ),
            voxel_labels=torch.from_numpy(np.concatenate([v.voxel_labels for v in vs])),
            voxel_instance=torch.from_numpy(
                np.concatenate([_unique_instance(v.voxel_instance, b) for b, v in enumerate(vs)])
            ),
            voxel_count=torch.from_numpy(np.concatenate([v.voxel_count for v in vs])),
            point_own=torch.from_numpy(np.concatenate([v.point_own for v in vs])),
            points_per_sample=[v.point_to_voxel.shape[0] for v in vs],
            voxels_per_sample=[v.coords.shape[0] for v in vs],
        )
    return Batch(views=views, samples=samples)
