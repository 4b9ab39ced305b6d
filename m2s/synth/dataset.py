"""Writing synthetic sequences in the SemanticKITTI layout, with a `dataset` artifact manifest.

The manifest is written last (and an `.m2s-synth-incomplete` marker first), so a killed run is
recognisable and is regenerated from scratch on the next call; a finished dataset with the same
content id is left untouched.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m2s.artifacts import (
    MANIFEST_NAME,
    Manifest,
    describe_files,
    existing_artifact,
    new_manifest,
    read_manifest,
    write_manifest,
)
from m2s.data.semantickitti import sequence_dir, write_calib, write_labels, write_poses, write_scan, write_times
from m2s.errors import ArtifactError, ConfigError, M2SError
from m2s.labels import load_label_manifest
from m2s.synth.config import SynthConfig
from m2s.synth.sensor import render_scan
from m2s.synth.truth import INSTANCE_POSES_NAME, write_instance_poses
from m2s.synth.world import World, build_world

ProgressFn = Callable[[int, int], None]  # (scans done, scans total)
MARKER_NAME = ".m2s-synth-incomplete"
_META_FILES = ("poses.txt", "calib.txt", "times.txt")


@dataclass
class SequenceStats:
    """What one sequence (or a chunk of its scans) produced."""

    sequence: str
    labelled: bool
    scans: int = 0
    points: int = 0
    instance_points: dict[int, int] = field(default_factory=dict)  # instance id -> points, all scans
    present: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> instance ids with points

    def merge(self, other: SequenceStats) -> None:
        self.scans += other.scans
        self.points += other.points
        for k, v in other.instance_points.items():
            self.instance_points[k] = self.instance_points.get(k, 0) + v
        self.present.update(other.present)


def write_sequence_metadata(root: Path, world: World, labelled: bool) -> list[str]:
    """Write poses (camera frame, KITTI convention), calib and times; create the scan folders.

    Returns the written files relative to `root`.
    """
    seq_dir = sequence_dir(root, world.sequence)
    (seq_dir / "velodyne").mkdir(parents=True, exist_ok=True)
    if labelled:
        (seq_dir / "labels").mkdir(parents=True, exist_ok=True)
    write_poses(seq_dir / "poses.txt", world.poses_camera)
    write_calib(seq_dir / "calib.txt", world.calib)
    write_times(seq_dir / "times.txt", world.times)
    return [f"sequences/{world.sequence}/{name}" for name in _META_FILES]


def write_sequence_truth(root: Path, world: World, present: dict[int, np.ndarray]) -> str:
    """Write the ground-truth poses of the instances present in each scan (`instance_poses.txt`,
    see :mod:`m2s.synth.truth`); returns the file relative to `root`.

    Presence comes from the rendered labels, so the file is the same whichever process rendered
    which scans; the poses come from the world alone.
    """
    frames, ids, mats = [], [], []
    for f in sorted(present):
        all_ids, poses = world.instance_poses(f)
        keep = np.isin(all_ids, present[f])
        frames.append(np.full(int(keep.sum()), f, dtype=np.int64))
        ids.append(all_ids[keep])
        mats.append(poses[keep])
    empty = np.zeros(0, dtype=np.int64)
    write_instance_poses(
        sequence_dir(root, world.sequence) / INSTANCE_POSES_NAME,
        np.concatenate(frames) if frames else empty,
        np.concatenate(ids) if ids else empty,
        np.concatenate(mats) if mats else np.zeros((0, 4, 4)),
    )
    return f"sequences/{world.sequence}/{INSTANCE_POSES_NAME}"


def generate_sequence(
    root: str | Path,
    cfg: SynthConfig,
    sequence: str,
    *,
    frames: range | None = None,
    write_metadata: bool = True,
    progress: Callable[[int], None] | None = None,
) -> SequenceStats:
    """Generate one sequence (or the scans `frames` of it) under `root/sequences/SS`.

    Deterministic: the bytes of a scan depend only on (cfg, sequence, frame). `progress` is
    called with the number of scans written so far. With `write_metadata`, a labelled sequence
    also gets its ground-truth `instance_poses.txt` for the generated frames (otherwise the caller
    writes it from the returned `present` with :func:`write_sequence_truth`).
    """
    root = Path(root)
    world = build_world(cfg, sequence)
    labelled = cfg.labelled(sequence)
    if write_metadata:
        write_sequence_metadata(root, world, labelled)
    frames = range(cfg.scans) if frames is None else frames
    seq_dir = sequence_dir(root, sequence)
    stats = SequenceStats(sequence=sequence, labelled=labelled)
    for i, frame in enumerate(frames, 1):
        scan = render_scan(world, cfg, frame)
        write_scan(seq_dir / "velodyne" / f"{frame:06d}.bin", scan.points)
        if labelled:
            write_labels(seq_dir / "labels" / f"{frame:06d}.label", scan.labels)
        inst = scan.labels >> np.uint32(16)
        ids, counts = np.unique(inst[inst > 0], return_counts=True)
        stats.merge(
            SequenceStats(
                sequence,
                labelled,
                1,
                int(scan.points.shape[0]),
                dict(zip(ids.tolist(), counts.tolist(), strict=True)),
                {frame: ids.astype(np.int64)},
            )
        )
        if progress is not None:
            progress(i)
    if write_metadata and labelled:
        write_sequence_truth(root, world, stats.present)
    return stats


def _chunk_worker(root: str, cfg_json: str, sequence: str, start: int, stop: int) -> SequenceStats:
    cfg = SynthConfig.model_validate_json(cfg_json)
    return generate_sequence(root, cfg, sequence, frames=range(start, stop), write_metadata=False)


# ---- the dataset artifact -----------------------------------------------------------------
def dataset_config(cfg: SynthConfig) -> dict[str, Any]:
    """The config stored in (and hashed into) the manifest."""
    return cfg.model_dump(mode="json")


def _scan_count(folder: Path, suffix: str) -> int:
    if not folder.is_dir():
        return -1
    with os.scandir(folder) as it:
        return sum(1 for e in it if e.name.endswith(suffix))


def existing_dataset(out: str | Path, cfg: SynthConfig) -> Manifest | None:
    """The finished dataset in `out` if it was generated with exactly this config and is intact."""
    out = Path(out)
    if (out / MARKER_NAME).exists():
        return None
    content_id = new_manifest("dataset", dataset_config(cfg), inputs=[]).content_id
    manifest = existing_artifact(out, "dataset", content_id, verify=True)
    if manifest is None:
        return None
    for seq in cfg.all_sequences:
        seq_dir = sequence_dir(out, seq)
        if _scan_count(seq_dir / "velodyne", ".bin") != cfg.scans:
            return None
        expected_labels = cfg.scans if cfg.labelled(seq) else -1
        if _scan_count(seq_dir / "labels", ".label") != expected_labels:
            return None
    return manifest


def _prepare_output(out: Path) -> None:
    """Refuse to write into a folder that holds something other than a synthetic dataset, and clear
    a previous synthetic dataset (a different config, or a killed run) so no stale scan survives."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        ours = (out / MARKER_NAME).exists()
        if not ours and (out / MANIFEST_NAME).is_file():
            try:
                ours = read_manifest(out).config.get("generator") == "m2s-synth"
            except ArtifactError:
                ours = False
        if not ours:
            raise ConfigError(
                f"{out}: folder is not empty and is not a dataset written by `m2s synth`; choose an empty or new folder"
            )
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(out / "sequences", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _metrics(cfg: SynthConfig, stats: dict[str, SequenceStats]) -> dict[str, Any]:
    labels = load_label_manifest()
    hard = labels.hard_classes
    per_seq: dict[str, Any] = {}
    for seq in cfg.all_sequences:
        st = stats[seq]
        world = build_world(cfg, seq)
        hard_counts = {name: 0 for name in hard}
        for inst in st.instance_points:
            name = labels.train_names[labels.learning_map[world.instance_class[inst]]]
            if name in hard_counts:
                hard_counts[name] += 1
        per_seq[seq] = {
            "scans": st.scans,
            "labelled": st.labelled,
            "mean_points": st.points / max(st.scans, 1),
            "instances": len(st.instance_points),
            "hard_instances": hard_counts,
        }
    total_scans = sum(s.scans for s in stats.values())
    return {
        "total_scans": total_scans,
        "mean_points_per_scan": sum(s.points for s in stats.values()) / max(total_scans, 1),
        "sequences": per_seq,
    }


def generate_dataset(
    out: str | Path, cfg: SynthConfig, progress: ProgressFn | None = None, *, workers: int = 1
) -> Manifest:
    """Generate every sequence of `cfg` under `out` and write `out/manifest.json` last.

    A no-op returning the existing manifest when `out` already holds this exact dataset.
    With `workers > 1`, chunks of scans are generated in parallel processes; the bytes do not
    depend on the worker count.
    """
    out = Path(out)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    found = existing_dataset(out, cfg)
    if found is not None:
        return found
    _prepare_output(out)
    (out / MARKER_NAME).write_text(json.dumps(dataset_config(cfg), sort_keys=True) + "\n")

    meta_files: list[str] = []
    worlds = {seq: build_world(cfg, seq) for seq in cfg.all_sequences}
    for seq in cfg.all_sequences:
        meta_files += write_sequence_metadata(out, worlds[seq], cfg.labelled(seq))

    total = cfg.scans * len(cfg.all_sequences)
    stats = {seq: SequenceStats(seq, cfg.labelled(seq)) for seq in cfg.all_sequences}
    done = 0
    if workers == 1:
        for seq in cfg.all_sequences:
            base = done

            def tick(i: int, base: int = base) -> None:
                if progress is not None:
                    progress(base + i, total)

            stats[seq].merge(generate_sequence(out, cfg, seq, write_metadata=False, progress=tick))
            done += cfg.scans
    else:
        # small chunks keep all workers busy and the progress bar moving
        chunk = max(1, min(25, math.ceil(total / (workers * 4))))
        tasks = [(seq, a, min(a + chunk, cfg.scans)) for seq in cfg.all_sequences for a in range(0, cfg.scans, chunk)]
        # fork: a spawned worker would re-import the caller's main module (the CLI imports torch,
        # seconds per worker); the workers only run numpy, so inheriting the parent is safe
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        cfg_json = cfg.model_dump_json()
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
            pending: set[Future[SequenceStats]] = {
                pool.submit(_chunk_worker, str(out), cfg_json, seq, a, b) for seq, a, b in tasks
            }
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    try:
                        part = fut.result()
                    except BrokenProcessPool as exc:
                        raise M2SError(f"a generator process died ({exc}); retry with workers=1") from exc
                    stats[part.sequence].merge(part)
                    done += part.scans
                    if progress is not None:
                        progress(done, total)

    # Ground truth of labelled sequences only: a test split must not ship instance information.
    for seq in cfg.all_sequences:
        if cfg.labelled(seq):
            meta_files.append(write_sequence_truth(out, worlds[seq], stats[seq].present))

    manifest = new_manifest(
        "dataset",
        dataset_config(cfg),
        inputs=[],
        files=describe_files(out, meta_files),
        metrics=_metrics(cfg, stats),
    )
    write_manifest(out, manifest)
    (out / MARKER_NAME).unlink(missing_ok=True)
    return manifest
