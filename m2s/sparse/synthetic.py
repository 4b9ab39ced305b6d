"""Synthetic LiDAR-like scans for tests and benchmarks (no dataset needed).

A 64-beam spinning sensor is ray-cast against a ground plane and a seeded street scene of
axis-aligned boxes (building walls, cars, poles, bushes), so the voxel structure (dense
near the sensor, sparse far away, surfaces rather than volumes) resembles a KITTI scan.
"""

from __future__ import annotations

import math

import torch

from m2s.errors import ConfigError

SENSOR_HEIGHT = 1.73


def _scene_boxes(gen: torch.Generator, extent: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3) lower and upper corners of the scene's boxes."""
    lows: list[list[float]] = []
    highs: list[list[float]] = []
    ground = -SENSOR_HEIGHT

    def rnd(a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand((), generator=gen))

    # Building facades on both sides of a street along x, broken into blocks with gaps.
    for side in (-1.0, 1.0):
        x = -extent
        while x < extent:
            length = rnd(8.0, 25.0)
            y = side * rnd(9.0, 13.0)
            lows.append([x, min(y, y + side * 6.0), ground])
            highs.append([x + length, max(y, y + side * 6.0), ground + rnd(6.0, 15.0)])
            x += length + rnd(2.0, 8.0)
    # Parked cars along both kerbs, and some in the street.
    for _ in range(36):
        cx, cy = rnd(-extent * 0.9, extent * 0.9), rnd(-7.0, 7.0)
        if abs(cx) < 3.0 and abs(cy) < 2.0:
            continue  # not on top of the sensor
        lows.append([cx - 2.2, cy - 0.9, ground])
        highs.append([cx + 2.2, cy + 0.9, ground + 1.5])
    # Poles / trunks and bushes on the pavements.
    for _ in range(50):
        cx, cy = rnd(-extent, extent), rnd(6.5, 8.5) * (1 if torch.rand((), generator=gen) < 0.5 else -1)
        r = rnd(0.1, 0.25)
        lows.append([cx - r, cy - r, ground])
        highs.append([cx + r, cy + r, ground + rnd(3.0, 7.0)])
    for _ in range(25):
        cx, cy = rnd(-extent, extent), rnd(6.0, 9.0) * (1 if torch.rand((), generator=gen) < 0.5 else -1)
        r = rnd(0.5, 1.5)
        lows.append([cx - r, cy - r, ground])
        highs.append([cx + r, cy + r, ground + rnd(0.5, 2.0)])
    return torch.tensor(lows, dtype=torch.float64), torch.tensor(highs, dtype=torch.float64)


def _cast(dirs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, max_range: float) -> torch.Tensor:
    """Distance along each unit ray (from the origin) to the first hit; inf for none."""
    t = torch.full((dirs.shape[0],), math.inf, dtype=torch.float64)
    down = dirs[:, 2] < -1e-6
    t[down] = -SENSOR_HEIGHT / dirs[down, 2]
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    for start in range(0, lo.shape[0], 32):  # chunks of boxes bound the (R, B) temporaries
        t1 = lo[None, start : start + 32] * inv[:, None]
        t2 = hi[None, start : start + 32] * inv[:, None]
        near = torch.minimum(t1, t2).amax(dim=2)
        far = torch.maximum(t1, t2).amin(dim=2)
        hit = (near <= far) & (near > 0)
        near = torch.where(hit, near, torch.full_like(near, math.inf))
        t = torch.minimum(t, near.amin(dim=1))
    t[t > max_range] = math.inf
    return t


def synthetic_scan(num_points: int = 120_000, seed: int = 0, extent: float = 50.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded synthetic scan: ``xyz`` float32 (N, 3) in metres and ``intensity`` (N,) in [0, 1].

    Exactly ``num_points`` points within ``extent`` metres of the sensor.
    """
    if num_points < 1:
        raise ConfigError(f"num_points must be positive, got {num_points}")
    gen = torch.Generator().manual_seed(seed)
    lo, hi = _scene_boxes(gen, extent)
    elev = torch.linspace(math.radians(-24.9), math.radians(2.0), 64, dtype=torch.float64)
    n_az = max(64, math.ceil(1.6 * num_points / 64))
    while True:
        az = torch.arange(n_az, dtype=torch.float64) * (2 * math.pi / n_az)
        e, a = torch.meshgrid(elev, az, indexing="ij")
        dirs = torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], dim=-1).reshape(-1, 3)
        t = _cast(dirs, lo, hi, extent)
        ok = torch.isfinite(t)
        if int(ok.sum()) >= num_points:
            break
        n_az *= 2
    dirs, t = dirs[ok], t[ok]
    t = t + 0.02 * torch.randn(t.shape, generator=gen, dtype=torch.float64)  # range noise
    keep = torch.randperm(t.numel(), generator=gen)[:num_points].sort().values
    xyz = (dirs[keep] * t[keep, None]).to(torch.float32)
    intensity = (0.3 + 0.4 * torch.rand(num_points, generator=gen) / (1 + 0.02 * t[keep].float())).clamp(0, 1)
    return xyz, intensity.to(torch.float32)
