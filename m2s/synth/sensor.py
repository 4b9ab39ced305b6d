"""The simulated HDL-64E-like scan: ray grid, first-hit casting, noise, remission and dropouts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2s.labels import make_label_word
from m2s.synth.config import SynthConfig
from m2s.synth.geometry import Prims, RayGrid, cast
from m2s.synth.ids import OUTLIER
from m2s.synth.layout import CURB, ground_class
from m2s.synth.world import World, sequence_rng


@dataclass(frozen=True)
class Scan:
    points: np.ndarray  # (N,4) float32 x, y, z, remission in the LiDAR frame
    labels: np.ndarray  # (N,) uint32 instance << 16 | raw semantic id


def ray_grid(cfg: SynthConfig, azimuth0: float = 0.0) -> RayGrid:
    elevation = np.deg2rad(np.linspace(cfg.elevation_top_deg, cfg.elevation_bottom_deg, cfg.beams))
    return RayGrid(elevation=elevation, azimuth0=azimuth0, columns=cfg.columns)


def _ground(
    world: World, dirs: np.ndarray, position: np.ndarray, yaw: float, height: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First hit of every ray on the two-level ground (road level and the raised curb level).

    Returns (t, raw semantic id, base remission); t is inf for rays that do not go down.
    """
    dz = dirs[:, 2]
    down = dz < -1e-4
    c, s = np.cos(yaw), np.sin(yaw)
    t_out = np.full(dirs.shape[0], np.inf, dtype=np.float32)
    sem_out = np.zeros(dirs.shape[0], dtype=np.uint32)
    base_out = np.zeros(dirs.shape[0], dtype=np.float32)
    d = dirs[down]

    def hit(level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        t = (level / d[:, 2]).astype(np.float32)
        lx, ly = d[:, 0] * t, d[:, 1] * t
        x = position[0] + c * lx - s * ly
        y = position[1] + s * lx + c * ly
        sem, base, raised = ground_class(world.street, world.layout, x, y)
        return t, sem, base, raised

    # the raised plane is met first: keep it where the ground there really is raised; otherwise
    # the ray goes on to road level, and where the ground there is raised it met the curb face
    t_hi, sem_hi, base_hi, raised_hi = hit(CURB - height)
    t_lo, sem_lo, base_lo, _ = hit(-height)
    t_out[down] = np.where(raised_hi, t_hi, t_lo)
    sem_out[down] = np.where(raised_hi, sem_hi, sem_lo)
    base_out[down] = np.where(raised_hi, base_hi, base_lo)
    return t_out, sem_out, base_out


def render_scan(world: World, cfg: SynthConfig, frame: int) -> Scan:
    """Ray-cast scan `frame` of the world's sequence; deterministic for (seed, sequence, frame)."""
    rng = sequence_rng(cfg.seed, world.sequence, 1, frame)
    # a random azimuth phase per scan: consecutive scans sample different surface points
    grid = ray_grid(cfg, azimuth0=float(rng.uniform(0.0, 2.0 * np.pi / cfg.columns)))
    dirs = grid.directions()
    pose = world.ego_world[frame]
    position = pose[:3, 3]
    yaw = float(np.arctan2(pose[1, 0], pose[0, 0]))

    prims = Prims.concat([world.static, world.actors.at(world.street, float(world.times[frame]))])
    local = prims.to_frame(position, yaw)
    depth, winner = cast(local, grid, dirs, cfg.max_range)
    t_g, sem_g, base_g = _ground(world, dirs, position, yaw, float(position[2]))

    use_ground = t_g < depth
    t = np.where(use_ground, t_g, depth)
    hit_obj = ~use_ground & (winner >= 0)
    w = np.where(hit_obj, winner, 0)
    sem = np.where(use_ground, sem_g, np.where(hit_obj, local.sem[w] if len(local) else 0, 0)).astype(np.uint32)
    inst = np.where(hit_obj, local.inst[w] if len(local) else 0, 0).astype(np.uint32)
    base = np.where(use_ground, base_g, np.where(hit_obj, local.refl[w] if len(local) else 0, 0)).astype(np.float32)
    # ground returns weaken at grazing incidence (the ground normal is vertical: cos = |dz|)
    base = np.where(use_ground, base * (0.55 + 0.45 * np.abs(dirs[:, 2]) ** 0.5), base)

    n = int(t.shape[0])
    noise = rng.standard_normal(n, dtype=np.float32) * np.float32(cfg.range_noise)
    refl_noise = rng.standard_normal(n, dtype=np.float32) * np.float32(cfg.remission_noise)
    u = rng.random(n, dtype=np.float32)
    rng_ratio = np.minimum(t, cfg.max_range) / np.float32(cfg.max_range)
    # dropouts: a constant rate plus weak, distant returns that fail more often
    p_drop = cfg.dropout + 0.3 * rng_ratio**3 * (1.0 - base)
    keep = np.isfinite(t) & (t < cfg.max_range) & (t > cfg.min_range) & (u >= p_drop)

    # outliers: spurious echoes (multipath, dust) at a random range along the ray
    outlier = keep & (rng.random(n, dtype=np.float32) < np.float32(cfg.outlier_rate))
    t = np.where(outlier, t * rng.uniform(0.2, 1.0, n).astype(np.float32), t)
    sem = np.where(outlier, OUTLIER, sem).astype(np.uint32)
    inst = np.where(outlier, 0, inst).astype(np.uint32)
    keep &= t > cfg.min_range
    r = (t[keep] + noise[keep])[:, None]
    points = np.empty((r.shape[0], 4), dtype=np.float32)
    points[:, :3] = dirs[keep] * r
    points[:, 3] = np.clip(base[keep] + refl_noise[keep], 0.0, 1.0)
    return Scan(points=points, labels=make_label_word(sem[keep], inst[keep]))
