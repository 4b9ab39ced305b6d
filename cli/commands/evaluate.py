"""`m2s evaluate` (stage 4)."""

from __future__ import annotations

from cli.common import not_implemented


def evaluate() -> None:
    """Evaluate models with the official SemanticKITTI metrics."""
    not_implemented("evaluate")
