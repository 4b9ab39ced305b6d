"""spconv 2.x backend (optional; import-guarded): the engine of the official M2SKD/Cylinder3D code.

Kernel maps ("indice pairs") come from spconv's own generator and are built once per forward,
cached per stride in a :class:`SpconvCoordinateManager` (like spconv's ``indice_key``): the
submanifold map of each stride is shared by every 3x3x3 conv of that stride, and the map of
each stride-2 convolution is reused, reversed, by the transposed convolution that comes back
onto the same coordinates (spconv's "inverse" convolution, which lands exactly on the finer
coordinate set, as the torch and MinkowskiEngine backends do).

Weights stay in the canonical m2s layout ``(K, C_in, C_out)`` (see :class:`SparseBackend`);
they are permuted to spconv's ``(C_out, k_x, k_y, k_z, C_in)`` layout on the fly, which is
differentiable, so gradients come back in the canonical layout too. spconv indices are
``[batch, x, y, z]`` with x as the first (slowest) spatial axis, and its kernel index runs
over (k_x, k_y, k_z) with k_z fastest: the canonical offset order, so no offset permutation is
needed (``tests/test_spconv_parity.py`` probes every offset to keep this true).

spconv needs non-negative grid indices inside a ``spatial_shape``: each forward shifts the
coordinates by an origin aligned to :data:`ORIGIN_ALIGN` (so flooring to every coarser grid
agrees with m2s' ``floor(c / 2s) * 2s``) and gives each stride an even extent (so a stride-2
convolution never drops the last cell).

Mixed precision: under ``torch.autocast`` features and weights are cast to the autocast dtype
and the spconv op runs with autocast off, as in the torch backend. spconv has no bfloat16
kernels, so a bfloat16 convolution is computed in float32 and its output cast to bfloat16
(same results as bfloat16 math or better, no speed-up); float16 (the CUDA autocast default of
`bench_backbone.py --amp`) runs natively.

The algorithm is spconv's ``Native`` gather-GEMM-scatter on every device: it is the only one
spconv runs on CPU, where it can be checked against the other backends. spconv's CUDA default
(implicit GEMM) uses other map structures and is not wired in here.

CPU-only snag (spconv 2.3.8, CPU-only torch): forward works, but the backward of every
convolution calls ``spconv.pytorch.ops.get_current_stream()`` (``torch.cuda.current_stream()``)
before it branches to its CPU code, which never uses the stream, so it raises "Torch not
compiled with CUDA enabled". When (and only when) CUDA is unavailable, :func:`_load` replaces
that one function in that one module with one returning stream 0 and emits a
:class:`SpconvCpuShimWarning` once; see :data:`CPU_SHIM_NOTE`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from m2s.errors import BackendUnavailable, ConfigError, DataError
from m2s.sparse.backend import SparseBackend
from m2s.sparse.tensor import SparseTensor, validate_input
from m2s.sparse.torch_backend import amp_cast, check_weight

#: Coordinate origins are multiples of this (every stride up to ORIGIN_ALIGN / 2 floors alike).
ORIGIN_ALIGN = 256
#: Feature dtypes spconv 2.3.8 computes in (it has no bfloat16 kernels).
SPCONV_DTYPES = (torch.float32, torch.float64, torch.float16)
#: The spconv release `make setup` installs and the tests were run against.
SPCONV_PIN = "2.3.8"

CPU_SHIM_NOTE = (
    "spconv CPU shim active: CUDA is unavailable, so spconv.pytorch.ops.get_current_stream "
    "returns stream 0 (its CPU backward asks for a CUDA stream it never uses; spconv 2.3.8 bug)"
)


class SpconvCpuShimWarning(UserWarning):
    """Emitted once per process when the CPU-only stream shim is installed."""


_shim: dict[str, Any] = {"active": False, "original": None}


def _install_cpu_stream_shim(ops: Any) -> None:  # spconv.pytorch.ops: untyped, and patched here
    """Make ``ops.get_current_stream`` return 0 (the null stream) instead of raising.

    Only ever installed when ``torch.cuda.is_available()`` is False, so no CUDA tensor can
    reach spconv and every caller is on a CPU path; the original is kept for the test that
    checks the shim is still needed.
    """
    if _shim["active"]:
        return
    _shim["original"] = ops.get_current_stream

    def get_current_stream() -> int:  # m2s CPU shim, see CPU_SHIM_NOTE
        return 0

    ops.get_current_stream = get_current_stream
    _shim["active"] = True
    warnings.warn(CPU_SHIM_NOTE, SpconvCpuShimWarning, stacklevel=3)


def cpu_shim_active() -> bool:
    return bool(_shim["active"])


@dataclass(frozen=True)
class _Spconv:
    """What the backend uses of spconv (imported once)."""

    version: str
    ops: ModuleType
    native: Any
    cpu_only_build: bool


@functools.cache
def _load() -> tuple[Any, str]:
    """Import spconv once; returns (namespace with what the backend uses, or None; reason)."""
    try:
        spconv = importlib.import_module("spconv")
        ops = importlib.import_module("spconv.pytorch.ops")
        algo = importlib.import_module("spconv.core").ConvAlgo
        cc = importlib.import_module("spconv.core_cc.csrc.sparse.all").SpconvOps
    except ImportError as exc:
        return None, f"cannot import spconv ({exc})"
    except Exception as exc:  # a broken install can fail in many ways at import time
        return None, f"spconv failed to import ({type(exc).__name__}: {exc})"
    version = str(getattr(spconv, "__version__", "?"))
    if not version.startswith("2."):
        return None, f"spconv {version} found, 2.x required"
    if not torch.cuda.is_available():
        _install_cpu_stream_shim(ops)
    ns = _Spconv(
        version=version,
        ops=ops,
        native=algo.Native,
        cpu_only_build=bool(cc.is_cpu_only_build()),
    )
    return ns, ""


def availability() -> tuple[bool, str]:
    sp, why = _load()
    return sp is not None, why


def has_cuda() -> bool:
    """spconv is importable, built with CUDA kernels, and a GPU is present."""
    sp, _ = _load()
    return sp is not None and not sp.cpu_only_build and torch.cuda.is_available()


def describe() -> str:
    """One line for logs and benchmarks: version, build, shim."""
    sp, why = _load()
    if sp is None:
        return f"spconv unavailable: {why}"
    build = "CPU-only build" if sp.cpu_only_build else "CUDA build"
    return f"spconv {sp.version} ({build}{'; CPU stream shim active' if cpu_shim_active() else ''})"


def _to_spconv_weight(w: torch.Tensor) -> torch.Tensor:
    """Canonical (K, C_in, C_out) -> spconv (C_out, k, k, k, C_in); K = k**3 (27 or 8)."""
    k = 3 if w.shape[0] == 27 else 2
    return w.permute(2, 0, 1).reshape(w.shape[2], k, k, k, w.shape[1]).contiguous()


@dataclass
class _Level:
    coords: torch.Tensor  # int32 (V, 4) [b, x, y, z] in finest-voxel units, row order
    indices: torch.Tensor  # int32 (V, 4) [b, ix, iy, iz] on this stride's grid, row order
    shape: list[int]  # spconv spatial_shape of this stride (even extents)


@dataclass
class _Pairs:
    pairs: torch.Tensor  # spconv indice pairs
    counts: torch.Tensor  # pairs per kernel offset
    num_out: int


@dataclass
class SpconvCoordinateManager:
    """Per-forward coordinate sets (per stride) and spconv kernel maps (built once each)."""

    origin: torch.Tensor  # int32 (3,), multiple of ORIGIN_ALIGN
    extent: list[int]  # stride-1 extent per axis
    batch_size: int
    backend_name: str = "spconv"
    levels: dict[int, _Level] = field(default_factory=dict)
    subm_maps: dict[int, _Pairs] = field(default_factory=dict)
    down_maps: dict[int, _Pairs] = field(default_factory=dict)
    map_seconds: float = 0.0

    def coordinates(self, key: int) -> torch.Tensor:
        return self.levels[key].coords

    def shape(self, stride: int) -> list[int]:
        """spatial_shape at ``stride``: ceil(extent / stride) rounded up to an even count."""
        cells = [-(-e // stride) for e in self.extent]
        return [2 * -(-n // 2) for n in cells]


@contextlib.contextmanager
def _cpu_threads_one(device: torch.device) -> Iterator[None]:
    """Run a spconv CPU op with one torch intra-op thread, then restore the setting.

    Measured with spconv 2.3.8: its CPU kernels give wrong results (relative error 1-4 %, varying
    from run to run) when torch runs them with more than one thread, and exact ones with a single
    thread (`tests/test_spconv_parity.py` runs with the default thread count to keep this covered).
    Correctness first: CPU spconv ops run single-threaded. CUDA is unaffected.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _SpconvConvFn(torch.autograd.Function):
    """One spconv Native convolution (``kind``: subm, down, or up = spconv's inverse conv).

    Calls spconv's forward/backward ops directly (not its autograd Functions) so that the
    backward runs with autocast off, like the forward: spconv's Functions only guard CUDA
    autocast, and a CPU autocast active during ``backward()`` would hand its kernels bfloat16.
    """

    @staticmethod
    def forward(
        ctx, feats: torch.Tensor, w: torch.Tensor, pairs: _Pairs, num_out: int, kind: str, sp: _Spconv
    ) -> torch.Tensor:
        inverse, subm = kind == "up", kind == "subm"
        ctx.save_for_backward(feats, w)
        ctx.pairs, ctx.inverse, ctx.subm, ctx.sp = pairs, inverse, subm, sp
        with _cpu_threads_one(feats.device):
            return sp.ops.indice_conv(feats, w, pairs.pairs, pairs.counts, num_out, inverse, subm, algo=sp.native)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        feats, w = ctx.saved_tensors
        sp = ctx.sp
        with torch.autocast(g.device.type, enabled=False), _cpu_threads_one(g.device):
            gx, gw = sp.ops.indice_conv_backward(
                feats,
                w,
                g.to(feats.dtype).contiguous(),
                ctx.pairs.pairs,
                ctx.pairs.counts,
                ctx.inverse,
                ctx.subm,
                algo=sp.native,
            )
        return gx, gw, None, None, None, None


class SpconvBackend(SparseBackend):
    """Backend delegating to spconv 2.x (CPU, or CUDA with a spconv-cu1xx build)."""

    name = "spconv"

    def __init__(self) -> None:
        sp, why = _load()
        if sp is None:
            raise BackendUnavailable(
                f"spconv is unusable: {why}. Install it with `make setup` (SPCONV=spconv, the "
                f"CPU wheel, or e.g. SPCONV=spconv-cu121) or `pip install spconv=={SPCONV_PIN}`, "
                "or use backend='torch'"
            )
        self.sp = sp

    def prepare(self, x: SparseTensor) -> tuple[SparseTensor, torch.Tensor | None]:
        if x.stride != 1:
            raise DataError(f"network inputs must have stride 1, got stride {x.stride}")
        validate_input(x.coords, x.feats)
        if x.feats.is_cuda and self.sp.cpu_only_build:
            raise BackendUnavailable(
                f"spconv {self.sp.version} is a CPU-only build but the input is on CUDA; install "
                "a CUDA build (`make setup SPCONV=spconv-cu121`) or use backend='torch'"
            )
        coords = x.coords.to(torch.int32).contiguous()
        xyz = coords[:, 1:]
        lo = torch.div(xyz.min(dim=0).values, ORIGIN_ALIGN, rounding_mode="floor") * ORIGIN_ALIGN
        hi = xyz.max(dim=0).values
        extent = (hi - lo + 1).tolist()
        batch_size = int(coords[:, 0].max()) + 1
        mgr = SpconvCoordinateManager(origin=lo, extent=extent, batch_size=batch_size)
        indices = torch.cat([coords[:, :1], xyz - lo], dim=1).contiguous()
        mgr.levels[1] = _Level(coords, indices, mgr.shape(1))
        return SparseTensor(coords, x.feats, 1, manager=mgr, key=1), None

    def _mgr(self, x: SparseTensor) -> SpconvCoordinateManager:
        self._check_same_manager(x)
        assert isinstance(x.manager, SpconvCoordinateManager)
        return x.manager

    def _subm_map(self, mgr: SpconvCoordinateManager, stride: int) -> _Pairs:
        cached = mgr.subm_maps.get(stride)
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        level = mgr.levels[stride]
        with _cpu_threads_one(level.indices.device):
            _, pairs, counts = self.sp.ops.get_indice_pairs(
                level.indices, mgr.batch_size, level.shape, self.sp.native,
                [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 0], True, False,
            )  # fmt: skip
        result = _Pairs(pairs, counts, level.indices.shape[0])
        mgr.subm_maps[stride] = result
        mgr.map_seconds += time.perf_counter() - t0
        return result

    def _down_map(self, mgr: SpconvCoordinateManager, stride: int) -> _Pairs:
        """Map from the level at ``stride`` to the level at ``2 * stride`` (created here)."""
        cached = mgr.down_maps.get(stride)
        if cached is not None:
            return cached
        if ORIGIN_ALIGN % (2 * stride):
            raise ConfigError(
                f"spconv backend supports strides up to {ORIGIN_ALIGN // 2} (got a stride-2 "
                f"convolution from stride {stride})"
            )
        t0 = time.perf_counter()
        fine = mgr.levels[stride]
        with _cpu_threads_one(fine.indices.device):
            out_inds, pairs, counts = self.sp.ops.get_indice_pairs(
                fine.indices, mgr.batch_size, fine.shape, self.sp.native,
                [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1], [0, 0, 0], False, False,
            )  # fmt: skip
        s = 2 * stride
        out_inds = out_inds.to(torch.int32).contiguous()
        coarse = torch.cat([out_inds[:, :1], out_inds[:, 1:] * s + mgr.origin], dim=1)
        mgr.levels[s] = _Level(coarse, out_inds, mgr.shape(s))
        result = _Pairs(pairs, counts, out_inds.shape[0])
        mgr.down_maps[stride] = result
        mgr.map_seconds += time.perf_counter() - t0
        return result

    def _run(self, kind: str, x: SparseTensor, weight: torch.Tensor, pairs: _Pairs, num_out: int) -> torch.Tensor:
        feats, w = amp_cast(x.feats, weight)
        out_dtype = feats.dtype
        if out_dtype not in SPCONV_DTYPES:  # bfloat16: computed in float32, returned as bfloat16
            feats, w = feats.float(), w.float()
        with torch.autocast(x.feats.device.type, enabled=False):
            out = _SpconvConvFn.apply(feats.contiguous(), _to_spconv_weight(w), pairs, num_out, kind, self.sp)
        return out.to(out_dtype)

    def subm_conv3(self, x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
        mgr = self._mgr(x)
        check_weight(weight, 27, x.num_channels)
        pairs = self._subm_map(mgr, x.stride)
        out = self._run("subm", x, weight, pairs, pairs.num_out)
        return SparseTensor(mgr.levels[x.stride].coords, out, x.stride, manager=mgr, key=x.stride)

    def down_conv2(self, x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
        mgr = self._mgr(x)
        check_weight(weight, 8, x.num_channels)
        pairs = self._down_map(mgr, x.stride)
        out = self._run("down", x, weight, pairs, pairs.num_out)
        s = 2 * x.stride
        return SparseTensor(mgr.levels[s].coords, out, s, manager=mgr, key=s)

    def up_conv2(self, x: SparseTensor, weight: torch.Tensor, target: SparseTensor) -> SparseTensor:
        mgr = self._mgr(x)
        self._check_up_target(x, target)
        check_weight(weight, 8, x.num_channels)
        pairs = self._down_map(mgr, target.stride)  # the same map, used in reverse
        num_fine = mgr.levels[target.stride].indices.shape[0]
        out = self._run("up", x, weight, pairs, num_fine)
        s = target.stride
        return SparseTensor(mgr.levels[s].coords, out, s, manager=mgr, key=s)

    def build_kernel_maps(self, x: SparseTensor, num_levels: int) -> None:
        """Build every map a U-Net with ``num_levels`` stride-2 stages needs (for timing)."""
        mgr = self._mgr(x)
        for i in range(num_levels + 1):
            s = 1 << i
            self._subm_map(mgr, s)
            if i < num_levels:
                self._down_map(mgr, s)
