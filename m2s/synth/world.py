"""The synthetic street: scenery, things, the ego trajectory and the KITTI calibration (generator 3).

The street and its cross-section are drawn per sequence (`m2s.synth.layout`); scenery (buildings,
front gardens, hedges, fences, trees, poles, signs, street furniture) comes from
`m2s.synth.scenery`, things (vehicles, two-wheelers, people) placed as in a town from
`m2s.synth.traffic`, their shapes from the class families of `m2s.synth.shapes`.

Raw semantic ids are those of the official SemanticKITTI configuration. Things get an instance
id, unique in the sequence and fixed for its duration; stuff gets instance 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2s.errors import ConfigError
from m2s.synth.builder import Actors
from m2s.synth.config import SynthConfig
from m2s.synth.geometry import Prims
from m2s.synth.ids import USED_RAW_IDS
from m2s.synth.layout import Layout, Street, draw_layout
from m2s.synth.scenery import build_scenery
from m2s.synth.traffic import build_traffic

__all__ = ["USED_RAW_IDS", "World", "build_world", "sequence_rng"]

MARGIN = 100.0  # scenery beyond the first/last ego position (m)


@dataclass(frozen=True)
class World:
    """One sequence: street, static scenery, actors, ego poses and calibration."""

    sequence: str
    street: Street
    layout: Layout
    static: Prims
    actors: Actors
    times: np.ndarray  # (F,) seconds
    ego_world: np.ndarray  # (F,4,4) world_from_lidar
    tr: np.ndarray  # 4x4 LiDAR -> camera
    calib: dict[str, np.ndarray]
    instance_class: dict[int, int]  # instance id -> static raw id of its class
    static_ids: np.ndarray  # (K,) instance ids of the standing / parked things
    static_poses: np.ndarray  # (K,4,4) their world_from_object (the frame their parts are defined in)

    def instance_poses(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth of every thing instance in scan `frame`: ids (ascending) and
        ``lidar_from_object`` (K,4,4), the object frame expressed in that scan's LiDAR frame
        (a point ``p`` of the object at time t is ``lidar_from_object @ p`` in the scan)."""
        moving = self.actors.poses(self.street, float(self.times[frame]))
        ids = np.concatenate([self.static_ids, self.actors.instance])
        world = np.concatenate([self.static_poses, moving])
        order = np.argsort(ids, kind="stable")
        return ids[order], np.linalg.inv(self.ego_world[frame]) @ world[order]

    @property
    def poses_lidar(self) -> np.ndarray:
        """LiDAR-frame poses relative to the first scan (what `Sequence.poses` must return)."""
        return np.linalg.inv(self.ego_world[0]) @ self.ego_world

    @property
    def poses_camera(self) -> np.ndarray:
        """KITTI `poses.txt` convention: Tr @ P_lidar @ inv(Tr)."""
        return self.tr @ self.poses_lidar @ np.linalg.inv(self.tr)


def sequence_rng(seed: int, sequence: str, *stream: int) -> np.random.Generator:
    """Independent stream per (seed, sequence, purpose...): a sequence never depends on which
    other sequences are generated with it."""
    return np.random.default_rng(np.random.SeedSequence([seed, int(sequence), *stream]))


def _rot(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def kitti_calibration(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """KITTI-like `Tr` (LiDAR x fwd/y left/z up -> camera x right/y down/z fwd, slightly off-axis,
    ~0.3 m behind the camera) and rectified projection matrices P0..P3."""
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    small = _rot(*np.deg2rad(rng.uniform(-0.5, 0.5, size=3)))
    tr = np.eye(4)
    tr[:3, :3] = axes @ small
    tr[:3, 3] = [rng.uniform(-0.02, 0.0), rng.uniform(-0.08, -0.05), rng.uniform(-0.33, -0.27)]
    f, cx, cy = 718.86, 607.19, 185.22
    calib: dict[str, np.ndarray] = {}
    for name, tx, ty in (("P0", 0.0, 0.0), ("P1", -386.14, 0.0), ("P2", 45.38, -0.11), ("P3", -337.28, 2.37)):
        p = np.eye(4)
        p[:3, :] = [[f, 0.0, cx, tx], [0.0, f, cy, ty], [0.0, 0.0, 1.0, 0.0 if name in ("P0", "P1") else 0.0045]]
        calib[name] = p
    calib["Tr"] = tr
    return tr, calib


def build_world(cfg: SynthConfig, sequence: str) -> World:
    """Deterministic world of one sequence (depends only on `cfg` and the sequence id)."""
    rng = sequence_rng(cfg.seed, sequence, 0)
    street = Street(
        amplitude=rng.uniform(6.0, 20.0), wavelength=rng.uniform(500.0, 900.0), phase=rng.uniform(0, 2 * np.pi)
    )
    n = cfg.scans
    times = np.arange(n, dtype=np.float64) / cfg.rate_hz
    # ego speed varies smoothly around v0 (acceleration / braking)
    v0 = rng.uniform(*cfg.ego_speed)
    amp = min(0.8, 0.5 * (cfg.ego_speed[1] - cfg.ego_speed[0]) + 0.3)
    period = rng.uniform(15.0, 30.0)
    x_ego = v0 * times + amp * period / (2 * np.pi) * (1.0 - np.cos(2 * np.pi * times / period))
    x_lo, x_hi = float(x_ego[0]) - MARGIN, float(x_ego[-1]) + MARGIN
    layout = draw_layout(rng, x_lo, x_hi)
    ego_lane = int(rng.integers(0, layout.lanes))
    X, Y, heading = street.place(x_ego, np.full(n, layout.ego_lane_d(ego_lane)))
    ego = np.tile(np.eye(4), (n, 1, 1))
    c, s = np.cos(heading), np.sin(heading)
    ego[:, 0, 0], ego[:, 0, 1], ego[:, 1, 0], ego[:, 1, 1] = c, -s, s, c
    ego[:, 0, 3], ego[:, 1, 3], ego[:, 2, 3] = X, Y, cfg.sensor_height
    tr, calib = kitti_calibration(rng)

    scenery = build_scenery(sequence_rng(cfg.seed, sequence, 2), street, layout, x_lo, x_hi)
    mid = n // 2
    traffic = build_traffic(
        sequence_rng(cfg.seed, sequence, 3), street, layout, x_lo, x_hi, float(times[mid]), float(times[-1]),
        (ego_lane, float(x_ego[mid]), float(v0)), cfg.hard_rate,
    )  # fmt: skip
    if len(traffic.instance_class) > 0xFFFF:
        raise ConfigError(
            f"sequence {sequence}: {len(traffic.instance_class)} instances do not fit the 16-bit instance id; "
            "use fewer scans"
        )
    return World(
        sequence=sequence,
        street=street,
        layout=layout,
        static=Prims.concat([scenery, traffic.static]),
        actors=traffic.actors,
        times=times,
        ego_world=ego,
        tr=tr,
        calib=calib,
        instance_class=traffic.instance_class,
        static_ids=traffic.static_ids,
        static_poses=traffic.static_poses,
    )
