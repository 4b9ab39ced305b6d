"""Reader and writer for the SemanticKITTI layout.

    ROOT/sequences/SS/velodyne/FFFFFF.bin   float32 (N,4): x, y, z, remission (LiDAR frame)
    ROOT/sequences/SS/labels/FFFFFF.label   uint32 (N,): instance << 16 | semantic raw id
    ROOT/sequences/SS/poses.txt             one 3x4 row-major pose per scan, camera frame
    ROOT/sequences/SS/calib.txt             `Tr:` maps LiDAR to camera coordinates
    ROOT/sequences/SS/times.txt             one timestamp (s) per scan

Poses are used in the LiDAR frame: ``inv(Tr) @ P @ Tr``. Every malformed input raises a
:class:`~m2s.errors.DataError` that names the file.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import deque
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, overload

import numpy as np

from m2s.artifacts import readable_manifest
from m2s.errors import DataError
from m2s.io_utils import atomic_path

POINT_DTYPE = np.float32
LABEL_DTYPE = np.uint32
_FRAME_RE = re.compile(r"^(\d{6})\.bin$")


# ---- single files -------------------------------------------------------------------------
def read_scan(path: str | Path) -> np.ndarray:
    """Read a `.bin` scan as float32 (N,4); refuses truncated files and non-finite values."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"scan file missing: {path}") from None
    if len(raw) % 16:
        raise DataError(f"{path}: size {len(raw)} bytes is not a multiple of 16 (4 float32 per point); truncated?")
    points = np.frombuffer(raw, dtype=POINT_DTYPE).reshape(-1, 4)
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points).all(axis=1)).sum())
        raise DataError(f"{path}: {bad} point(s) with non-finite coordinates or remission")
    return points


def read_labels(path: str | Path, expected_count: int | None = None, scan_path: str | Path | None = None) -> np.ndarray:
    """Read a `.label` file as uint32 (N,); checks the count against the scan when given."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"label file missing: {path}") from None
    if len(raw) % 4:
        raise DataError(f"{path}: size {len(raw)} bytes is not a multiple of 4 (uint32 per point); truncated?")
    labels = np.frombuffer(raw, dtype=LABEL_DTYPE)
    if expected_count is not None and labels.shape[0] != expected_count:
        scan = f" ({scan_path})" if scan_path is not None else ""
        raise DataError(f"{path}: {labels.shape[0]} labels but the scan has {expected_count} points{scan}")
    return labels


def _parse_rows(path: Path, text: str, what: str) -> list[list[float]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            raise DataError(f"{path}:{lineno}: {what} line is not numeric: {line[:60]!r}") from None
    return rows


def read_poses(path: str | Path) -> np.ndarray:
    """Read `poses.txt` as (F,4,4) float64 camera-frame poses."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"poses file missing: {path}")
    rows = _parse_rows(path, path.read_text(), "pose")
    for i, r in enumerate(rows):
        if len(r) != 12:
            raise DataError(f"{path}: pose {i} has {len(r)} values, expected 12 (3x4 row-major)")
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3, 4)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: non-finite pose values")
    poses = np.tile(np.eye(4), (arr.shape[0], 1, 1))
    poses[:, :3, :] = arr
    return poses


def read_calib(path: str | Path) -> dict[str, np.ndarray]:
    """Read `calib.txt` into 4x4 matrices (P0..P3, Tr); requires `Tr`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration file missing: {path}")
    calib: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, sep, values = line.partition(":")
        if not sep:
            raise DataError(f"{path}:{lineno}: expected 'KEY: 12 values'")
        try:
            vals = [float(v) for v in values.split()]
        except ValueError:
            raise DataError(f"{path}:{lineno}: values of {key.strip()!r} are not numeric") from None
        if len(vals) != 12:
            raise DataError(f"{path}:{lineno}: {key.strip()!r} has {len(vals)} values, expected 12")
        m = np.eye(4)
        m[:3, :] = np.asarray(vals).reshape(3, 4)
        calib[key.strip()] = m
    if "Tr" not in calib:
        raise DataError(f"{path}: no 'Tr:' entry (LiDAR-to-camera transform)")
    if abs(np.linalg.det(calib["Tr"][:3, :3])) < 1e-6 or not np.isfinite(calib["Tr"]).all():
        raise DataError(f"{path}: 'Tr' is not an invertible rigid transform")
    return calib


def read_times(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"times file missing: {path}")
    rows = _parse_rows(path, path.read_text(), "time")
    if any(len(r) != 1 for r in rows):
        raise DataError(f"{path}: expected one timestamp per line")
    return np.asarray([r[0] for r in rows], dtype=np.float64)


def camera_to_lidar_poses(poses_cam: np.ndarray, tr: np.ndarray) -> np.ndarray:
    """KITTI poses are camera-frame; ``inv(Tr) @ P @ Tr`` gives LiDAR-frame poses."""
    return np.linalg.inv(tr) @ poses_cam @ tr


# ---- writers (used by the synthetic generator and the benchmark-format export) ------------
def write_scan(path: str | Path, points: np.ndarray) -> None:
    points = np.ascontiguousarray(points, dtype=POINT_DTYPE)
    if points.ndim != 2 or points.shape[1] != 4:
        raise DataError(f"scan to write must be (N,4), got {points.shape}")
    with atomic_path(path) as tmp:
        points.tofile(tmp)


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.ascontiguousarray(labels, dtype=LABEL_DTYPE).tofile(tmp)


def _format_rows(mats: np.ndarray) -> str:
    return "".join(" ".join(f"{v:.12e}" for v in m[:3, :].reshape(-1)) + "\n" for m in mats)


def write_poses(path: str | Path, poses_cam: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(_format_rows(np.asarray(poses_cam)))


def write_calib(path: str | Path, calib: dict[str, np.ndarray]) -> None:
    text = "".join(f"{k}: " + _format_rows(np.asarray(m)[None]) for k, m in calib.items())
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_times(path: str | Path, times: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{t:.6e}\n" for t in np.asarray(times)))


# ---- sequences ----------------------------------------------------------------------------
def sequence_dir(root: str | Path, sequence: str) -> Path:
    return Path(root) / "sequences" / sequence


def check_not_an_artifact(root: str | Path) -> None:
    """Refuse an m2s artifact folder other than a dataset (a fused cache also has `sequences/`),
    naming its kind, before its files are taken for raw scans."""
    manifest = readable_manifest(root)  # an unreadable one is not ours to judge: a raw root may hold any file
    if manifest is not None and manifest.kind != "dataset":
        raise DataError(f"{root}: holds a {manifest.kind} artifact, not a SemanticKITTI dataset root")


def normalize_sequence_id(seq: str | int) -> str:
    s = str(seq).strip()
    if not s.isdigit():
        raise DataError(f"sequence id must be numeric, got {seq!r}")
    return f"{int(s):02d}"


def list_sequences(root: str | Path) -> list[str]:
    check_not_an_artifact(root)
    base = Path(root) / "sequences"
    if not base.is_dir():
        raise DataError(f"{root}: not a SemanticKITTI root (no 'sequences/' folder)")
    return sorted(p.name for p in base.iterdir() if p.is_dir() and p.name.isdigit())


@dataclass(frozen=True)
class Sequence:
    """One sequence folder. Validates poses/calib lazily and names the file on any error."""

    root: Path
    sequence: str

    @property
    def path(self) -> Path:
        return sequence_dir(self.root, self.sequence)

    @cached_property
    def frames(self) -> list[int]:
        vdir = self.path / "velodyne"
        if not vdir.is_dir():
            raise DataError(f"{vdir}: missing velodyne folder (sequence {self.sequence})")
        frames = sorted(int(m.group(1)) for p in vdir.iterdir() if (m := _FRAME_RE.match(p.name)))
        if not frames:
            raise DataError(f"{vdir}: no scans (*.bin)")
        return frames

    @property
    def has_labels(self) -> bool:
        return (self.path / "labels").is_dir()

    def scan_path(self, frame: int) -> Path:
        return self.path / "velodyne" / f"{frame:06d}.bin"

    def label_path(self, frame: int) -> Path:
        return self.path / "labels" / f"{frame:06d}.label"

    def read_scan(self, frame: int) -> np.ndarray:
        return read_scan(self.scan_path(frame))

    def read_labels(self, frame: int, expected_count: int | None = None) -> np.ndarray:
        if not self.has_labels:
            raise DataError(f"{self.path}: sequence {self.sequence} has no labels folder (test split?)")
        return read_labels(self.label_path(frame), expected_count, self.scan_path(frame))

    def read_scan_and_labels(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        points = self.read_scan(frame)
        return points, self.read_labels(frame, expected_count=points.shape[0])

    # Labels are never None when asked for: the overloads let callers use them without a check.
    @overload
    def iter_scans(
        self, frames: Iterable[int] | None = None, *, labels: Literal[True] = True, prefetch: int = 4
    ) -> Generator[tuple[int, np.ndarray, np.ndarray], None, None]: ...
    @overload
    def iter_scans(
        self, frames: Iterable[int] | None = None, *, labels: bool, prefetch: int = 4
    ) -> Generator[tuple[int, np.ndarray, np.ndarray | None], None, None]: ...
    def iter_scans(
        self, frames: Iterable[int] | None = None, *, labels: bool = True, prefetch: int = 4
    ) -> Generator[tuple[int, np.ndarray, np.ndarray | None], None, None]:
        """Yield ``(frame, points, labels)`` in order (labels None when `labels` is False).

        Up to `prefetch` scans are read ahead by one background thread (file reads release the
        GIL), so on cold storage the disk works while the caller computes: a streaming stage
        then costs about max(read, compute) instead of their sum. Memory stays bounded by
        `prefetch` scans; a read error is raised here, at the frame that failed.
        """
        todo = iter(self.frames if frames is None else frames)
        read = self.read_scan_and_labels if labels else (lambda f: (self.read_scan(f), None))
        if prefetch < 1:
            for f in todo:
                yield (f, *read(f))
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"read-{self.sequence}")
        ahead: deque[tuple[int, Future[tuple[np.ndarray, np.ndarray | None]]]] = deque()
        try:
            for f in itertools.islice(todo, prefetch):
                ahead.append((f, pool.submit(read, f)))
            while ahead:
                f, fut = ahead.popleft()
                for g in itertools.islice(todo, 1):
                    ahead.append((g, pool.submit(read, g)))
                yield (f, *fut.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @cached_property
    def calib(self) -> dict[str, np.ndarray]:
        return read_calib(self.path / "calib.txt")

    @cached_property
    def poses(self) -> np.ndarray:
        """LiDAR-frame poses (F,4,4), one per scan, validated against the scan count."""
        path = self.path / "poses.txt"
        poses_cam = read_poses(path)
        needed = max(self.frames) + 1
        if poses_cam.shape[0] < needed:
            raise DataError(f"{path}: {poses_cam.shape[0]} poses but scans go up to frame {needed - 1}")
        return camera_to_lidar_poses(poses_cam, self.calib["Tr"])

    @cached_property
    def times(self) -> np.ndarray:
        return read_times(self.path / "times.txt")

    def relative_transform(self, source: int, target: int) -> np.ndarray:
        """4x4 transform mapping LiDAR points of scan `source` into the LiDAR frame of `target`."""
        return np.linalg.inv(self.poses[target]) @ self.poses[source]

    def fingerprint(self) -> str:
        """Cheap, deterministic identity of what a stage reads: file names and sizes of scans and
        labels, and the full bytes of poses/calib/times."""
        h = hashlib.sha256(self.sequence.encode())
        for sub in ("velodyne", "labels"):
            d = self.path / sub
            if d.is_dir():
                for p in sorted(d.iterdir()):
                    h.update(f"{sub}/{p.name}:{p.stat().st_size};".encode())
        for name in ("poses.txt", "calib.txt", "times.txt"):
            p = self.path / name
            if p.is_file():
                h.update(name.encode() + p.read_bytes())
        return h.hexdigest()


def open_sequences(root: str | Path, sequences: list[str] | None = None) -> list[Sequence]:
    """Open the requested sequences (all when None); refuses ids that are not there."""
    root = Path(root)
    available = list_sequences(root)
    wanted = [normalize_sequence_id(s) for s in sequences] if sequences else available
    missing = [s for s in wanted if s not in available]
    if missing:
        raise DataError(f"{root}: sequence(s) {missing} not found (have {available})")
    return [Sequence(root, s) for s in wanted]


def parse_sequence_list(text: str) -> list[str]:
    """Parse '00,01,08' or '0-3,8' into normalised ids."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "-" in part:
            a, b = (normalize_sequence_id(x) for x in part.split("-", 1))
            out.extend(f"{i:02d}" for i in range(int(a), int(b) + 1))
        else:
            out.append(normalize_sequence_id(part))
    if not out:
        raise DataError(f"empty sequence list {text!r}")
    return out
