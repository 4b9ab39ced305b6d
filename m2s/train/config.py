"""Training configuration: one pydantic model, loaded from YAML, with CLI overrides.

`VoxelConfig` lives in m2s.voxel (below every stage); it is re-exported here for old imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from m2s.errors import ConfigError
from m2s.models import ModelConfig
from m2s.voxel import VoxelConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AugmentConfig(_Strict):
    enabled: bool = True
    rotate_z: bool = True
    flip_x: bool = True
    flip_y: bool = True
    scale: tuple[float, float] = (0.95, 1.05)
    jitter_std: float = Field(0.01, ge=0)
    jitter_clip: float = Field(0.05, ge=0)
    # Probability that a hard-class instance keeps the rows fusion appended to it in a training
    # sample (fused view only; drawn per instance, sample and epoch). Below 1 the teacher also
    # sees instances as single scans show them, so point density stops being a class cue.
    # Measured once at 0.5 (README): the teacher loses 5 mIoU and 10 hard mIoU; hence 1.
    appended_keep: float = Field(1.0, ge=0, le=1)


class LossConfig(_Strict):
    ce_weight: float = Field(1.0, ge=0)
    lovasz_weight: float = Field(1.0, ge=0)
    # "frequency": inverse-sqrt class frequency measured on the training cache; "none": all 1;
    # or an explicit list of 20 weights (index = train id).
    class_weights: Literal["frequency", "none"] | list[float] = "frequency"
    frequency_scans: int = Field(200, gt=0, description="scans sampled to measure class frequencies")
    # Which rows the frequencies are counted on. "input": the rows the task loss is on (for a
    # "pooled" teacher the fused blocks, where a fused class looks up to 5x more frequent; for an
    # "own" one the scans' own points); "single": the scans' own points. Measured on the demo data
    # over 3 seeds, a pooled teacher weighted by "single" over-weights the fused classes in the
    # loss and loses 6.5 mIoU / 4.5 hard mIoU (README).
    frequency_view: Literal["single", "input"] = "input"
    max_class_weight: float = Field(10.0, gt=0)
    # where the task loss is computed ("on" would be parsed as a boolean by YAML 1.1)
    level: Literal["points", "voxels"] = "points"
    # How a fused block's appended rows (hard-class points fusion brought from other scans) are
    # supervised; only a teacher's input has any. "pooled": one loss over all rows, each appended
    # point weighing like one of the scan's own. "own": the task loss (CE + Lovasz) on the scan's
    # own points, as for the student, plus `appended_ce_weight` x the class-weighted CE of the
    # appended points: the official M2SKD weighting (its fused branch adds 0.2 x CE on the voxels
    # fusion changed). With "own", class frequencies for frequency_view "input" are counted on the
    # own points, the rows the main loss is on.
    appended: Literal["pooled", "own"] = "pooled"
    appended_ce_weight: float = Field(0.2, ge=0)

    @model_validator(mode="after")
    def _appended_needs_points(self) -> LossConfig:
        if self.appended == "own" and self.level != "points":
            raise ValueError("appended: own needs level: points (a voxel mixes own and appended points)")
        return self


class OptimConfig(_Strict):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["onecycle", "cosine", "constant"] = "cosine"
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    grad_clip: float | None = Field(10.0, gt=0)
    amp: Literal["none", "bf16", "fp16"] = "none"
    batch_size: int = Field(2, gt=0)
    accumulate: int = Field(1, gt=0)


class DataConfig(_Strict):
    num_workers: int = Field(2, ge=0)
    max_scans: int | None = Field(None, gt=0, description="use only the first N training scans")
    val_max_scans: int | None = Field(None, gt=0)
    val_batch_size: int = Field(2, gt=0)


class TrainConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    voxel: VoxelConfig = Field(default_factory=VoxelConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    epochs: int = Field(10, gt=0)
    val_every: int = Field(1, gt=0)
    seed: int = 0
    backend: Literal["auto", "torch", "minkowski", "spconv"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(10, gt=0)
    sync_bn: bool = False


def deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it: nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml_mapping(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def build_config(model_cls: type[BaseModel], path: str | Path | None, overrides: dict[str, Any]) -> Any:
    """Load a YAML file into `model_cls`, then apply dotted-key CLI overrides (None = not given)."""
    data = load_yaml_mapping(path)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node: dict[str, Any] = {}
        cur = node
        keys = dotted.split(".")
        for k in keys[:-1]:
            cur[k] = {}
            cur = cur[k]
        cur[keys[-1]] = value
        data = deep_update(data, node)
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}invalid config at {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
