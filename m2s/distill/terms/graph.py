"""Local graph KD (PointDistiller): kNN-graph features around the most informative voxels."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from m2s.distill.losses import LocalGraphKD
from m2s.distill.terms.base import KDContext, KDTerm, TermConfig, TermSetup
from m2s.errors import ConfigError
from m2s.models import FEATURE_STRIDES


class GraphConfig(TermConfig):
    num_queries: int = Field(1024, ge=1, le=65536)  # per sample
    k: int = Field(16, ge=1, le=128)
    score: Literal["density", "disagreement"] = "density"
    layer: str = "decoder"
    hidden: int = Field(64, ge=1, le=4096)


class GraphKD(KDTerm):
    name = "graph"
    Config = GraphConfig

    def __init__(self, cfg: GraphConfig, setup: TermSetup) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.score == "density" and FEATURE_STRIDES[cfg.layer] != 1:
            raise ConfigError("graph.score 'density' needs a stride-1 graph.layer (stem, up4 or decoder)")
        self.head = LocalGraphKD(
            setup.student_channels[cfg.layer],
            setup.teacher_channels[cfg.layer],
            hidden=cfg.hidden,
            num_queries=cfg.num_queries,
            k=cfg.k,
            score=cfg.score,
        )

    def features(self) -> set[str]:
        return {self.cfg.layer}

    def forward(self, ctx: KDContext) -> torch.Tensor:
        layer, corr = self.cfg.layer, ctx.corr
        s_f, t_f = ctx.s_feats[layer], ctx.t_feats[layer]
        density = None
        if self.cfg.score == "density":
            density = ctx.teacher_view.voxel_count[corr.layer_fused_rows(layer)]
        s_rows_in_input = corr.layer_input_rows(layer)
        return self.head(
            s_f.feats,
            t_f.feats[corr.layer_rows(layer)],
            s_f.coords,
            density=density,
            student_logits=ctx.s_logits[s_rows_in_input],
            teacher_logits=ctx.t_logits[s_rows_in_input],
        )
