"""Configuration of the fusion stage (validated, JSON-serialisable for the manifest)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AlignMode = Literal["auto", "pose", "centroid", "icp"]


class IcpConfig(BaseModel):
    """Point-to-point rigid ICP run after the centroid alignment of a moving instance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    iterations: int = Field(10, ge=1, le=200)
    # Below this many points on either side ICP is ill-posed: fall back to the centroid shift.
    min_points: int = Field(10, ge=3)
    # Correspondences farther apart than this (metres) are ignored as outliers.
    max_correspondence: float = Field(1.0, gt=0)
    # Stop when the mean residual improves by less than this (metres).
    tolerance: float = Field(1e-3, ge=0)
    # The transform is estimated from at most this many evenly spread source points (then
    # applied to all): ICP cost stays flat for large instances (trucks) at no visible loss.
    max_points: int = Field(256, ge=10)


class FuseConfig(BaseModel):
    """What decides the content of a fused cache (workers/progress are not part of it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(4, ge=0, le=1000, description="neighbour scans on each admitted side (frame numbers)")
    future: bool = Field(False, description="also admit the following `window` scans")
    align: AlignMode = "auto"
    # None: the label manifest's `hard_classes`.
    hard_classes: list[str] | None = None
    # `auto`: an instance whose pose-aligned centroid moved more than this (metres) is moving.
    moving_threshold: float = Field(0.5, gt=0)
    icp: IcpConfig = IcpConfig()
