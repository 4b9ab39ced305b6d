"""Point cloud -> voxel coordinates, and per-voxel feature averaging."""

from __future__ import annotations

import math

import torch

from m2s.errors import ConfigError, DataError
from m2s.sparse.tensor import BATCH_MAX, COORD_MAX, COORD_MIN, pack_keys, unpack_keys


def voxelize(
    xyz: torch.Tensor, batch: torch.Tensor, voxel_size: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise points onto a global grid of cubic voxels.

    Args:
        xyz: (N, 3) float point positions in metres.
        batch: (N,) integer scan index of each point (0 for a single scan).
        voxel_size: voxel edge length in metres.

    Returns:
        ``coords``: int32 (V, 4) ``[batch, x, y, z]`` unique voxel coordinates, sorted by
        coordinate key (so the order is reproducible), with ``x = floor(px / voxel_size)``
        (no per-scan shift, so grids of different models line up);
        ``point_to_voxel``: int64 (N,) row of ``coords`` holding each point, so every point
        can take its voxel's prediction back (``logits[point_to_voxel]``).
    """
    if not isinstance(voxel_size, (int, float)) or not math.isfinite(voxel_size) or voxel_size <= 0:
        raise ConfigError(f"voxel_size must be a positive finite number, got {voxel_size!r}")
    if not isinstance(xyz, torch.Tensor) or xyz.dim() != 2 or xyz.shape[1] != 3:
        shape = tuple(xyz.shape) if isinstance(xyz, torch.Tensor) else type(xyz).__name__
        raise DataError(f"points must be a (N, 3) tensor, got {shape}")
    if not xyz.is_floating_point():
        raise DataError(f"point positions must be floating point, got {xyz.dtype}")
    n = xyz.shape[0]
    if n == 0:
        raise DataError("empty point cloud: nothing to voxelize")
    if not isinstance(batch, torch.Tensor) or batch.shape != (n,):
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise DataError(f"batch must be a ({n},) integer tensor, got {shape}")
    if batch.is_floating_point() or batch.dtype == torch.bool:
        raise DataError(f"batch indices must be integers, got {batch.dtype}")
    if batch.device != xyz.device:
        raise DataError(f"points on {xyz.device} but batch indices on {batch.device}")
    finite = torch.isfinite(xyz).all(dim=1)
    if not bool(finite.all()):
        raise DataError(f"{int((~finite).sum())} point(s) have NaN or inf coordinates")
    b = batch.to(torch.int64)
    if int(b.min()) < 0 or int(b.max()) > BATCH_MAX:
        raise DataError(f"batch indices must lie in [0, {BATCH_MAX}], got [{int(b.min())}, {int(b.max())}]")

    # float64 so that large coordinates do not land in the wrong voxel through rounding.
    grid = torch.floor(xyz.to(torch.float64) / float(voxel_size))
    lo, hi = float(grid.min()), float(grid.max())
    if lo < COORD_MIN or hi > COORD_MAX:
        extent = COORD_MAX * voxel_size
        raise DataError(
            f"points span voxel indices [{lo:.0f}, {hi:.0f}] but at most [{COORD_MIN}, {COORD_MAX}] "
            f"are supported (about +-{extent:.0f} m at voxel_size={voxel_size}); crop the scan"
        )
    coords = torch.cat([b[:, None], grid.to(torch.int64)], dim=1)
    keys, point_to_voxel = torch.unique(pack_keys(coords), sorted=True, return_inverse=True)
    return unpack_keys(keys), point_to_voxel


def voxel_mean(
    feats: torch.Tensor, point_to_voxel: torch.Tensor, num_voxels: int | None = None
) -> torch.Tensor:
    """Mean of the point features falling into each voxel: (N, C) -> (V, C)."""
    if feats.dim() != 2 or point_to_voxel.dim() != 1 or feats.shape[0] != point_to_voxel.shape[0]:
        raise DataError(
            f"features (N, C) and point_to_voxel (N,) disagree: {tuple(feats.shape)} vs "
            f"{tuple(point_to_voxel.shape)}"
        )
    if feats.shape[0] == 0:
        raise DataError("no points to average")
    idx = point_to_voxel.to(torch.int64)
    v = int(idx.max()) + 1 if num_voxels is None else int(num_voxels)
    if num_voxels is not None and (int(idx.min()) < 0 or int(idx.max()) >= v):
        raise DataError(f"point_to_voxel indices outside [0, {v})")
    dtype = feats.dtype if feats.is_floating_point() else torch.float32
    sums = torch.zeros((v, feats.shape[1]), dtype=dtype, device=feats.device)
    sums.index_add_(0, idx, feats.to(dtype))
    counts = torch.bincount(idx, minlength=v).to(dtype).clamp_(min=1)
    return sums / counts[:, None]
