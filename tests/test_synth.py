"""The synthetic SemanticKITTI generator: layout, determinism, geometry and the `m2s synth` CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree
from typer.testing import CliRunner

from cli.main import app
from m2s.artifacts import read_manifest
from m2s.data.semantickitti import Sequence
from m2s.labels import load_label_manifest
from m2s.synth import SynthConfig, build_world, generate_dataset, render_scan
from m2s.synth.geometry import BOX, CYLINDER, ELLIPSOID, Prims, RayGrid, cast

SCANS = 10
SMALL = dict(beams=48, columns=1024, scans=SCANS, hard_rate=20.0)
MOVING_IDS = (252, 253, 254, 255, 258, 259)
STATIC_THING_IDS = (10, 11, 15, 18, 20, 30, 31, 32)


# ---- an independent, minimal SemanticKITTI reader (plain numpy) ---------------------------
def read_bin(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.float32).reshape(-1, 4)


def read_label(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint32)


def read_pose_file(path: Path) -> np.ndarray:
    rows = np.loadtxt(path, ndmin=2).reshape(-1, 3, 4)
    poses = np.tile(np.eye(4), (rows.shape[0], 1, 1))
    poses[:, :3, :] = rows
    return poses


def read_tr(path: Path) -> np.ndarray:
    for line in path.read_text().splitlines():
        if line.startswith("Tr:"):
            tr = np.eye(4)
            tr[:3, :] = np.array(line.split()[1:], dtype=np.float64).reshape(3, 4)
            return tr
    raise AssertionError(f"no Tr in {path}")


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ds"
    generate_dataset(root, SynthConfig(sequences=["00", "03"], test_sequences=["11"], seed=7, **SMALL))
    return root


def load_sequence(root: Path, seq: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    d = root / "sequences" / seq
    scans = [read_bin(d / "velodyne" / f"{i:06d}.bin") for i in range(SCANS)]
    labels = [read_label(d / "labels" / f"{i:06d}.label") for i in range(SCANS)]
    return scans, labels


# ---- layout --------------------------------------------------------------------------------
def test_layout_readable_by_independent_reader(dataset: Path) -> None:
    official = set(load_label_manifest().labels)
    for seq in ("00", "03"):
        d = dataset / "sequences" / seq
        assert sorted(p.name for p in (d / "velodyne").iterdir()) == [f"{i:06d}.bin" for i in range(SCANS)]
        assert sorted(p.name for p in (d / "labels").iterdir()) == [f"{i:06d}.label" for i in range(SCANS)]
        scans, labels = load_sequence(dataset, seq)
        for pts, lab in zip(scans, labels):
            assert pts.shape[0] > 1000 and lab.shape == (pts.shape[0],)
            assert np.isfinite(pts).all()
            assert 0.0 <= pts[:, 3].min() and pts[:, 3].max() <= 1.0
            rng = np.linalg.norm(pts[:, :3], axis=1)
            assert rng.max() < 80.5 and rng.min() > 2.0
            assert set(np.unique(lab & 0xFFFF).tolist()) <= official
        poses = read_pose_file(d / "poses.txt")
        assert poses.shape == (SCANS, 4, 4)
        assert np.allclose(poses[0], np.eye(4), atol=1e-9)  # KITTI: poses relative to the first scan
        tr = read_tr(d / "calib.txt")
        assert not np.allclose(tr, np.eye(4), atol=1e-3)
        assert np.allclose(tr[:3, :3] @ tr[:3, :3].T, np.eye(3), atol=1e-9)
        assert {ln.split(":")[0] for ln in (d / "calib.txt").read_text().splitlines()} == {"P0", "P1", "P2", "P3", "Tr"}
        times = np.loadtxt(d / "times.txt")
        assert times.shape == (SCANS,) and np.allclose(np.diff(times), 0.1)
    test_dir = dataset / "sequences" / "11"
    assert not (test_dir / "labels").exists()
    assert len(list((test_dir / "velodyne").glob("*.bin"))) == SCANS
    manifest = read_manifest(dataset)
    assert manifest.kind == "dataset" and manifest.config["seed"] == 7
    assert {f.path for f in manifest.files} >= {"sequences/00/poses.txt", "sequences/11/calib.txt"}


def test_all_common_classes_present(dataset: Path) -> None:
    labels = [lab for seq in ("00", "03") for lab in load_sequence(dataset, seq)[1]]
    sem = set(np.unique(np.concatenate(labels) & 0xFFFF).tolist())
    assert {40, 48, 50, 60, 70, 71, 72, 80} <= sem
    assert sem & {10, 252} and sem & {30, 254} and sem & {11} and sem & {18, 258}
    assert sem & {20, 259, 13, 257, 16, 256} and sem & {15, 32, 255}
    # generator 3: ignored points exist (street furniture, garden clutter, outliers)
    assert sem & {0, 1, 52, 99}


# ---- determinism ----------------------------------------------------------------------------
def test_deterministic_and_subset_identical(dataset: Path, tmp_path: Path) -> None:
    same = tmp_path / "same"
    generate_dataset(same, SynthConfig(sequences=["03"], test_sequences=[], seed=7, **SMALL))
    ref = digest_tree(dataset / "sequences" / "03")
    assert digest_tree(same / "sequences" / "03") == ref  # a subset gives identical bytes
    other = tmp_path / "other"
    generate_dataset(other, SynthConfig(sequences=["03"], test_sequences=[], seed=8, **SMALL))
    got = digest_tree(other / "sequences" / "03")
    assert got["velodyne/000000.bin"] != ref["velodyne/000000.bin"]
    assert got["poses.txt"] != ref["poses.txt"]


def test_parallel_workers_give_identical_bytes(dataset: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(sequences=["00", "03"], test_sequences=["11"], seed=7, **SMALL)
    generate_dataset(tmp_path / "par", cfg, workers=2)
    assert digest_tree(tmp_path / "par" / "sequences") == digest_tree(dataset / "sequences")
    assert read_manifest(tmp_path / "par").content_id == read_manifest(dataset).content_id


def test_rerun_is_noop_and_killed_run_is_redone(tmp_path: Path) -> None:
    cfg = SynthConfig(sequences=["01"], test_sequences=[], beams=8, columns=64, scans=2)
    root = tmp_path / "ds"
    first = generate_dataset(root, cfg)
    mtime = (root / "sequences/01/velodyne/000000.bin").stat().st_mtime_ns
    again = generate_dataset(root, cfg)
    assert again.created == first.created
    assert (root / "sequences/01/velodyne/000000.bin").stat().st_mtime_ns == mtime
    # a killed run leaves the marker and no manifest: the next run starts over
    (root / "manifest.json").unlink()
    (root / ".m2s-synth-incomplete").write_text("{}")
    (root / "sequences/01/velodyne/000001.bin").unlink()
    generate_dataset(root, cfg)
    assert (root / "sequences/01/velodyne/000001.bin").is_file() and (root / "manifest.json").is_file()
    assert not (root / ".m2s-synth-incomplete").exists()
    # a different config replaces the previous synthetic dataset without stale scans
    generate_dataset(root, SynthConfig(sequences=["02"], test_sequences=[], beams=8, columns=64, scans=1))
    assert [p.name for p in (root / "sequences").iterdir()] == ["02"]


# ---- realism --------------------------------------------------------------------------------
def test_static_objects_align_through_kitti_pose_convention(dataset: Path) -> None:
    """Points of static things from two scans, moved into one frame with the LiDAR-frame poses
    (inv(Tr) @ P @ Tr), land on each other; the camera-frame poses used directly do not."""
    seq = Sequence(dataset, "00")
    src, dst = 0, 5
    (p0, l0), (p1, l1) = seq.read_scan_and_labels(src), seq.read_scan_and_labels(dst)
    assert np.linalg.norm(seq.poses[dst][:3, 3]) > 2.0  # the ego really moved
    rel = seq.relative_transform(src, dst)
    poses_cam = read_pose_file(seq.path / "poses.txt")
    wrong = np.linalg.inv(poses_cam[dst]) @ poses_cam[src]

    def nn_median(m0: np.ndarray, m1: np.ndarray, transform: np.ndarray, q: float = 50.0) -> float:
        xyz = p0[m0, :3] @ transform[:3, :3].T + transform[:3, 3]
        return float(np.percentile(cKDTree(p1[m1, :3]).query(xyz)[0], q))

    sem0, sem1 = l0 & 0xFFFF, l1 & 0xFFFF
    # buildings (stuff: no instance ids, but large and static); a truck passing close by can hide
    # much of a facade in one scan only, hence a lower quantile
    m0, m1 = sem0 == 50, sem1 == 50
    assert m0.sum() > 100 and m1.sum() > 100
    assert nn_median(m0, m1, rel, q=25.0) < 0.15
    assert nn_median(m0, m1, wrong) > 1.0
    # parked things (fixed instance ids) seen well in both scans; a few may be partly occluded
    # by passing traffic in one of them, hence the median over instances
    words = set(np.unique(l0[np.isin(sem0, STATIC_THING_IDS)]).tolist()) & set(np.unique(l1).tolist())
    good = [w for w in words if min((l0 == w).sum(), (l1 == w).sum()) >= 30]
    assert len(good) >= 3
    assert np.median([nn_median(l0 == w, l1 == w, rel) for w in good]) < 0.12
    assert min(nn_median(l0 == w, l1 == w, wrong) for w in good) > 1.0


def test_instances_stable_and_moving_actors_move(dataset: Path) -> None:
    seq = Sequence(dataset, "00")
    hard = load_label_manifest().hard_raw_ids_derived
    frames = [seq.read_scan_and_labels(i) for i in range(SCANS)]
    sem_of: dict[int, set[int]] = {}
    seen_in: dict[int, int] = {}
    for _, lab in frames:
        inst = lab >> 16
        for word in np.unique(lab[inst > 0]).tolist():
            sem_of.setdefault(word >> 16, set()).add(word & 0xFFFF)
            seen_in[word >> 16] = seen_in.get(word >> 16, 0) + 1
    assert all(len(s) == 1 for s in sem_of.values())  # an instance keeps its class
    hard_inst = [i for i, s in sem_of.items() if next(iter(s)) in hard]
    assert sum(seen_in[i] == SCANS for i in hard_inst) >= 5  # tracked through the whole sequence

    def world_centroid(frame: int, inst: int) -> tuple[np.ndarray, int]:
        pts, lab = frames[frame]
        m = (lab >> 16) == inst
        if not m.any():
            return np.zeros(3), 0
        xyz = pts[m, :3] @ seq.poses[frame][:3, :3].T + seq.poses[frame][:3, 3]
        return xyz.mean(axis=0), int(m.sum())

    moved: dict[int, float] = {}
    for inst, s in sem_of.items():
        (c0, n0), (c1, n1) = world_centroid(0, inst), world_centroid(SCANS - 1, inst)
        if min(n0, n1) >= 15:
            moved[next(iter(s))] = max(moved.get(next(iter(s)), 0.0), float(np.linalg.norm(c1 - c0)))
    moving = [v for k, v in moved.items() if k in MOVING_IDS]
    assert moving and np.median(moving) > 0.5
    if 252 in moved:
        assert moved[252] > 2.0  # a car at >= 8 m/s over 0.9 s


def test_small_objects_get_denser_when_accumulated(dataset: Path) -> None:
    hard = load_label_manifest().hard_raw_ids_derived
    _, labels = load_sequence(dataset, "00")
    counts: dict[int, np.ndarray] = {}
    for i, lab in enumerate(labels):
        m = np.isin(lab & 0xFFFF, hard) & ((lab >> 16) > 0)
        ids, n = np.unique(lab[m] >> 16, return_counts=True)
        for k, c in zip(ids.tolist(), n.tolist()):
            counts.setdefault(k, np.zeros(SCANS, dtype=np.int64))[i] = c
    sparse = [c for c in counts.values() if ((c > 0) & (c < 30)).any() and c.sum() >= max(30, 3 * c[c > 0].min())]
    assert len(sparse) >= 3


# ---- geometry and speed ------------------------------------------------------------------
def _prims(kind: int, center: tuple, half: tuple, yaw: float = 0.0, sem: int = 1) -> Prims:
    return Prims(
        np.array([kind], np.int8), np.array([center], float), np.array([half], float), np.array([yaw]),
        np.array([sem], np.uint32), np.array([0], np.uint32), np.array([0.5], np.float32),
    )  # fmt: skip


def test_ray_caster_first_hit_and_analytic_distances() -> None:
    grid = RayGrid(elevation=np.deg2rad(np.array([1.0, 0.0, -1.0])), azimuth0=0.0, columns=360)
    dirs = grid.directions()
    forward = 1 * 360 + 0  # beam at 0 deg elevation, azimuth 0: the +x axis
    scene = Prims.concat(
        [
            _prims(BOX, (10.0, 0.0, 0.0), (1.0, 1.0, 1.0), yaw=0.3, sem=1),  # behind the cylinder
            _prims(CYLINDER, (5.0, 0.0, 0.0), (0.5, 0.5, 2.0), sem=2),
            _prims(ELLIPSOID, (0.0, 20.0, 0.0), (1.0, 1.0, 3.0), sem=3),
        ]
    )
    depth, winner = cast(scene, grid, dirs, max_range=80.0)
    assert winner[forward] == 1 and depth[forward] == pytest.approx(4.5, abs=1e-4)  # occlusion
    left = 1 * 360 + 90
    assert winner[left] == 2 and depth[left] == pytest.approx(19.0, abs=1e-4)
    only_box = Prims.concat([scene.take(np.array([0]))])
    depth, winner = cast(only_box, grid, dirs, max_range=80.0)
    # slab test of a rotated cube: the +x ray enters its face at distance 10 - 1/cos(0.3)
    assert depth[forward] == pytest.approx(10.0 - 1.0 / np.cos(0.3), abs=1e-4)
    depth, _ = cast(only_box, grid, dirs, max_range=8.0)
    assert not np.isfinite(depth).any()  # out of range


def test_render_scan_api() -> None:
    cfg = SynthConfig(beams=16, columns=256, scans=3)
    world = build_world(cfg, "05")
    scan = render_scan(world, cfg, 1)
    assert scan.points.dtype == np.float32 and scan.labels.dtype == np.uint32
    assert scan.points.shape[0] > 0.6 * 16 * 256 * 0.5


# ---- CLI ------------------------------------------------------------------------------------
def test_cli_writes_layout_and_reruns_as_noop(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "s"
    args = ["synth", str(out), "--sequences", "00", "--test-sequences", "11", "--scans", "2"]
    args += ["--beams", "8", "--columns", "64"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "sequences/00/labels/000001.label").is_file()
    assert (out / "sequences/11/velodyne/000001.bin").is_file()
    assert not (out / "sequences/11/labels").exists()
    assert (out / "manifest.json").is_file()
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "up to date" in res.output


@pytest.mark.parametrize(
    "extra",
    [["--beams", "1"], ["--sequences", "ab"], ["--scans", "0"], ["--columns", "8"], ["--test-sequences", "x1"]],
)
def test_cli_bad_arguments_exit_2(tmp_path: Path, extra: list[str]) -> None:
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "s"), *extra])
    assert res.exit_code == 2
    assert not (tmp_path / "s").exists()


def test_cli_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    res = CliRunner().invoke(app, ["synth", str(tmp_path), "--scans", "1", "--beams", "4", "--columns", "32"])
    assert res.exit_code == 1
    assert "not empty" in res.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# ---- generator 3: class families, placement, the hard_rate knob ----------------------------------
def _extents(kind: int, n: int = 200) -> np.ndarray:
    from m2s.synth.shapes import draw_shape

    rng = np.random.default_rng(0)
    shapes = [draw_shape(kind, rng) for _ in range(n)]
    return np.array([(s.length, s.width, s.height) for s in shapes])


def test_confusable_classes_overlap_in_bounding_size() -> None:
    """SemanticKITTI's families overlap in size (realism.md): the box alone must not name the class."""
    car, truck, other = _extents(10), _extents(18), _extents(20)
    bike, moto = _extents(11), _extents(15)
    cyclist, motorcyclist, person = _extents(31), _extents(32), _extents(30)

    def overlap(a: np.ndarray, b: np.ndarray, axis: int) -> bool:
        return bool(a[:, axis].max() > b[:, axis].min() and b[:, axis].max() > a[:, axis].min())

    assert overlap(car, truck, 0) and overlap(car, truck, 2)  # vans / SUVs vs pickups
    assert overlap(truck, other, 0) and overlap(truck, other, 2)  # box vans vs caravans, minibuses
    assert overlap(bike, moto, 0) and overlap(bike, moto, 2)  # cargo bikes vs scooters
    assert overlap(cyclist, motorcyclist, 0) and overlap(cyclist, motorcyclist, 2)
    assert overlap(person, cyclist, 2)  # a rider is a person's height
    # real ranges (realism.md): cars 3.6-6.0 m, people 1.0-1.95 m (children included)
    assert 3.5 < car[:, 0].min() and car[:, 0].max() < 6.2
    assert 0.95 < person[:, 2].min() and person[:, 2].max() < 2.0
    # families, not one template: every class spreads
    for ext in (car, truck, other, bike, moto, cyclist, motorcyclist, person):
        assert ext[:, 0].std() > 0.05 and ext[:, 2].std() > 0.02


def test_hard_rate_scales_hard_things_only() -> None:
    counts = {}
    for rate in (1.0, 10.0):
        cfg = SynthConfig(sequences=["00", "01", "02"], test_sequences=[], scans=20, beams=16, columns=256, seed=4,
                          hard_rate=rate)
        classes = [k for s in cfg.sequences for k in build_world(cfg, s).instance_class.values()]
        counts[rate] = (sum(k != 10 for k in classes), sum(k == 10 for k in classes))
    assert counts[10.0][0] > 4 * max(1, counts[1.0][0])  # hard things: many more
    assert counts[10.0][1] < counts[1.0][1]  # cars: a smaller part of the vehicle mix, never more


def test_crossing_pedestrians_stop_at_the_far_kerb() -> None:
    cfg = SynthConfig(sequences=["05"], test_sequences=[], scans=10, beams=16, columns=256, seed=9, hard_rate=30.0)
    world = build_world(cfg, "05")
    a = world.actors
    crossing = np.flatnonzero(a.d_speed != 0)
    assert crossing.size and (a.speed[crossing] == 0).all()
    far = a.t_ref + 1000.0  # long after: every crosser has reached a kerb and stands there
    X, Y, _ = a.placement(world.street, far)
    d = world.street.lateral(X[crossing], Y[crossing])
    bound = np.where(a.d_speed[crossing] > 0, a.d_hi[crossing], a.d_lo[crossing])
    np.testing.assert_allclose(d, bound, atol=1e-6)
    assert (np.abs(bound) > world.layout.road_half).all()  # off the road, on the sidewalk edge
