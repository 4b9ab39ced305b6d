"""Shared by the backend parity tests (MinkowskiEngine and spconv against the torch backend)."""

from __future__ import annotations

import numpy as np
import torch

from m2s.sparse import SparseTensor, pack_keys, voxel_mean
from m2s.sparse.synthetic import synthetic_scan
from m2s.voxel import VoxelConfig, batch_coords, voxelize_points


def voxelize_cloud(xyz: torch.Tensor, batch: torch.Tensor, voxel_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched points on m2s.voxel's grid with a range enclosing every point: int32 (V, 4)
    ``[b, x, y, z]`` coordinates (sorted by key within each sample) and the point->voxel map."""
    pts = xyz.double().numpy()
    lo, hi = np.floor(pts.min(0)) - 1.0, np.ceil(pts.max(0)) + 1.0
    voxel = VoxelConfig(voxel_size=voxel_size, point_range=(*lo.tolist(), *hi.tolist()))
    b = batch.numpy()
    coords, p2v, offset = [], np.zeros(len(b), np.int64), 0
    for i in range(int(b.max()) + 1):
        rows = np.flatnonzero(b == i)
        c, m = voxelize_points(pts[rows], voxel)
        coords.append(c)
        p2v[rows] = m + offset
        offset += c.shape[0]
    return torch.from_numpy(batch_coords(coords)), torch.from_numpy(p2v)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error (robust to entries near zero)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def aligned(t: SparseTensor, ref: SparseTensor) -> torch.Tensor:
    """``t``'s features reordered to ``ref``'s row order (same coordinate set required)."""
    kt, kr = pack_keys(t.coords), pack_keys(ref.coords)
    order = torch.argsort(kt)
    pos = torch.searchsorted(kt[order], kr)
    assert t.stride == ref.stride
    assert kt.numel() == kr.numel() and torch.equal(kt[order][pos], kr), "coordinate sets differ"
    return t.feats[order[pos]]


def shuffled(x: SparseTensor, seed: int) -> SparseTensor:
    """Rows in a random order: no backend may rely on the input order."""
    perm = torch.randperm(x.num_voxels, generator=torch.Generator().manual_seed(seed))
    return SparseTensor(x.coords[perm], x.feats[perm])


def scan_input(points: int, seed: int, voxel: float = 0.05, channels: int = 4) -> SparseTensor:
    """A voxelised synthetic scan: mean xyz + intensity per voxel, or seeded random features."""
    xyz, inten = synthetic_scan(points, seed=seed, extent=40.0)
    coords, p2v = voxelize_cloud(xyz, torch.zeros(points, dtype=torch.long), voxel)
    feats = voxel_mean(torch.cat([xyz, inten[:, None]], 1), p2v, coords.shape[0])
    if channels != 4:
        feats = torch.randn(coords.shape[0], channels, generator=torch.Generator().manual_seed(seed))
    return SparseTensor(coords, feats)
