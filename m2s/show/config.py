"""What `m2s show` draws and at which scale."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ViewName = Literal["bev", "range", "fused", "crops"]


class RangeGeometry(BaseModel):
    """Spherical projection of a spinning LiDAR: one row per beam, one column per azimuth step.

    Row ``floor((up - pitch) / (up - down) * height)``, column ``floor((1 - yaw / pi) / 2 * width)``
    (yaw = atan2(y, x): straight ahead is the middle column, the left half is the left side),
    pitch and yaw of each point from the origin. The default is the HDL-64E of SemanticKITTI as
    RangeNet++ projects it; a synthetic dataset's own sensor is read from its manifest.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    height: int = Field(64, ge=2, le=512)
    width: int = Field(2048, ge=16, le=16384)
    fov_up_deg: float = 3.0
    fov_down_deg: float = -25.0

    @model_validator(mode="after")
    def _fov(self) -> RangeGeometry:
        if not self.fov_up_deg > self.fov_down_deg:
            raise ValueError("fov_up_deg must be above fov_down_deg")
        return self


class ShowConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    views: tuple[ViewName, ...] = ("bev", "range", "fused")
    extent_m: float = Field(50.0, gt=0, description="bird's-eye view: half-width of the square, metres")
    resolution_m: float = Field(0.125, gt=0, description="bird's-eye view: metres per pixel")
    point_px: int = Field(1, ge=1, le=5, description="bird's-eye view: side of each point's square, pixels")
    range: RangeGeometry = RangeGeometry()
    range_row_px: int = Field(3, ge=1, le=16, description="range view: pixel rows per beam")
    crop_px: int = Field(220, ge=32, le=2048, description="crops: side of each crop panel, pixels")
    crop_margin_m: float = Field(1.5, ge=0)
    crop_min_points: int = Field(5, ge=1, description="crops: instances with fewer own points are skipped")
    max_crops: int = Field(8, ge=1)

    @property
    def bev_size(self) -> int:
        return int(round(2 * self.extent_m / self.resolution_m))
