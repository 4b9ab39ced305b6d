"""Student-to-teacher voxel correspondence by coordinate-key lookup.

Both networks voxelise on the same absolute grid, so a student voxel and its teacher voxel
share the integer coordinates ``[batch, x, y, z]`` at every stride. Rows are matched by
packing each coordinate into one int64 key, sorting the teacher keys and binary-searching
the student keys (``torch.searchsorted``): O((Vs + Vt) log Vt), no dense grid, any device.

Keys are m2s.voxel's codec (the one the sparse backends and the dataset use); they sort in
(batch, x, y, z) order.

Also here: :func:`hash_coords`, a deterministic, device-independent hash of voxel coordinates
used by the losses to rank voxels in an order-invariant, spatially unbiased way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from m2s.errors import DataError
from m2s.voxel import check_coords, pack_keys

_M31 = (1 << 31) - 1
_HASH_MUL = 0x45D9F3B  # < 2**27, so 31-bit * mul < 2**58: no int64 overflow anywhere


def lookup_voxels(query_coords: Tensor, table_coords: Tensor) -> tuple[Tensor, Tensor]:
    """For each query voxel, the (int64) row of the table voxel with the same coordinates and
    whether there is one: ``(rows, found)``; rows of unfound voxels are 0 (mask them with
    `found`). Raises DataError when table coordinates repeat (ambiguous match)."""
    q = check_coords(query_coords, "query coords")
    t = check_coords(table_coords, "table coords")
    if q.device != t.device:
        raise DataError(f"query coords on {q.device} but table coords on {t.device}")
    if q.shape[0] == 0 or t.shape[0] == 0:
        zeros = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return zeros, zeros.bool()
    q_keys = pack_keys(q)
    t_keys, order = torch.sort(pack_keys(t))
    if t_keys.shape[0] > 1 and bool((t_keys[1:] == t_keys[:-1]).any()):
        n_dup = int((t_keys[1:] == t_keys[:-1]).sum())
        raise DataError(f"teacher coordinates contain {n_dup} duplicate voxel(s); cannot match uniquely")
    pos = torch.searchsorted(t_keys, q_keys).clamp_max_(t_keys.shape[0] - 1)
    found = t_keys[pos] == q_keys
    return torch.where(found, order[pos], torch.zeros_like(pos)), found


def match_voxels(student_coords: Tensor, teacher_coords: Tensor) -> Tensor:
    """For each student voxel, the (int64) row of the teacher voxel with the same coordinates.

    ``teacher_feats[match_voxels(sc, tc)]`` lines teacher rows up with student rows. Raises
    DataError when a student voxel has no teacher voxel (the two views were voxelised on
    different grids or strides) or when teacher coordinates repeat (ambiguous match).
    """
    s = check_coords(student_coords, "student coords")
    if s.shape[0] and check_coords(teacher_coords, "teacher coords").shape[0] == 0:
        raise DataError(f"{s.shape[0]} student voxel(s) but the teacher has no voxels")
    rows, found = lookup_voxels(s, teacher_coords)
    if not bool(found.all()):
        missing = (~found).nonzero().squeeze(1)
        example = s[missing[0]].tolist()
        raise DataError(
            f"{missing.numel()} of {s.shape[0]} student voxel(s) have no teacher voxel at the same "
            f"coordinates (first: [b,x,y,z]={example}); teacher and student must be voxelised on "
            "the same grid and stride"
        )
    return rows


class BatchCorrespondence:
    """The student<->teacher voxel maps of one batch, each built once on first use.

    Student = the single view and the student's named features; teacher = the fused view and
    the teacher's named features (the same absolute grid at every stride). Every distillation
    term of a step asks this object instead of re-running the lookups.
    """

    def __init__(
        self,
        single_coords: Tensor,
        fused_coords: Tensor,
        student_feature_coords: Mapping[str, Tensor],
        teacher_feature_coords: Mapping[str, Tensor],
    ) -> None:
        self._single = single_coords
        self._fused = fused_coords
        self._s_feats = student_feature_coords
        self._t_feats = teacher_feature_coords
        self._cache: dict[tuple[str, str], Tensor] = {}

    def _memo(self, key: tuple[str, str], build: Callable[[], Tensor]) -> Tensor:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def input_rows(self) -> Tensor:
        """Fused-view row of each single-view voxel."""
        return self._memo(("input", ""), lambda: match_voxels(self._single, self._fused))

    def layer_rows(self, name: str) -> Tensor:
        """Teacher row of each student voxel of feature layer `name`."""
        return self._memo(("layer", name), lambda: match_voxels(self._s_feats[name], self._t_feats[name]))

    def layer_input_rows(self, name: str) -> Tensor:
        """Single-view input row of each student voxel of a stride-1 feature layer `name`
        (backends may return stride-1 features in their own row order)."""
        return self._memo(("layer_input", name), lambda: match_voxels(self._s_feats[name], self._single))

    def layer_fused_rows(self, name: str) -> Tensor:
        """Fused-view input row of each student voxel of a stride-1 feature layer `name`."""
        return self._memo(("layer_fused", name), lambda: match_voxels(self._s_feats[name], self._fused))

    @property
    def fused_in_single(self) -> tuple[Tensor, Tensor]:
        """Single-view row of each fused-view voxel and whether it exists there (fusion adds
        voxels the single view does not have)."""
        if ("fused_in_single", "") not in self._cache:
            rows, found = lookup_voxels(self._fused, self._single)
            self._cache[("fused_in_single", "")] = rows
            self._cache[("fused_in_single_found", "")] = found
        return self._cache[("fused_in_single", "")], self._cache[("fused_in_single_found", "")]


def _mix31(x: Tensor) -> Tensor:
    # 31-bit integer finaliser (xorshift-multiply rounds); all products stay below 2**58.
    x = ((x >> 16) ^ x) * _HASH_MUL & _M31
    x = ((x >> 16) ^ x) * _HASH_MUL & _M31
    return (x >> 16) ^ x


def hash_keys(keys: Tensor, salt: int = 0) -> Tensor:
    """Deterministic pseudo-random 31-bit hash (int64) of non-negative int64 keys.

    Identical on CPU and CUDA and independent of row order; a different `salt` gives a
    different (reproducible) hash.
    """
    k = keys.long()
    # The constant keeps key 0 from being a fixed point (mix31(0) == 0).
    h = _mix31((k & _M31) ^ ((salt ^ 0x2545F491) & _M31))
    h = _mix31(h ^ ((k >> 31) & _M31))
    return _mix31(h ^ (k >> 62))


_HASH_MAX_BITS = 20


def _hash_input(coords: Tensor) -> Tensor:
    """The integer each ``[b, x, y, z]`` row is hashed from: the coordinates laid side by side at
    the smallest per-axis width that holds the largest of them. Not a key (never unpacked or
    compared: m2s.voxel's codec does that); it is kept as it was so that the voxel subsets
    the affinity and graph terms draw, and with them every trained number, stay the same."""
    c = check_coords(coords, "hashed coords")
    if c.numel() and int(c.min()) < 0:
        raise DataError(f"hashed coords: voxel coordinates must be non-negative, found {int(c.min())}")
    top = int(c[:, 1:].max()) if c.numel() else 0
    bits = min(_HASH_MAX_BITS, max(1, top.bit_length()))
    if top >= 1 << bits:
        raise DataError(f"hashed coords: voxel coordinate {top} does not fit in {bits} bits")
    return (c[:, 0] << (3 * bits)) | (c[:, 1] << (2 * bits)) | (c[:, 2] << bits) | c[:, 3]


def hash_coords(coords: Tensor, salt: int = 0) -> Tensor:
    """Deterministic pseudo-random 31-bit hash (int64) of each (V, 4) ``[b, x, y, z]`` row.

    Identical on CPU and CUDA and independent of row order, so ranking voxels by
    ``(hash, key)`` gives an order-invariant selection that is not biased toward low
    coordinates; a different `salt` gives a different (reproducible) selection.
    """
    return hash_keys(_hash_input(coords), salt)


def canonical_order(coords: Tensor) -> Tensor:
    """Permutation sorting (V, 4) coordinate rows by their m2s.voxel key: running a computation
    on rows in this order makes it independent of the order the rows came in."""
    return torch.sort(pack_keys(coords), stable=True).indices


def hashed_order(coords: Tensor, salt: int = 0) -> Tensor:
    """Permutation ordering (V, 4) coordinate rows by ``(hash_coords(coords, salt), key)``: a
    reproducible shuffle that does not depend on the incoming row order."""
    by_key = canonical_order(coords)
    by_hash = torch.sort(hash_coords(coords[by_key], salt), stable=True).indices
    return by_key[by_hash]
