"""Configuration of the multi-to-single distillation terms (a weight of 0 turns a term off).

Defaults follow the official M2SKD code (skyshoumeng/M2SKD, `segmentator_3d_asymm_spconv.py`):
logit KD weight 5 with ``softmax(0.3 * logits)`` (temperature 1/0.3), the per-voxel term a
*mean* over classes of ``p_t * |log((p_t + 1e-6) / (p_s + 1e-6))|`` without a T^2 factor,
voxels whose term is <= 0.01 dropped (``logit_reduction: official``); feature KD off. The
official affinity term (cosine-similarity matrices of the 20-class logits, per "thing" class
except car; official weight 1) is implemented but OFF by default: measured here, at weight 1 it
dominates the student's gradient (hundreds of hard voxels against the whole scan's CE) and
drags the task loss - 1 epoch, same seed: CE 2.41 with it vs 1.90 without, while the logit
term alone leaves CE unchanged (1.89) - and the seed study's students lost 17 mIoU with it
(README, "Distillation study"). Turn it on with ``affinity_weight: 1``.

Two training modes: ``frozen`` (a separately trained teacher artifact, frozen) and ``joint``
(the official scheme: one network, shared weights, run on the single and the fused view every
step; its detached fused-view outputs teach its single-view branch, and the fused branch gets
a cross-entropy on the voxels whose label fusion changed, weight 0.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from m2s.errors import ConfigError

DistillTerm = Literal["logit", "feature", "affinity", "graph"]
DistillMode = Literal["frozen", "joint"]
TeacherView = Literal["fused", "single"]  # the dataset's view names (m2s.train.dataset.ViewName)


class DistillConfig(BaseModel):
    """Weights and options of the four distillation terms plus their shared schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # ---- who teaches ----
    # frozen: a teacher artifact (`--teacher`); joint: the student itself on the fused view.
    mode: DistillMode = "frozen"
    # frozen mode: the view the teacher sees. fused (M2SKD): the multi-scan cloud. single: the
    # student's own scan - the control that separates what the fused input teaches from what a
    # stronger or longer-trained network teaches anyway (self-distillation, "born-again" nets).
    teacher_view: TeacherView = "fused"
    # joint mode: weight of the fused branch's cross-entropy on the voxels whose label fusion
    # changed (voxels absent from the single view, or with another majority label).
    fused_ce_weight: float = Field(0.2, ge=0.0)

    # ---- logit KD on temperature-softened class distributions ----
    logit_weight: float = Field(5.0, ge=0.0)
    temperature: float = Field(10.0 / 3.0, gt=0.0)
    # official: per voxel mean_c p_t |log((p_t+1e-6)/(p_s+1e-6))|, no T^2 (the M2SKD code);
    # kl_t2: per voxel KL(p_t || p_s) summed over classes, times T^2 (Hinton) - about
    # 20 * T^2 = 220 times stronger at the same weight.
    logit_reduction: Literal["official", "kl_t2"] = "official"
    # Per-voxel terms at or below this are dropped from the mean, so the average is over voxels
    # where the student still disagrees; None: the reduction's own default (official 0.01,
    # kl_t2 1e-4 nats before the T^2 factor).
    logit_min_term: float | None = Field(None, ge=0.0)
    # Which student voxels the logit term is computed on. all: every matched voxel (the official
    # code). teacher_correct: only voxels whose teacher argmax equals the ground-truth label, so
    # the teacher's mistakes (a fused-input teacher is measurably worse than the baseline on
    # classes fusion never touches) are never distilled - label-guided KD as in Wen et al.,
    # "Preparing lessons: improve knowledge distillation with better supervision", 2021.
    logit_voxels: Literal["all", "teacher_correct"] = "all"

    # ---- feature KD: MSE between adapted student features and teacher features ----
    feature_weight: float = Field(0.0, ge=0.0)
    feature_layers: list[str] = Field(default_factory=lambda: ["decoder"])
    feature_hard_only: bool = False
    feature_hard_weight: float = Field(1.0, ge=0.0)

    # ---- affinity KD: relations between the voxels of hard-class objects ----
    affinity_weight: float = Field(0.0, ge=0.0)  # official 1.0; off by default (measured)
    # class: the official term (all voxels of each thing class in the batch, one matrix per
    # class, summed over classes); instance: one matrix per hard-class instance (plus the
    # same-class cross-instance relations below), averaged over instances.
    affinity_grouping: Literal["class", "instance"] = "class"
    affinity_source: Literal["logits", "features"] = "logits"
    affinity_layer: str | None = None
    affinity_loss: Literal["l1", "mse"] = "l1"
    affinity_max_points_per_class: int = Field(1024, ge=2, le=16384)
    affinity_max_points_per_instance: int = Field(128, ge=2, le=4096)
    affinity_cross_instance: bool = True
    affinity_exclude_classes: list[int] = Field(default_factory=lambda: [1])  # train id 1 = car

    # ---- local graph KD (PointDistiller) ----
    graph_weight: float = Field(0.0, ge=0.0)
    graph_num_queries: int = Field(1024, ge=1, le=65536)  # per sample
    graph_k: int = Field(16, ge=1, le=128)
    graph_score: Literal["density", "disagreement"] = "density"
    graph_layer: str = "decoder"
    graph_hidden: int = Field(64, ge=1, le=4096)

    # ---- shared ----
    hard_class_weight: float = Field(1.0, ge=0.0)
    warmup_epochs: float = Field(0.0, ge=0.0)

    @field_validator("feature_layers")
    @classmethod
    def _unique_layers(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"feature_layers repeats a layer: {v}")
        if any(not name for name in v):
            raise ValueError("feature_layers contains an empty name")
        return v

    @field_validator("affinity_exclude_classes")
    @classmethod
    def _valid_class_ids(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if c < 0]
        if bad:
            raise ValueError(f"affinity_exclude_classes must be train ids >= 0, got {bad}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _consistent(self) -> "DistillConfig":
        if self.feature_weight > 0 and not self.feature_layers:
            raise ValueError("feature_weight > 0 needs at least one entry in feature_layers")
        if self.mode == "joint" and self.teacher_view != "fused":
            raise ValueError("joint mode's teacher is its own fused-view branch: teacher_view must be 'fused'")
        if self.affinity_weight > 0 and self.affinity_source == "features" and not self.affinity_layer:
            raise ValueError("affinity_source='features' needs affinity_layer")
        return self

    @classmethod
    def baseline(cls) -> "DistillConfig":
        """Every distillation term off: plain single-scan training (`--kd none`)."""
        return cls(logit_weight=0.0, feature_weight=0.0, affinity_weight=0.0, graph_weight=0.0)

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> "DistillConfig":
        """Build from a plain mapping (e.g. a YAML section), turning validation errors into ConfigError."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            raise ConfigError(f"invalid distillation config: {exc}") from exc

    @property
    def is_baseline(self) -> bool:
        """True when nothing but the single view trains the net: every distillation term off and,
        in joint mode, no fused-branch cross-entropy either (plain single-scan training)."""
        kd_off = all(w == 0.0 for w in self.term_weights().values())
        return kd_off and (self.mode == "frozen" or self.fused_ce_weight == 0.0)

    @property
    def needs_teacher_artifact(self) -> bool:
        return self.mode == "frozen" and not self.is_baseline

    @property
    def views(self) -> tuple[TeacherView, ...]:
        """The views a training batch needs: the student's single view, plus the fused one
        unless nothing looks at it (the baseline, the single-view teacher control)."""
        if self.is_baseline or (self.mode == "frozen" and self.teacher_view == "single"):
            return ("single",)
        return ("fused", "single")

    def term_weights(self) -> dict[DistillTerm, float]:
        return {
            "logit": self.logit_weight,
            "feature": self.feature_weight,
            "affinity": self.affinity_weight,
            "graph": self.graph_weight,
        }

    def weight_scale(self, epoch: float) -> float:
        """Linear warm-up factor in [0, 1] for fractional `epoch` (0 at the start)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self.warmup_epochs == 0:
            return 1.0
        return min(1.0, epoch / self.warmup_epochs)

    def scaled_weights(self, epoch: float) -> dict[DistillTerm, float]:
        """Per-term weights at `epoch`, warm-up applied."""
        s = self.weight_scale(epoch)
        return {name: w * s for name, w in self.term_weights().items()}


class KdChoice(str, Enum):
    """`m2s distill --kd`: the config's distillation terms, or none (the baseline student)."""

    config = "config"
    none = "none"


class TeacherChoice(BaseModel):
    """Who teaches a student run: its distillation config, `--kd` and the `--teacher` artifact.

    Every rule about which of these go together lives in this validator (and the mode /
    teacher_view rule in DistillConfig's): the CLI, `run_distillation` and the distillation
    module check nothing of it again.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    distill: DistillConfig
    artifact: Path | None = None
    kd: KdChoice = KdChoice.config

    @model_validator(mode="after")
    def _rules(self) -> "TeacherChoice":
        if self.kd == KdChoice.none:
            return self  # the baseline: a given --teacher is not used
        d = self.distill
        if d.is_baseline and self.artifact is not None:
            raise ValueError("every distillation weight in the config is 0 but --teacher was given; use --kd none")
        if d.mode == "joint" and self.artifact is not None:
            raise ValueError("joint mode (distill.mode: joint) trains its own fused-view teacher branch; drop --teacher")
        if d.needs_teacher_artifact and self.artifact is None:
            raise ValueError("distillation needs --teacher MODEL (or --mode joint, or --kd none for the baseline student)")
        return self

    @classmethod
    def parse(cls, distill: DistillConfig, artifact: Path | None, kd: KdChoice | str = KdChoice.config) -> "TeacherChoice":
        """Validate, turning a broken rule into a one-line ConfigError."""
        try:
            return cls(distill=distill, artifact=artifact, kd=KdChoice(kd))
        except ValidationError as exc:
            first = exc.errors()[0]
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(msg) from None
        except ValueError as exc:  # an unknown --kd value
            raise ConfigError(f"--kd must be 'config' or 'none' ({exc})") from None

    @property
    def config(self) -> DistillConfig:
        """The distillation config the run trains with (--kd none: every term off)."""
        return DistillConfig.baseline() if self.kd == KdChoice.none else self.distill

    @property
    def teacher_artifact(self) -> Path | None:
        """The artifact to load: only a frozen-teacher student has one."""
        return self.artifact if self.config.needs_teacher_artifact else None
