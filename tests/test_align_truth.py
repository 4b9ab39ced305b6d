"""Ground-truth instance poses of the synthetic generator, the alignment error measured against
them (`m2s.fuse.groundtruth`, used by benchmarks/bench_align.py), and the `planar` alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2s.artifacts import read_manifest
from m2s.data.semantickitti import Sequence
from m2s.errors import DataError
from m2s.fuse import FuseConfig, HardSpec, PlanarConfig, fuse_sequence
from m2s.fuse.align import box_extents, box_yaw, extent_match, icp_align_batch
from m2s.fuse.fusion import HardPoints, extract_hard
from m2s.fuse.groundtruth import alignment_errors, fused_source_coords, true_positions
from m2s.labels import load_label_manifest
from m2s.synth import INSTANCE_POSES_NAME, SynthConfig, generate_dataset, read_instance_poses, write_instance_poses

LABELS = load_label_manifest()
SCANS = 6


def _rot_z(deg: float, t: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.deg2rad(deg)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    m[:3, 3] = t
    return m


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("truth") / "ds"
    cfg = SynthConfig(sequences=["00"], test_sequences=["11"], scans=SCANS, beams=32, columns=512, seed=5, hard_rate=20.0)
    generate_dataset(root, cfg)
    return root


def _fused_errors(root: Path, align: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(error, moving flag, fused xyz minus pose-only xyz) of every fused row of sequence 00."""
    seq = Sequence(root, "00")
    truth = read_instance_poses(seq.path / INSTANCE_POSES_NAME)
    spec = HardSpec.from_manifest(LABELS, None)
    hard: dict[int, HardPoints] = {}
    errs, moving, offsets = [], [], []
    for block in fuse_sequence(seq, spec, FuseConfig(window=3, align=align)):  # type: ignore[arg-type]
        hard[block.frame] = extract_hard(block.frame, block.target_points, block.target_label, spec)
        src = fused_source_coords(block, hard)
        inst = block.fused_label >> np.uint32(16)
        errs.append(alignment_errors(block.fused_points[:, :3], src, block.fused_source, inst, block.frame, truth))
        moving.append(spec.moving_lut[block.fused_label & np.uint32(0xFFFF)])
        rel = np.linalg.inv(seq.poses[block.frame]) @ seq.poses[block.fused_source]
        pose_only = np.einsum("nij,nj->ni", rel[:, :3, :3], src) + rel[:, :3, 3]
        offsets.append(block.fused_points[:, :3] - pose_only)
    return np.concatenate(errs), np.concatenate(moving), np.concatenate(offsets)


# ---- the ground-truth file ------------------------------------------------------------------------
def test_truth_file_written_listed_and_parses(synth: Path) -> None:
    seq = Sequence(synth, "00")
    path = seq.path / INSTANCE_POSES_NAME
    truth = read_instance_poses(path)
    assert sorted(truth) == list(range(SCANS))
    for f in range(SCANS):
        present = np.unique(seq.read_labels(f) >> np.uint32(16))
        assert sorted(truth[f]) == [int(i) for i in present if i != 0]  # exactly the instances with points
        for m in truth[f].values():
            np.testing.assert_allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-8)
            np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    listed = {r.path for r in read_manifest(synth).files}
    assert f"sequences/00/{INSTANCE_POSES_NAME}" in listed
    assert not (synth / "sequences" / "11" / INSTANCE_POSES_NAME).exists()  # no truth for the test split
    assert f"sequences/11/{INSTANCE_POSES_NAME}" not in listed


def test_truth_file_roundtrip_and_bad_file(tmp_path: Path) -> None:
    mats = np.stack([_rot_z(30.0, (1.0, -2.0, 0.5)), _rot_z(-90.0, (40.0, 3.0, -1.7))])
    path = tmp_path / INSTANCE_POSES_NAME
    write_instance_poses(path, np.array([0, 3]), np.array([7, 2]), mats)
    back = read_instance_poses(path)
    assert list(back) == [0, 3] and list(back[0]) == [7] and list(back[3]) == [2]
    np.testing.assert_allclose(back[0][7], mats[0], atol=1e-8)
    np.testing.assert_allclose(back[3][2], mats[1], atol=1e-8)
    path.write_text("0 1 2 3\n")
    with pytest.raises(DataError, match="columns"):
        read_instance_poses(path)
    with pytest.raises(DataError, match="missing"):
        read_instance_poses(tmp_path / "nope.txt")


def test_pose_alignment_of_static_instances_matches_the_truth(synth: Path) -> None:
    """Checks the truth convention itself: a static thing moved by the sequence poses lands exactly
    where lidar_from_object(f) @ inv(lidar_from_object(s)) puts it; a moving one does not."""
    err, moving, _ = _fused_errors(synth, "pose")
    assert (~moving).sum() > 1000 and moving.sum() > 1000
    assert err[~moving].max() < 2e-3  # float32 coordinates and printed poses
    # generator 3's movers include walkers (about 1.3 m/s) beside cars: most moving points land
    # well off, the fast ones by metres
    assert np.median(err[moving]) > 0.15 and np.percentile(err[moving], 90) > 0.5


# ---- the error function -----------------------------------------------------------------------------
def test_alignment_error_on_a_hand_made_case() -> None:
    # The object turns 90 degrees and moves 2 m along x between scan 0 and scan 1 (LiDAR frames equal).
    truth = {0: {4: _rot_z(0.0, (10.0, 0.0, 0.0))}, 1: {4: _rot_z(90.0, (12.0, 0.0, 0.0))}}
    src = np.array([[11.0, 0.0, 1.0], [10.0, 1.0, 0.0]])  # (1,0,1) and (0,1,0) in the object frame
    want = np.array([[12.0, 1.0, 1.0], [11.0, 0.0, 0.0]])
    np.testing.assert_allclose(true_positions(src, np.array([0, 0]), np.array([4, 4]), 1, truth), want)
    fused = want + np.array([[0.0, 0.5, 0.0], [3.0, 4.0, 0.0]])
    err = alignment_errors(fused, src, np.array([0, 0]), np.array([4, 4]), 1, truth)
    np.testing.assert_allclose(err, [0.5, 5.0])
    with pytest.raises(DataError, match="instance 5"):
        alignment_errors(fused, src, np.array([0, 0]), np.array([5, 5]), 1, truth)


def test_fused_source_coords_recovers_every_row(synth: Path) -> None:
    """The benchmark's reconstruction of each fused row's source coordinates: with `pose`, moving
    them by the relative pose reproduces the fused rows."""
    _, _, offset = _fused_errors(synth, "pose")
    assert offset.shape[0] > 1000 and np.abs(offset).max() < 1e-3


# ---- planar alignment -------------------------------------------------------------------------------
def _l_shape(n_side: int = 400, n_back: int = 120, length: float = 8.0, width: float = 2.5) -> np.ndarray:
    """The two faces of a vehicle (left side and back, 1.5 m high) that a sensor sees when it is
    behind and to the left of the vehicle."""
    rng = np.random.default_rng(0)
    side = np.column_stack([rng.uniform(-length / 2, length / 2, n_side), np.full(n_side, width / 2),
                            rng.uniform(0.3, 1.8, n_side)])
    back = np.column_stack([np.full(n_back, -length / 2), rng.uniform(-width / 2, width / 2, n_back),
                            rng.uniform(0.3, 1.8, n_back)])
    return np.concatenate([side, back])


def _apply(m: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    return xyz @ m[:3, :3].T + m[:3, 3]


def test_box_yaw_finds_the_axes_of_an_l_shape() -> None:
    """The smallest-area rectangle is ambiguous for an L; the rectangle the points hug is not."""
    body = _l_shape()
    for deg in (0.0, 20.0, 35.0, 70.0):
        pts = _apply(_rot_z(deg, (15.0, -4.0, 0.0)), body)
        got = np.rad2deg(box_yaw(pts, np.array([0, len(pts)]), steps=36)[0])
        assert abs((got - deg + 45.0) % 90.0 - 45.0) < 1.5, (deg, got)


def test_extent_match_uses_the_near_extremes_and_ignores_views_that_only_shrink() -> None:
    body = _l_shape()
    starts = np.array([0, len(body)])
    yaw = np.zeros(1)
    place = _rot_z(0.0, (10.0, -5.0, 0.0))  # ahead and to the right of the sensor at the origin
    full = _apply(place, body)
    view = _apply(place, body[body[:, 0] < 1.0])  # the far end (the front) hidden by an occluder
    sensor = np.zeros((1, 2))
    # A static object whose view merely shrank: no motion, and the near (front) extreme stays put.
    m = extent_match(box_extents(full, starts, yaw), box_extents(view, np.array([0, len(view)]), yaw), yaw, sensor)
    np.testing.assert_allclose(m.shift, 0.0, atol=1e-9)
    assert m.displacement[0] == pytest.approx(0.0)
    # The same object after moving 1.5 m along -x, seen cut short: shift and motion are -1.5 m.
    moved = view + [-1.5, 0.0, 0.0]
    m = extent_match(box_extents(full, starts, yaw), box_extents(moved, np.array([0, len(moved)]), yaw), yaw, sensor)
    np.testing.assert_allclose(m.shift[0], [-1.5, 0.0, 0.0], atol=1e-9)
    # The centroid shift would be off by the lost part.
    assert abs((moved.mean(0) - full.mean(0))[0] + 1.5) > 1.0


def test_planar_icp_recovers_a_turn_and_keeps_z() -> None:
    body = _l_shape()
    truth = _rot_z(6.0, (0.4, -0.3, 0.0))
    src = _apply(_rot_z(0.0, (12.0, 3.0, 0.0)), body)
    dst = _apply(truth, src)
    init = np.array([[0.3, -0.2, 0.0]])  # a nearby start, as the extremes give
    res = icp_align_batch(src, np.array([len(src)]), dst, np.array([0, len(dst)]), np.zeros(1, dtype=np.intp),
                          PlanarConfig(iterations=50, max_correspondence=1.0), init=init, planar=True)
    got = _apply(np.block([[res.rotation[0], res.translation[0][:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]), src)
    assert res.used_icp[0]
    assert np.abs(got - dst).max() < 0.05
    np.testing.assert_allclose(res.rotation[0][2], [0.0, 0.0, 1.0])  # a turn about z only
    assert res.translation[0][2] == 0.0


def test_auto_on_synthetic_data_beats_the_centroid_and_icp(synth: Path) -> None:
    """On the generator's moving things the default beats the older alignments, and static
    things stay exactly where the poses put them."""
    auto, moving, _ = _fused_errors(synth, "auto")
    icp, _, _ = _fused_errors(synth, "icp")
    centroid, _, _ = _fused_errors(synth, "centroid")
    # A static thing whose visible part slides along it (a passing occluder) looks moving; rare.
    assert (auto[~moving] > 2e-3).mean() < 0.01
    assert auto[moving].mean() < 0.5 * min(icp[moving].mean(), centroid[moving].mean())
    assert np.percentile(auto[moving], 90) < 0.2


def test_cache_config_carries_the_align_version(synth: Path, tmp_path: Path) -> None:
    """A cache made before `auto` changed (no or an older align_version) is never up to date."""
    from m2s.fuse import ALIGN_VERSION, fuse_dataset

    res = fuse_dataset(synth, tmp_path / "fused", ["00"], FuseConfig(window=1), LABELS)
    assert res.manifest.config["align_version"] == ALIGN_VERSION
    assert res.manifest.config["planar"] == PlanarConfig().model_dump()
