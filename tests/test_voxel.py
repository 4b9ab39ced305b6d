"""m2s.voxel: the one grid and key codec every stage uses, and the layer it sits in."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from m2s.errors import ConfigError
from m2s.voxel import (
    COORD_MAX,
    VoxelConfig,
    grid_extent,
    in_range_mask,
    pack_keys,
    unpack_keys,
    voxelize_scan,
)

ROOT = Path(__file__).resolve().parents[1]


def test_grid_is_anchored_at_the_range_minimum_and_sorted() -> None:
    rng = np.random.default_rng(1)
    voxel = VoxelConfig(voxel_size=0.5, point_range=(-10.0, -10.0, -2.0, 10.0, 10.0, 2.0))
    xyz = rng.uniform(-12, 12, size=(4000, 3)).astype(np.float32)
    xyz[:, 2] = rng.uniform(-3, 3, size=4000)
    rem = rng.uniform(0, 1, size=4000).astype(np.float32)
    kept, coords, p2v, feats = voxelize_scan(xyz, rem, voxel)
    assert np.array_equal(kept, np.flatnonzero(in_range_mask(xyz, voxel)))
    expect = np.floor((xyz[kept].astype(np.float64) - np.array([-10.0, -10.0, -2.0])) / 0.5).astype(np.int64)
    assert np.array_equal(coords[p2v], expect)
    assert coords.dtype == np.int32 and (coords >= 0).all()
    keys = pack_keys(np.concatenate([np.zeros((coords.shape[0], 1), np.int32), coords], axis=1))
    assert (np.diff(keys) > 0).all(), "voxels unique and in key order"
    # Mean x, y, z, remission per voxel.
    v = int(p2v[0])
    rows = kept[p2v == v]
    assert np.allclose(feats[v], np.concatenate([xyz[rows].mean(0), [rem[rows].mean()]]), atol=1e-5)
    # Independent of the row order of the scan.
    perm = rng.permutation(4000)
    _, coords2, _, feats2 = voxelize_scan(xyz[perm], rem[perm], voxel)
    assert np.array_equal(coords, coords2) and np.allclose(feats, feats2, atol=1e-5)


def test_numpy_and_torch_keys_agree() -> None:
    c = np.array([[0, -3, 5, 7], [2, COORD_MAX, 0, -1]], dtype=np.int32)
    k_np, k_t = pack_keys(c), pack_keys(torch.from_numpy(c))
    assert k_np.dtype == np.int64 and np.array_equal(k_np, k_t.numpy())
    assert np.array_equal(unpack_keys(k_np), c)
    assert torch.equal(unpack_keys(k_t), torch.from_numpy(c))


def test_grid_larger_than_the_codec_is_refused() -> None:
    assert grid_extent(VoxelConfig(voxel_size=0.2, point_range=(-40, -40, -3, 40, 40, 3))).tolist() == [400, 400, 30]
    with pytest.raises(ConfigError, match="per axis"):
        grid_extent(VoxelConfig(voxel_size=0.001, point_range=(-40, -40, -3, 40, 40, 3)))


def test_removed_sparse_voxelize_names_its_replacement() -> None:
    from m2s.sparse.voxelize import voxelize

    with pytest.raises(ConfigError, match="m2s.voxel.voxelize_scan"):
        voxelize(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), 0.1)


def test_old_import_paths_are_the_same_objects() -> None:
    import m2s.sparse as sparse
    import m2s.train.config as train_config
    import m2s.train.dataset as train_dataset
    import m2s.voxel as voxel

    assert train_config.VoxelConfig is voxel.VoxelConfig
    assert train_dataset.voxelize_scan is voxel.voxelize_scan
    assert sparse.pack_keys is voxel.pack_keys


def _m2s_imports(path: Path) -> set[str]:
    """Every m2s module a file imports, at module level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("m2s"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("m2s"))
    return out


def test_voxel_sits_below_every_stage() -> None:
    assert _m2s_imports(ROOT / "m2s" / "voxel.py") <= {"m2s.errors"}
    for lower in ("inference.py", "sparse", "models"):
        path = ROOT / "m2s" / lower
        for f in [path] if path.is_file() else sorted(path.rglob("*.py")):
            upward = {m for m in _m2s_imports(f) if m.startswith(("m2s.train", "m2s.distill", "m2s.evaluation"))}
            assert not upward, f"{f.relative_to(ROOT)} imports a layer above it: {sorted(upward)}"
