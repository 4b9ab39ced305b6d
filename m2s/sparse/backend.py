"""The sparse-convolution interface the models are written against, and backend selection."""

from __future__ import annotations

import abc

import torch

from m2s.errors import BackendUnavailable, ConfigError
from m2s.sparse.tensor import SparseTensor

BACKEND_NAMES = ("auto", "torch", "minkowski", "spconv")


class SparseBackend(abc.ABC):
    """Sparse 3D convolutions on :class:`SparseTensor`.

    Weights use ONE layout for every backend, so a state_dict moves freely between them:
    ``(K, C_in, C_out)`` with kernel offsets in the canonical order of
    :data:`m2s.sparse.tensor.OFFSETS_3` (K=27) or :data:`~m2s.sparse.tensor.OFFSETS_2` (K=8).
    Convolutions are cross-correlations: ``out(u) = sum_d W[d] x(u + d * stride)``.
    """

    name: str

    @abc.abstractmethod
    def prepare(self, x: SparseTensor) -> tuple[SparseTensor, torch.Tensor | None]:
        """Validate a stride-1 input and attach a fresh coordinate manager.

        Returns the tensor to feed the network and ``order``: None when rows keep the input
        order, else int64 indices with ``prepared.feats == x.feats[order]``.
        """

    @abc.abstractmethod
    def subm_conv3(self, x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
        """Submanifold 3x3x3 convolution (output on the input coordinates); weight (27, Ci, Co)."""

    @abc.abstractmethod
    def down_conv2(self, x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
        """2x2x2 convolution with stride 2 onto the coarser grid; weight (8, Ci, Co)."""

    @abc.abstractmethod
    def up_conv2(self, x: SparseTensor, weight: torch.Tensor, target: SparseTensor) -> SparseTensor:
        """Transposed 2x2x2 stride-2 convolution onto ``target``'s (finer) coordinates."""

    def _check_same_manager(self, x: SparseTensor) -> None:
        if x.manager is None or x.manager.backend_name != self.name:
            raise ConfigError(
                f"sparse tensor belongs to backend {x.backend_name!r}, not {self.name!r}; "
                "pass it through backend.prepare() (or the model) first"
            )

    def _check_up_target(self, x: SparseTensor, target: SparseTensor) -> None:
        """A transposed convolution lands on the coordinates of the same forward, one level finer."""
        if target.manager is not x.manager or 2 * target.stride != x.stride:
            raise ConfigError(
                f"transposed convolution from stride {x.stride} needs a target of stride "
                f"{x.stride // 2} from the same forward pass (got stride {target.stride})"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def minkowski_status() -> tuple[bool, str]:
    """Whether MinkowskiEngine can be used here, and why not."""
    from m2s.sparse import minkowski_backend

    return minkowski_backend.availability()


def spconv_status() -> tuple[bool, str]:
    """Whether spconv 2.x can be used here, and why not."""
    from m2s.sparse import spconv_backend

    return spconv_backend.availability()


def available_backends() -> list[str]:
    """Concrete backend names usable in this environment."""
    names = ["torch"]
    if minkowski_status()[0]:
        names.append("minkowski")
    if spconv_status()[0]:
        names.append("spconv")
    return names


def _minkowski_has_cuda() -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    from m2s.sparse import minkowski_backend

    me, _ = minkowski_backend.load()
    return bool(me is not None and getattr(me, "is_cuda_available", lambda: False)())


def _spconv_has_cuda() -> bool:
    if not torch.cuda.is_available() or not spconv_status()[0]:
        return False
    from m2s.sparse import spconv_backend

    return spconv_backend.has_cuda()


def resolve_auto() -> str:
    """The backend ``auto`` stands for here.

    On a machine with a GPU: spconv when a CUDA build of it is installed (fused CUDA
    gather-GEMM-scatter kernels, where the torch backend launches a loop of per-offset ops; the
    GPU speed of either has not been measured here yet), else a CUDA build of MinkowskiEngine,
    else the pure-PyTorch backend (runs on CUDA without compilation). Without a GPU: the pure-PyTorch backend,
    which `benchmarks/bench_backbone.py` measures fastest or on par on CPU and which needs
    nothing installed (pick ``spconv`` or ``minkowski`` explicitly to use them on CPU)."""
    if _spconv_has_cuda():
        return "spconv"
    if minkowski_status()[0] and _minkowski_has_cuda():
        return "minkowski"
    return "torch"


def get_backend(name: str | SparseBackend = "auto") -> SparseBackend:
    """Backend by name: ``"torch"``, ``"minkowski"``, ``"spconv"`` or ``"auto"``
    (see :func:`resolve_auto`). Passing a backend instance returns it unchanged; asking for
    a backend that is not installed raises :class:`BackendUnavailable` (never a silent
    fallback to another backend)."""
    if isinstance(name, SparseBackend):
        return name
    if name not in BACKEND_NAMES:
        raise ConfigError(f"unknown sparse backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        name = resolve_auto()
    if name == "torch":
        from m2s.sparse.torch_backend import TorchBackend

        return TorchBackend()
    if name == "spconv":
        ok, why = spconv_status()
        if not ok:
            raise BackendUnavailable(
                f"sparse backend 'spconv' requested but spconv is unusable: {why}. Install it with "
                "`make setup` (CPU wheel; `make setup SPCONV=spconv-cu121` for a CUDA build) or "
                "`pip install spconv==2.3.8`, or use backend='torch'"
            )
        from m2s.sparse.spconv_backend import SpconvBackend

        return SpconvBackend()
    ok, why = minkowski_status()
    if not ok:
        raise BackendUnavailable(
            f"sparse backend 'minkowski' requested but MinkowskiEngine is unusable: {why}. "
            "Install it with `make setup` (runs scripts/install_minkowski.sh) or use backend='torch'"
        )
    from m2s.sparse.minkowski_backend import MinkowskiBackend

    return MinkowskiBackend()
