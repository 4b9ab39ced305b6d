"""Per-voxel feature averaging (torch).

The grid itself (points -> voxel coordinates) is m2s.voxel's `voxelize_scan`: one grid for
training, distillation and inference. The former `m2s.sparse.voxelize` (``floor(x / size)``,
no range) is gone; :func:`voxelize` only says where to go.
"""

from __future__ import annotations

from typing import Any, NoReturn

import torch

from m2s.errors import ConfigError, DataError


def voxel_mean(feats: torch.Tensor, point_to_voxel: torch.Tensor, num_voxels: int | None = None) -> torch.Tensor:
    """Mean of the point features falling into each voxel: (N, C) -> (V, C)."""
    if feats.dim() != 2 or point_to_voxel.dim() != 1 or feats.shape[0] != point_to_voxel.shape[0]:
        raise DataError(
            f"features (N, C) and point_to_voxel (N,) disagree: {tuple(feats.shape)} vs {tuple(point_to_voxel.shape)}"
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


def voxelize(*args: Any, **kwargs: Any) -> NoReturn:
    """Removed: a second grid beside the one every stage uses."""
    raise ConfigError(
        "m2s.sparse.voxelize was removed: voxelise with m2s.voxel.voxelize_scan(xyz, remission, VoxelConfig) "
        "(the grid anchored at point_range's minimum that training and inference use)"
    )
