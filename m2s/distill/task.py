"""The distillation training module: a single-scan student taught by a frozen multi-scan teacher.

For each batch the teacher (eval mode, no gradients) sees the fused view and the student the
single view. Both are voxelised on one absolute grid, so each student voxel is looked up among
the teacher's voxels by coordinate key at every scale (`match_voxels`), and every term is
computed on the student's voxels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from m2s.distill.config import DistillConfig
from m2s.distill.correspondence import match_voxels
from m2s.distill.losses import (
    LocalGraphKD,
    build_feature_adapters,
    feature_kd,
    hard_mask,
    instance_affinity_kd,
    logit_kd,
    voxel_weights,
)
from m2s.errors import ConfigError
from m2s.inference import LoadedModel, load_model_artifact, view_to_sparse
from m2s.labels import LabelManifest
from m2s.models import FEATURE_STRIDES, feature_channels
from m2s.train.config import TrainConfig
from m2s.train.dataset import Batch
from m2s.train.losses import SegmentationLoss
from m2s.train.run import task_loss


class StudentConfig(TrainConfig):
    """A student run: the training config plus the distillation terms (all 0 = baseline)."""

    distill: DistillConfig = DistillConfig()


def baseline_distill_config() -> DistillConfig:
    return DistillConfig(logit_weight=0.0, feature_weight=0.0, affinity_weight=0.0, graph_weight=0.0)


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
    """Student network + adapters; `forward(batch, progress)` returns the total loss and terms."""

    def __init__(
        self,
        student: nn.Module,
        loss: SegmentationLoss,
        cfg: StudentConfig,
        labels: LabelManifest,
        teacher: LoadedModel | None,
    ) -> None:
        super().__init__()
        self.net = student
        self.loss = loss
        self.kd = cfg.distill
        self.hard_ids = torch.as_tensor(labels.hard_train_ids)
        if self.kd.is_baseline:
            teacher = None
        elif teacher is None:
            raise ConfigError("distillation terms are on but no teacher was given (use --kd none for the baseline)")
        # Not a registered submodule: the teacher is frozen, not saved with the student and not
        # wrapped by DDP.
        self._teacher: list[nn.Module] = []
        s_ch = feature_channels(cfg.model)
        t_ch = feature_channels(teacher.model_cfg) if teacher is not None else s_ch
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
            if s_ch[self.kd.affinity_layer] != t_ch[self.kd.affinity_layer]:  # type: ignore[index]
                raise ConfigError("affinity on features needs equal student/teacher widths at affinity_layer")
        needed = set(layers)
        if self.graph is not None:
            needed.add(self.kd.graph_layer)
        if self.kd.affinity_weight > 0 and self.kd.affinity_source == "features":
            needed.add(self.kd.affinity_layer)  # type: ignore[arg-type]
        self.needed_features = sorted(needed)
        if teacher is not None:
            net = teacher.net.eval()
            net.requires_grad_(False)
            self._teacher.append(net)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def train(self, mode: bool = True) -> "DistillModule":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BN running statistics of the teacher stay frozen
        return self

    def _run_teacher(self, batch: Batch) -> tuple[torch.Tensor, dict[str, Any]]:
        teacher = self.teacher
        assert teacher is not None
        view = batch.views["fused"]
        first = next(teacher.parameters())
        if first.device != view.coords.device:
            teacher.to(view.coords.device)
        with torch.no_grad():
            x = view_to_sparse(view)
            if self.needed_features:
                logits, feats = teacher(x, return_features=self.needed_features)
            else:
                logits, feats = teacher(x), {}
        return logits, feats

    def forward(self, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        single = batch.views["single"]
        x = view_to_sparse(single)
        if self.needed_features:
            s_logits, s_feats = self.net(x, return_features=self.needed_features)
        else:
            s_logits, s_feats = self.net(x), {}
        task_total, terms = task_loss(self.loss, s_logits, single)
        if self.teacher is None:
            return task_total, terms
        kd_terms: dict[str, torch.Tensor] = {}

        t_logits_all, t_feats = self._run_teacher(batch)
        fused = batch.views["fused"]
        match = match_voxels(single.coords, fused.coords)
        t_logits = t_logits_all[match]
        weights = self.kd.scaled_weights(progress)
        is_hard = hard_mask(single.voxel_labels, self.hard_ids.to(single.voxel_labels.device))
        w_hard = voxel_weights(is_hard, self.kd.hard_class_weight)

        if weights["logit"] > 0:
            kd = logit_kd(s_logits, t_logits, self.kd.temperature, w_hard, self.kd.logit_min_term)
            kd_terms["kd_logit"] = weights["logit"] * kd
        if weights["feature"] > 0:
            fw = voxel_weights(is_hard, self.kd.feature_hard_weight, hard_only=self.kd.feature_hard_only)
            feat_terms = []
            for name in self.feature_layers:
                s_f, t_f = s_feats[name], t_feats[name]
                rows = match_voxels(s_f.coords, t_f.coords)
                layer_w = fw if FEATURE_STRIDES[name] == 1 and s_f.feats.shape[0] == fw.shape[0] else None
                if layer_w is not None:
                    # stride-1 features may come in the backend's row order: realign weights.
                    layer_w = layer_w[match_voxels(s_f.coords, single.coords)]
                feat_terms.append(feature_kd(s_f.feats, t_f.feats[rows], layer_w, adapter=self.adapters[name]))
            kd_terms["kd_feature"] = weights["feature"] * torch.stack(feat_terms).mean()
        if weights["affinity"] > 0:
            if self.kd.affinity_source == "logits":
                s_a, t_a, inst_rows = s_logits, t_logits, None
            else:
                layer = self.kd.affinity_layer
                assert layer is not None
                s_a = s_feats[layer].feats
                t_a = t_feats[layer].feats[match_voxels(s_feats[layer].coords, t_feats[layer].coords)]
                inst_rows = match_voxels(s_feats[layer].coords, single.coords)
            inst = single.voxel_instance if inst_rows is None else single.voxel_instance[inst_rows]
            cls = single.voxel_labels if inst_rows is None else single.voxel_labels[inst_rows]
            coords = single.coords if inst_rows is None else single.coords[inst_rows]
            kd_terms["kd_affinity"] = weights["affinity"] * instance_affinity_kd(
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
        if weights["graph"] > 0 and self.graph is not None:
            layer = self.kd.graph_layer
            s_f, t_f = s_feats[layer], t_feats[layer]
            rows = match_voxels(s_f.coords, t_f.coords)
            density = None
            if self.kd.graph_score == "density":
                density = fused.voxel_count[match_voxels(s_f.coords, fused.coords)]
            s_rows_in_input = match_voxels(s_f.coords, single.coords)
            kd_terms["kd_graph"] = weights["graph"] * self.graph(
                s_f.feats,
                t_f.feats[rows],
                s_f.coords,
                density=density,
                student_logits=s_logits[s_rows_in_input],
                teacher_logits=t_logits[s_rows_in_input],
            )
        total = task_total + sum(kd_terms.values(), torch.zeros((), device=task_total.device))
        return total, terms | {k: v.detach() for k, v in kd_terms.items()}
