"""Logit KD on temperature-softened class distributions (the official M2SKD term)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from m2s.distill.losses import logit_kd
from m2s.distill.terms.base import KDContext, KDTerm, TermConfig, TermSetup


class LogitConfig(TermConfig):
    weight: float = Field(5.0, ge=0.0)
    temperature: float = Field(10.0 / 3.0, gt=0.0)
    # official: per voxel mean_c p_t |log((p_t+1e-6)/(p_s+1e-6))|, no T^2 (the M2SKD code);
    # kl_t2: per voxel KL(p_t || p_s) summed over classes, times T^2 (Hinton) - about
    # 20 * T^2 = 220 times stronger at the same weight.
    reduction: Literal["official", "kl_t2"] = "official"
    # Per-voxel terms at or below this are dropped from the mean, so the average is over voxels
    # where the student still disagrees; None: the reduction's own default (official 0.01,
    # kl_t2 1e-4 nats before the T^2 factor).
    min_term: float | None = Field(None, ge=0.0)
    # Which student voxels the term is computed on. all: every matched voxel (the official
    # code). teacher_correct: only voxels whose teacher argmax equals the ground-truth label, so
    # the teacher's mistakes (a fused-input teacher is measurably worse than the baseline on
    # classes fusion never touches) are never distilled - label-guided KD as in Wen et al.,
    # "Preparing lessons: improve knowledge distillation with better supervision", 2021.
    voxels: Literal["all", "teacher_correct"] = "all"


class LogitKD(KDTerm):
    name = "logit"
    Config = LogitConfig

    def __init__(self, cfg: LogitConfig, setup: TermSetup) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, ctx: KDContext) -> torch.Tensor:
        w = ctx.w_hard
        if self.cfg.voxels == "teacher_correct":
            # labels are train ids or IGNORE_INDEX, which no argmax equals
            w = ctx.w_hard * (ctx.t_logits.argmax(dim=1) == ctx.single.voxel_labels)
        return logit_kd(ctx.s_logits, ctx.t_logits, self.cfg.temperature, w, self.cfg.min_term, self.cfg.reduction)
