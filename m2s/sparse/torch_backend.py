"""Pure-PyTorch sparse convolution backend (CPU and CUDA, nothing to compile).

Kernel maps come from sorted int64 coordinate keys and ``torch.searchsorted``; convolutions
are per-offset gather -> matmul -> scatter-add (``index_add_``) inside custom autograd
Functions, which keep only the input features and the (cached) index maps for backward
instead of every gathered intermediate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable

from m2s.errors import ConfigError, DataError
from m2s.sparse.backend import SparseBackend
from m2s.sparse.tensor import (
    CENTER_3,
    OFFSETS_3,
    SparseTensor,
    key_delta,
    pack_keys,
    unpack_keys,
    validate_input,
)


@dataclass
class _Level:
    """One coordinate set (one stride) of a forward pass."""

    coords: torch.Tensor  # int32 (V, 4), row order
    keys: torch.Tensor  # int64 (V,), row order
    sorted_keys: torch.Tensor  # int64 (V,)
    perm: torch.Tensor | None  # row of each sorted key; None when rows are already sorted


@dataclass
class _SubmMap:
    """Submanifold 3x3x3 map: for each non-centre offset k, ``out[o] += x[i] @ W[k]``."""

    pairs: list[tuple[int, torch.Tensor, torch.Tensor]]  # (k, in_rows, out_rows)

    @property
    def num_pairs(self) -> int:
        return sum(int(i.numel()) for _, i, _ in self.pairs)


@dataclass
class _DownMap:
    """Stride-2 2x2x2 map: each fine row feeds exactly one coarse row through one offset."""

    groups: list[tuple[int, torch.Tensor, torch.Tensor]]  # (k, fine_rows, coarse_rows)
    num_fine: int
    num_coarse: int


@dataclass
class TorchCoordinateManager:
    """Per-forward cache of coordinate sets and kernel maps, keyed by tensor stride.

    Lives as long as the tensors of one forward/backward pass reference it, so maps are
    built once per forward and never leak between inputs.
    """

    backend_name: str = "torch"
    levels: dict[int, _Level] = field(default_factory=dict)
    subm_maps: dict[int, _SubmMap] = field(default_factory=dict)
    down_maps: dict[int, _DownMap] = field(default_factory=dict)
    map_seconds: float = 0.0  # wall time spent building maps (CPU; asynchronous on CUDA)

    def coordinates(self, key: int) -> torch.Tensor:
        return self.levels[key].coords

    def add_level(self, stride: int, coords: torch.Tensor, keys: torch.Tensor) -> _Level:
        if keys.numel() > 1 and bool((keys[1:] > keys[:-1]).all()):
            level = _Level(coords, keys, keys, None)
        else:
            perm = torch.argsort(keys)
            level = _Level(coords, keys, keys[perm], perm)
        self.levels[stride] = level
        return level

    def subm_map(self, stride: int) -> _SubmMap:
        cached = self.subm_maps.get(stride)
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        level = self.levels[stride]
        n = level.keys.numel()
        # Only the 13 offsets before the centre are searched: the map of -d is the map of d
        # with input and output swapped.
        half = OFFSETS_3[:CENTER_3] * stride
        deltas = torch.tensor(
            [key_delta(int(d[0]), int(d[1]), int(d[2])) for d in half],
            dtype=torch.int64,
            device=level.keys.device,
        )
        queries = level.keys[None, :] + deltas[:, None]  # (13, V)
        pos = torch.searchsorted(level.sorted_keys, queries.reshape(-1)).clamp_(max=n - 1)
        hit = (level.sorted_keys[pos] == queries.reshape(-1)).view(CENTER_3, n)
        pos = pos.view(CENTER_3, n)
        pairs: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        mirrored: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        for k in range(CENTER_3):
            out_rows = hit[k].nonzero().squeeze(1)
            if out_rows.numel() == 0:
                continue
            in_rows = pos[k].index_select(0, out_rows)
            if level.perm is not None:
                in_rows = level.perm.index_select(0, in_rows)
            pairs.append((k, in_rows, out_rows))
            mirrored.append((26 - k, out_rows, in_rows))
        result = _SubmMap(pairs + mirrored[::-1])
        self.subm_maps[stride] = result
        self.map_seconds += time.perf_counter() - t0
        return result

    def down_map(self, stride: int) -> _DownMap:
        """Map from the level at ``stride`` to the level at ``2 * stride`` (created here)."""
        cached = self.down_maps.get(stride)
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        fine = self.levels[stride]
        c = fine.coords.to(torch.int64)
        step = 2 * stride
        base = c.clone()
        base[:, 1:] = torch.div(c[:, 1:], step, rounding_mode="floor") * step
        coarse_keys, coarse_rows = torch.unique(pack_keys(base), sorted=True, return_inverse=True)
        if 2 * stride not in self.levels:
            self.levels[2 * stride] = _Level(unpack_keys(coarse_keys), coarse_keys, coarse_keys, None)
        # Position of each fine voxel inside its 2x2x2 cell, in canonical OFFSETS_2 order.
        rel = torch.div(c[:, 1:] - base[:, 1:], stride, rounding_mode="floor")
        which = rel[:, 0] * 4 + rel[:, 1] * 2 + rel[:, 2]
        order = torch.argsort(which, stable=True)
        counts = torch.bincount(which, minlength=8).tolist()
        groups: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        start = 0
        for k, cnt in enumerate(counts):
            if cnt:
                rows = order[start : start + cnt]
                groups.append((k, rows, coarse_rows.index_select(0, rows)))
            start += cnt
        result = _DownMap(groups, num_fine=c.shape[0], num_coarse=coarse_keys.numel())
        self.down_maps[stride] = result
        self.map_seconds += time.perf_counter() - t0
        return result


class _SubmConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, kmap: _SubmMap) -> torch.Tensor:
        out = x.mm(w[CENTER_3])  # the centre offset is the identity map
        for k, in_rows, out_rows in kmap.pairs:
            out.index_add_(0, out_rows, x.index_select(0, in_rows).mm(w[k]))
        ctx.save_for_backward(x, w)
        ctx.kmap = kmap
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        g = g.contiguous()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx = g.mm(w[CENTER_3].t()) if need_x else None
        gw = None
        if need_w:
            gw = torch.zeros_like(w)
            gw[CENTER_3] = x.t().mm(g)
        for k, in_rows, out_rows in ctx.kmap.pairs:
            gk = g.index_select(0, out_rows)
            if gx is not None:
                gx.index_add_(0, in_rows, gk.mm(w[k].t()))
            if gw is not None:
                gw[k] = x.index_select(0, in_rows).t().mm(gk)
        return gx, gw, None


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, dmap: _DownMap, to_fine: bool, transpose: bool) -> torch.Tensor:
    """Apply each offset's weight between fine and coarse rows of `dmap`.

    Towards coarse rows (``to_fine`` False) the contributions of a coarse row's fine rows are
    summed; towards fine rows each fine row receives exactly one coarse row, so it is copied.
    ``transpose`` multiplies by ``w[k].T`` (the backward of the other direction).
    """
    cols = w.shape[1] if transpose else w.shape[2]  # w: (offsets, C_in, C_out)
    out = x.new_empty((dmap.num_fine, cols)) if to_fine else x.new_zeros((dmap.num_coarse, cols))
    for k, fine, coarse in dmap.groups:
        src, dst = (coarse, fine) if to_fine else (fine, coarse)
        y = x.index_select(0, src).mm(w[k].t() if transpose else w[k])
        if to_fine:
            out.index_copy_(0, dst, y)
        else:
            out.index_add_(0, dst, y)
    return out


class _StridedConvFn(torch.autograd.Function):
    """Stride-2 2x2x2 convolution (``up`` False: fine -> coarse rows, summed) and its transpose
    (``up`` True: coarse -> fine rows) over one map; each direction's input gradient is the other
    direction applied with transposed weights."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, dmap: _DownMap, up: bool) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.dmap, ctx.up = dmap, up
        return _grouped_mm(x, w, dmap, to_fine=up, transpose=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        g = g.contiguous()
        dmap, up = ctx.dmap, ctx.up
        gx = _grouped_mm(g, w, dmap, to_fine=not up, transpose=True) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            gw = torch.zeros_like(w)
            for k, fine, coarse in dmap.groups:
                x_rows, g_rows = (coarse, fine) if up else (fine, coarse)
                gw[k] = x.index_select(0, x_rows).t().mm(g.index_select(0, g_rows))
        return gx, gw, None, None


def amp_cast(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast operands to the autocast dtype: custom Functions bypass autocast's own casting,
    and index_add_ needs one dtype throughout."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        return x.to(dt), w.to(dt)
    if w.dtype != x.dtype:
        raise DataError(f"features are {x.dtype} but weights are {w.dtype}")
    return x, w


def check_weight(weight: torch.Tensor, volume: int, channels: int) -> None:
    if weight.dim() != 3 or weight.shape[0] != volume or weight.shape[1] != channels:
        raise ConfigError(f"expected a ({volume}, {channels}, C_out) weight for this input, got {tuple(weight.shape)}")


class TorchBackend(SparseBackend):
    """Pure-PyTorch backend; see the module docstring."""

    name = "torch"

    def prepare(self, x: SparseTensor) -> tuple[SparseTensor, torch.Tensor | None]:
        if x.stride != 1:
            raise DataError(f"network inputs must have stride 1, got stride {x.stride}")
        coords = x.coords
        keys = validate_input(coords, x.feats)
        coords = coords.to(torch.int32)
        mgr = TorchCoordinateManager()
        mgr.add_level(1, coords, keys)
        return SparseTensor(coords, x.feats, 1, manager=mgr, key=1), None

    def _mgr(self, x: SparseTensor) -> TorchCoordinateManager:
        self._check_same_manager(x)
        assert isinstance(x.manager, TorchCoordinateManager)
        return x.manager

    def subm_conv3(self, x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
        mgr = self._mgr(x)
        check_weight(weight, 27, x.num_channels)
        kmap = mgr.subm_map(x.stride)
        feats, w = amp_cast(x.feats, weight)
        with torch.autocast(x.feats.device.type, enabled=False):
            out = _SubmConvFn.apply(feats, w, kmap)
        return SparseTensor(mgr.levels[x.stride].coords, out, x.stride, manager=mgr, key=x.stride)

    def down_conv2(self, x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
        mgr = self._mgr(x)
        check_weight(weight, 8, x.num_channels)
        dmap = mgr.down_map(x.stride)
        feats, w = amp_cast(x.feats, weight)
        with torch.autocast(x.feats.device.type, enabled=False):
            out = _StridedConvFn.apply(feats, w, dmap, False)
        s = 2 * x.stride
        return SparseTensor(mgr.levels[s].coords, out, s, manager=mgr, key=s)

    def up_conv2(self, x: SparseTensor, weight: torch.Tensor, target: SparseTensor) -> SparseTensor:
        mgr = self._mgr(x)
        self._check_up_target(x, target)
        check_weight(weight, 8, x.num_channels)
        dmap = mgr.down_map(target.stride)
        feats, w = amp_cast(x.feats, weight)
        with torch.autocast(x.feats.device.type, enabled=False):
            out = _StridedConvFn.apply(feats, w, dmap, True)
        s = target.stride
        return SparseTensor(mgr.levels[s].coords, out, s, manager=mgr, key=s)

    def build_kernel_maps(self, x: SparseTensor, num_levels: int) -> None:
        """Build every map a U-Net with ``num_levels`` stride-2 stages needs (for timing)."""
        mgr = self._mgr(x)
        for i in range(num_levels + 1):
            s = 1 << i
            mgr.subm_map(s)
            if i < num_levels:
                mgr.down_map(s)
