"""nn.Modules over :class:`SparseTensor`, written once against :class:`SparseBackend`.

Modules hold their backend as a plain attribute (not state), so a state_dict is identical
whichever backend built the model and loads into a model built on another backend.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from m2s.errors import ConfigError
from m2s.sparse.backend import SparseBackend
from m2s.sparse.tensor import SparseTensor, same_coordinates


def _init_kernel(weight: torch.Tensor, fan_in: int) -> None:
    # Uniform +-1/sqrt(fan_in) over the whole kernel, as torchsparse/SPVNAS initialise.
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class BackendModule(nn.Module):
    """A module whose computation is delegated to a (swappable) sparse backend."""

    def __init__(self, backend: SparseBackend) -> None:
        super().__init__()
        self.backend = backend

    def set_backend(self, backend: SparseBackend) -> None:
        self.backend = backend

    def extra_repr(self) -> str:
        return f"backend={self.backend.name}"


class SubMConv3d(BackendModule):
    """Submanifold 3x3x3 convolution, no bias (followed by batch-norm in MinkUNet)."""

    def __init__(self, in_channels: int, out_channels: int, backend: SparseBackend) -> None:
        super().__init__(backend)
        self.weight = nn.Parameter(torch.empty(27, in_channels, out_channels))
        _init_kernel(self.weight, 27 * in_channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.backend.subm_conv3(x, self.weight)


class DownConv3d(BackendModule):
    """2x2x2 convolution with stride 2 (halves the resolution), no bias."""

    def __init__(self, in_channels: int, out_channels: int, backend: SparseBackend) -> None:
        super().__init__(backend)
        self.weight = nn.Parameter(torch.empty(8, in_channels, out_channels))
        _init_kernel(self.weight, 8 * in_channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.backend.down_conv2(x, self.weight)


class UpConv3d(BackendModule):
    """Transposed 2x2x2 stride-2 convolution onto the coordinates of a finer tensor, no bias."""

    def __init__(self, in_channels: int, out_channels: int, backend: SparseBackend) -> None:
        super().__init__(backend)
        self.weight = nn.Parameter(torch.empty(8, in_channels, out_channels))
        _init_kernel(self.weight, 8 * in_channels)

    def forward(self, x: SparseTensor, target: SparseTensor) -> SparseTensor:
        return self.backend.up_conv2(x, self.weight, target)


class PointwiseLinear(nn.Linear):
    """1x1x1 convolution = a linear map of the features (identical on every backend)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]  # subclassed to keep state_dict keys
        return x.replace(super().forward(x.feats))


class SparseBatchNorm(nn.BatchNorm1d):
    """Batch-norm over all voxels of the batch."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]  # subclassed to keep state_dict keys
        return x.replace(super().forward(x.feats))


class SparseReLU(nn.Module):
    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(torch.relu_(x.feats) if self.inplace else torch.relu(x.feats))


def sparse_cat(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Concatenate the channels of two tensors on the same coordinates (skip connections)."""
    if not same_coordinates(a, b):
        raise ConfigError(
            f"cannot concatenate sparse tensors on different coordinates (strides {a.stride}, {b.stride})"
        )
    return a.replace(torch.cat([a.feats, b.feats], dim=1))


def sparse_add(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Element-wise sum of two tensors on the same coordinates (residual connections)."""
    if not same_coordinates(a, b):
        raise ConfigError("cannot add sparse tensors on different coordinates")
    return a.replace(a.feats + b.feats)
