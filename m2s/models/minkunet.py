"""MinkUNet (Choy et al. 2019) in the compact SPVNAS/torchsparse form.

stem (two 3x3x3 convs) -> 4 x [stride-2 conv + residual blocks] -> 4 x [transposed conv +
skip concat + residual blocks] -> linear classifier. Sizes 14/18/34 differ in the number of
residual blocks per stage; ``width`` scales every channel count (compressed students).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from m2s.errors import ConfigError
from m2s.sparse.backend import SparseBackend, get_backend
from m2s.sparse.nn import (
    BackendModule,
    DownConv3d,
    PointwiseLinear,
    SparseBatchNorm,
    SparseReLU,
    SubMConv3d,
    UpConv3d,
    sparse_add,
    sparse_cat,
)
from m2s.sparse.tensor import SparseTensor

BASE_CHANNELS = (32, 32, 64, 128, 256, 256, 128, 96, 96)
BLOCKS: dict[int, tuple[int, ...]] = {
    14: (1, 1, 1, 1, 1, 1, 1, 1),
    18: (2, 2, 2, 2, 2, 2, 2, 2),
    34: (2, 3, 4, 6, 2, 2, 2, 2),
}
#: Named intermediate features, in network order; ``decoder`` is the input of the classifier.
FEATURE_NAMES = ("stem", "down1", "down2", "down3", "down4", "up1", "up2", "up3", "up4", "decoder")
FEATURE_STRIDES = {
    "stem": 1, "down1": 2, "down2": 4, "down3": 8, "down4": 16,
    "up1": 8, "up2": 4, "up3": 2, "up4": 1, "decoder": 1,
}  # fmt: skip


class ModelConfig(BaseModel):
    """Backbone configuration (what a checkpoint needs to be rebuilt)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["minkunet"] = "minkunet"
    size: Literal[14, 18, 34] = 18
    width: float = Field(default=1.0, gt=0.0, le=4.0)
    in_channels: int = Field(default=4, ge=1)
    num_classes: int = Field(default=20, ge=1)


def channel_plan(cfg: ModelConfig) -> list[int]:
    """The nine channel counts (stem, down1..4, up1..4) for a config."""
    return [max(1, int(round(c * cfg.width))) for c in BASE_CHANNELS]


def feature_channels(cfg: ModelConfig) -> dict[str, int]:
    """Channel count of every named feature (for building distillation adapters)."""
    cs = channel_plan(cfg)
    out = {"stem": cs[0]}
    out.update({f"down{i}": cs[i] for i in range(1, 5)})
    out.update({f"up{i}": cs[4 + i] for i in range(1, 5)})
    out["decoder"] = cs[8]
    return out


class _ConvBNReLU(nn.Module):
    def __init__(self, conv: nn.Module, channels: int) -> None:
        super().__init__()
        self.conv = conv
        self.bn = SparseBatchNorm(channels)
        self.relu = SparseReLU()

    def forward(self, x: SparseTensor, target: SparseTensor | None = None) -> SparseTensor:
        y = self.conv(x) if target is None else self.conv(x, target)
        return self.relu(self.bn(y))


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut (1x1 projection when channels change), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, backend: SparseBackend) -> None:
        super().__init__()
        self.conv1 = SubMConv3d(in_channels, out_channels, backend)
        self.bn1 = SparseBatchNorm(out_channels)
        self.conv2 = SubMConv3d(out_channels, out_channels, backend)
        self.bn2 = SparseBatchNorm(out_channels)
        self.relu = SparseReLU()
        self.shortcut: nn.Sequential | None = None
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                PointwiseLinear(in_channels, out_channels, bias=False), SparseBatchNorm(out_channels)
            )

    def forward(self, x: SparseTensor) -> SparseTensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(sparse_add(y, skip))


def _res_stack(in_channels: int, out_channels: int, n: int, backend: SparseBackend) -> nn.Sequential:
    blocks = [ResidualBlock(in_channels, out_channels, backend)]
    blocks += [ResidualBlock(out_channels, out_channels, backend) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class _DownStage(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, backend: SparseBackend) -> None:
        super().__init__()
        self.down = _ConvBNReLU(DownConv3d(cin, cin, backend), cin)
        self.blocks = _res_stack(cin, cout, n, backend)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.blocks(self.down(x))


class _UpStage(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, n: int, backend: SparseBackend) -> None:
        super().__init__()
        self.up = _ConvBNReLU(UpConv3d(cin, cout, backend), cout)
        self.blocks = _res_stack(cout + cskip, cout, n, backend)

    def forward(self, x: SparseTensor, skip: SparseTensor) -> SparseTensor:
        return self.blocks(sparse_cat(self.up(x, skip), skip))


class MinkUNet(nn.Module):
    """MinkUNet14/18/34. ``forward(x)`` returns (V, num_classes) logits in ``x``'s row order."""

    def __init__(self, cfg: ModelConfig, backend: SparseBackend) -> None:
        super().__init__()
        self.cfg = cfg
        self._backend = backend
        cs = channel_plan(cfg)
        nb = BLOCKS[cfg.size]
        self.stem = nn.Sequential(
            _ConvBNReLU(SubMConv3d(cfg.in_channels, cs[0], backend), cs[0]),
            _ConvBNReLU(SubMConv3d(cs[0], cs[0], backend), cs[0]),
        )
        self.down1 = _DownStage(cs[0], cs[1], nb[0], backend)
        self.down2 = _DownStage(cs[1], cs[2], nb[1], backend)
        self.down3 = _DownStage(cs[2], cs[3], nb[2], backend)
        self.down4 = _DownStage(cs[3], cs[4], nb[3], backend)
        self.up1 = _UpStage(cs[4], cs[3], cs[5], nb[4], backend)
        self.up2 = _UpStage(cs[5], cs[2], cs[6], nb[5], backend)
        self.up3 = _UpStage(cs[6], cs[1], cs[7], nb[6], backend)
        self.up4 = _UpStage(cs[7], cs[0], cs[8], nb[7], backend)
        self.classifier = nn.Linear(cs[8], cfg.num_classes)

    @property
    def backend(self) -> SparseBackend:
        return self._backend

    @property
    def backend_name(self) -> str:
        """Name of the sparse backend this model runs on (``torch``, ``minkowski`` or ``spconv``)."""
        return self._backend.name

    def set_backend(self, backend: str | SparseBackend) -> None:
        """Run this model (same weights) on another backend."""
        be = get_backend(backend)
        self._backend = be
        for m in self.modules():
            if isinstance(m, BackendModule):
                m.set_backend(be)

    def forward(
        self, x: SparseTensor, return_features: bool | Sequence[str] = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, SparseTensor]]:
        """Logits per voxel; with ``return_features`` (True = all of :data:`FEATURE_NAMES`, or
        a list of names) also a dict of named features, each a SparseTensor with coordinates
        and stride."""
        wanted = _wanted_features(return_features)
        if x.feats.dim() != 2 or x.feats.shape[1] != self.cfg.in_channels:
            raise ConfigError(
                f"model expects {self.cfg.in_channels} input channels, got features of shape {tuple(x.feats.shape)}"
            )
        h, order = self._backend.prepare(x)
        s0 = self.stem(h)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        s3 = self.down3(s2)
        s4 = self.down4(s3)
        u1 = self.up1(s4, s3)
        u2 = self.up2(u1, s2)
        u3 = self.up3(u2, s1)
        u4 = self.up4(u3, s0)
        logits = self.classifier(u4.feats)
        if order is not None:
            # Back to the caller's row order (the backend reordered the input rows).
            logits = logits.index_select(0, torch.argsort(order))
        if not wanted:
            return logits
        named = {
            "stem": s0, "down1": s1, "down2": s2, "down3": s3, "down4": s4,
            "up1": u1, "up2": u2, "up3": u3, "up4": u4, "decoder": u4,
        }  # fmt: skip
        return logits, {n: named[n] for n in wanted}


def _wanted_features(spec: bool | Sequence[str]) -> list[str]:
    if spec is True:
        return list(FEATURE_NAMES)
    if spec is False or spec is None:
        return []
    if isinstance(spec, str):
        spec = [spec]
    names = list(spec)
    unknown = [n for n in names if n not in FEATURE_NAMES]
    if unknown:
        raise ConfigError(f"unknown feature name(s) {unknown}; available: {', '.join(FEATURE_NAMES)}")
    return names


def build_model(cfg: ModelConfig, backend: str | SparseBackend = "auto") -> MinkUNet:
    """Build the backbone described by ``cfg`` on the given sparse backend."""
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"build_model needs a ModelConfig, got {type(cfg).__name__}")
    return MinkUNet(cfg, get_backend(backend))
