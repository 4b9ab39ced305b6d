"""Rigid alignment of one instance's points onto the same instance in the target scan.

All functions work on float64 (N,3) arrays already expressed in the target LiDAR frame
(i.e. after the pose transform).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from m2s.fuse.config import IcpConfig


def kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation R and translation t with ``R @ src_i + t ~= dst_i`` (paired rows)."""
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    h = (src - cs).T @ (dst - cd)
    u, _, vt = np.linalg.svd(h)
    # Flip the last axis when SVD returns a reflection (det = -1), e.g. for planar point sets.
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rot, cd - rot @ cs


@dataclass(frozen=True)
class IcpResult:
    rotation: np.ndarray  # (3,3) applied after the centroid shift
    translation: np.ndarray  # (3,)
    residual: float  # mean nearest-neighbour distance of the result
    centroid_residual: float  # the same for the centroid-only alignment
    used_icp: bool  # False: fell back to the centroid shift


def _residual(dist: np.ndarray, cap: float) -> float:
    """Mean nearest-neighbour distance, each capped at `cap` so outliers count but do not dominate."""
    return float(np.minimum(dist, cap).mean()) if dist.size else 0.0


def icp_align(src: np.ndarray, dst: np.ndarray, cfg: IcpConfig, dst_tree: cKDTree | None = None) -> IcpResult:
    """Centroid shift, then point-to-point ICP of `src` onto `dst`.

    The returned transform maps `src` (not the centroid-shifted copy) onto `dst`. The ICP result is
    kept only if its (capped) mean residual is not worse than the centroid shift's, so `icp` is
    never worse than `centroid` on the metric it optimises.
    """
    shift = dst.mean(axis=0) - src.mean(axis=0)
    eye = np.eye(3)
    if src.shape[0] < cfg.min_points or dst.shape[0] < cfg.min_points:
        return IcpResult(eye, shift, float("nan"), float("nan"), False)
    tree = dst_tree if dst_tree is not None else cKDTree(dst)
    cap = cfg.max_correspondence
    if src.shape[0] > cfg.max_points:
        src = src[np.linspace(0, src.shape[0] - 1, cfg.max_points).astype(np.intp)]
    cur = src + shift
    # distance_upper_bound prunes the search; pairs farther than `cap` come back as inf.
    dist, idx = tree.query(cur, k=1, distance_upper_bound=cap)
    base_residual = residual = _residual(dist, cap)
    rot_total, t_total = eye, shift
    for _ in range(cfg.iterations):
        keep = np.isfinite(dist)
        if int(keep.sum()) < cfg.min_points:
            break
        rot, t = kabsch(cur[keep], dst[idx[keep]])
        cur = cur @ rot.T + t
        rot_total, t_total = rot @ rot_total, rot @ t_total + t
        dist, idx = tree.query(cur, k=1, distance_upper_bound=cap)
        new_residual = _residual(dist, cap)
        improved = residual - new_residual
        residual = new_residual
        if improved < cfg.tolerance:
            break
    if residual > base_residual:
        return IcpResult(eye, shift, base_residual, base_residual, False)
    return IcpResult(rot_total, t_total, residual, base_residual, True)
