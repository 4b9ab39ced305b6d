"""The voxel grid every stage shares, and the one coordinate-key codec.

Training, distillation and inference all turn a scan into network input here
(:func:`voxelize_scan`), on one absolute grid anchored at the range minimum:
``grid = floor((x - point_range_min) / voxel_size)``. Every view of a scan (single or fused)
therefore lands on the same integer coordinates, which the distillation's voxel matching relies
on. Points outside `point_range` are dropped, never clamped.

Key codec: one int64 per ``[batch, x, y, z]`` row, ``[batch:16 | x:16 | y:16 | z:16]`` with the
spatial fields offset by 2**15. Keys are non-negative and sort in (batch, x, y, z) order, so
sorting keys sorts coordinates lexicographically; the sparse backends, the dataset's
voxelisation and the student/teacher matching all use it. This module sits below every stage
(it imports nothing of m2s but the errors).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from m2s.errors import ConfigError, DataError


class VoxelConfig(BaseModel):
    """Voxel grid shared by teacher and student: an absolute grid, so views of one scan align."""

    model_config = ConfigDict(extra="forbid")

    voxel_size: float = Field(0.05, gt=0)
    # x_min, y_min, z_min, x_max, y_max, z_max in metres (LiDAR frame). Points outside are
    # dropped for training, never clamped; evaluation still predicts them (see m2s.inference).
    point_range: tuple[float, float, float, float, float, float] = (-51.2, -51.2, -4.0, 51.2, 51.2, 2.4)

    @field_validator("point_range")
    @classmethod
    def _ordered(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(v[i] < v[i + 3] for i in range(3)):
            raise ValueError("point_range must be (xmin, ymin, zmin, xmax, ymax, zmax) with min < max")
        return v


# ---- key codec -----------------------------------------------------------------------------
FIELD_BITS = 16
_HALF = 1 << (FIELD_BITS - 1)
_MASK = (1 << FIELD_BITS) - 1
# Margin below the field limit so that neighbour offsets (up to +-1 at stride 16) and flooring
# to coarser grids can never overflow a field: key(c + d) == key(c) + key_delta(d) always holds.
COORD_MARGIN = 256
COORD_MIN = -_HALF + COORD_MARGIN
COORD_MAX = _HALF - COORD_MARGIN - 1
BATCH_MAX = _HALF - 1

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def pack_keys(coords: Array) -> Array:
    """Pack (V, 4) ``[b, x, y, z]`` coordinates into (V,) int64 keys (torch or numpy in, same
    kind out). No range check here (it sits in every hot loop): see :func:`check_coords`."""
    c = coords.astype(np.int64) if isinstance(coords, np.ndarray) else coords.to(torch.int64)
    key = c[:, 0] << (3 * FIELD_BITS)
    key |= (c[:, 1] + _HALF) << (2 * FIELD_BITS)
    key |= (c[:, 2] + _HALF) << FIELD_BITS
    key |= c[:, 3] + _HALF
    return key


def unpack_keys(keys: Array) -> Array:
    """Inverse of :func:`pack_keys`: int32 (V, 4) ``[b, x, y, z]`` coordinates."""
    cols = [
        keys >> (3 * FIELD_BITS),
        ((keys >> (2 * FIELD_BITS)) & _MASK) - _HALF,
        ((keys >> FIELD_BITS) & _MASK) - _HALF,
        (keys & _MASK) - _HALF,
    ]
    if isinstance(keys, np.ndarray):
        return np.stack(cols, axis=1).astype(np.int32)
    return torch.stack(cols, dim=1).to(torch.int32)


def key_delta(dx: int, dy: int, dz: int) -> int:
    """Key difference of a spatial offset (valid because of :data:`COORD_MARGIN`)."""
    return (dx << (2 * FIELD_BITS)) + (dy << FIELD_BITS) + dz


def check_coords(coords: torch.Tensor, name: str = "coordinates") -> torch.Tensor:
    """`coords` as int64 after checking it is a (V, 4) integer ``[b, x, y, z]`` tensor the codec
    can pack (batch in [0, BATCH_MAX], x, y, z in [COORD_MIN, COORD_MAX]); DataError otherwise."""
    if not isinstance(coords, torch.Tensor) or coords.dim() != 2 or coords.shape[1] != 4:
        shape = tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords).__name__
        raise DataError(f"{name}: expected a (V, 4) [batch, x, y, z] tensor, got {shape}")
    if coords.dtype.is_floating_point or coords.dtype.is_complex or coords.dtype == torch.bool:
        raise DataError(f"{name}: coordinates must be an integer tensor, got {coords.dtype}")
    c = coords.long()
    if c.numel():
        lo = c.min(dim=0).values.tolist()
        hi = c.max(dim=0).values.tolist()
        if lo[0] < 0 or hi[0] > BATCH_MAX:
            raise DataError(f"{name}: batch indices must lie in [0, {BATCH_MAX}], got [{lo[0]}, {hi[0]}]")
        if min(lo[1:]) < COORD_MIN or max(hi[1:]) > COORD_MAX:
            raise DataError(
                f"{name}: voxel coordinates must lie in [{COORD_MIN}, {COORD_MAX}] (16-bit key packing), "
                f"got [{min(lo[1:])}, {max(hi[1:])}]; use a larger voxel size or crop the scan"
            )
    return c


# ---- the grid --------------------------------------------------------------------------------
def grid_extent(voxel: VoxelConfig) -> np.ndarray:
    """Voxels per axis of the grid; ConfigError when the key codec cannot hold it."""
    lo = np.asarray(voxel.point_range[:3])
    hi = np.asarray(voxel.point_range[3:])
    extent = np.ceil((hi - lo) / voxel.voxel_size).astype(np.int64)
    if (extent > COORD_MAX + 1).any():
        raise ConfigError(
            f"point_range / voxel_size gives a grid of {extent.tolist()} voxels; at most {COORD_MAX + 1} per axis"
        )
    return extent


def in_range_mask(xyz: np.ndarray, voxel: VoxelConfig) -> np.ndarray:
    """Rows inside the half-open box [min, max) of `point_range` (NaN rows are outside)."""
    lo = np.asarray(voxel.point_range[:3], dtype=xyz.dtype)
    hi = np.asarray(voxel.point_range[3:], dtype=xyz.dtype)
    return np.all((xyz >= lo) & (xyz < hi), axis=1)


def voxelize_points(xyz: np.ndarray, voxel: VoxelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Quantise in-range points on the absolute grid anchored at the range minimum.

    Returns int32 voxel coordinates (V,3) sorted by key (x, then y, then z: a deterministic
    order) and the int64 point->voxel map (N,).
    """
    lo = np.asarray(voxel.point_range[:3], dtype=np.float64)
    grid = np.floor((xyz.astype(np.float64) - lo) / voxel.voxel_size).astype(np.int64)
    batched = np.concatenate([np.zeros((grid.shape[0], 1), np.int64), grid], axis=1)
    uniq, inverse = np.unique(pack_keys(batched), return_inverse=True)
    return unpack_keys(uniq)[:, 1:], inverse.reshape(-1).astype(np.int64)


def segment_mean(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """Per-segment mean of the rows of `values` (N, C) grouped by `index` (N,) into `n` rows."""
    counts = np.bincount(index, minlength=n).astype(np.float64)
    out = np.stack([np.bincount(index, weights=values[:, c], minlength=n) for c in range(values.shape[1])], axis=1)
    return (out / np.maximum(counts, 1)[:, None]).astype(np.float32)


def voxelize_scan(
    xyz: np.ndarray, remission: np.ndarray, voxel: VoxelConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """How a scan becomes network input, for training and inference alike.

    Returns the rows kept (in range), their voxel coordinates (V,3), the point->voxel map of the
    kept rows and the voxel features (V,4): mean x, y, z, remission.
    """
    kept = np.flatnonzero(in_range_mask(xyz, voxel))
    coords, p2v = voxelize_points(xyz[kept], voxel)
    feats = segment_mean(np.concatenate([xyz[kept], remission[kept, None]], axis=1), p2v, coords.shape[0])
    return kept, coords, p2v, feats


def batch_coords(coords: list[np.ndarray]) -> np.ndarray:
    """Stack per-sample (V_b, 3) voxel coordinates into one int32 (V, 4) ``[b, x, y, z]`` array."""
    return np.concatenate(
        [np.concatenate([np.full((c.shape[0], 1), b, np.int32), c], axis=1) for b, c in enumerate(coords)]
    )
