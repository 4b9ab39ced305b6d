"""Points per instance against range, and the geometric estimate for a beam layout.

The estimate counts the beam rows and azimuth columns a flat, upright, side-on box of the given
width and height covers at horizontal range r, standing on the ground with the sensor
`sensor_height` above it: rows = beams whose elevation lies between the box's foot and top
(fractional, interpolated between beams, so a uniform layout gives height / (r * step)),
columns = width / (r * azimuth step). No occlusion, no dropout: an upper bound of what a
complete, unoccluded scan of the object gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

# Nominal side-on silhouettes (width along the scan, height; metres) the report states beside
# its estimate: an adult (realism.md: 0.6 x 1.7), a bicycle with its rider (1.7 long, rider on
# top, 1.7 high) and a mid-size car (4.2 long, 1.5 high).
NOMINAL_SIZES: dict[str, tuple[float, float]] = {
    "person": (0.6, 1.7),
    "bicyclist": (1.7, 1.7),
    "car": (4.2, 1.5),
}
DEFAULT_RANGE_BINS: tuple[float, ...] = (0.0, 10.0, 20.0, 30.0, 40.0, 60.0)
KITTI_SENSOR_HEIGHT = 1.73  # metres, the Velodyne above the road on the KITTI car


def uniform_elevations(beams: int, top_deg: float, bottom_deg: float) -> np.ndarray:
    """Beam elevations (radians, descending) evenly spaced from `top_deg` to `bottom_deg`."""
    if beams < 2 or not top_deg > bottom_deg:
        raise ValueError("need >= 2 beams and top_deg > bottom_deg")
    return np.deg2rad(np.linspace(top_deg, bottom_deg, beams))


def hdl64e_elevations() -> np.ndarray:
    """The real HDL-64E's two laser blocks: 32 beams from +2.0 to -8.33 deg (about 1/3 deg
    apart) and 32 from -8.83 to -24.8 deg (about 1/2 deg apart). Upright objects beyond ~10 m
    lie in the denser upper block, which is why realism.md's 530 / 140 / 35 points for a person
    at 10 / 20 / 40 m exceed the uniform 26.8 / 63 deg spacing's figures by about a quarter."""
    return np.deg2rad(np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.8, 32)]))


def expected_points(
    width: float,
    height: float,
    ranges: np.ndarray,
    elevations: np.ndarray,
    columns: int,
    sensor_height: float = KITTI_SENSOR_HEIGHT,
) -> np.ndarray:
    """Points on a `width` x `height` upright box at horizontal `ranges` (metres), side-on."""
    r = np.asarray(ranges, dtype=np.float64)
    if (r <= 0).any():
        raise ValueError("ranges must be positive")
    elev = np.sort(np.asarray(elevations, dtype=np.float64))  # ascending for interp
    index = np.arange(elev.size, dtype=np.float64)
    lo = np.arctan2(-sensor_height, r)
    hi = np.arctan2(height - sensor_height, r)
    rows = np.interp(hi, elev, index) - np.interp(lo, elev, index)
    cols = 2.0 * np.arctan2(width / 2.0, r) / (2.0 * np.pi / columns)
    return rows * cols


@dataclass(frozen=True)
class DensityBin:
    lo: float
    hi: float
    samples: int  # instance-scans with their median range in [lo, hi)
    median_points: float  # nan when empty
    median_range: float  # nan when empty
    estimate: float  # geometric estimate at median_range (at the bin centre when empty)


def density_by_range(
    points: np.ndarray,
    ranges: np.ndarray,
    bins: tuple[float, ...],
    width: float,
    height: float,
    elevations: np.ndarray,
    columns: int,
    sensor_height: float = KITTI_SENSOR_HEIGHT,
) -> list[DensityBin]:
    """Median points per instance-scan in each range bin beside the geometric estimate."""
    points = np.asarray(points, dtype=np.float64)
    ranges = np.asarray(ranges, dtype=np.float64)
    which = np.digitize(ranges, bins) - 1  # bin index; -1 / len(bins)-1 fall outside
    out = []
    for b, (lo, hi) in enumerate(pairwise(bins)):
        sel = which == b
        n = int(sel.sum())
        med_r = float(np.median(ranges[sel])) if n else float("nan")
        at = med_r if n else max(0.5 * (lo + hi), 0.5)
        est = float(expected_points(width, height, np.array([at]), elevations, columns, sensor_height)[0])
        out.append(
            DensityBin(float(lo), float(hi), n, float(np.median(points[sel])) if n else float("nan"), med_r, est)
        )
    return out
