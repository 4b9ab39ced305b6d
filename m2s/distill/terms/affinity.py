"""Affinity KD: relations between the voxels of hard-class objects (official: per class)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from m2s.distill.losses import class_affinity_kd, instance_affinity_kd
from m2s.distill.terms.base import KDContext, KDTerm, TermConfig, TermSetup
from m2s.errors import ConfigError
from m2s.models import FEATURE_STRIDES


class AffinityConfig(TermConfig):
    weight: float = Field(0.0, ge=0.0)  # official 1.0; off by default (measured, m2s.distill.config)
    # class: the official term (all voxels of each thing class in the batch, one matrix per
    # class, summed over classes); instance: one matrix per hard-class instance (plus the
    # same-class cross-instance relations below), averaged over instances.
    grouping: Literal["class", "instance"] = "class"
    source: Literal["logits", "features"] = "logits"
    layer: str | None = None
    loss: Literal["l1", "mse"] = "l1"
    max_points_per_class: int = Field(1024, ge=2, le=16384)
    max_points_per_instance: int = Field(128, ge=2, le=4096)
    cross_instance: bool = True
    exclude_classes: list[int] = Field(default_factory=lambda: [1])  # train id 1 = car

    @field_validator("exclude_classes")
    @classmethod
    def _valid_class_ids(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if c < 0]
        if bad:
            raise ValueError(f"affinity.exclude_classes must be train ids >= 0, got {bad}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _layer_for_features(self) -> AffinityConfig:
        if self.weight > 0 and self.source == "features" and not self.layer:
            raise ValueError("affinity.source 'features' needs affinity.layer")
        return self


class AffinityKD(KDTerm):
    name = "affinity"
    Config = AffinityConfig

    def __init__(self, cfg: AffinityConfig, setup: TermSetup) -> None:
        super().__init__()
        self.cfg = cfg
        excluded = set(cfg.exclude_classes)
        self.classes = [c for c in setup.labels.hard_train_ids if c not in excluded]
        if cfg.source == "features":
            layer = cfg.layer
            assert layer is not None  # AffinityConfig's validator
            if FEATURE_STRIDES[layer] != 1:
                # its groups come from the input voxels' labels and instances, row for row
                raise ConfigError("affinity on features needs a stride-1 affinity.layer (stem, up4 or decoder)")
            if setup.student_channels[layer] != setup.teacher_channels[layer]:
                raise ConfigError("affinity on features needs equal student/teacher widths at affinity.layer")

    def features(self) -> set[str]:
        return {self.cfg.layer} if self.cfg.source == "features" and self.cfg.layer else set()

    def forward(self, ctx: KDContext) -> torch.Tensor:
        single, corr = ctx.single, ctx.corr
        if self.cfg.source == "logits":
            s_a, t_a, inst_rows = ctx.s_logits, ctx.t_logits, None
        else:
            layer = self.cfg.layer
            assert layer is not None
            s_a = ctx.s_feats[layer].feats
            t_a = ctx.t_feats[layer].feats[corr.layer_rows(layer)]
            inst_rows = corr.layer_input_rows(layer)
        cls = single.voxel_labels if inst_rows is None else single.voxel_labels[inst_rows]
        coords = single.coords if inst_rows is None else single.coords[inst_rows]
        if self.cfg.grouping == "class":
            return class_affinity_kd(
                s_a, t_a, cls, coords, self.classes, max_points=self.cfg.max_points_per_class, loss=self.cfg.loss
            )
        inst = single.voxel_instance if inst_rows is None else single.voxel_instance[inst_rows]
        return instance_affinity_kd(
            s_a,
            t_a,
            inst,
            cls,
            coords,
            max_points=self.cfg.max_points_per_instance,
            cross_instance=self.cfg.cross_instance,
            loss=self.cfg.loss,
            exclude_classes=self.cfg.exclude_classes,
        )
