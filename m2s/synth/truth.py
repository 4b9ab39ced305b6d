"""Ground-truth instance poses written beside a synthetic sequence (`instance_poses.txt`).

The generator knows where every thing instance is in every scan; fusion never reads this file
(real SemanticKITTI has no such file), benchmarks and tests use it to measure alignment error.

Format (text, one line per (frame, instance) with at least one point of the instance in that
scan, sorted by frame then instance id; lines starting with ``#`` are comments)::

    frame instance r00 r01 r02 t0 r10 r11 r12 t1 r20 r21 r22 t2

the 3x4 row-major ``lidar_from_object`` of the instance in that frame: the rigid transform from
the object frame (the frame the instance's parts are modelled in: x forward, y left, z up, origin
on the ground under the object's centre) into the scan's LiDAR frame. The true position in
target scan ``f`` of a point ``p`` seen in source scan ``s`` is therefore
``lidar_from_object[f] @ inv(lidar_from_object[s]) @ p``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m2s.errors import DataError
from m2s.io_utils import atomic_path

INSTANCE_POSES_NAME = "instance_poses.txt"
_HEADER = "# frame instance lidar_from_object (3x4 row-major: r00 r01 r02 t0 r10 r11 r12 t1 r20 r21 r22 t2)\n"
_ROW = "%d %d " + " ".join(["%.9e"] * 12) + "\n"

InstancePoses = dict[int, dict[int, np.ndarray]]


def format_instance_poses(frame: np.ndarray, instance: np.ndarray, lidar_from_object: np.ndarray) -> str:
    """Text of the file for rows (frame (N,), instance (N,), lidar_from_object (N,4,4))."""
    mats = np.asarray(lidar_from_object, dtype=np.float64)[:, :3, :].reshape(-1, 12)
    rows = zip(np.asarray(frame).tolist(), np.asarray(instance).tolist(), mats.tolist(), strict=True)
    return _HEADER + "".join(_ROW % (f, i, *m) for f, i, m in rows)


def write_instance_poses(
    path: str | Path, frame: np.ndarray, instance: np.ndarray, lidar_from_object: np.ndarray
) -> None:
    """Write the file atomically (a killed run never leaves half of it under its name)."""
    text = format_instance_poses(frame, instance, lidar_from_object)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_instance_poses(path: str | Path) -> InstancePoses:
    """``{frame: {instance: lidar_from_object 4x4 float64}}`` from an `instance_poses.txt`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"instance poses file missing: {path}")
    try:
        arr = np.loadtxt(path, comments="#", ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: not a valid instance poses file ({exc})") from None
    if arr.size == 0:
        return {}
    if arr.shape[1] != 14:
        raise DataError(f"{path}: {arr.shape[1]} columns, expected 14 (frame, instance, 3x4 pose)")
    if not np.isfinite(arr).all() or (arr[:, :2] != np.round(arr[:, :2])).any():
        raise DataError(f"{path}: non-finite values or non-integer frame/instance")
    mats = np.tile(np.eye(4), (arr.shape[0], 1, 1))
    mats[:, :3, :] = arr[:, 2:].reshape(-1, 3, 4)
    out: InstancePoses = {}
    for f, i, m in zip(arr[:, 0].astype(np.int64).tolist(), arr[:, 1].astype(np.int64).tolist(), mats, strict=True):
        out.setdefault(f, {})[i] = m
    return out
