"""Feature KD: MSE between adapted student features and the teacher's, per named layer."""

from __future__ import annotations

import torch
from pydantic import Field, field_validator, model_validator

from m2s.distill.losses import build_feature_adapters, feature_kd, voxel_weights
from m2s.distill.terms.base import KDContext, KDTerm, TermConfig, TermSetup
from m2s.models import FEATURE_STRIDES


class FeatureConfig(TermConfig):
    layers: list[str] = Field(default_factory=lambda: ["decoder"])
    hard_only: bool = False
    hard_weight: float = Field(1.0, ge=0.0)

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"feature.layers repeats a layer: {v}")
        if any(not name for name in v):
            raise ValueError("feature.layers contains an empty name")
        return v

    @model_validator(mode="after")
    def _layers_when_on(self) -> FeatureConfig:
        if self.weight > 0 and not self.layers:
            raise ValueError("feature.weight > 0 needs at least one entry in feature.layers")
        return self


class FeatureKD(KDTerm):
    name = "feature"
    Config = FeatureConfig

    def __init__(self, cfg: FeatureConfig, setup: TermSetup) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = list(cfg.layers)
        self.adapters = build_feature_adapters(self.layers, setup.student_channels, setup.teacher_channels)

    def features(self) -> set[str]:
        return set(self.layers)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        fw = voxel_weights(ctx.is_hard, self.cfg.hard_weight, hard_only=self.cfg.hard_only)
        terms = []
        for name in self.layers:
            s_f, t_f = ctx.s_feats[name], ctx.t_feats[name]
            layer_w = fw if FEATURE_STRIDES[name] == 1 and s_f.feats.shape[0] == fw.shape[0] else None
            if layer_w is not None:
                # stride-1 features may come in the backend's row order: realign weights.
                layer_w = layer_w[ctx.corr.layer_input_rows(name)]
            t_rows = t_f.feats[ctx.corr.layer_rows(name)]
            terms.append(feature_kd(s_f.feats, t_rows, layer_w, adapter=self.adapters[name]))
        return torch.stack(terms).mean()
