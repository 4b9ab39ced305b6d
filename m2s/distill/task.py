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
from typing import Any

import torch
from torch import nn

from m2s.distill.config import DistillConfig
from m2s.distill.correspondence import BatchCorrespondence
from m2s.distill.losses import (
    LocalGraphKD,
    build_feature_adapters,
    class_affinity_kd,
    feature_kd,
    hard_mask,
    instance_affinity_kd,
    logit_kd,
    voxel_weights,
)
from m2s.distill.teachers import Teacher, pick_teacher, run_net
from m2s.errors import ConfigError
from m2s.inference import LoadedModel, load_model_artifact
from m2s.labels import LabelManifest
from m2s.models import FEATURE_STRIDES, feature_channels
from m2s.train.config import TrainConfig
from m2s.train.dataset import Batch, ViewBatch
from m2s.train.losses import SegmentationLoss
from m2s.train.run import task_loss


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
    """Student network + adapters + the run's `Teacher`; `forward(batch, progress)` returns the
    total loss and its terms.

    `teacher` is a :class:`Teacher`, or (as before the seam) the loaded frozen artifact or None,
    from which :func:`pick_teacher` builds the one the distillation config asks for.
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
        excluded = set(self.kd.affinity_exclude_classes)
        self.affinity_classes = [c for c in labels.hard_train_ids if c not in excluded]
        s_ch = feature_channels(cfg.model)
        if not isinstance(teacher, Teacher):
            teacher = pick_teacher(self.kd, student, s_ch, loss, teacher)
        # A plain object, not a submodule: a frozen teacher is not saved with the student, not
        # optimised and not wrapped by DDP; the joint teacher is the student's own net.
        self.teacher: Teacher | None = teacher
        t_ch = teacher.channels() if teacher is not None else s_ch
        layers = list(self.kd.feature_layers) if self.kd.feature_weight > 0 else []
        self.feature_layers = layers
        self.adapters = build_feature_adapters(layers, s_ch, t_ch) if layers else nn.ModuleDict()
        self.graph: LocalGraphKD | None = None
        if self.kd.graph_weight > 0:
            if self.kd.graph_score == "density" and FEATURE_STRIDES[self.kd.graph_layer] != 1:
                raise ConfigError("graph_score 'density' needs a stride-1 graph_layer (stem, up4 or decoder)")
            self.graph = LocalGraphKD(
                s_ch[self.kd.graph_layer],
                t_ch[self.kd.graph_layer],
                hidden=self.kd.graph_hidden,
                num_queries=self.kd.graph_num_queries,
                k=self.kd.graph_k,
                score=self.kd.graph_score,
            )
        if self.kd.affinity_weight > 0 and self.kd.affinity_source == "features":
            if FEATURE_STRIDES[self.kd.affinity_layer] != 1:  # type: ignore[index]
                # its groups come from the input voxels' labels and instances, row for row
                raise ConfigError("affinity on features needs a stride-1 affinity_layer (stem, up4 or decoder)")
            if s_ch[self.kd.affinity_layer] != t_ch[self.kd.affinity_layer]:  # type: ignore[index]
                raise ConfigError("affinity on features needs equal student/teacher widths at affinity_layer")
        needed = set(layers)
        if self.graph is not None:
            needed.add(self.kd.graph_layer)
        if self.kd.affinity_weight > 0 and self.kd.affinity_source == "features":
            needed.add(self.kd.affinity_layer)  # type: ignore[arg-type]
        self.needed_features = sorted(needed)

    def train(self, mode: bool = True) -> "DistillModule":
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
        extra |= self._kd_terms(single, taught.view, s_logits, s_feats, taught.logits, taught.features, corr, progress)
        total = task_total + sum(extra.values(), torch.zeros((), device=task_total.device))
        return total, terms | {k: v.detach() for k, v in extra.items()}

    def _kd_terms(
        self,
        single: ViewBatch,
        t_view: ViewBatch,
        s_logits: torch.Tensor,
        s_feats: dict[str, Any],
        t_logits_all: torch.Tensor,
        t_feats: dict[str, Any],
        corr: BatchCorrespondence,
        progress: float,
    ) -> dict[str, torch.Tensor]:
        kd_terms: dict[str, torch.Tensor] = {}
        t_logits = t_logits_all[corr.input_rows]
        weights = self.kd.scaled_weights(progress)
        is_hard = hard_mask(single.voxel_labels, self.hard_ids.to(single.voxel_labels.device))
        w_hard = voxel_weights(is_hard, self.kd.hard_class_weight)

        if weights["logit"] > 0:
            w_logit = w_hard
            if self.kd.logit_voxels == "teacher_correct":
                # labels are train ids or IGNORE_INDEX, which no argmax equals
                w_logit = w_hard * (t_logits.argmax(dim=1) == single.voxel_labels)
            kd = logit_kd(
                s_logits, t_logits, self.kd.temperature, w_logit, self.kd.logit_min_term, self.kd.logit_reduction
            )
            kd_terms["kd_logit"] = weights["logit"] * kd
        if weights["feature"] > 0:
            fw = voxel_weights(is_hard, self.kd.feature_hard_weight, hard_only=self.kd.feature_hard_only)
            feat_terms = []
            for name in self.feature_layers:
                s_f, t_f = s_feats[name], t_feats[name]
                layer_w = fw if FEATURE_STRIDES[name] == 1 and s_f.feats.shape[0] == fw.shape[0] else None
                if layer_w is not None:
                    # stride-1 features may come in the backend's row order: realign weights.
                    layer_w = layer_w[corr.layer_input_rows(name)]
                t_rows = t_f.feats[corr.layer_rows(name)]
                feat_terms.append(feature_kd(s_f.feats, t_rows, layer_w, adapter=self.adapters[name]))
            kd_terms["kd_feature"] = weights["feature"] * torch.stack(feat_terms).mean()
        if weights["affinity"] > 0:
            kd_terms["kd_affinity"] = weights["affinity"] * self._affinity(single, s_logits, t_logits, s_feats, t_feats, corr)
        if weights["graph"] > 0 and self.graph is not None:
            layer = self.kd.graph_layer
            s_f, t_f = s_feats[layer], t_feats[layer]
            density = None
            if self.kd.graph_score == "density":
                density = t_view.voxel_count[corr.layer_fused_rows(layer)]
            s_rows_in_input = corr.layer_input_rows(layer)
            kd_terms["kd_graph"] = weights["graph"] * self.graph(
                s_f.feats,
                t_f.feats[corr.layer_rows(layer)],
                s_f.coords,
                density=density,
                student_logits=s_logits[s_rows_in_input],
                teacher_logits=t_logits[s_rows_in_input],
            )
        return kd_terms

    def _affinity(
        self,
        single: ViewBatch,
        s_logits: torch.Tensor,
        t_logits: torch.Tensor,
        s_feats: dict[str, Any],
        t_feats: dict[str, Any],
        corr: BatchCorrespondence,
    ) -> torch.Tensor:
        if self.kd.affinity_source == "logits":
            s_a, t_a, inst_rows = s_logits, t_logits, None
        else:
            layer = self.kd.affinity_layer
            assert layer is not None
            s_a = s_feats[layer].feats
            t_a = t_feats[layer].feats[corr.layer_rows(layer)]
            inst_rows = corr.layer_input_rows(layer)
        cls = single.voxel_labels if inst_rows is None else single.voxel_labels[inst_rows]
        coords = single.coords if inst_rows is None else single.coords[inst_rows]
        if self.kd.affinity_grouping == "class":
            return class_affinity_kd(
                s_a, t_a, cls, coords, self.affinity_classes,
                max_points=self.kd.affinity_max_points_per_class, loss=self.kd.affinity_loss,
            )  # fmt: skip
        inst = single.voxel_instance if inst_rows is None else single.voxel_instance[inst_rows]
        return instance_affinity_kd(
            s_a,
            t_a,
            inst,
            cls,
            coords,
            max_points=self.kd.affinity_max_points_per_instance,
            cross_instance=self.kd.affinity_cross_instance,
            loss=self.kd.affinity_loss,
            exclude_classes=self.kd.affinity_exclude_classes,
        )
