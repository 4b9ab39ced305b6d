"""The distillation training module: a single-scan student taught on the fused view.

Two modes (``distill.mode``):

* ``frozen``: a separately trained teacher artifact (eval mode, no gradients) sees the fused
  view (or, with ``teacher_view: single``, the student's own view: a control) and the student
  the single view;
* ``joint`` (the official M2SKD scheme): one network, shared weights, runs on both views every
  step (both in train mode, both with gradients); its fused-view outputs, detached, are the
  teacher of its single-view branch, and the fused branch also gets a cross-entropy on the
  voxels whose label fusion changed (weight ``fused_ce_weight``, 0.2 as in the official code).

Who teaches is a :class:`m2s.distill.teachers.Teacher`, chosen once per run. Both views are
voxelised on one absolute grid, so each student voxel is found among the teacher's voxels by
coordinate key at every scale (:class:`BatchCorrespondence`, built once per batch), and every
term is computed on the student's voxels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from m2s.distill.config import DistillConfig
from m2s.distill.correspondence import BatchCorrespondence
from m2s.distill.losses import hard_mask, voxel_weights
from m2s.distill.teachers import Teacher, pick_teacher, run_net
from m2s.distill.terms import TERMS, KDContext, KDTerm, TermSetup
from m2s.errors import ConfigError
from m2s.inference import LoadedModel, load_model_artifact
from m2s.labels import LabelManifest
from m2s.models import feature_channels
from m2s.train.config import TrainConfig
from m2s.train.dataset import Batch
from m2s.train.losses import SegmentationLoss
from m2s.train.task import task_loss


class StudentConfig(TrainConfig):
    """A student run: the training config plus the distillation terms (all 0 = baseline)."""

    distill: DistillConfig = DistillConfig()


def baseline_distill_config() -> DistillConfig:
    """Every distillation term off (kept for older callers: DistillConfig.baseline())."""
    return DistillConfig.baseline()


def load_teacher(path: str | Path, cfg: StudentConfig, labels: LabelManifest) -> LoadedModel:
    """Load the frozen teacher and refuse one that cannot teach this student."""
    teacher = load_model_artifact(path, backend=cfg.backend, device="cpu", checkpoint="best")
    if teacher.label_digest != labels.digest():
        raise ConfigError(
            f"teacher {path} was trained with a different label map (digest {teacher.label_digest[:12]}) "
            f"than this run ({labels.digest()[:12]})"
        )
    if teacher.voxel.model_dump() != cfg.voxel.model_dump():
        raise ConfigError(
            f"teacher {path} uses voxel config {teacher.voxel.model_dump()} but the student uses "
            f"{cfg.voxel.model_dump()}; distillation needs one voxel grid"
        )
    if teacher.model_cfg.num_classes != cfg.model.num_classes:
        raise ConfigError("teacher and student predict a different number of classes")
    return teacher


class DistillModule(nn.Module):
    """Student network + the run's distillation terms + its `Teacher`; `forward(batch,
    progress)` returns the total loss and its terms.

    `teacher` is a :class:`Teacher`, or (as before the seam) the loaded frozen artifact or None,
    from which :func:`pick_teacher` builds the one the distillation config asks for. The terms
    are the registered ones (:data:`m2s.distill.terms.TERMS`) whose weight is above 0.
    """

    def __init__(
        self,
        student: nn.Module,
        loss: SegmentationLoss,
        cfg: StudentConfig,
        labels: LabelManifest,
        teacher: Teacher | LoadedModel | None,
    ) -> None:
        super().__init__()
        self.net = student
        self.loss = loss
        self.kd = cfg.distill
        self.hard_ids = torch.as_tensor(labels.hard_train_ids)
        s_ch = feature_channels(cfg.model)
        if not isinstance(teacher, Teacher):
            teacher = pick_teacher(self.kd, student, s_ch, loss, teacher)
        # A plain object, not a submodule: a frozen teacher is not saved with the student, not
        # optimised and not wrapped by DDP; the joint teacher is the student's own net.
        self.teacher: Teacher | None = teacher
        setup = TermSetup(s_ch, teacher.channels() if teacher is not None else s_ch, labels)
        # Built in registration order (their parameters, initialisation and sum follow it).
        self.terms = nn.ModuleDict(
            {
                name: term_cls(self.kd.term(name), setup)
                for name, term_cls in TERMS.items()
                if self.kd.term(name).weight > 0
            }
        )
        self.needed_features = sorted(set().union(*(cast(KDTerm, t).features() for t in self.terms.values())))
        self.register_load_state_dict_pre_hook(_checkpoint_keys_before_terms)

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train_mode(mode)
        return self

    def forward(self, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        single = batch.views["single"]
        s_logits, s_feats = run_net(self.net, single, self.needed_features)
        task_total, terms = task_loss(self.loss, s_logits, single)
        if self.teacher is None:  # the baseline
            return task_total, terms
        taught = self.teacher(batch, self.needed_features)
        corr = BatchCorrespondence(
            single.coords, taught.view.coords,
            {k: v.coords for k, v in s_feats.items()}, {k: v.coords for k, v in taught.features.items()},
        )  # fmt: skip
        extra = self.teacher.own_losses(taught, corr, single)
        is_hard = hard_mask(single.voxel_labels, self.hard_ids.to(single.voxel_labels.device))
        ctx = KDContext(
            single=single,
            teacher_view=taught.view,
            s_logits=s_logits,
            s_feats=s_feats,
            t_logits=taught.logits[corr.input_rows],
            t_feats=taught.features,
            corr=corr,
            is_hard=is_hard,
            w_hard=voxel_weights(is_hard, self.kd.hard_class_weight),
        )
        weights = self.kd.scaled_weights(progress)
        for name, term in self.terms.items():
            if weights[name] > 0:
                extra[f"kd_{name}"] = weights[name] * term(ctx)
        total = task_total + sum(extra.values(), torch.zeros((), device=task_total.device))
        return total, terms | {k: v.detach() for k, v in extra.items()}


#: Parameter names of a checkpoint written before the terms were modules -> their names now.
_OLD_PREFIXES = {"adapters.": "terms.feature.adapters.", "graph.": "terms.graph.head."}


def _checkpoint_keys_before_terms(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Let `--resume` load a checkpoint written before the terms were modules (same tensors)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        for old, new in _OLD_PREFIXES.items():
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old) :]] = state_dict.pop(key)
                break
