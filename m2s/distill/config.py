"""Configuration of the multi-to-single distillation terms (a weight of 0 turns a term off).

Defaults follow the official M2SKD code (skyshoumeng/M2SKD, `segmentator_3d_asymm_spconv.py`):
logit KD weight 5 with ``softmax(0.3 * logits)`` (temperature 1/0.3), the per-voxel term a
*mean* over classes of ``p_t * |log((p_t + 1e-6) / (p_s + 1e-6))|`` without a T^2 factor,
voxels whose term is <= 0.01 dropped (``logit: {reduction: official}``); feature KD off. The
official affinity term (cosine-similarity matrices of the 20-class logits, per "thing" class
except car; official weight 1) is implemented but OFF by default: measured here, at weight 1 it
dominates the student's gradient (hundreds of hard voxels against the whole scan's CE) and
drags the task loss - 1 epoch, same seed: CE 2.41 with it vs 1.90 without, while the logit
term alone leaves CE unchanged (1.89) - and the seed study's students lost 17 mIoU with it
(README, "Distillation study"). Turn it on with ``affinity: {weight: 1}``.

Two training modes: ``frozen`` (a separately trained teacher artifact, frozen) and ``joint``
(the official scheme: one network, shared weights, run on the single and the fused view every
step; its detached fused-view outputs teach its single-view branch, and the fused branch gets
a cross-entropy on the voxels whose label fusion changed, weight 0.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from m2s.distill.choices import KdChoice
from m2s.distill.terms import TERMS, AffinityConfig, FeatureConfig, GraphConfig, LogitConfig, TermConfig
from m2s.errors import ConfigError

DistillTerm = Literal["logit", "feature", "affinity", "graph"]  # the names in m2s.distill.terms.TERMS
DistillMode = Literal["frozen", "joint"]
TeacherView = Literal["fused", "single"]  # the dataset's view names (m2s.train.dataset.ViewName)


#: The flat keys of the first config format, each mapped to its place in the nested one.
#: Deprecated: they still load (a YAML may mix both forms as long as they do not disagree);
#: write ``distill: {affinity: {weight: 1}}`` instead of ``distill: {affinity_weight: 1}``.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "logit_weight": ("logit", "weight"),
    "temperature": ("logit", "temperature"),
    "logit_reduction": ("logit", "reduction"),
    "logit_min_term": ("logit", "min_term"),
    "logit_voxels": ("logit", "voxels"),
    "feature_weight": ("feature", "weight"),
    "feature_layers": ("feature", "layers"),
    "feature_hard_only": ("feature", "hard_only"),
    "feature_hard_weight": ("feature", "hard_weight"),
    "affinity_weight": ("affinity", "weight"),
    "affinity_grouping": ("affinity", "grouping"),
    "affinity_source": ("affinity", "source"),
    "affinity_layer": ("affinity", "layer"),
    "affinity_loss": ("affinity", "loss"),
    "affinity_max_points_per_class": ("affinity", "max_points_per_class"),
    "affinity_max_points_per_instance": ("affinity", "max_points_per_instance"),
    "affinity_cross_instance": ("affinity", "cross_instance"),
    "affinity_exclude_classes": ("affinity", "exclude_classes"),
    "graph_weight": ("graph", "weight"),
    "graph_num_queries": ("graph", "num_queries"),
    "graph_k": ("graph", "k"),
    "graph_score": ("graph", "score"),
    "graph_layer": ("graph", "layer"),
    "graph_hidden": ("graph", "hidden"),
}


def nest_flat_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with every deprecated flat key moved into its term's sub-mapping; ValueError when a
    flat key and its nested twin disagree."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items() if k not in FLAT_KEYS}
    for flat, (term, key) in FLAT_KEYS.items():
        if flat not in data:
            continue
        sub = out.setdefault(term, {})
        if not isinstance(sub, dict):
            raise ValueError(f"distill.{term} must be a mapping, got {sub!r}")
        if key in sub and sub[key] != data[flat]:
            raise ValueError(
                f"distill.{flat} ({data[flat]!r}) disagrees with distill.{term}.{key} ({sub[key]!r}); "
                "keep only the latter"
            )
        sub[key] = data[flat]
    return out


class DistillConfig(BaseModel):
    """Who teaches (mode), the distillation terms (one sub-config each) and their schedule.

    The terms are the registered ones of :mod:`m2s.distill.terms` (logit, feature, affinity,
    graph), each a sub-config with its own ``weight`` (0: off). The first, flat key form
    (``affinity_weight: 1``, ``temperature: 2``, ...; :data:`FLAT_KEYS`) still loads, mapped to
    the nested one, and the config is *recorded* in that flat form (``model_dump``): a model
    artifact's manifest and content id stay what they were before the nested form.
    """

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

    # ---- the terms (m2s.distill.terms) ----
    logit: LogitConfig = Field(default_factory=LogitConfig)
    feature: FeatureConfig = Field(default_factory=FeatureConfig)
    affinity: AffinityConfig = Field(default_factory=AffinityConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)

    # ---- shared ----
    hard_class_weight: float = Field(1.0, ge=0.0)
    warmup_epochs: float = Field(0.0, ge=0.0)

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, data: Any) -> Any:
        return nest_flat_keys(data) if isinstance(data, Mapping) else data

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.mode == "joint" and self.teacher_view != "fused":
            raise ValueError("joint mode's teacher is its own fused-view branch: teacher_view must be 'fused'")
        return self

    @model_serializer(mode="wrap")
    def _flat_record(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The flat form of the first format (see the class docstring)."""
        nested = handler(self)
        out = {k: v for k, v in nested.items() if k not in TERMS}
        for flat, (term, key) in FLAT_KEYS.items():
            out[flat] = nested[term][key]
        return out

    def term(self, name: str) -> TermConfig:
        """The sub-config of the registered term `name`."""
        return getattr(self, name)

    @classmethod
    def baseline(cls) -> DistillConfig:
        """Every distillation term off: plain single-scan training (`--kd none`)."""
        return cls.model_validate({name: {"weight": 0.0} for name in TERMS})

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> DistillConfig:
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

    def term_weights(self) -> dict[str, float]:
        return {name: self.term(name).weight for name in TERMS}

    def weight_scale(self, epoch: float) -> float:
        """Linear warm-up factor in [0, 1] for fractional `epoch` (0 at the start)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self.warmup_epochs == 0:
            return 1.0
        return min(1.0, epoch / self.warmup_epochs)

    def scaled_weights(self, epoch: float) -> dict[str, float]:
        """Per-term weights at `epoch`, warm-up applied."""
        s = self.weight_scale(epoch)
        return {name: w * s for name, w in self.term_weights().items()}


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
    def _rules(self) -> TeacherChoice:
        if self.kd == KdChoice.none:
            return self  # the baseline: a given --teacher is not used
        d = self.distill
        if d.is_baseline and self.artifact is not None:
            raise ValueError("every distillation weight in the config is 0 but --teacher was given; use --kd none")
        if d.mode == "joint" and self.artifact is not None:
            raise ValueError(
                "joint mode (distill.mode: joint) trains its own fused-view teacher branch; drop --teacher"
            )
        if d.needs_teacher_artifact and self.artifact is None:
            raise ValueError(
                "distillation needs --teacher MODEL (or --mode joint, or --kd none for the baseline student)"
            )
        return self

    @classmethod
    def parse(
        cls, distill: DistillConfig, artifact: Path | None, kd: KdChoice | str = KdChoice.config
    ) -> TeacherChoice:
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
