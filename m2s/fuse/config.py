"""Configuration of the fusion stage (validated, JSON-serialisable for the manifest)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AlignMode = Literal["auto", "pose", "centroid", "icp", "planar"]

# Part of every fused cache's config (hence of its content id and resume key): bump whenever an
# alignment mode gives other points for the same config, so an older cache is never reused.
# 2: `planar` added; `auto` aligns moving instances with it and tests motion by the extremes.
ALIGN_VERSION = 2


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


class PlanarConfig(IcpConfig):
    """`planar` alignment (and `auto`'s for moving instances): the pose-aligned instance is moved
    so its extremes nearer to the sensor meet the target's, then refined by ICP in the bird's-eye
    view (a turn about z and an xy translation)."""

    # Starting from matched extremes the error is mostly well below this: a tight bound keeps the
    # parts one view shows and the other does not from dragging the instance (metres).
    max_correspondence: float = Field(0.3, gt=0)
    # Orientation search of the bounding rectangle that gives the extremes' axes (steps of 90 deg).
    yaw_steps: int = Field(18, ge=1, le=360)


class FuseConfig(BaseModel):
    """What decides the content of a fused cache (workers/progress are not part of it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(4, ge=0, le=1000, description="neighbour scans on each admitted side (frame numbers)")
    future: bool = Field(False, description="also admit the following `window` scans")
    align: AlignMode = "auto"
    # None: the label manifest's `hard_classes`.
    hard_classes: list[str] | None = None
    # `auto`: an instance labelled static whose pose-aligned extremes all moved the same way by more
    # than this (metres) is moving all the same.
    moving_threshold: float = Field(0.5, gt=0)
    icp: IcpConfig = IcpConfig()
    planar: PlanarConfig = PlanarConfig()
