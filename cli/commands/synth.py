"""`m2s synth`: the embedded synthetic dataset."""

from __future__ import annotations

from cli.common import not_implemented


def synth() -> None:
    """Generate synthetic LiDAR sequences in the SemanticKITTI layout."""
    not_implemented("synth")
