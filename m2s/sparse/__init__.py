"""Sparse 3D convolution: one interface; pure-PyTorch, MinkowskiEngine and spconv backends.

Typical use::

    from m2s.sparse import SparseTensor, voxelize, voxel_mean
    coords, p2v = voxelize(xyz, batch, voxel_size=0.05)
    x = SparseTensor(coords, voxel_mean(point_feats, p2v, len(coords)))
    logits_per_point = model(x)[p2v]
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
from m2s.sparse.voxelize import voxel_mean, voxelize

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
    "voxelize",
]
