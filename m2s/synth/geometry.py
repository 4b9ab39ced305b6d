"""Solid primitives and a vectorised ray caster (first hit along every ray).

Every primitive is described by the same fields so that culling and windowing are one set of
array expressions: a centre, half extents ``(a, b, c)`` and a yaw about the vertical axis.

* box:       half sizes ``(a, b, c)`` along its local x, y, z, rotated by ``yaw``;
* cylinder:  vertical axis, radius ``a`` (``b == a``), half height ``c``;
* ellipsoid: radii ``(a, b, c)`` along its local x, y, z, rotated by ``yaw`` (a wheel is a disc
  ``(r, thickness, r)``, a torso ``(depth, width, height)``).

Rays leave the origin of the frame the primitives are given in (the sensor frame). Instead of
testing all rays against all primitives, each primitive is first reduced to the window of
beams x columns its bounds can cover; the (ray, primitive) pairs of all windows are then
intersected at once per primitive kind, and a z-buffer (``np.minimum.at``) keeps the nearest hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
_EPS = np.float32(1e-9)


@dataclass(frozen=True)
class Prims:
    """A set of primitives with their label (semantic raw id, instance id) and base remission."""

    kind: np.ndarray  # (N,) int8
    center: np.ndarray  # (N,3) float64
    half: np.ndarray  # (N,3) float64
    yaw: np.ndarray  # (N,) float64
    sem: np.ndarray  # (N,) uint32 raw semantic id
    inst: np.ndarray  # (N,) uint32 instance id (0 for stuff)
    refl: np.ndarray  # (N,) float32 base remission

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @staticmethod
    def empty() -> Prims:
        return Prims(
            kind=np.zeros(0, np.int8),
            center=np.zeros((0, 3)),
            half=np.zeros((0, 3)),
            yaw=np.zeros(0),
            sem=np.zeros(0, np.uint32),
            inst=np.zeros(0, np.uint32),
            refl=np.zeros(0, np.float32),
        )

    @staticmethod
    def concat(parts: list[Prims]) -> Prims:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Prims.empty()
        fields = ("kind", "center", "half", "yaw", "sem", "inst", "refl")
        return Prims(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    def take(self, idx: np.ndarray) -> Prims:
        return Prims(
            self.kind[idx], self.center[idx], self.half[idx], self.yaw[idx],
            self.sem[idx], self.inst[idx], self.refl[idx],
        )  # fmt: skip

    def to_frame(self, position: np.ndarray, yaw: float) -> Prims:
        """Express the primitives in a frame at `position` rotated by `yaw` about z."""
        c, s = np.cos(yaw), np.sin(yaw)
        rel = self.center - np.asarray(position, dtype=np.float64)
        center = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], axis=1)
        return Prims(self.kind, center, self.half, self.yaw - yaw, self.sem, self.inst, self.refl)


@dataclass(frozen=True)
class RayGrid:
    """Rays of a spinning LiDAR: `beams` elevations x `columns` azimuths, row-major (beam, column)."""

    elevation: np.ndarray  # (B,) radians, descending, evenly spaced
    azimuth0: float  # azimuth of column 0 (radians); columns go counter-clockwise
    columns: int

    @property
    def beams(self) -> int:
        return int(self.elevation.shape[0])

    @property
    def d_azimuth(self) -> float:
        return 2.0 * np.pi / self.columns

    @property
    def d_elevation(self) -> float:
        return float(self.elevation[0] - self.elevation[1]) if self.beams > 1 else 1.0

    def directions(self) -> np.ndarray:
        """Unit directions, float32 (B*C, 3)."""
        az = self.azimuth0 + self.d_azimuth * np.arange(self.columns)
        ce, se = np.cos(self.elevation)[:, None], np.sin(self.elevation)[:, None]
        d = np.empty((self.beams, self.columns, 3), dtype=np.float32)
        d[..., 0] = ce * np.cos(az)[None, :]
        d[..., 1] = ce * np.sin(az)[None, :]
        d[..., 2] = np.broadcast_to(se, (self.beams, self.columns))
        return d.reshape(-1, 3)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def ray_windows(prims: Prims, grid: RayGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Conservative window of rays each primitive can be hit by.

    Returns (beam_lo, n_beams, col_lo, n_cols) per primitive; columns wrap modulo `columns`.
    Azimuth bounds are exact for round footprints and for boxes (a convex polygon not containing
    the origin spans the angles of its corners); elevation bounds use the nearest and farthest
    horizontal distance of the footprint, so they are conservative too.
    """
    cx, cy = prims.center[:, 0], prims.center[:, 1]
    a, b, hz = prims.half[:, 0], prims.half[:, 1], prims.half[:, 2]
    dist = np.hypot(cx, cy)
    az_c = np.arctan2(cy, cx)
    is_box = prims.kind == BOX

    # round footprints (an ellipsoid's footprint lies within the circle of its larger radius)
    radius = np.maximum(a, b)
    half_w = np.arcsin(np.clip(radius / np.maximum(dist, 1e-9), 0.0, 1.0))
    lo_rel, hi_rel = -half_w, half_w.copy()
    r_min = np.maximum(dist - radius, 0.0)
    r_max = dist + radius
    inside = dist <= radius

    if is_box.any():
        cyaw, syaw = np.cos(prims.yaw[is_box]), np.sin(prims.yaw[is_box])
        bx, by, ba, bb = cx[is_box], cy[is_box], a[is_box], b[is_box]
        # origin in the box frame
        lx = -(cyaw * bx + syaw * by)
        ly = -(-syaw * bx + cyaw * by)
        inside[is_box] = (np.abs(lx) <= ba) & (np.abs(ly) <= bb)
        r_min[is_box] = np.hypot(np.maximum(np.abs(lx) - ba, 0.0), np.maximum(np.abs(ly) - bb, 0.0))
        sx = np.array([1.0, 1.0, -1.0, -1.0])
        sy = np.array([1.0, -1.0, 1.0, -1.0])
        kx = (ba[:, None] * sx) * cyaw[:, None] - (bb[:, None] * sy) * syaw[:, None] + bx[:, None]
        ky = (ba[:, None] * sx) * syaw[:, None] + (bb[:, None] * sy) * cyaw[:, None] + by[:, None]
        rel = _wrap(np.arctan2(ky, kx) - az_c[is_box, None])
        lo_rel[is_box] = rel.min(axis=1)
        hi_rel[is_box] = rel.max(axis=1)
        r_max[is_box] = np.hypot(kx, ky).max(axis=1)

    z0 = prims.center[:, 2] - hz
    z1 = prims.center[:, 2] + hz
    el_hi = np.arctan2(z1, np.where(z1 > 0, r_min, r_max))
    el_lo = np.arctan2(z0, np.where(z0 < 0, r_min, r_max))

    d_az = grid.d_azimuth
    c_lo = np.floor((az_c + lo_rel - grid.azimuth0) / d_az).astype(np.int64) - 1
    c_hi = np.ceil((az_c + hi_rel - grid.azimuth0) / d_az).astype(np.int64) + 1
    n_cols = np.minimum(c_hi - c_lo + 1, grid.columns)
    c_lo = np.where(inside, 0, c_lo % grid.columns)
    n_cols = np.where(inside, grid.columns, n_cols)

    top, d_el = float(grid.elevation[0]), grid.d_elevation
    b_lo = np.maximum(np.floor((top - el_hi) / d_el).astype(np.int64) - 1, 0)
    b_hi = np.minimum(np.ceil((top - el_lo) / d_el).astype(np.int64) + 1, grid.beams - 1)
    n_beams = np.maximum(b_hi - b_lo + 1, 0)
    return b_lo, n_beams, c_lo, n_cols


def _pairs(
    b_lo: np.ndarray, n_beams: np.ndarray, c_lo: np.ndarray, n_cols: np.ndarray, columns: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expand per-primitive windows into flat (primitive index, ray index) pairs."""
    counts = n_beams * n_cols
    total = int(counts.sum())
    prim = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
    start = np.cumsum(counts) - counts
    k = np.arange(total, dtype=np.int64) - start[prim]
    nc = n_cols[prim]
    beam = b_lo[prim] + k // nc
    col = (c_lo[prim] + k % nc) % columns
    return prim, beam * columns + col


def _hit_boxes(prims: Prims, prim: np.ndarray, d: np.ndarray) -> np.ndarray:
    cyaw = np.cos(prims.yaw).astype(np.float32)
    syaw = np.sin(prims.yaw).astype(np.float32)
    c = prims.center
    # ray origin (sensor) in each box's frame, per primitive then gathered per pair
    ox = (-(np.cos(prims.yaw) * c[:, 0] + np.sin(prims.yaw) * c[:, 1])).astype(np.float32)[prim]
    oy = (-(-np.sin(prims.yaw) * c[:, 0] + np.cos(prims.yaw) * c[:, 1])).astype(np.float32)[prim]
    oz = (-c[:, 2]).astype(np.float32)[prim]
    h = prims.half.astype(np.float32)[prim]
    cs, sn = cyaw[prim], syaw[prim]
    dx = cs * d[:, 0] + sn * d[:, 1]
    dy = -sn * d[:, 0] + cs * d[:, 1]
    dz = d[:, 2]
    t_near = np.zeros(prim.shape[0], dtype=np.float32)
    t_far = np.full(prim.shape[0], np.inf, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for o, dd, hh in ((ox, dx, h[:, 0]), (oy, dy, h[:, 1]), (oz, dz, h[:, 2])):
            inv = np.float32(1.0) / np.where(np.abs(dd) < _EPS, _EPS, dd)
            t1 = (-hh - o) * inv
            t2 = (hh - o) * inv
            np.maximum(t_near, np.minimum(t1, t2), out=t_near)
            np.minimum(t_far, np.maximum(t1, t2), out=t_far)
    # t_near == 0 means the origin is inside the box: not a visible surface
    hit = (t_near <= t_far) & (t_near > 0)
    return np.where(hit, t_near, np.float32(np.inf))


def _hit_cylinders(prims: Prims, prim: np.ndarray, d: np.ndarray) -> np.ndarray:
    ox = (-prims.center[:, 0]).astype(np.float32)[prim]
    oy = (-prims.center[:, 1]).astype(np.float32)[prim]
    z0 = (prims.center[:, 2] - prims.half[:, 2]).astype(np.float32)[prim]
    z1 = (prims.center[:, 2] + prims.half[:, 2]).astype(np.float32)[prim]
    r2 = (prims.half[:, 0] ** 2).astype(np.float32)[prim]
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    a = np.maximum(dx * dx + dy * dy, _EPS)
    hb = ox * dx + oy * dy
    cc = ox * ox + oy * oy - r2
    disc = hb * hb - a * cc
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-hb - np.sqrt(disc)) / a
        z = dz * t_side
        side_ok = (disc >= 0) & (cc > 0) & (t_side > 0) & (z >= z0) & (z <= z1)
        t = np.where(side_ok, t_side, np.float32(np.inf))
        # caps: the top seen from above, the bottom seen from below
        for zc, facing in ((z1, dz < 0), (z0, dz > 0)):
            tc = zc / np.where(np.abs(dz) < _EPS, _EPS, dz)
            px, py = ox + dx * tc, oy + dy * tc
            ok = facing & (tc > 0) & (px * px + py * py <= r2)
            t = np.where(ok & (tc < t), tc, t)
    return t


def _hit_ellipsoids(prims: Prims, prim: np.ndarray, d: np.ndarray) -> np.ndarray:
    ra = prims.half[:, 0].astype(np.float32)[prim]
    rb = prims.half[:, 1].astype(np.float32)[prim]
    rc = prims.half[:, 2].astype(np.float32)[prim]
    cyaw, syaw = np.cos(prims.yaw), np.sin(prims.yaw)
    c = prims.center
    # ray origin and direction in the ellipsoid's frame, then space scaled by 1/radii: the
    # ellipsoid becomes a unit sphere and the ray parameter t is unchanged
    ox = (-(cyaw * c[:, 0] + syaw * c[:, 1])).astype(np.float32)[prim] / ra
    oy = (-(-syaw * c[:, 0] + cyaw * c[:, 1])).astype(np.float32)[prim] / rb
    oz = (-c[:, 2]).astype(np.float32)[prim] / rc
    cs, sn = cyaw.astype(np.float32)[prim], syaw.astype(np.float32)[prim]
    dx = (cs * d[:, 0] + sn * d[:, 1]) / ra
    dy = (-sn * d[:, 0] + cs * d[:, 1]) / rb
    dz = d[:, 2] / rc
    a = dx * dx + dy * dy + dz * dz
    hb = ox * dx + oy * dy + oz * dz
    cc = ox * ox + oy * oy + oz * oz - 1.0
    disc = hb * hb - a * cc
    with np.errstate(invalid="ignore"):
        t = (-hb - np.sqrt(disc)) / a
    ok = (disc >= 0) & (cc > 0) & (t > 0)
    return np.where(ok, t, np.float32(np.inf))


_HIT = {BOX: _hit_boxes, CYLINDER: _hit_cylinders, ELLIPSOID: _hit_ellipsoids}


def cast(prims: Prims, grid: RayGrid, directions: np.ndarray, max_range: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of every ray against the primitives (given in the sensor frame).

    Returns (depth (R,) float32 with inf for no hit, index (R,) int64 of the primitive hit, -1 none).
    """
    n_rays = directions.shape[0]
    depth = np.full(n_rays, np.inf, dtype=np.float32)
    winner = np.full(n_rays, -1, dtype=np.int64)
    if not len(prims):
        return depth, winner
    # cull what lies entirely beyond the maximum range
    reach = np.hypot(prims.center[:, 0], prims.center[:, 1]) - np.hypot(prims.half[:, 0], prims.half[:, 1])
    keep = np.flatnonzero(reach < max_range)
    rays_all, t_all, prim_all = [], [], []
    for kind, fn in _HIT.items():
        idx = keep[prims.kind[keep] == kind]
        if not idx.size:
            continue
        sub = prims.take(idx)
        prim, ray = _pairs(*ray_windows(sub, grid), grid.columns)
        if not prim.size:
            continue
        t = fn(sub, prim, directions[ray])
        ok = t < max_range
        rays_all.append(ray[ok])
        t_all.append(t[ok])
        prim_all.append(idx[prim[ok]])
    if not rays_all:
        return depth, winner
    ray = np.concatenate(rays_all)
    t = np.concatenate(t_all)
    prim = np.concatenate(prim_all)
    np.minimum.at(depth, ray, t)
    best = t == depth[ray]
    winner[ray[best]] = prim[best]
    return depth, winner
