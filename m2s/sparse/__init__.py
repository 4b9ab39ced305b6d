"""Sparse 3D convolution: one interface; pure-PyTorch, MinkowskiEngine and spconv backends.

Typical use (the grid is m2s.voxel's, shared with training and inference)::

    from m2s.voxel import VoxelConfig, batch_coords, voxelize_scan
    kept, coords, p2v, feats = voxelize_scan(xyz, remission, VoxelConfig(voxel_size=0.05))
    x = SparseTensor(torch.from_numpy(batch_coords([coords])), torch.from_numpy(feats))
    logits_per_kept_point = model(x)[torch.from_numpy(p2v)]
"""

from m2s.sparse.backend import (
    BACKEND_NAMES,
    SparseBackend,
    available_backends,
    get_backend,
    minkowski_status,
    resolve_auto,
    spconv_status,
)
from m2s.sparse.tensor import (
    COORD_MAX,
    COORD_MIN,
    OFFSETS_2,
    OFFSETS_3,
    SparseTensor,
    pack_keys,
    unpack_keys,
    validate_input,
)
from m2s.sparse.voxelize import voxel_mean

__all__ = [
    "BACKEND_NAMES",
    "COORD_MAX",
    "COORD_MIN",
    "OFFSETS_2",
    "OFFSETS_3",
    "SparseBackend",
    "SparseTensor",
    "available_backends",
    "get_backend",
    "minkowski_status",
    "pack_keys",
    "resolve_auto",
    "spconv_status",
    "unpack_keys",
    "validate_input",
    "voxel_mean",
]
