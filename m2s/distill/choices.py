"""The distillation stage's command-line choices as Enums (importable without torch)."""

from __future__ import annotations

from enum import Enum


class KdChoice(str, Enum):
    """`m2s distill --kd`: the config's distillation terms, or none (the baseline student)."""

    config = "config"
    none = "none"


class ModeChoice(str, Enum):
    """`m2s distill --mode`: a frozen teacher artifact, or the joint shared-weight scheme."""

    frozen = "frozen"
    joint = "joint"
