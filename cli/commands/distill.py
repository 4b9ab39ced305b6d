"""`m2s distill` (stage 3)."""

from __future__ import annotations

from cli.common import not_implemented


def distill() -> None:
    """Train a single-scan student, with or without distillation from a teacher."""
    not_implemented("distill")
