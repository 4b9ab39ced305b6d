"""Backend-neutral sparse tensor, coordinate-key packing, canonical kernel offsets, validation.

Coordinates are int32 rows ``[batch, x, y, z]`` in units of the finest voxel; a tensor at
stride ``s`` has x, y, z that are multiples of ``s`` (the MinkowskiEngine convention), so
coordinates of different scales can be compared directly.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

import torch

from m2s.errors import DataError

# The coordinate-key codec is m2s.voxel's (one codec for the whole house), re-exported here.
from m2s.voxel import (  # noqa: F401  (re-exports)
    BATCH_MAX,
    COORD_MARGIN,
    COORD_MAX,
    COORD_MIN,
    check_coords,
    key_delta,
    pack_keys,
    unpack_keys,
)

#: Canonical 3x3x3 offset order: (dx, dy, dz) with x slowest, z fastest; index 13 is the centre
#: and the offset of -d sits at 26 - index(d).
OFFSETS_3 = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.int64)
#: Canonical 2x2x2 offset order for stride-2 down/up convolutions (x slowest, z fastest).
OFFSETS_2 = torch.tensor(list(itertools.product((0, 1), repeat=3)), dtype=torch.int64)
CENTER_3 = 13


class CoordinateManager(Protocol):
    """What a backend attaches to the tensors it creates (kernel-map cache, coordinates)."""

    backend_name: str

    def coordinates(self, key: Any) -> torch.Tensor:
        """int32 (V, 4) coordinates of the coordinate set ``key``, in feature-row order."""
        ...


class SparseTensor:
    """Features on a sparse set of voxel coordinates.

    Build one from voxel coordinates and features (``SparseTensor(coords, feats)``); backends
    return new tensors that share a coordinate manager, which caches kernel maps for the
    duration of one forward pass (a new input tensor gets a new manager, so nothing leaks
    between forwards).
    """

    __slots__ = ("feats", "stride", "manager", "key", "_coords")

    def __init__(
        self,
        coords: torch.Tensor | None,
        feats: torch.Tensor,
        stride: int = 1,
        *,
        manager: CoordinateManager | None = None,
        key: Any = None,
    ) -> None:
        if coords is None and manager is None:
            raise DataError("SparseTensor needs coordinates or a coordinate manager")
        self._coords = coords
        self.feats = feats
        self.stride = int(stride)
        self.manager = manager
        self.key = key

    @property
    def coords(self) -> torch.Tensor:
        """int32 (V, 4) ``[batch, x, y, z]`` coordinates aligned with :attr:`feats` rows."""
        if self._coords is None:
            assert self.manager is not None
            self._coords = self.manager.coordinates(self.key)
        return self._coords

    @property
    def backend_name(self) -> str | None:
        """Name of the backend whose coordinate manager this tensor carries (None: raw input)."""
        return None if self.manager is None else self.manager.backend_name

    @property
    def num_voxels(self) -> int:
        return int(self.feats.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.feats.shape[1])

    def replace(self, feats: torch.Tensor) -> SparseTensor:
        """Same coordinates (and manager), new features with the same number of rows."""
        if feats.dim() != 2 or feats.shape[0] != self.feats.shape[0]:
            raise DataError(
                f"replacement features must have shape ({self.feats.shape[0]}, C), got {tuple(feats.shape)}"
            )
        return SparseTensor(self._coords, feats, self.stride, manager=self.manager, key=self.key)

    def keys(self) -> torch.Tensor:
        """int64 coordinate keys of the rows (for cross-scale / cross-model lookups)."""
        return pack_keys(self.coords)

    def sorted(self) -> SparseTensor:
        """A raw copy (no manager) with rows sorted by coordinate key: canonical order."""
        order = torch.argsort(self.keys())
        return SparseTensor(self.coords[order], self.feats[order], self.stride)

    def __repr__(self) -> str:
        return (
            f"SparseTensor(voxels={self.num_voxels}, channels={self.num_channels}, "
            f"stride={self.stride}, backend={self.backend_name})"
        )


def same_coordinates(a: SparseTensor, b: SparseTensor) -> bool:
    """Whether two tensors of one forward pass live on the same coordinate set (same rows)."""
    if a.manager is not b.manager or a.stride != b.stride:
        return False
    # MinkowskiEngine keys are pybind objects without value equality; compare their contents.
    ka = a.key.get_key() if hasattr(a.key, "get_key") else a.key
    kb = b.key.get_key() if hasattr(b.key, "get_key") else b.key
    return bool(ka == kb)


def validate_input(coords: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Check a stride-1 network input and return its int64 keys (row order).

    Raises :class:`DataError` for empty inputs, bad shapes/dtypes, coordinates outside the
    packable range, negative batch indices, non-finite features and duplicate coordinates.
    """
    if not isinstance(coords, torch.Tensor) or not isinstance(feats, torch.Tensor):
        raise DataError("coordinates and features must be torch tensors")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise DataError(f"coordinates must have shape (V, 4) [batch, x, y, z], got {tuple(coords.shape)}")
    if coords.dtype not in (torch.int32, torch.int64):
        raise DataError(f"coordinates must be int32 (or int64), got {coords.dtype}")
    if feats.dim() != 2:
        raise DataError(f"features must have shape (V, C), got {tuple(feats.shape)}")
    if coords.shape[0] == 0:
        raise DataError("empty input: the sparse tensor has no voxels")
    if feats.shape[0] != coords.shape[0]:
        raise DataError(f"{coords.shape[0]} coordinates but {feats.shape[0]} feature rows")
    if feats.shape[1] == 0:
        raise DataError("features have zero channels")
    if not feats.is_floating_point():
        raise DataError(f"features must be floating point, got {feats.dtype}")
    if coords.device != feats.device:
        raise DataError(f"coordinates on {coords.device} but features on {feats.device}")
    coords = check_coords(coords, "input coordinates")  # the codec's range: batch and x, y, z
    if not bool(torch.isfinite(feats).all()):
        bad = int((~torch.isfinite(feats)).any(dim=1).sum())
        raise DataError(f"features contain NaN or inf in {bad} voxel(s)")
    keys = pack_keys(coords)
    if torch.unique(keys).numel() != keys.numel():
        raise DataError("duplicate voxel coordinates: voxelize the points first (m2s.voxel.voxelize_scan)")
    return keys
