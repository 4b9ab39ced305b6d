"""The supervised task: the network plus the segmentation loss on one view, and its class weights.

`SupervisedModule` is what `m2s train-teacher` trains (on the fused view); `task_loss` is the
task part of every training module, the distillation student's included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from m2s.errors import ConfigError
from m2s.fuse import FusedCache
from m2s.inference import view_to_sparse
from m2s.train.config import TrainConfig
from m2s.train.dataset import Batch, ScanDataset, ViewName
from m2s.train.losses import SegmentationLoss, frequency_class_weights


class SupervisedModule(torch.nn.Module):
    """The network plus the task loss on one view (`fused` for the teacher)."""

    def __init__(self, net: torch.nn.Module, loss: SegmentationLoss, view: ViewName) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.view = view

    def forward(self, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        v = batch.views[self.view]
        logits = self.net(view_to_sparse(v))
        return task_loss(self.loss, logits, v)


def task_loss(
    loss: SegmentationLoss, voxel_logits: torch.Tensor, view: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if loss.cfg.level != "points":
        return loss(voxel_logits, view.voxel_labels)
    if loss.cfg.appended == "own":
        # The scan's own points carry the task loss; the appended ones only a weighted CE
        # (none in a single view or a block fusion added nothing to: then that term is 0).
        own = torch.nonzero(view.point_own).squeeze(1)
        appended = torch.nonzero(~view.point_own).squeeze(1)
        total, terms = loss(
            voxel_logits.index_select(0, view.point_to_voxel.index_select(0, own)), view.point_labels[own]
        )
        extra = loss.cross_entropy(
            voxel_logits.index_select(0, view.point_to_voxel.index_select(0, appended)), view.point_labels[appended]
        )
        terms["ce_appended"] = (loss.cfg.appended_ce_weight * extra).detach()
        return total + loss.cfg.appended_ce_weight * extra, terms
    # index_select, not `logits[idx]`: its backward (index_add_) is deterministic on CPU,
    # while advanced indexing accumulates duplicate indices in a thread-dependent order.
    return loss(voxel_logits.index_select(0, view.point_to_voxel), view.point_labels)


def class_weights_for(cfg: TrainConfig, ds: ScanDataset, view: ViewName) -> tuple[np.ndarray | None, list[int] | None]:
    spec = cfg.loss.class_weights
    if spec == "none":
        return None, None
    if isinstance(spec, list):
        if len(spec) != ds.labels.num_classes:
            raise ConfigError(f"loss.class_weights has {len(spec)} values; expected {ds.labels.num_classes}")
        return np.asarray(spec, dtype=np.float32), None
    counts = ds.class_frequencies(view, cfg.loss.frequency_scans)
    return frequency_class_weights(counts, cfg.loss.max_class_weight), counts.tolist()


def teacher_module(net: torch.nn.Module, loss: SegmentationLoss, caches: list[FusedCache]) -> torch.nn.Module:
    return SupervisedModule(net, loss, "fused")
