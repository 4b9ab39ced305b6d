"""MinkowskiEngine 0.5.4 backend (optional; import-guarded).

Weights stay in the canonical m2s layout (see :class:`SparseBackend`); they are permuted to
MinkowskiEngine's kernel-offset order on the fly, which is differentiable, so gradients come
back in the canonical layout too. MinkowskiEngine enumerates kernel offsets with x fastest
(``kernel_region_iterator`` in its ``src/kernel_region.hpp``); m2s enumerates x slowest.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType
from typing import Any

import torch

from m2s.errors import BackendUnavailable, ConfigError, DataError
from m2s.sparse.backend import SparseBackend
from m2s.sparse.tensor import OFFSETS_2, OFFSETS_3, SparseTensor, validate_input

_COLLECTIONS_ALIASES = ("Sequence", "Mapping", "MutableMapping", "Iterable", "Callable")


@functools.cache
def load() -> tuple[ModuleType | None, str]:
    """Import MinkowskiEngine once; returns (module or None, reason it is unusable)."""
    import collections
    import collections.abc

    # ME 0.5.4 does `from collections import Sequence`, removed in Python 3.10: alias the ABCs
    # for the duration of the import only, then restore the module as it was.
    added = [n for n in _COLLECTIONS_ALIASES if not hasattr(collections, n)]
    for n in added:
        setattr(collections, n, getattr(collections.abc, n))
    try:
        with warnings.catch_warnings():
            # ME warns on every import that a CPU_ONLY build lacks CUDA; that is expected here.
            warnings.filterwarnings("ignore", message=".*CPU_ONLY.*")
            me = importlib.import_module("MinkowskiEngine")
    except ImportError as exc:
        return None, f"cannot import MinkowskiEngine ({exc})"
    except Exception as exc:  # a broken build can fail in many ways at import time
        return None, f"MinkowskiEngine failed to import ({type(exc).__name__}: {exc})"
    finally:
        for n in added:
            delattr(collections, n)
    version = getattr(me, "__version__", "?")
    if not str(version).startswith("0.5."):
        return None, f"MinkowskiEngine {version} found, 0.5.x required"
    return me, ""


def availability() -> tuple[bool, str]:
    me, why = load()
    return me is not None, why


def _me_permutation(offsets: torch.Tensor, size: int) -> torch.Tensor:
    """perm[j] = canonical index of ME kernel index j (ME: x fastest; canonical: x slowest)."""
    lo = int(offsets.min())
    me_index = [(int(d[0]) - lo) + size * (int(d[1]) - lo) + size * size * (int(d[2]) - lo) for d in offsets]
    perm = torch.empty(len(me_index), dtype=torch.int64)
    perm[torch.tensor(me_index)] = torch.arange(len(me_index))
    return perm


PERM_3 = _me_permutation(OFFSETS_3, 3)
PERM_2 = _me_permutation(OFFSETS_2, 2)


class MinkowskiCoordinateManager:
    """Wraps one ME CoordinateManager (ME itself caches kernel maps per key pair in it)."""

    backend_name = "minkowski"

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def coordinates(self, key: Any) -> torch.Tensor:
        return self.manager.get_coordinates(key)


class MinkowskiBackend(SparseBackend):
    """Backend delegating to MinkowskiEngine's CPU (or CUDA, if built so) kernels."""

    name = "minkowski"

    def __init__(self) -> None:
        me, why = load()
        if me is None:
            raise BackendUnavailable(
                f"MinkowskiEngine is unusable: {why}. Install it with `make setup` "
                "(scripts/install_minkowski.sh) or use backend='torch'"
            )
        self.me = me
        self._kg3 = me.KernelGenerator(kernel_size=3, stride=1, dilation=1, dimension=3)
        self._kg2 = me.KernelGenerator(kernel_size=2, stride=2, dilation=1, dimension=3)
        self._mode = importlib.import_module("MinkowskiEngineBackend._C").ConvolutionMode.DEFAULT

    def prepare(self, x: SparseTensor) -> tuple[SparseTensor, torch.Tensor | None]:
        if x.stride != 1:
            raise DataError(f"network inputs must have stride 1, got stride {x.stride}")
        validate_input(x.coords, x.feats)
        if x.feats.is_cuda and not self.me.is_cuda_available():
            raise BackendUnavailable("MinkowskiEngine was built CPU-only but the input is on CUDA; use backend='torch'")
        coords = x.coords.to(torch.int32).contiguous()
        st = self.me.SparseTensor(features=x.feats, coordinates=coords)
        order: torch.Tensor | None = st.unique_index.long()
        assert order is not None
        if torch.equal(order, torch.arange(order.numel(), device=order.device)):
            order = None  # ME kept the input row order
        mgr = MinkowskiCoordinateManager(st.coordinate_manager)
        return SparseTensor(st.C, st.F, 1, manager=mgr, key=st.coordinate_map_key), order

    def _mgr(self, x: SparseTensor) -> MinkowskiCoordinateManager:
        self._check_same_manager(x)
        assert isinstance(x.manager, MinkowskiCoordinateManager)
        return x.manager

    def _weight(self, weight: torch.Tensor, perm: torch.Tensor, channels: int, feats: torch.Tensor) -> torch.Tensor:
        if weight.dim() != 3 or weight.shape[0] != perm.numel() or weight.shape[1] != channels:
            raise ConfigError(f"expected a ({perm.numel()}, {channels}, C_out) weight, got {tuple(weight.shape)}")
        if weight.dtype != feats.dtype:
            raise DataError(f"features are {feats.dtype} but weights are {weight.dtype}")
        return weight.index_select(0, perm.to(weight.device)).contiguous()

    def _key(self) -> Any:
        # An empty key: ME fills in the output coordinate set it creates (or reuses).
        return self.me.CoordinateMapKey(4)

    def subm_conv3(self, x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
        mgr = self._mgr(x)
        w = self._weight(weight, PERM_3, x.num_channels, x.feats)
        out_key = self._key()
        out = self.me.MinkowskiConvolutionFunction.apply(
            x.feats.contiguous(), w, self._kg3, self._mode, x.key, out_key, mgr.manager
        )
        return SparseTensor(None, out, x.stride, manager=mgr, key=out_key)

    def down_conv2(self, x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
        mgr = self._mgr(x)
        w = self._weight(weight, PERM_2, x.num_channels, x.feats)
        out_key = self._key()
        out = self.me.MinkowskiConvolutionFunction.apply(
            x.feats.contiguous(), w, self._kg2, self._mode, x.key, out_key, mgr.manager
        )
        return SparseTensor(None, out, 2 * x.stride, manager=mgr, key=out_key)

    def up_conv2(self, x: SparseTensor, weight: torch.Tensor, target: SparseTensor) -> SparseTensor:
        mgr = self._mgr(x)
        self._check_up_target(x, target)
        w = self._weight(weight, PERM_2, x.num_channels, x.feats)
        out = self.me.MinkowskiConvolutionTransposeFunction.apply(
            x.feats.contiguous(), w, self._kg2, self._mode, x.key, target.key, mgr.manager
        )
        return SparseTensor(target._coords, out, target.stride, manager=mgr, key=target.key)

    def build_kernel_maps(self, x: SparseTensor, num_levels: int) -> None:
        """Build the maps a U-Net with ``num_levels`` stages needs (for timing), by running
        1-channel convolutions: ME builds and caches its maps inside the manager on first use."""
        self._mgr(x)
        t = x.replace(x.feats.new_zeros((x.num_voxels, 1)))
        w3 = x.feats.new_zeros((27, 1, 1))
        w2 = x.feats.new_zeros((8, 1, 1))
        with torch.no_grad():
            for i in range(num_levels + 1):
                t = self.subm_conv3(t, w3)
                if i < num_levels:
                    t = self.down_conv2(t, w2)
