"""`m2s train-teacher` (stage 2)."""

from __future__ import annotations

from cli.common import not_implemented


def train_teacher() -> None:
    """Train the teacher on fused (multi-scan) clouds."""
    not_implemented("train-teacher")
