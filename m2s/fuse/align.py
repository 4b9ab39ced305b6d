"""Rigid alignment of instances' points onto the same instances in the target scan.

All functions work on float64 (N,3) arrays already expressed in the target LiDAR frame
(i.e. after the pose transform). :func:`icp_align_batch` aligns many instances at once: each ICP
iteration is one KD-tree query and one batched SVD for all of them, instead of a Python loop
over instances (the per-instance loop cost ~0.5 ms per instance in query/SVD call overhead).

The `planar` alignment of moving objects (see :func:`extent_match` and ``planar=True`` of
:func:`icp_align_batch`) rests on three observations, each measured against the synthetic ground
truth (`benchmarks/bench_align.py`):

* road users move on the ground: after the ego-pose transform their motion is a translation in x, y
  and a turn about z; estimating z, roll and pitch from partial views only adds error (a vertical
  side face leaves them unconstrained);
* the centroid of a partial view moves with the view (a long vehicle shows its front face in one
  scan and only its side in the next): the extreme of the object nearer to the sensor is seen
  directly and is the stable reference, the far one is cut by self-occlusion and occluders;
* point-to-point ICP in 3-D slides along planar faces towards the scan-line pattern (the LiDAR rings
  drawn on a truck's side); in the bird's-eye view the rings of a face collapse onto one line.
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
    src: np.ndarray, dst: np.ndarray, seg: np.ndarray, n: int, planar: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotations R (n,3,3) and translations t (n,3) with ``R_k @ src_i + t_k ~= dst_i``
    for the paired rows i of segment k. Segments without rows get the identity.

    `planar`: the best rotation about z and translation in x, y only (z is left as it is),
    fitted to the xy components."""
    cs, cd = _segment_means(src, seg, n), _segment_means(dst, seg, n)
    ps, qd = src - cs[seg], dst - cd[seg]  # centred first: no cancellation far from the origin
    if planar:
        # 2-D Kabsch in closed form: the angle maximising sum(q . R p) over the xy components.
        sin = np.bincount(seg, weights=ps[:, 0] * qd[:, 1] - ps[:, 1] * qd[:, 0], minlength=n)
        cos = np.bincount(seg, weights=ps[:, 0] * qd[:, 0] + ps[:, 1] * qd[:, 1], minlength=n)
        ang = np.arctan2(sin, cos)
        rot = np.tile(np.eye(3), (n, 1, 1))
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = np.cos(ang), -np.sin(ang), np.sin(ang), np.cos(ang)
        t = cd - np.einsum("kij,kj->ki", rot, cs)
        t[:, 2] = 0.0
        return rot, t
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
    centroid_residual: np.ndarray  # (U,) the same after the initial shift only (centroid, or `init`)
    used_icp: np.ndarray  # (U,) bool; False: fell back to the initial shift

    def __getitem__(self, k: int) -> IcpResult:
        return IcpResult(
            self.rotation[k],
            self.translation[k],
            float(self.residual[k]),
            float(self.centroid_residual[k]),
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


def _segment_starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(counts))).astype(np.int64)


def box_yaw(xyz: np.ndarray, starts: np.ndarray, steps: int = 18, max_points: int = 64) -> np.ndarray:
    """Per segment (rows ``starts[k]:starts[k+1]``, none empty), the yaw in [0, pi/2) of the
    rectangle that its xy points hug best, searched in `steps` steps on at most `max_points`
    evenly spread points: the object's axes, up to a quarter turn (U,).

    "Hug best" is the smallest mean distance of the points to the nearest side of their bounding
    rectangle in those axes. A LiDAR sees one or two faces of a vehicle (an I or an L), which lie
    on the sides of its true box; the smallest-area rectangle is ambiguous for an L (its convex
    hull is a right triangle, and the rectangle on the hypotenuse has the same area).
    """
    n = starts.shape[0] - 1
    pick, seg = _evenly_spread(np.diff(starts), max_points, np.ones(n, dtype=bool))
    first = _segment_starts(np.bincount(seg, minlength=n))[:-1]
    ang = np.arange(steps) * (0.5 * np.pi / steps)
    x, y = xyz[pick, :1], xyz[pick, 1:2]
    u = x * np.cos(ang) + y * np.sin(ang)  # (M, steps): every candidate axis at once
    v = y * np.cos(ang) - x * np.sin(ang)
    gap = np.minimum(
        np.minimum(u - np.minimum.reduceat(u, first)[seg], np.maximum.reduceat(u, first)[seg] - u),
        np.minimum(v - np.minimum.reduceat(v, first)[seg], np.maximum.reduceat(v, first)[seg] - v),
    )
    return ang[np.add.reduceat(gap, first).argmin(axis=1)]


def box_extents(xyz: np.ndarray, starts: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Per segment (none empty), ``(min u, max u, min v, max v)`` of its xy points along the axes
    ``u = (cos yaw, sin yaw)``, ``v = (-sin yaw, cos yaw)`` (U,4)."""
    first = starts[:-1]
    seg = np.repeat(np.arange(first.shape[0]), np.diff(starts))
    c, s = np.cos(yaw)[seg], np.sin(yaw)[seg]
    u = c * xyz[:, 0] + s * xyz[:, 1]
    v = c * xyz[:, 1] - s * xyz[:, 0]
    return np.column_stack(
        [
            np.minimum.reduceat(u, first),
            np.maximum.reduceat(u, first),
            np.minimum.reduceat(v, first),
            np.maximum.reduceat(v, first),
        ]
    )


@dataclass(frozen=True)
class ExtentMatch:
    shift: np.ndarray  # (U,3) translation (z = 0) bringing each source extreme chosen onto the target's
    displacement: np.ndarray  # (U,) how far both extremes moved the same way (metres): motion evidence


def extent_match(src_ext: np.ndarray, dst_ext: np.ndarray, yaw: np.ndarray, src_sensor: np.ndarray) -> ExtentMatch:
    """Translate pose-aligned instances onto their target by their extremes (:func:`box_extents`
    of both in the same axes `yaw`), axis by axis.

    On each axis the extreme nearer to the sensors is matched (the smaller sum of its distances
    along the axis to the target's sensor, at the origin, and to the source's, at `src_sensor`
    (U,2) in the target frame): the near end of an object is seen directly, the far end is where
    self-occlusion, grazing rays and occluders cut the view. `displacement` counts a move on an
    axis only when both extremes moved the same way (by the smaller of the two), so a view that
    merely grew or shrank (an occluder, another face coming into view) is no evidence of motion.
    """
    lo, hi = dst_ext[:, [0, 2]] - src_ext[:, [0, 2]], dst_ext[:, [1, 3]] - src_ext[:, [1, 3]]
    c, s = np.cos(yaw), np.sin(yaw)
    sensor = np.column_stack([c * src_sensor[:, 0] + s * src_sensor[:, 1], c * src_sensor[:, 1] - s * src_sensor[:, 0]])
    near_lo = np.abs(dst_ext[:, [0, 2]]) + np.abs(src_ext[:, [0, 2]] - sensor)
    near_hi = np.abs(dst_ext[:, [1, 3]]) + np.abs(src_ext[:, [1, 3]] - sensor)
    d = np.where(near_lo <= near_hi, lo, hi)  # (U,2) along u, v
    shift = np.column_stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1], np.zeros(yaw.shape[0])])
    same_way = np.sign(lo) == np.sign(hi)
    both = np.where(same_way, np.minimum(np.abs(lo), np.abs(hi)), 0.0)
    return ExtentMatch(shift, np.linalg.norm(both, axis=1))


def icp_align_batch(
    src: np.ndarray,
    src_counts: np.ndarray,
    dst: np.ndarray,
    dst_starts: np.ndarray,
    dst_index: np.ndarray,
    cfg: IcpConfig,
    init: np.ndarray | None = None,
    planar: bool = False,
) -> IcpBatchResult:
    """Initial shift (the centroid shift, or `init` (U,3)), then point-to-point ICP, for U
    instances at once.

    `src` (M,3) holds the instances' points back to back, `src_counts` (U,) rows each; instance k
    is aligned onto rows ``dst_starts[j]:dst_starts[j+1]`` of `dst` with ``j = dst_index[k]``.
    Per instance, exactly the single-instance algorithm: the transform is estimated from at most
    `cfg.max_points` evenly spread points, iterations stop when the capped mean residual improves
    by less than `cfg.tolerance`, and the ICP result is kept only if it is not worse than the
    initial shift's, so `icp` is never worse than `centroid` on the metric it optimises.
    Instances with fewer than `cfg.min_points` points on either side keep the initial shift.
    `planar`: correspondences and residuals in the bird's-eye view (xy), transforms a turn about
    z plus an xy translation (z keeps its initial shift).
    """
    n = src_counts.shape[0]
    dst_counts = np.diff(dst_starts)[dst_index]
    n_dst = dst_starts.shape[0] - 1
    if init is None:
        src_mean = _segment_means(src, np.repeat(np.arange(n), src_counts), n)
        dst_mean = _segment_means(dst, np.repeat(np.arange(n_dst), np.diff(dst_starts)), n_dst)
        shift = dst_mean[dst_index] - src_mean
    else:
        shift = np.asarray(init, dtype=np.float64)
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
    dims = 2 if planar else 3
    tree_xyz = dst[rows]
    tree = cKDTree(np.column_stack([tree_xyz[:, :dims], tag]))

    pick, seg = _evenly_spread(src_counts, cfg.max_points, eligible)
    cur = src[pick] + shift[seg]
    query_tag = dst_index[seg].astype(np.float64) * _SEPARATION
    cap = cfg.max_correspondence

    def nearest(rows_: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        # distance_upper_bound prunes the search; pairs farther than `cap` come back as inf.
        return tree.query(np.column_stack([cur[rows_, :dims], query_tag[rows_]]), k=1, distance_upper_bound=cap)

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
        rot, t = kabsch_segments(cur[keep], tree_xyz[idx[keep]], seg[keep], n, planar)
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
