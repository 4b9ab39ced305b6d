"""The realism report (m2s.realism, benchmarks/bench_realism.py): real shares, geometric
estimate, the cue test's classifier, and a small draw through the whole script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m2s.errors import DataError
from m2s.labels import load_label_manifest
from m2s.realism import (
    Sensor,
    build_report,
    cue_test,
    expected_points,
    hdl64e_elevations,
    knn_predict,
    macro_accuracy,
    real_shares,
    shares_from_counts,
    uniform_elevations,
)
from m2s.realism.collect import group_quantiles

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_realism.py"

# /work/shared/reference/realism.md: shares of real SemanticKITTI, in % (labelled points, or all
# points for "ignored"), as quoted there.
QUOTED_REAL = {
    "truck": "0.22", "other-vehicle": "0.19", "motorcycle": "0.041", "person": "0.035", "bicycle": "0.017",
    "bicyclist": "0.013", "motorcyclist": "0.004", "vegetation": "27.5", "road": "20.5", "sidewalk": "14.9",
    "building": "13.7", "terrain": "8.1", "fence": "7.5", "car": "4.4",
}


def _agrees(value_pct: float, quoted: str) -> bool:
    """`value_pct` rounds to the quoted figure (half a unit of its last digit)."""
    decimals = len(quoted.split(".")[1])
    return abs(value_pct - float(quoted)) <= 0.5 * 10.0**-decimals + 1e-12


# ---- shares ----------------------------------------------------------------------------------
def test_real_shares_match_the_quoted_figures() -> None:
    labels = load_label_manifest()
    real = real_shares(labels)
    assert real.labelled[0] == 0.0
    assert real.labelled.sum() == pytest.approx(1.0)
    for name, quoted in QUOTED_REAL.items():
        assert _agrees(100 * real.labelled[labels.train_names.index(name)], quoted), name
    assert _agrees(100 * real.hard_total(labels.hard_train_ids), "0.52")
    assert _agrees(100 * real.ignored, "3.15")


def test_shares_from_counts() -> None:
    s = shares_from_counts(np.array([10, 30, 0, 60]))
    assert s.ignored == pytest.approx(0.1)
    assert s.labelled.tolist() == pytest.approx([0.0, 1 / 3, 0.0, 2 / 3])
    with pytest.raises(DataError):
        shares_from_counts(np.array([5, 0, 0]))


# ---- geometric estimate ----------------------------------------------------------------------
def test_hdl64e_estimate_reproduces_the_quoted_person_points() -> None:
    # realism.md: a 0.6 x 1.7 m person side-on, 530 / 140 / 35 points at 10 / 20 / 40 m
    got = expected_points(0.6, 1.7, np.array([10.0, 20.0, 40.0]), hdl64e_elevations(), 2048)
    assert got == pytest.approx([530.0, 140.0, 35.0], rel=0.15)
    assert hdl64e_elevations().size == 64
    assert np.rad2deg(hdl64e_elevations()[[0, -1]]) == pytest.approx([2.0, -24.8])


def test_uniform_estimate_is_the_small_angle_formula() -> None:
    # evenly spaced beams: height / (r * vertical step) * width / (r * azimuth step)
    elev = uniform_elevations(64, 2.0, -24.8)
    r = np.array([10.0, 20.0, 40.0])
    dv, da = np.deg2rad(26.8 / 63), 2 * np.pi / 2048
    formula = (1.7 / (r * dv)) * (0.6 / (r * da))
    assert expected_points(0.6, 1.7, r, elev, 2048) == pytest.approx(formula, rel=0.02)
    # half the columns, half the points
    assert expected_points(0.6, 1.7, r, elev, 1024) == pytest.approx(formula / 2, rel=0.02)


# ---- the cue test's classifier ---------------------------------------------------------------
def test_knn_separable_classes_are_recovered() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    x = np.stack([y * 10.0 + rng.normal(0, 1, y.size), -5.0 * y + rng.normal(0, 1, y.size)], axis=1)
    pred = knn_predict(x[::2], y[::2], x[1::2])
    assert macro_accuracy(y[1::2], pred) == pytest.approx(1.0)


def test_knn_identical_features_give_chance() -> None:
    y = np.repeat(np.arange(4), 25)
    x = np.ones((y.size, 3))
    pred = knn_predict(x, y, x)
    assert macro_accuracy(y, pred) == pytest.approx(0.25)


def test_knn_balanced_votes_keep_a_common_class_from_winning_by_numbers() -> None:
    # the test row's 5 nearest: 3 of a common class (300 in training), 2 of a rare one (2 in
    # training): plain votes give it to the common class, class-balanced votes to the rare one
    common = np.r_[[0.1, -0.1, 0.12], np.linspace(5.0, 50.0, 297)]
    x = np.r_[common, [0.2, -0.2]][:, None]
    y = np.r_[np.zeros(300, int), np.ones(2, int)]
    test = np.zeros((1, 1))
    assert knn_predict(x, y, test, balanced=False)[0] == 0
    assert knn_predict(x, y, test)[0] == 1


def test_cue_test_scores_only_classes_met_in_both_folds() -> None:
    y = np.array([0] * 10 + [1] * 10 + [0] * 10 + [2] * 10)  # class 1 only in fold A, 2 only in fold B
    groups = np.repeat(["00", "01", "02", "03"], 10)
    cues = {"planted": y.astype(float)}
    (result,) = cue_test(cues, y, groups)
    assert set(result.recall) == {0}
    assert result.macro_accuracy == pytest.approx(1.0)


def test_cue_test_finds_the_planted_cue_in_every_subset_that_holds_it() -> None:
    rng = np.random.default_rng(1)
    y = np.tile(np.repeat(np.arange(4), 10), 4)  # 4 sequences x 4 classes x 10 instances
    groups = np.repeat(["00", "01", "02", "03"], 40)
    cues = {
        "planted": y + rng.normal(0, 0.05, y.size),
        "noise": rng.normal(0, 1, (y.size, 3)),
    }
    results = {r.cues: r.macro_accuracy for r in cue_test(cues, y, groups)}
    assert set(results) == {("planted",), ("noise",), ("planted", "noise")}
    assert results[("planted",)] == pytest.approx(1.0)
    assert results[("noise",)] < 0.5  # chance is 0.25
    assert results[("planted", "noise")] > results[("noise",)]


def test_cue_test_needs_two_sequences() -> None:
    y = np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match="2 sequences"):
        cue_test({"a": y.astype(float)}, y, np.array(["00"] * 4))


def test_group_quantiles() -> None:
    g = np.array([1, 0, 1, 1, 0])
    v = np.array([5.0, 2.0, 1.0, 3.0, 4.0])
    q = group_quantiles(g, v, (0.0, 0.5, 1.0), 3)
    assert q[0].tolist() == [2.0, 4.0, 4.0] or q[0].tolist() == [2.0, 2.0, 4.0]
    assert q[1].tolist() == [1.0, 3.0, 5.0]
    assert np.isnan(q[2]).all()


# ---- a small draw through the whole script ---------------------------------------------------
def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def small_draw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    base = tmp_path_factory.mktemp("realism")
    out = _run("--seed", "5", "--sequences", "00-03", "--scans", "8", "--beams", "32", "--columns", "512",
               "--workers", "1", "--out", str(base / "data"), "--json", str(base / "report.json"))
    assert out.returncode == 0, out.stderr
    return base / "data", json.loads((base / "report.json").read_text()), out.stdout


def test_script_report_on_a_small_draw(small_draw: tuple[Path, dict, str]) -> None:
    _, report, stdout = small_draw
    assert report["sequences"] == ["00", "01", "02", "03"]
    assert report["scans"] == 32
    assert report["sensor"]["beams"] == 32 and report["sensor"]["columns"] == 512
    assert report["sensor"]["source"] == "dataset manifest"
    assert "32 beams x 512 columns" in stdout
    shares = report["shares"]
    assert sum(r["share"] for r in shares["classes"]) == pytest.approx(1.0)
    assert 0.0 <= shares["ignored"] < 1.0
    hard = sum(r["share"] for r in shares["classes"] if r["class"] in shares["hard_classes"])
    assert shares["hard_total"] == pytest.approx(hard)
    assert shares["real_hard_total"] == pytest.approx(0.0052, abs=5e-5)
    for cls in ("person", "bicyclist", "car"):
        bins = report["density"]["classes"][cls]["bins"]
        assert [b["lo"] for b in bins] == report["density"]["range_bins"][:-1]
        assert sum(b["samples"] for b in bins) > 0
        est = [b["estimate"] for b in bins]
        assert all(e > 0 for e in est) and est == sorted(est, reverse=True)  # fewer points farther out
    cue = report["cue_test"]
    assert cue["available"]
    assert len(cue["subsets"]) == 7
    assert cue["max_macro_accuracy"] == max(s["macro_accuracy"] for s in cue["subsets"])
    assert all(0.0 <= s["macro_accuracy"] <= 1.0 for s in cue["subsets"])
    assert cue["instances"] > 0 and cue["skipped_below_min_points"] >= 0
    assert "car" in cue["classes"]
    names = [t["target"] for t in report["targets"]]
    assert len(names) == 9 and any("cue test" in n for n in names)
    assert report["all_pass"] == all(t["pass"] for t in report["targets"])


def test_script_reads_an_existing_draw_and_check_sets_the_exit_code(
    small_draw: tuple[Path, dict, str], tmp_path: Path
) -> None:
    root, first, _ = small_draw
    out = _run("--data", str(root), "--cue-data", f"{root}-cue", "--check", "--json", str(tmp_path / "again.json"))
    assert out.returncode == (0 if first["all_pass"] else 1), out.stderr
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["shares"] == first["shares"]
    assert again["cue_test"] == first["cue_test"]
    assert "generate_s" not in again["timing"]



def test_cue_test_runs_on_the_boosted_draw(small_draw: tuple[Path, dict, str]) -> None:
    root, report, _ = small_draw
    cue = report["cue_test"]
    assert cue["data"] == f"{root}-cue"
    boosted = json.loads((Path(f"{root}-cue") / "manifest.json").read_text())
    assert boosted["config"]["hard_rate"] == 8.0 and boosted["config"]["seed"] == 5
    # the share draw keeps the realistic rates
    assert json.loads((root / "manifest.json").read_text())["config"]["hard_rate"] == 1.0


def test_report_without_ground_truth_skips_the_cue_test(small_draw: tuple[Path, dict, str], tmp_path: Path) -> None:
    root, first, _ = small_draw
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    (copy / "sequences" / "01" / "instance_poses.txt").unlink()
    report = build_report(copy, ["00", "01"], load_label_manifest(), Sensor.of_draw(copy, Sensor()))
    assert not report["cue_test"]["available"]
    assert not report["all_pass"]
    assert report["shares"]["classes"][0]["share"] > 0  # shares need no ground truth


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    out = _run("--data", str(tmp_path / "nowhere"))
    assert out.returncode == 2
    assert "error:" in out.stderr


# ---- the one pass over a draw, on a hand-made sequence with known truth ------------------------
def _yaw(theta: float, t: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    c, s = np.cos(theta), np.sin(theta)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:3, 3] = t
    return m


def test_collect_recovers_extents_lateral_and_speed(tmp_path: Path) -> None:
    from m2s.data.semantickitti import write_calib, write_labels, write_poses, write_scan, write_times
    from m2s.labels import make_label_word
    from m2s.realism.collect import collect
    from m2s.synth.truth import write_instance_poses

    rng = np.random.default_rng(7)
    frames, dt = 4, 0.1
    tr = _yaw(-np.pi / 2, (0.1, -0.2, 0.3))  # any rigid LiDAR -> camera transform
    ego = np.stack([_yaw(0.2, (2.0 * f * np.cos(0.2), 2.0 * f * np.sin(0.2), 0.0)) for f in range(frames)])
    # a 4 x 2 x 1.5 m car 6 m left of the ego path, driving along it at 3 m/s, heading 0.5 rad off
    obj_world = np.stack([ego[0] @ _yaw(0.5, (10.0 + 3.0 * dt * f, 6.0, -1.7)) for f in range(frames)])
    seq = tmp_path / "sequences" / "00"
    rel = np.linalg.inv(ego[0]) @ ego
    write_poses(seq / "poses.txt", tr @ rel @ np.linalg.inv(tr))
    write_calib(seq / "calib.txt", {"Tr": tr})
    write_times(seq / "times.txt", dt * np.arange(frames))
    lidar_from_object = np.linalg.inv(ego) @ obj_world
    for f in range(frames):
        box = rng.uniform([-2.0, -1.0, 0.0], [2.0, 1.0, 1.5], (3000, 3))
        car = box @ lidar_from_object[f, :3, :3].T + lidar_from_object[f, :3, 3]
        road = rng.uniform([-20, -20, -1.7], [20, 20, -1.7], (1000, 3))
        xyz = np.concatenate([car, road]).astype(np.float32)
        write_scan(seq / "velodyne" / f"{f:06d}.bin", np.concatenate([xyz, np.zeros((len(xyz), 1), np.float32)], 1))
        sem = np.r_[np.full(3000, 10), np.full(1000, 40)]
        inst = np.r_[np.full(3000, 1), np.zeros(1000)]
        write_labels(seq / "labels" / f"{f:06d}.label", make_label_word(sem, inst))
    write_instance_poses(seq / "instance_poses.txt", np.arange(frames), np.ones(frames), lidar_from_object)

    labels = load_label_manifest()
    stats = collect(tmp_path, ["00"], labels, ["car", *labels.hard_classes])
    assert stats.scans == frames and stats.missing_poses == 0
    assert stats.counts[labels.train_names.index("car")] == 3000 * frames
    assert stats.counts[labels.train_names.index("road")] == 1000 * frames
    inst = stats.instances
    assert inst is not None and inst.instance.tolist() == [1]
    assert inst.train_id.tolist() == [labels.train_names.index("car")]
    assert inst.points.tolist() == [3000 * frames] and inst.scans.tolist() == [frames]
    assert inst.extents[0] == pytest.approx([3.92, 1.96, 1.47], abs=0.03)  # 1st-99th percentile of a uniform box
    assert inst.lateral[0] == pytest.approx(6.0, abs=1e-6)
    assert inst.speed[0] == pytest.approx(3.0, abs=1e-6)
    assert stats.instance_scans.points.tolist() == [3000] * frames
