"""Student-to-teacher voxel correspondence by coordinate-key lookup.

Both networks voxelise on the same absolute grid, so a student voxel and its teacher voxel
share the integer coordinates ``[batch, x, y, z]`` at every stride. Rows are matched by
packing each coordinate into one int64 key, sorting the teacher keys and binary-searching
the student keys (``torch.searchsorted``): O((Vs + Vt) log Vt), no dense grid, any device.

Key layout (most significant first): ``[batch | x | y | z]`` with ``coord_bits`` bits per
spatial axis and the remaining ``63 - 3 * coord_bits`` bits for the batch index, so keys
are non-negative int64 and sorting keys sorts by batch first. ``coord_bits`` is at most 20
(coordinates below 2**20 = 1,048,576 finest voxels per axis), which leaves at least 3 bits
for the batch; when not given it is the smallest width that fits the data, leaving the
batch as many bits as possible.

Also here: :func:`hash_keys`, a deterministic, device-independent hash of keys used by the
losses to rank voxels in an order-invariant, spatially unbiased way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from m2s.errors import DataError

MAX_COORD_BITS = 20
KEY_BITS = 63  # int64 keys stay non-negative

_M31 = (1 << 31) - 1
_HASH_MUL = 0x45D9F3B  # < 2**27, so 31-bit * mul < 2**58: no int64 overflow anywhere


def _check_coords(coords: Tensor, name: str) -> Tensor:
    if not isinstance(coords, Tensor) or coords.dim() != 2 or coords.shape[1] != 4:
        shape = tuple(coords.shape) if isinstance(coords, Tensor) else type(coords).__name__
        raise DataError(f"{name}: expected a (V, 4) [batch, x, y, z] tensor, got {shape}")
    if coords.dtype.is_floating_point or coords.dtype.is_complex or coords.dtype == torch.bool:
        raise DataError(f"{name}: coordinates must be an integer tensor, got {coords.dtype}")
    return coords.long()


def coord_bits_for(*coords: Tensor) -> int:
    """Smallest per-axis bit width that holds every spatial coordinate of all `coords`, capped at
    MAX_COORD_BITS (larger coordinates are then reported by :func:`pack_keys`)."""
    top = 0
    for c in coords:
        if c.numel():
            top = max(top, int(c[:, 1:].max()))
    return min(MAX_COORD_BITS, max(1, top.bit_length()))


def pack_keys(coords: Tensor, coord_bits: int | None = None) -> Tensor:
    """Pack (V,4) integer ``[batch, x, y, z]`` coordinates into (V,) non-negative int64 keys.

    `coord_bits` (1..20) bits per spatial axis, the batch index in the remaining high bits.
    None picks the smallest width that fits these coordinates; pass an explicit width when
    keys from different tensors must be comparable. Raises DataError on negative values or
    values that do not fit.
    """
    c = _check_coords(coords, "pack_keys")
    if coord_bits is None:
        coord_bits = coord_bits_for(c)
    if not 1 <= coord_bits <= MAX_COORD_BITS:
        raise DataError(f"coord_bits must be in 1..{MAX_COORD_BITS}, got {coord_bits}")
    batch_bits = KEY_BITS - 3 * coord_bits
    if c.numel():
        lo = int(c.min())
        if lo < 0:
            raise DataError(f"voxel coordinates must be non-negative, found {lo}")
        max_xyz = int(c[:, 1:].max())
        if max_xyz >= 1 << coord_bits:
            raise DataError(
                f"voxel coordinate {max_xyz} does not fit in {coord_bits} bits "
                f"(limit {(1 << coord_bits) - 1}); crop the scene or use a coarser voxel"
            )
        max_b = int(c[:, 0].max())
        if max_b >= 1 << batch_bits:
            raise DataError(
                f"batch index {max_b} does not fit in the {batch_bits} key bits left by "
                f"{coord_bits}-bit coordinates"
            )
    return (
        (c[:, 0] << (3 * coord_bits))
        | (c[:, 1] << (2 * coord_bits))
        | (c[:, 2] << coord_bits)
        | c[:, 3]
    )


def unpack_keys(keys: Tensor, coord_bits: int) -> Tensor:
    """Inverse of :func:`pack_keys` for the same `coord_bits`: (V,) int64 -> (V,4) int64."""
    mask = (1 << coord_bits) - 1
    return torch.stack(
        [
            keys >> (3 * coord_bits),
            (keys >> (2 * coord_bits)) & mask,
            (keys >> coord_bits) & mask,
            keys & mask,
        ],
        dim=1,
    )


def lookup_voxels(query_coords: Tensor, table_coords: Tensor) -> tuple[Tensor, Tensor]:
    """For each query voxel, the (int64) row of the table voxel with the same coordinates and
    whether there is one: ``(rows, found)``; rows of unfound voxels are 0 (mask them with
    `found`). Raises DataError when table coordinates repeat (ambiguous match)."""
    q = _check_coords(query_coords, "query coords")
    t = _check_coords(table_coords, "table coords")
    if q.device != t.device:
        raise DataError(f"query coords on {q.device} but table coords on {t.device}")
    if q.shape[0] == 0 or t.shape[0] == 0:
        zeros = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return zeros, zeros.bool()
    bits = coord_bits_for(q, t)  # one width for both so keys are comparable
    q_keys = pack_keys(q, bits)
    t_keys, order = torch.sort(pack_keys(t, bits))
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
    s = _check_coords(student_coords, "student coords")
    if s.shape[0] and _check_coords(teacher_coords, "teacher coords").shape[0] == 0:
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

    Identical on CPU and CUDA and independent of row order, so ranking voxels by
    ``(hash, key)`` gives an order-invariant selection that is not biased toward low
    coordinates; a different `salt` gives a different (reproducible) selection.
    """
    k = keys.long()
    # The constant keeps key 0 from being a fixed point (mix31(0) == 0).
    h = _mix31((k & _M31) ^ ((salt ^ 0x2545F491) & _M31))
    h = _mix31(h ^ ((k >> 31) & _M31))
    return _mix31(h ^ (k >> 62))


def canonical_order(keys: Tensor) -> Tensor:
    """Permutation sorting rows by key: running a computation on rows in this order makes it
    independent of the order the rows came in (keys are unique per voxel)."""
    return torch.sort(keys, stable=True).indices


def hashed_order(keys: Tensor, salt: int = 0) -> Tensor:
    """Permutation ordering rows by ``(hash_keys(keys, salt), key)``: a reproducible shuffle
    that does not depend on the incoming row order."""
    by_key = canonical_order(keys)
    by_hash = torch.sort(hash_keys(keys[by_key], salt), stable=True).indices
    return by_key[by_hash]
