"""Rigid alignment of instances' points onto the same instances in the target scan.

All functions work on float64 (N,3) arrays already expressed in the target LiDAR frame
(i.e. after the pose transform). :func:`icp_align_batch` aligns many instances at once: each ICP
iteration is one KD-tree query and one batched SVD for all of them, instead of a Python loop
over instances (the per-instance loop cost ~0.5 ms per instance in query/SVD call overhead).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from m2s.fuse.config import IcpConfig

# Instances are kept apart in one KD-tree by a 4th coordinate `instance index * _SEPARATION`
# (metres): a nearest neighbour can then only be a point of the same instance, since any other
# instance is farther than any correspondence distance ICP accepts.
_SEPARATION = 1.0e6


def _segment_sums(values: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    """Per-segment column sums of `values` (M,C) for segment ids `seg` (M,) -> (n,C)."""
    return np.stack([np.bincount(seg, weights=values[:, c], minlength=n) for c in range(values.shape[1])], axis=1)


def _segment_means(values: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    """Per-segment column means (zero for empty segments)."""
    return _segment_sums(values, seg, n) / np.maximum(np.bincount(seg, minlength=n), 1)[:, None]


def concat_ranges(first: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``first[k] .. first[k] + counts[k] - 1`` for every k, back to back (no loop over k)."""
    offsets = np.cumsum(counts) - counts
    return np.arange(int(counts.sum())) + np.repeat(first - offsets, counts)


def kabsch_segments(
    src: np.ndarray, dst: np.ndarray, seg: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotations R (n,3,3) and translations t (n,3) with ``R_k @ src_i + t_k ~= dst_i``
    for the paired rows i of segment k. Segments without rows get the identity."""
    cs, cd = _segment_means(src, seg, n), _segment_means(dst, seg, n)
    ps, qd = src - cs[seg], dst - cd[seg]  # centred first: no cancellation far from the origin
    h = _segment_sums((ps[:, :, None] * qd[:, None, :]).reshape(-1, 9), seg, n).reshape(n, 3, 3)
    u, _, vt = np.linalg.svd(h)
    v, ut = vt.transpose(0, 2, 1), u.transpose(0, 2, 1)
    # Flip the last axis where SVD returns a reflection (det = -1), e.g. for planar point sets.
    d = np.sign(np.linalg.det(v @ ut))
    d[d == 0] = 1.0
    v[:, :, 2] *= d[:, None]
    rot = v @ ut
    rot[np.bincount(seg, minlength=n) == 0] = np.eye(3)
    t = cd - np.einsum("kij,kj->ki", rot, cs)
    return rot, t


def kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation R and translation t with ``R @ src_i + t ~= dst_i`` (paired rows)."""
    rot, t = kabsch_segments(src, dst, np.zeros(src.shape[0], dtype=np.intp), 1)
    return rot[0], t[0]


@dataclass(frozen=True)
class IcpResult:
    rotation: np.ndarray  # (3,3) applied after the centroid shift
    translation: np.ndarray  # (3,)
    residual: float  # mean nearest-neighbour distance of the result
    centroid_residual: float  # the same for the centroid-only alignment
    used_icp: bool  # False: fell back to the centroid shift


@dataclass(frozen=True)
class IcpBatchResult:
    """One row per instance; the transform maps the instance's (pose-aligned) points onto its target."""

    rotation: np.ndarray  # (U,3,3)
    translation: np.ndarray  # (U,3)
    residual: np.ndarray  # (U,) capped mean nearest-neighbour distance (nan when too small)
    centroid_residual: np.ndarray  # (U,) the same after the centroid shift only
    used_icp: np.ndarray  # (U,) bool; False: fell back to the centroid shift

    def __getitem__(self, k: int) -> IcpResult:
        return IcpResult(
            self.rotation[k], self.translation[k], float(self.residual[k]), float(self.centroid_residual[k]),
            bool(self.used_icp[k]),
        )


def _segment_mean_capped(dist: np.ndarray, seg: np.ndarray, n: int, cap: float) -> np.ndarray:
    """Per-segment mean nearest-neighbour distance, each capped at `cap` so outliers count but
    do not dominate."""
    return _segment_means(np.minimum(dist, cap)[:, None], seg, n)[:, 0]


def _evenly_spread(counts: np.ndarray, cap: int, include: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (into the concatenation of segments of `counts`) of at most `cap` evenly spread
    rows of each included segment, and the segment of each selected row."""
    take = np.where(include, np.minimum(counts, cap), 0)
    seg = np.repeat(np.arange(counts.shape[0]), take)
    first = np.cumsum(counts) - counts
    pos = concat_ranges(np.zeros_like(take), take)
    step = np.where(take > 1, (counts - 1) / np.maximum(take - 1, 1), 0.0)
    return first[seg] + (pos * step[seg]).astype(np.intp), seg


def icp_align_batch(
    src: np.ndarray,
    src_counts: np.ndarray,
    dst: np.ndarray,
    dst_starts: np.ndarray,
    dst_index: np.ndarray,
    cfg: IcpConfig,
) -> IcpBatchResult:
    """Centroid shift, then point-to-point ICP, for U instances at once.

    `src` (M,3) holds the instances' points back to back, `src_counts` (U,) rows each; instance k
    is aligned onto rows ``dst_starts[j]:dst_starts[j+1]`` of `dst` with ``j = dst_index[k]``.
    Per instance, exactly the single-instance algorithm: the transform is estimated from at most
    `cfg.max_points` evenly spread points, iterations stop when the capped mean residual improves
    by less than `cfg.tolerance`, and the ICP result is kept only if it is not worse than the
    centroid shift's, so `icp` is never worse than `centroid` on the metric it optimises.
    Instances with fewer than `cfg.min_points` points on either side fall back to the centroid.
    """
    n = src_counts.shape[0]
    dst_counts = np.diff(dst_starts)[dst_index]
    n_dst = dst_starts.shape[0] - 1
    src_mean = _segment_means(src, np.repeat(np.arange(n), src_counts), n)
    dst_mean = _segment_means(dst, np.repeat(np.arange(n_dst), np.diff(dst_starts)), n_dst)
    shift = dst_mean[dst_index] - src_mean
    rot_total = np.tile(np.eye(3), (n, 1, 1))
    t_total = shift.copy()
    base = np.full(n, np.nan)
    residual = np.full(n, np.nan)
    eligible = (src_counts >= cfg.min_points) & (dst_counts >= cfg.min_points)
    if not eligible.any():
        return IcpBatchResult(rot_total, t_total, residual, base, np.zeros(n, dtype=bool))

    # One tree over the targets used, instances apart along a 4th axis.
    used = np.unique(dst_index[eligible])
    used_counts = np.diff(dst_starts)[used]
    rows = concat_ranges(dst_starts[used], used_counts)
    tag = np.repeat(used, used_counts).astype(np.float64) * _SEPARATION
    tree = cKDTree(np.column_stack([dst[rows], tag]))
    tree_xyz = tree.data[:, :3]

    pick, seg = _evenly_spread(src_counts, cfg.max_points, eligible)
    cur = src[pick] + shift[seg]
    query_tag = dst_index[seg].astype(np.float64) * _SEPARATION
    cap = cfg.max_correspondence

    def nearest(rows_: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        # distance_upper_bound prunes the search; pairs farther than `cap` come back as inf.
        return tree.query(np.column_stack([cur[rows_], query_tag[rows_]]), k=1, distance_upper_bound=cap)

    dist, idx = nearest(slice(None))
    base = np.where(eligible, _segment_mean_capped(dist, seg, n, cap), np.nan)
    residual = base.copy()
    active = eligible.copy()
    for _ in range(cfg.iterations):
        keep = np.isfinite(dist) & active[seg]
        active &= np.bincount(seg[keep], minlength=n) >= cfg.min_points
        if not active.any():
            break
        keep &= active[seg]
        rot, t = kabsch_segments(cur[keep], tree_xyz[idx[keep]], seg[keep], n)
        moving = np.flatnonzero(active[seg])
        s = seg[moving]
        cur[moving] = np.einsum("rij,rj->ri", rot[s], cur[moving]) + t[s]
        rot_total[active] = rot[active] @ rot_total[active]
        t_total[active] = np.einsum("kij,kj->ki", rot[active], t_total[active]) + t[active]
        dist[moving], idx[moving] = nearest(moving)
        new = _segment_mean_capped(dist, seg, n, cap)
        improved = residual - new
        residual = np.where(active, new, residual)
        active &= improved >= cfg.tolerance
    worse = eligible & (residual > base)
    used_icp = eligible & ~worse
    rot_total[~used_icp] = np.eye(3)
    t_total[~used_icp] = shift[~used_icp]
    residual = np.where(worse, base, residual)
    return IcpBatchResult(rot_total, t_total, residual, base, used_icp)


def icp_align(src: np.ndarray, dst: np.ndarray, cfg: IcpConfig) -> IcpResult:
    """:func:`icp_align_batch` for one instance `src` onto `dst`."""
    res = icp_align_batch(
        src, np.array([src.shape[0]]), dst, np.array([0, dst.shape[0]]), np.zeros(1, dtype=np.intp), cfg
    )
    return res[0]
