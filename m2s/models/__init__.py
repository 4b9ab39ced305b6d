"""Segmentation backbones (MinkUNet family) on the m2s sparse backends."""

from m2s.models.minkunet import (
    BLOCKS,
    FEATURE_NAMES,
    FEATURE_STRIDES,
    MinkUNet,
    ModelConfig,
    build_model,
    channel_plan,
    feature_channels,
)

__all__ = [
    "BLOCKS",
    "FEATURE_NAMES",
    "FEATURE_STRIDES",
    "MinkUNet",
    "ModelConfig",
    "build_model",
    "channel_plan",
    "feature_channels",
]
