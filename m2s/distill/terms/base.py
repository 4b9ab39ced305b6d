"""What every distillation term shares: its config's base, the batch context, the module base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from m2s.distill.correspondence import BatchCorrespondence
from m2s.labels import LabelManifest
from m2s.train.dataset import ViewBatch


class TermConfig(BaseModel):
    """A term's sub-config (`distill.<name>:`); a weight of 0 turns the term off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(0.0, ge=0.0)


@dataclass(frozen=True)
class TermSetup:
    """What a term may need to build itself."""

    student_channels: dict[str, int]
    teacher_channels: dict[str, int]
    labels: LabelManifest


@dataclass
class KDContext:
    """One batch as every term sees it: the student's outputs on its single view, the teacher's
    (logits already on the student's voxels), the voxel maps between the two, the hard mask."""

    single: ViewBatch
    teacher_view: ViewBatch
    s_logits: torch.Tensor  # (V, K) student logits, one row per single-view voxel
    s_feats: dict[str, Any]  # name -> SparseTensor
    t_logits: torch.Tensor  # (V, K) teacher logits of the same voxels (detached)
    t_feats: dict[str, Any]  # name -> SparseTensor (detached), the teacher's own rows
    corr: BatchCorrespondence
    is_hard: torch.Tensor  # (V,) bool: single-view voxel of a hard class
    w_hard: torch.Tensor  # (V,) per-voxel weight from distill.hard_class_weight


class KDTerm(nn.Module):
    """One distillation term: built from its sub-config, it names the feature maps it needs and
    returns its unweighted loss for a batch (the module applies the weight and warm-up)."""

    name: ClassVar[str]
    Config: ClassVar[type[TermConfig]]

    def features(self) -> set[str]:
        """Feature maps the student and teacher must return for this term."""
        return set()

    def forward(self, ctx: KDContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
