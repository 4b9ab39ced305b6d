"""Option values shared by several commands, as Enums so typer lists and checks them."""

from __future__ import annotations

from enum import Enum


class CheckpointChoice(str, Enum):
    """Which weights of a model artifact to load (m2s.inference.load_model_artifact's `checkpoint`)."""

    best = "best"
    last = "last"
