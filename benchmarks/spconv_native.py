"""spconv's own MinkUNet: the reference of the GPU check's speed target.

The network of m2s/models/minkunet.py (same stages, residual blocks, channels, hence the same
parameter count) written directly in ``spconv.pytorch`` modules with spconv's default algorithm
(implicit GEMM on CUDA): what "spconv's own" speed means in the 1.5x target of `make gpu-check`
(docs/gpu.md). It takes the m2s SparseTensor a MinkUNet takes, so both time the same input.
"""

from __future__ import annotations

from typing import Any


def spconv_native_minkunet(size: int, width: float, in_channels: int = 4, num_classes: int = 20) -> Any:
    """The MinkUNet of m2s/models/minkunet.py (same stages, blocks and channels) written directly
    in spconv.pytorch modules with spconv's default algorithm: the "spconv's own" reference the
    issue's 1.5x target is measured against. Input: the same SparseTensor, shifted to
    non-negative indices inside the module (part of the timed forward)."""
    import spconv.pytorch as sps
    import torch
    from torch import nn

    from m2s.models.minkunet import BLOCKS, ModelConfig, channel_plan

    cs = channel_plan(ModelConfig(size=size, width=width, in_channels=in_channels, num_classes=num_classes))
    nb = BLOCKS[size]

    def bn_relu(x: Any, bn: nn.Module) -> Any:
        return x.replace_feature(torch.relu(bn(x.features)))

    class Res(nn.Module):
        def __init__(self, cin: int, cout: int, key: str) -> None:
            super().__init__()
            self.c1 = sps.SubMConv3d(cin, cout, 3, bias=False, indice_key=key)
            self.b1 = nn.BatchNorm1d(cout)
            self.c2 = sps.SubMConv3d(cout, cout, 3, bias=False, indice_key=key)
            self.b2 = nn.BatchNorm1d(cout)
            self.proj = None if cin == cout else nn.Sequential(nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout))

        def forward(self, x: Any) -> Any:
            y = self.c2(bn_relu(self.c1(x), self.b1))
            skip = x.features if self.proj is None else self.proj(x.features)
            return y.replace_feature(torch.relu(self.b2(y.features) + skip))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.ModuleList(
                [
                    sps.SubMConv3d(in_channels, cs[0], 3, bias=False, indice_key="s1"),
                    sps.SubMConv3d(cs[0], cs[0], 3, bias=False, indice_key="s1"),
                ]
            )
            self.stem_bn = nn.ModuleList([nn.BatchNorm1d(cs[0]), nn.BatchNorm1d(cs[0])])
            self.down, self.down_bn, self.down_blocks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for i in range(4):
                cin, cout, stride = cs[i], cs[i + 1], 2 ** (i + 1)
                self.down.append(sps.SparseConv3d(cin, cin, 2, stride=2, bias=False, indice_key=f"d{stride}"))
                self.down_bn.append(nn.BatchNorm1d(cin))
                self.down_blocks.append(
                    nn.Sequential(*[Res(cin if j == 0 else cout, cout, f"s{stride}") for j in range(nb[i])])
                )
            self.up, self.up_bn, self.up_blocks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for i in range(4):
                cin, cskip, cout, stride = cs[4 + i], cs[3 - i], cs[5 + i], 2 ** (4 - i)
                self.up.append(sps.SparseInverseConv3d(cin, cout, 2, indice_key=f"d{stride}", bias=False))
                self.up_bn.append(nn.BatchNorm1d(cout))
                self.up_blocks.append(
                    nn.Sequential(
                        *[Res(cout + cskip if j == 0 else cout, cout, f"s{stride // 2}") for j in range(nb[4 + i])]
                    )
                )
            self.classifier = nn.Linear(cs[8], num_classes)

        def forward(self, x: Any) -> Any:
            c = x.coords
            xyz = c[:, 1:] - c[:, 1:].min(0).values
            shape = (((xyz.max(0).values + 1 + 15) // 16) * 16).tolist()
            idx = torch.cat([c[:, :1], xyz], 1).int().contiguous()
            h = sps.SparseConvTensor(x.feats, idx, shape, int(c[:, 0].max()) + 1)
            for conv, bn in zip(self.stem, self.stem_bn, strict=True):
                h = bn_relu(conv(h), bn)
            skips = [h]
            for conv, bn, blocks in zip(self.down, self.down_bn, self.down_blocks, strict=True):
                h = blocks(bn_relu(conv(h), bn))
                skips.append(h)
            for i, (conv, bn, blocks) in enumerate(zip(self.up, self.up_bn, self.up_blocks, strict=True)):
                up = bn_relu(conv(h), bn)  # lands on the skip's indices, in the skip's row order
                h = blocks(up.replace_feature(torch.cat([up.features, skips[3 - i].features], 1)))
            return self.classifier(h.features)

    return Net()
