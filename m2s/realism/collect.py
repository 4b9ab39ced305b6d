"""One pass over a labelled SemanticKITTI-layout draw: what the realism report needs.

Reads every scan once (label histogram per train id, per-instance points) and, where the
synthetic ground truth `instance_poses.txt` is present, moves each instance's points into its
own object frame (``inv(lidar_from_object[frame]) @ p``) so that the union over scans gives its
true extents, and takes its world track (``world_from_lidar[frame] @ lidar_from_object[frame]``)
for its place beside the ego path and its speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from m2s.data.semantickitti import Sequence
from m2s.errors import DataError
from m2s.labels import LabelManifest, split_label_word
from m2s.synth.truth import INSTANCE_POSES_NAME, read_instance_poses


def group_quantiles(group: np.ndarray, values: np.ndarray, qs: tuple[float, ...], groups: int) -> np.ndarray:
    """(groups, len(qs)) quantiles (nearest-rank on the sorted values) of `values` per dense
    group id in 0..groups-1; nan for empty groups."""
    group = np.asarray(group, dtype=np.int64)
    order = np.lexsort((values, group))
    counts = np.bincount(group, minlength=groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full((groups, len(qs)), np.nan)
    have = counts > 0
    sorted_vals = np.asarray(values)[order]
    for j, q in enumerate(qs):
        pos = starts[have] + np.round(q * (counts[have] - 1)).astype(np.int64)
        out[have, j] = sorted_vals[pos]
    return out


@dataclass(frozen=True)
class InstanceScans:
    """One row per (sequence, scan, instance) of the thing classes."""

    train_id: np.ndarray  # majority train id of its points
    points: np.ndarray  # points of the instance in that scan
    range: np.ndarray  # median horizontal range of those points (metres)


@dataclass(frozen=True)
class Instances:
    """One row per thing instance with ground-truth poses (all its scans together)."""

    sequence: np.ndarray  # (N,) str
    instance: np.ndarray  # (N,) int64
    train_id: np.ndarray  # (N,) int64
    points: np.ndarray  # (N,) accumulated points
    scans: np.ndarray  # (N,) scans it has points in
    extents: np.ndarray  # (N,3) length >= width, height (metres, 1st-99th percentile per object axis)
    lateral: np.ndarray  # (N,) signed offset from the ego path (metres, + left), median over its scans
    speed: np.ndarray  # (N,) net world displacement / time between its first and last scan (m/s)


@dataclass(frozen=True)
class DrawStats:
    sequences: list[str]
    scans: int
    counts: np.ndarray  # (C,) points per train id (0 = ignored)
    instance_scans: InstanceScans
    instances: Instances | None  # None when a sequence lacks instance_poses.txt
    missing_poses: int  # thing points whose instance had no ground-truth pose in their scan


def _lateral(world_xy: np.ndarray, ego: np.ndarray) -> np.ndarray:
    """Signed lateral coordinate (+ left) of world points in the frame of the nearest ego pose."""
    tree = cKDTree(ego[:, :2, 3])
    _, near = tree.query(world_xy)
    rel = world_xy - ego[near, :2, 3]
    # the ego's left axis in the world: second column of its rotation
    return np.einsum("ij,ij->i", rel, ego[near, :2, 1]) / np.linalg.norm(ego[near, :2, 1], axis=1)


def collect(root: str | Path, sequences: list[str], labels: LabelManifest, thing_classes: list[str]) -> DrawStats:
    """Walk `sequences` of the draw under `root` (labelled; see the module docstring)."""
    thing_ids = labels.train_ids_of(thing_classes)
    C = labels.num_classes
    counts = np.zeros(C, dtype=np.int64)
    # per thing point: instance key, frame key, train id, horizontal range, object-frame xyz
    inst_keys, scan_keys, tids, ranges, obj = [], [], [], [], []
    # per (sequence, frame, instance) pose: instance key, world position, time
    track_key, track_xy, track_t, track_lat = [], [], [], []
    missing = 0
    scans = 0
    have_truth = True
    for si, name in enumerate(sequences):
        seq = Sequence(Path(root), name)
        if not seq.has_labels:
            raise DataError(f"{seq.path}: sequence {name} has no labels; the realism report needs labelled scans")
        truth_path = seq.path / INSTANCE_POSES_NAME
        truth = read_instance_poses(truth_path) if truth_path.is_file() else None
        have_truth &= truth is not None
        ego = seq.poses if truth is not None else np.zeros((0, 4, 4))  # world_from_lidar per frame
        for frame, pts, words in seq.iter_scans():
            scans += 1
            sem, inst = split_label_word(words)
            train = labels.to_train(sem, source=seq.label_path(frame))
            counts += np.bincount(train, minlength=C)
            thing = np.isin(train, thing_ids) & (inst > 0)
            if not thing.any():
                continue
            ids, inv = np.unique(inst[thing].astype(np.int64), return_inverse=True)
            xyz = pts[thing, :3].astype(np.float64)
            key = (si << 16) | ids[inv]
            inst_keys.append(key)
            scan_keys.append((key << 20) | frame)
            tids.append(train[thing])
            ranges.append(np.hypot(xyz[:, 0], xyz[:, 1]))
            if truth is None:
                continue
            poses = truth.get(frame, {})
            known = np.array([i in poses for i in ids.tolist()])
            mats = np.stack([poses[i] if i in poses else np.eye(4) for i in ids.tolist()])
            obj_from_lidar = np.linalg.inv(mats)
            p = np.einsum("nij,nj->ni", obj_from_lidar[inv, :3, :3], xyz) + obj_from_lidar[inv, :3, 3]
            p[~known[inv]] = np.nan
            missing += int((~known[inv]).sum())
            obj.append(p)
            if known.any():
                world = ego[frame] @ mats[known]
                track_key.append((si << 16) | ids[known])
                track_xy.append(world[:, :2, 3])
                track_t.append(np.full(int(known.sum()), seq.times[frame]))
                track_lat.append(_lateral(world[:, :2, 3], ego))

    def cat(xs: list[np.ndarray], dt: type) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(0, dtype=dt)

    inst_key, scan_key = cat(inst_keys, np.int64), cat(scan_keys, np.int64)
    tid, rng = cat(tids, np.int64), cat(ranges, float)

    # ---- per instance-scan: points, majority class, median range
    su, sg = np.unique(scan_key, return_inverse=True)
    s_tid = np.bincount(sg * C + tid, minlength=su.size * C).reshape(su.size, C).argmax(axis=1)
    s_pts = np.bincount(sg, minlength=su.size)
    s_rng = group_quantiles(sg, rng, (0.5,), su.size)[:, 0]
    inst_scans = InstanceScans(s_tid, s_pts, s_rng)

    instances = None
    if have_truth and inst_key.size:
        p = np.concatenate(obj)
        ok = np.isfinite(p[:, 0])
        iu, ig = np.unique(inst_key[ok], return_inverse=True)
        G = iu.size
        i_tid = np.bincount(ig * C + tid[ok], minlength=G * C).reshape(G, C).argmax(axis=1)
        i_pts = np.bincount(ig, minlength=G)
        i_scans = np.bincount(np.searchsorted(iu, np.unique(scan_key[ok]) >> 20), minlength=G)
        ext = np.stack(
            [np.diff(group_quantiles(ig, p[ok, a], (0.01, 0.99), G), axis=1)[:, 0] for a in range(3)], axis=1
        )
        extents = np.stack([ext[:, :2].max(axis=1), ext[:, :2].min(axis=1), ext[:, 2]], axis=1)
        tk, txy, tt, tl = (np.concatenate(a) for a in (track_key, track_xy, track_t, track_lat))
        tk_pos = np.searchsorted(iu, tk)
        on = (tk_pos < G) & (iu[np.minimum(tk_pos, G - 1)] == tk)  # tracks of instances with points
        tg, txy, tt, tl = tk_pos[on], txy[on], tt[on], tl[on]
        lateral = group_quantiles(tg, tl, (0.5,), G)[:, 0]
        order = np.lexsort((tt, tg))
        cnt = np.bincount(tg, minlength=G)
        first = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        last = first + cnt - 1
        a, b = order[first], order[last]
        dt = tt[b] - tt[a]
        speed = np.where(dt > 0, np.linalg.norm(txy[b] - txy[a], axis=1) / np.where(dt > 0, dt, 1.0), 0.0)
        names = np.array(sequences)[iu >> 16]
        instances = Instances(names, iu & 0xFFFF, i_tid, i_pts, i_scans, extents, lateral, speed)
    return DrawStats(list(sequences), scans, counts, inst_scans, instances, missing)
