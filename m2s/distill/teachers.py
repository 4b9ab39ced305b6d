"""Who teaches a student: the `Teacher` seam and its two implementations.

A teacher sees one view of the batch and returns its logits and named features for it,
detached (the targets of every distillation term), plus any loss of its own:

* :class:`FrozenTeacher` - a trained `model` artifact, frozen: eval mode (BN statistics stay),
  no gradients, not a submodule of the student (not saved with it, not in its optimizer, not
  wrapped by DDP); it sees the fused view (or, ``teacher_view: single``, the student's own
  view: the self-distillation control).
* :class:`JointTeacher` - the official M2SKD scheme: the student network itself on the fused
  view, in train mode and with gradients; its detached outputs teach the single-view branch,
  and the fused branch learns from a cross-entropy on the voxels whose label fusion changed.

:func:`pick_teacher` chooses one from the distillation config, once per run; which
combinations of mode and teacher artifact are allowed is decided by
:class:`m2s.distill.config.TeacherChoice` before anything is built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from m2s.distill.config import DistillConfig
from m2s.distill.correspondence import BatchCorrespondence
from m2s.errors import ConfigError
from m2s.inference import LoadedModel, view_to_sparse
from m2s.labels import IGNORE_INDEX
from m2s.models import feature_channels
from m2s.train.dataset import Batch, ViewBatch
from m2s.train.losses import SegmentationLoss


def run_net(net: nn.Module, view: ViewBatch, features: Sequence[str]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Logits of `net` on `view`, plus the named feature maps when any are asked for."""
    x = view_to_sparse(view)
    if features:
        return net(x, return_features=list(features))
    return net(x), {}


@dataclass
class TeacherOutput:
    """What a teacher hands the distillation terms for one batch."""

    view: ViewBatch  # the view it saw (its voxels are the rows of logits)
    logits: torch.Tensor  # (V_t, K), detached
    features: dict[str, Any] = field(default_factory=dict)  # name -> SparseTensor, detached
    branch_logits: torch.Tensor | None = None  # joint: the fused branch's logits, with gradients


class Teacher(ABC):
    """The seam: one view of the batch in, logits and features for it out."""

    @abstractmethod
    def channels(self) -> dict[str, int]:
        """Width of each named feature map (the adapters are built from these)."""

    @abstractmethod
    def __call__(self, batch: Batch, features: Sequence[str]) -> TeacherOutput:
        """Run on the teacher's view of `batch`, returning detached targets."""

    def own_losses(self, out: TeacherOutput, corr: BatchCorrespondence, single: ViewBatch) -> dict[str, torch.Tensor]:
        """Loss terms the teacher itself trains with (joint mode's fused-branch CE); none by default."""
        return {}

    def train_mode(self, mode: bool) -> None:  # noqa: B027 - an optional hook: a no-op unless overridden
        """Called whenever the student module switches between train and eval mode."""


class FrozenTeacher(Teacher):
    """A trained teacher artifact, frozen, on the fused (or, as a control, the single) view."""

    def __init__(self, loaded: LoadedModel, view: str = "fused") -> None:
        self.loaded = loaded
        self.view = view
        self.net = loaded.net.eval()
        self.net.requires_grad_(False)

    def channels(self) -> dict[str, int]:
        return feature_channels(self.loaded.model_cfg)

    def __call__(self, batch: Batch, features: Sequence[str]) -> TeacherOutput:
        view = batch.views[self.view]
        if next(self.net.parameters()).device != view.coords.device:
            self.net.to(view.coords.device)
        with torch.no_grad():
            logits, feats = run_net(self.net, view, features)
        return TeacherOutput(view=view, logits=logits, features=feats)

    def train_mode(self, mode: bool) -> None:
        self.net.eval()  # BN running statistics of the teacher stay frozen


class JointTeacher(Teacher):
    """The student's own network on the fused view (shared weights, train mode, gradients)."""

    def __init__(
        self, student: nn.Module, channels: dict[str, int], loss: SegmentationLoss, fused_ce_weight: float
    ) -> None:
        self.student = student  # a reference, not a submodule: the student module owns the net
        self._channels = channels
        self.loss = loss
        self.fused_ce_weight = fused_ce_weight

    def channels(self) -> dict[str, int]:
        return self._channels

    def __call__(self, batch: Batch, features: Sequence[str]) -> TeacherOutput:
        view = batch.views["fused"]
        # Same weights, train mode, with gradients: the fused branch learns from its own CE; it
        # teaches the single branch only through detached outputs.
        logits, feats = run_net(self.student, view, features)
        detached = {k: v.replace(v.feats.detach()) for k, v in feats.items()}
        return TeacherOutput(view=view, logits=logits.detach(), features=detached, branch_logits=logits)

    def own_losses(self, out: TeacherOutput, corr: BatchCorrespondence, single: ViewBatch) -> dict[str, torch.Tensor]:
        if self.fused_ce_weight <= 0:
            return {}
        assert out.branch_logits is not None
        return {"ce_fused": self.fused_ce_weight * self.fused_ce(out.branch_logits, corr, single, out.view)}

    def fused_ce(
        self, f_logits: torch.Tensor, corr: BatchCorrespondence, single: ViewBatch, fused: ViewBatch
    ) -> torch.Tensor:
        """Class-weighted cross-entropy of the fused branch on the voxels whose label fusion
        changed: absent from the single view, or with another majority label there."""
        rows, found = corr.fused_in_single
        changed = ~found | (single.voxel_labels[rows] != fused.voxel_labels)
        target = torch.where(changed, fused.voxel_labels, torch.full_like(fused.voxel_labels, IGNORE_INDEX))
        if not bool((target != IGNORE_INDEX).any()):
            return f_logits.sum() * 0.0
        weight = self.loss.class_weights if self.loss.class_weights.numel() else None
        return F.cross_entropy(f_logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX)


def pick_teacher(
    kd: DistillConfig,
    student: nn.Module,
    student_channels: dict[str, int],
    loss: SegmentationLoss,
    loaded: LoadedModel | None,
) -> Teacher | None:
    """The teacher a run with distillation config `kd` trains with: none for the baseline, the
    student's own fused branch in joint mode, else the frozen artifact `loaded`."""
    if kd.is_baseline:
        return None
    if kd.mode == "joint":
        return JointTeacher(student, student_channels, loss, kd.fused_ce_weight)
    if loaded is None:  # TeacherChoice refuses this before a run starts; a direct caller gets this
        raise ConfigError("frozen-teacher distillation needs a loaded teacher artifact")
    return FrozenTeacher(loaded, kd.teacher_view)
