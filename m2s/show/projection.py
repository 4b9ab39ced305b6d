"""Point -> pixel projections and a z-buffer rasteriser (vectorised; no loop over points).

Bird's-eye view: the square ``[-extent, extent)²`` around the sensor, x (forward) up, y (left) to
the left: row ``floor((extent - x) / res)``, column ``floor((extent - y) / res)``. The range view
is :class:`m2s.show.config.RangeGeometry`'s spherical projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2s.show.config import RangeGeometry

BLACK = np.zeros(3, dtype=np.uint8)


def bev_pixels(xyz: np.ndarray, extent_m: float, resolution_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, inside) of every point in a bird's-eye image of side ``2 * extent / res``."""
    xyz = np.asarray(xyz, dtype=np.float64)
    size = int(round(2 * extent_m / resolution_m))
    row = np.floor((extent_m - xyz[:, 0]) / resolution_m).astype(np.int64)
    col = np.floor((extent_m - xyz[:, 1]) / resolution_m).astype(np.int64)
    inside = (row >= 0) & (row < size) & (col >= 0) & (col < size)
    return row, col, inside


def range_pixels(xyz: np.ndarray, geometry: RangeGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, inside, range in metres) of every point in the range image."""
    xyz = np.asarray(xyz, dtype=np.float64)
    depth = np.linalg.norm(xyz, axis=1)
    up, down = np.radians(geometry.fov_up_deg), np.radians(geometry.fov_down_deg)
    pitch = np.arcsin(np.clip(xyz[:, 2] / np.maximum(depth, 1e-9), -1.0, 1.0))
    yaw = np.arctan2(xyz[:, 1], xyz[:, 0])
    row = np.floor((up - pitch) / (up - down) * geometry.height).astype(np.int64)
    col = np.floor(0.5 * (1.0 - yaw / np.pi) * geometry.width).astype(np.int64)
    col = np.minimum(col, geometry.width - 1)  # yaw = -pi exactly
    inside = (row >= 0) & (row < geometry.height) & (depth > 1e-6)
    return row, col, inside, depth


@dataclass(frozen=True)
class Raster:
    """Which point wins each covered pixel of an image: `pixel` (flat index ``row * width + col``)
    and `point` (index into the arrays given to :func:`zbuffer`), one entry per covered pixel.
    Computed once per geometry and drawing order, painted with any number of colourings."""

    shape: tuple[int, int]
    pixel: np.ndarray  # int64 (K,)
    point: np.ndarray  # int64 (K,)

    def paint(
        self, rgb: np.ndarray, background: np.ndarray | None = None, *, onto: np.ndarray | None = None
    ) -> np.ndarray:
        """An (H, W, 3) uint8 image: `background` (or `onto`, painted in place) with each covered
        pixel in its winning point's colour (`rgb`: uint8 (N, 3), one row per point given to `zbuffer`)."""
        h, w = self.shape
        if onto is not None:
            image = onto
        else:
            image = np.empty((h, w, 3), dtype=np.uint8)
            image[:] = BLACK if background is None else background
        image.reshape(-1, 3)[self.pixel] = np.asarray(rgb, dtype=np.uint8)[self.point]
        return image


def _winners(n_pixels: int, flat: np.ndarray, priority: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixel, entry) of the entry of highest priority at each covered pixel, ties to the later
    entry: two unbuffered scatters (``ufunc.at``), linear in the entries, no sort."""
    best = np.full(n_pixels, -np.inf)
    np.maximum.at(best, flat, priority)
    candidates = np.flatnonzero(priority >= best[flat])  # the maximum (NaN never is)
    last = np.full(n_pixels, -1, dtype=np.int64)
    np.maximum.at(last, flat[candidates], candidates)
    pixel = np.flatnonzero(last >= 0)
    return pixel, last[pixel]


def zbuffer(
    shape: tuple[int, int],
    row: np.ndarray,
    col: np.ndarray,
    priority: np.ndarray,
    *,
    point_px: int = 1,
) -> Raster:
    """At each pixel, the point of highest `priority` (ties: the later point). Points whose pixel
    is outside the image are ignored; with ``point_px > 1`` each point covers a ``point_px``-sided
    square starting at its pixel, and a point's own pixel beats its neighbours' spill."""
    h, w = shape
    row = np.asarray(row, dtype=np.int64)
    col = np.asarray(col, dtype=np.int64)
    priority = np.nan_to_num(np.asarray(priority, dtype=np.float64), nan=-np.inf)
    keep = np.flatnonzero((row >= 0) & (row < h) & (col >= 0) & (col < w))
    pixel, entry = _winners(h * w, row[keep] * w + col[keep], priority[keep])
    point = keep[entry]
    if point_px <= 1 or point.size == 0:
        return Raster(shape, pixel, point)
    # Only the winner of a pixel can win its spill: the squares of the 1-pixel winners suffice.
    dr, dc = np.divmod(np.arange(1, point_px * point_px), point_px)
    s_row = (row[point][None, :] + dr[:, None]).reshape(-1)
    s_col = (col[point][None, :] + dc[:, None]).reshape(-1)
    s_point = np.tile(point, dr.size)
    inside = (s_row < h) & (s_col < w)
    s_flat = (s_row * w + s_col)[inside]
    s_point = s_point[inside]
    s_pixel, s_entry = _winners(h * w, s_flat, priority[s_point])
    free = ~np.isin(s_pixel, pixel, assume_unique=True)  # a pixel with a point of its own keeps it
    all_pixel = np.concatenate([pixel, s_pixel[free]])
    all_point = np.concatenate([point, s_point[s_entry[free]]])
    return Raster(shape, all_pixel, all_point)


def rasterize(
    shape: tuple[int, int],
    row: np.ndarray,
    col: np.ndarray,
    rgb: np.ndarray,
    priority: np.ndarray,
    background: np.ndarray,
    *,
    point_px: int = 1,
) -> np.ndarray:
    """An (H, W, 3) uint8 image: at each pixel, the colour of the point of highest `priority`
    (ties: the later point); see :func:`zbuffer`."""
    return zbuffer(shape, row, col, priority, point_px=point_px).paint(rgb, background)
