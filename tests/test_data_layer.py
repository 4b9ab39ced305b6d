"""SemanticKITTI reader: the real layout, the pose convention, and a clear error for each bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2s.data.semantickitti import (
    Sequence,
    open_sequences,
    parse_sequence_list,
    read_calib,
    read_labels,
    read_scan,
    write_calib,
    write_labels,
    write_poses,
    write_scan,
    write_times,
)
from m2s.errors import DataError


def _rot_z(a: float) -> np.ndarray:
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return m


# KITTI's Tr: LiDAR (x fwd, y left, z up) -> camera (x right, y down, z fwd), plus an offset.
TR = np.array([[0, -1, 0, -0.01], [0, 0, -1, -0.08], [1, 0, 0, -0.27], [0, 0, 0, 1]], dtype=float)


def make_sequence(root: Path, seq: str = "00", n: int = 3, points: int = 50) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(1)
    d = root / "sequences" / seq
    lidar_poses = np.stack([_rot_z(0.1 * i) @ np.diag([1, 1, 1, 1.0]) for i in range(n)])
    lidar_poses[:, 0, 3] = np.arange(n) * 1.5
    cam_poses = TR @ lidar_poses @ np.linalg.inv(TR)
    write_poses(d / "poses.txt", cam_poses)
    write_calib(d / "calib.txt", {"P0": np.eye(4), "Tr": TR})
    write_times(d / "times.txt", np.arange(n) * 0.1)
    scans = []
    for f in range(n):
        pts = rng.normal(size=(points, 4)).astype(np.float32)
        write_scan(d / "velodyne" / f"{f:06d}.bin", pts)
        write_labels(d / "labels" / f"{f:06d}.label", np.full(points, 40, dtype=np.uint32))
        scans.append(pts)
    return scans, lidar_poses


def test_reads_layout_and_converts_poses_to_lidar_frame(tmp_path):
    scans, lidar_poses = make_sequence(tmp_path)
    seq = Sequence(tmp_path, "00")
    assert seq.frames == [0, 1, 2]
    pts, labels = seq.read_scan_and_labels(1)
    assert np.array_equal(pts, scans[1]) and labels.dtype == np.uint32 and labels.shape == (50,)
    # inv(Tr) @ P @ Tr recovers the LiDAR-frame poses that were written through Tr
    assert np.allclose(seq.poses, lidar_poses, atol=1e-9)
    rel = seq.relative_transform(2, 0)
    assert np.allclose(rel, np.linalg.inv(lidar_poses[0]) @ lidar_poses[2])
    assert seq.times.shape == (3,)


def test_truncated_scan_is_refused_naming_the_file(tmp_path):
    make_sequence(tmp_path)
    p = tmp_path / "sequences/00/velodyne/000001.bin"
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"000001\.bin.*multiple of 16"):
        read_scan(p)


def test_label_count_mismatch_is_refused(tmp_path):
    make_sequence(tmp_path)
    write_labels(tmp_path / "sequences/00/labels/000002.label", np.zeros(49, np.uint32))
    with pytest.raises(DataError, match=r"000002\.label: 49 labels but the scan has 50"):
        Sequence(tmp_path, "00").read_scan_and_labels(2)
    p = tmp_path / "sequences/00/labels/000001.label"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(DataError, match="multiple of 4"):
        read_labels(p)


def test_non_finite_points_are_refused(tmp_path):
    make_sequence(tmp_path)
    pts = np.zeros((5, 4), np.float32)
    pts[3, 1] = np.nan
    write_scan(tmp_path / "sequences/00/velodyne/000000.bin", pts)
    with pytest.raises(DataError, match=r"000000\.bin: 1 point\(s\) with non-finite"):
        Sequence(tmp_path, "00").read_scan(0)


def test_missing_calib_or_poses_and_too_few_poses(tmp_path):
    make_sequence(tmp_path)
    d = tmp_path / "sequences/00"
    (d / "poses.txt").write_text("\n".join((d / "poses.txt").read_text().splitlines()[:2]) + "\n")
    with pytest.raises(DataError, match=r"poses\.txt: 2 poses but scans go up to frame 2"):
        _ = Sequence(tmp_path, "00").poses
    (d / "poses.txt").unlink()
    with pytest.raises(DataError, match="poses file missing"):
        _ = Sequence(tmp_path, "00").poses
    (d / "calib.txt").write_text("P0: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(DataError, match="no 'Tr:'"):
        read_calib(d / "calib.txt")
    (d / "calib.txt").unlink()
    with pytest.raises(DataError, match="calibration file missing"):
        _ = Sequence(tmp_path, "00").calib


def test_malformed_pose_line_and_unknown_sequence(tmp_path):
    make_sequence(tmp_path)
    (tmp_path / "sequences/00/poses.txt").write_text("1 2 3\n")
    with pytest.raises(DataError, match="pose 0 has 3 values"):
        _ = Sequence(tmp_path, "00").poses
    with pytest.raises(DataError, match=r"sequence\(s\) \['05'\] not found"):
        open_sequences(tmp_path, ["05"])
    with pytest.raises(DataError, match="not a SemanticKITTI root"):
        open_sequences(tmp_path / "nope")


def test_sequence_list_parsing():
    assert parse_sequence_list("0,1,08") == ["00", "01", "08"]
    assert parse_sequence_list("0-2,10") == ["00", "01", "02", "10"]
    with pytest.raises(DataError):
        parse_sequence_list("a,b")


def test_fingerprint_changes_with_content(tmp_path):
    make_sequence(tmp_path)
    seq = Sequence(tmp_path, "00")
    before = seq.fingerprint()
    assert before == Sequence(tmp_path, "00").fingerprint()
    write_scan(tmp_path / "sequences/00/velodyne/000000.bin", np.zeros((7, 4), np.float32))
    assert Sequence(tmp_path, "00").fingerprint() != before


@pytest.mark.parametrize("prefetch", [0, 1, 4])
def test_iter_scans_reads_ahead_in_order_and_reports_errors_at_the_bad_frame(tmp_path, prefetch):
    scans, _ = make_sequence(tmp_path, n=6)
    seq = Sequence(tmp_path, "00")
    got = list(seq.iter_scans(prefetch=prefetch))
    assert [f for f, _, _ in got] == seq.frames
    for (_, pts, labels), want in zip(got, scans):
        assert np.array_equal(pts, want) and labels.shape == (50,)
    assert all(lab is None for _, _, lab in seq.iter_scans([1, 3], labels=False, prefetch=prefetch))
    # A truncated label file: the scans before it still arrive, then the error names the file.
    bad = seq.label_path(3)
    bad.write_bytes(bad.read_bytes()[:-4])
    seen = []
    with pytest.raises(DataError, match="000003.label"):
        for f, _, _ in seq.iter_scans(prefetch=prefetch):
            seen.append(f)
    assert seen == [0, 1, 2]
