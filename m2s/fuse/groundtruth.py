"""Alignment error of fused rows against ground-truth instance poses.

Only for data that has ground truth (the synthetic generator's `instance_poses.txt`, read with
:func:`m2s.synth.read_instance_poses`); fusion itself never uses it. Used by
`benchmarks/bench_align.py` and the tests.

A fused row of instance ``i`` taken from source scan ``s`` into target scan ``f`` truly belongs at
``lidar_from_object[f][i] @ inv(lidar_from_object[s][i]) @ p_s``, with ``p_s`` its coordinates in
the source scan's LiDAR frame; its error is the distance from where fusion put it.
"""

from __future__ import annotations

import numpy as np

from m2s.errors import DataError
from m2s.fuse.align import concat_ranges
from m2s.fuse.fusion import FusedScan, HardPoints

TruthPoses = dict[int, dict[int, np.ndarray]]  # frame -> instance -> lidar_from_object (4,4)


def true_positions(
    source_xyz: np.ndarray, source_frame: np.ndarray, instance: np.ndarray, target_frame: int, truth: TruthPoses
) -> np.ndarray:
    """Where each row (source coordinates (N,3), its source frame and instance id) truly is in
    `target_frame`'s LiDAR frame (N,3) float64."""
    n = source_xyz.shape[0]
    if n == 0:
        return np.zeros((0, 3))
    key = np.asarray(source_frame, dtype=np.int64) * (1 << 32) + np.asarray(instance, dtype=np.int64)
    pairs, seg = np.unique(key, return_inverse=True)
    target = truth.get(int(target_frame), {})
    mats = np.empty((pairs.shape[0], 4, 4))
    for k, pk in enumerate(pairs.tolist()):  # one 4x4 product per (source, instance) pair, not per point
        s, i = divmod(pk, 1 << 32)
        try:
            mats[k] = target[i] @ np.linalg.inv(truth[s][i])
        except KeyError:
            raise DataError(f"no ground-truth pose of instance {i} in frame {s} or {target_frame}") from None
    m = mats[seg]
    return np.einsum("nij,nj->ni", m[:, :3, :3], np.asarray(source_xyz, dtype=np.float64)) + m[:, :3, 3]


def alignment_errors(
    fused_xyz: np.ndarray,
    source_xyz: np.ndarray,
    source_frame: np.ndarray,
    instance: np.ndarray,
    target_frame: int,
    truth: TruthPoses,
) -> np.ndarray:
    """Distance (N,) between each fused row and its true position in the target frame."""
    truth_xyz = true_positions(source_xyz, source_frame, instance, target_frame, truth)
    return np.linalg.norm(np.asarray(fused_xyz, dtype=np.float64) - truth_xyz, axis=1)


def fused_source_coords(block: FusedScan, hard: dict[int, HardPoints]) -> np.ndarray:
    """Coordinates (K,3) of every fused row of `block` in its own source scan's LiDAR frame.

    Relies on the documented row order (by source frame, then instance id, each instance's points
    in scan order) and on fusion taking whole instances: the rows of (source s, instance i) are
    exactly instance i's hard points of scan s (`hard[s]`, from :func:`extract_hard`).
    """
    src = block.fused_source
    out = np.empty((src.shape[0], 3))
    if src.shape[0] == 0:
        return out
    inst = (block.fused_label >> np.uint32(16)).astype(np.int64)
    cut = np.flatnonzero(np.diff(src)) + 1
    for a, b in zip(np.concatenate(([0], cut)).tolist(), np.concatenate((cut, [src.shape[0]])).tolist(), strict=True):
        h = hard[int(src[a])]
        ids = np.unique(inst[a:b])
        j = np.searchsorted(h.ids, ids)
        if (j >= h.ids.shape[0]).any() or (h.ids[np.minimum(j, h.ids.shape[0] - 1)] != ids).any():
            raise DataError(f"frame {block.frame}: fused rows name instances absent from source {int(src[a])}")
        if not np.array_equal(inst[a:b], np.repeat(ids, h.counts[j])):
            raise DataError(f"frame {block.frame}: fused rows of source {int(src[a])} are not whole instances")
        cols = concat_ranges(h.starts[j], h.counts[j])
        out[a:b] = h.coords[:, cols].T
    return out
