"""The evaluation runner, report, plots and benchmark export, with fake predictors on tiny data.

The fake data stores each point's true train id in the remission channel, so a fake predictor can
"see" the truth and corrupt it deterministically: everything but the network is exercised for real.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from m2s.artifacts import load_artifact, verify_files
from m2s.data.semantickitti import read_labels, write_labels, write_scan
from m2s.errors import ConfigError, DataError
from m2s.evaluation import (
    EvaluationConfig,
    FusedCacheSource,
    KittiScanSource,
    ModelUnderTest,
    comparison_rows,
    evaluate_models,
    prediction_path,
    read_metrics_json,
    run_evaluation,
    table_csv,
)
from m2s.labels import LabelManifest, load_label_manifest

try:  # the official-semantics oracle lives beside the metric tests (tests/ may or may not be a package)
    from test_metrics import OfficialIouEval
except ImportError:  # pragma: no cover
    from tests.test_metrics import OfficialIouEval

LABELS = load_label_manifest()
ABSENT = "motorcyclist"  # never in the fake ground truth


def _raw_pool(labels: LabelManifest) -> np.ndarray:
    absent = set(labels.raw_ids_of_train_classes([ABSENT]).tolist())
    return np.array(sorted(r for r in labels.learning_map if r not in absent), dtype=np.uint32)


def _scan(rng: np.random.Generator, labels: LabelManifest, n: int) -> tuple[np.ndarray, np.ndarray]:
    words = rng.choice(_raw_pool(labels), n) | (rng.integers(0, 9, n).astype(np.uint32) << 16)
    radius = rng.uniform(0.5, 70.0, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    points = np.stack(
        [radius * np.cos(angle), radius * np.sin(angle), rng.uniform(-2, 2, n), labels.to_train(words)], axis=1
    ).astype(np.float32)
    return points, words


def make_dataset(root: Path, frames: dict[str, int], labelled: set[str], n: int = 400, seed: int = 0) -> Path:
    """Tiny SemanticKITTI-layout data; sequences not in `labelled` get no labels/ folder (test split)."""
    rng = np.random.default_rng(seed)
    for seq, count in frames.items():
        for f in range(count):
            points, words = _scan(rng, LABELS, n + 17 * f)
            write_scan(root / "sequences" / seq / "velodyne" / f"{f:06d}.bin", points)
            if seq in labelled:
                write_labels(root / "sequences" / seq / "labels" / f"{f:06d}.label", words)
    return root


class TruthPredictor:
    """Predicts the true train id (read from remission), corrupting every `stride`-th point into
    `wrong` (a train id, possibly the ignored one) so the scores are known to differ."""

    def __init__(self, name: str, stride: int = 0, wrong: int = 1, digest: str | None = None,
                 input_kind: str = "single", voxel_size: float = 0.05) -> None:
        self.name = name
        self.stride = stride
        self.wrong = wrong
        self.label_digest = digest or LABELS.digest()
        self.input_kind = input_kind
        self.voxel_size = voxel_size
        self.batches: list[list[int]] = []

    def truth(self, pts: np.ndarray) -> np.ndarray:
        pred = pts[:, 3].astype(np.int64)
        if self.stride:
            pred[:: self.stride] = self.wrong
        return pred

    def predict(self, points: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append([p.shape[0] for p in points])
        return [self.truth(p) for p in points]


def mut(pred: TruthPredictor) -> ModelUnderTest:
    return ModelUnderTest.from_object(pred)


# ---- runner on raw scans ------------------------------------------------------------------------
def test_metrics_match_the_official_oracle_end_to_end(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "kitti", {"08": 4}, {"08"})
    perfect = TruthPredictor("perfect")
    noisy = TruthPredictor("noisy", stride=3, wrong=LABELS.train_names.index("car"))
    source = KittiScanSource(root, ["08"], LABELS)
    report = evaluate_models([mut(perfect), mut(noisy)], source, LABELS, EvaluationConfig(batch_size=3))

    # Oracle: the official numpy evaluator over the same scans.
    oracle = OfficialIouEval(LABELS.num_classes, LABELS.ignored_train_ids.tolist())
    for seq in source.sequences:
        for f in seq.frames:
            pts, words = seq.read_scan_and_labels(f)
            oracle.addBatch(noisy.truth(pts), LABELS.to_train(words))
    o_miou, o_iou = oracle.getIoU()
    r = report.models["noisy"]
    assert abs(r.miou - o_miou) < 1e-6
    assert abs(r.accuracy - oracle.getacc()) < 1e-6
    for c in report.classes:
        assert abs(r.iou[c] - o_iou[LABELS.train_names.index(c)]) < 1e-6
    np.testing.assert_array_equal(np.array(r.confusion), oracle.conf_matrix)

    p = report.models["perfect"]
    assert p.iou[ABSENT] == 0.0 and not p.present[ABSENT]
    assert p.miou == pytest.approx(18 / 19)  # official: the absent class counts as 0
    assert p.miou_present == pytest.approx(1.0)
    assert p.accuracy == pytest.approx(1.0)
    assert p.scans == 4 and p.scans_predicted == 4
    assert p.points == sum(400 + 17 * f for f in range(4))
    assert perfect.batches == [[400, 417, 434], [451]]  # batched, last batch partial
    hard_ids = [c for c in LABELS.hard_classes if c != ABSENT]
    assert p.hard_miou == pytest.approx(len(hard_ids) / len(LABELS.hard_classes))
    assert p.hard_miou_present == pytest.approx(1.0)
    bands = p.iou_by_distance
    assert list(bands) == ["0-10 m", "10-20 m", "20-30 m", "30-50 m", "50+ m"]
    assert sum(b.points for b in bands.values()) == p.points_labelled
    np.testing.assert_array_equal(sum(np.array(b.confusion) for b in bands.values()), np.array(p.confusion))
    assert p.ms_per_scan_median is not None and p.ms_per_scan_median >= 0
    rows = {row.metric: row for row in comparison_rows(report)}
    assert rows[ABSENT].no_ground_truth and rows[ABSENT].hard and not rows["car"].no_ground_truth
    assert rows["mIoU"].deltas[1] == pytest.approx(100 * (r.miou - p.miou)) and rows["mIoU"].improved(1) is False


def test_side_by_side_deltas_have_the_right_sign() -> None:
    from m2s.evaluation.report import EvaluationReport, ModelResult

    def result(name: str, car: float, ms: float) -> ModelResult:
        return ModelResult(name=name, input="single", miou=car / 2, iou={"car": car, "person": 0.5},
                           hard_miou=0.5, accuracy=0.9, ms_per_scan_median=ms, scans=1)

    report = EvaluationReport(
        label_digest="x", classes=["car", "person"], hard_classes=["person"], ignored_classes=["unlabeled"],
        distance={"measure": "horizontal", "edges_m": [0], "bands": ["0+ m"]}, sequences=["08"],
        unlabeled_sequences=[], models={"a": result("a", 0.8, 10.0), "b": result("b", 0.6, 5.0), "c": result("c", 0.9, 20.0)},
    )
    rows = {r.metric: r for r in comparison_rows(report)}
    car = rows["car"]
    assert car.values == pytest.approx([80.0, 60.0, 90.0])
    assert car.deltas[0] is None and car.deltas[1] == pytest.approx(-20.0) and car.deltas[2] == pytest.approx(10.0)
    assert car.improved(1) is False and car.improved(2) is True
    assert rows["person"].hard and rows["person"].improved(1) is None  # equal: neither colour
    ms = rows["ms / scan (median)"]
    assert ms.improved(1) is True and ms.improved(2) is False  # lower is better for speed
    csv_text = table_csv(report)
    assert csv_text.splitlines()[0] == "metric,kind,unit,hard,a,b,c,b - a,c - a"
    assert "car,class,%,0,80.0000,60.0000,90.0000,-20.0000,10.0000" in csv_text

    from cli.commands.evaluate import render_table

    table = render_table(report)
    delta_b = [str(c) for c in table.columns[3]._cells]  # columns: label, a, b, Δb, c, Δc
    assert delta_b[0] == "[red]-20.0[/]"
    delta_c = [str(c) for c in table.columns[5]._cells]
    assert delta_c[0] == "[green]+10.0[/]"


def test_artifact_files_plots_and_schema(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "kitti", {"08": 3}, {"08"})
    models = [mut(TruthPredictor("teacher")), mut(TruthPredictor("student", stride=4, wrong=0))]
    seen: list[tuple[int, int]] = []
    out = tmp_path / "eval"
    outcome = run_evaluation(models, KittiScanSource(root, ["08"], LABELS), LABELS, out,
                             EvaluationConfig(batch_size=2), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(0, 3), (2, 3), (3, 3)]

    manifest = load_artifact(out, "evaluation")
    assert verify_files(out, manifest) == []
    assert [i.kind for i in manifest.inputs] == ["raw-dataset"]
    listed = {f.path for f in manifest.files}
    assert listed == {"metrics.json", "evaluation.csv", "plots/class_iou.png", "plots/iou_by_distance.png",
                      "plots/confusion_teacher.png", "plots/confusion_student.png"}
    for rel in listed:
        if rel.endswith(".png"):
            data = (out / rel).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15_000, rel
    assert manifest.metrics["teacher/miou"] == pytest.approx(18 / 19)

    raw = json.loads((out / "metrics.json").read_text())
    assert raw["classes"] == LABELS.train_names[1:] and raw["distance"]["measure"] == "horizontal"
    for name in ("teacher", "student"):
        m = raw["models"][name]
        for key in ("miou", "miou_present", "hard_miou", "accuracy", "iou", "iou_by_distance", "confusion",
                    "ms_per_scan_median", "scans", "points"):
            assert key in m, key
        assert set(m["iou"]) == set(raw["classes"])
        assert np.array(m["confusion"]).shape == (20, 20)
        assert np.array(m["iou_by_distance"]["0-10 m"]["confusion"]).shape == (20, 20)
        assert m["iou_by_distance"]["0-10 m"]["iou"][ABSENT] is None  # no NaN in JSON
    student = raw["models"]["student"]
    assert student["accuracy"] > raw["models"]["teacher"]["accuracy"] - 1  # sanity: parsed floats
    # Predicting the ignored class on labelled points costs IoU (FN) but leaves accuracy at 1.
    assert student["miou"] < raw["models"]["teacher"]["miou"]
    assert student["accuracy"] == pytest.approx(1.0)
    assert read_metrics_json(out / "metrics.json") == outcome.report
    assert (out / "evaluation.csv").read_text().startswith("metric,kind,unit,hard,teacher,student,student - teacher")

    # Same inputs and config: same content id, whatever the batch size.
    again = run_evaluation(models, KittiScanSource(root, ["08"], LABELS), LABELS, tmp_path / "eval2",
                           EvaluationConfig(batch_size=3))
    assert again.manifest.content_id == outcome.manifest.content_id


# ---- export -------------------------------------------------------------------------------------
def test_export_round_trips_and_covers_the_unlabeled_test_split(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "kitti", {"08": 2, "11": 3}, {"08"})
    pred = TruthPredictor("student", stride=5, wrong=LABELS.train_names.index("person"))
    out = tmp_path / "eval"
    outcome = run_evaluation([mut(pred)], KittiScanSource(root, ["08", "11"], LABELS), LABELS, out,
                             EvaluationConfig(export_labels=True))
    r = outcome.report.models["student"]
    assert outcome.report.unlabeled_sequences == ["11"]
    assert r.scans == 2 and r.scans_predicted == 5 and r.exported_to == "predictions"
    source = KittiScanSource(root, ["08", "11"], LABELS)
    for seq in source.sequences:
        for f in seq.frames:
            path = prediction_path(out / "predictions", seq.sequence, f)
            assert path.relative_to(out).as_posix() == f"predictions/sequences/{seq.sequence}/predictions/{f:06d}.label"
            words = read_labels(path, expected_count=seq.read_scan(f).shape[0])
            assert words.dtype == np.uint32 and (words >> 16).max() == 0
            assert set(np.unique(words)) <= set(LABELS.learning_map_inv.values())  # raw ids via learning_map_inv
            np.testing.assert_array_equal(LABELS.to_train(words), pred.truth(seq.read_scan(f)))


def test_only_unlabeled_sequences_still_exports(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "kitti", {"11": 2}, set())
    out = tmp_path / "eval"
    outcome = run_evaluation([mut(TruthPredictor("m"))], KittiScanSource(root, ["11"], LABELS), LABELS, out,
                             EvaluationConfig(export_labels=True))
    r = outcome.report.models["m"]
    assert r.scans == 0 and r.miou is None and r.scans_predicted == 2
    assert prediction_path(out / "predictions", "11", 1).is_file()
    assert {f.path for f in outcome.manifest.files} == {"metrics.json", "evaluation.csv", "submission.zip"}


def test_several_models_export_into_named_subfolders(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "kitti", {"11": 1}, set())
    models = [mut(TruthPredictor("model")), mut(TruthPredictor("model", stride=2))]  # same display name
    report = evaluate_models(models, KittiScanSource(root, ["11"], LABELS), LABELS,
                             EvaluationConfig(export_labels=True), out_dir=tmp_path / "o")
    assert list(report.models) == ["model", "model-2"]
    assert prediction_path(tmp_path / "o" / "predictions" / "model", "11", 0).is_file()
    assert prediction_path(tmp_path / "o" / "predictions" / "model-2", "11", 0).is_file()


# ---- checks -------------------------------------------------------------------------------------
def test_label_digest_mismatch_refused(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "kitti", {"08": 1}, {"08"})
    bad = TruthPredictor("old", digest="0" * 64)
    with pytest.raises(ConfigError, match="label manifest digest"):
        evaluate_models([mut(bad)], KittiScanSource(root, ["08"], LABELS), LABELS, EvaluationConfig())
    assert not (tmp_path / "eval").exists()


def test_bad_predictions_refused(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "kitti", {"08": 1}, {"08"})

    class Short(TruthPredictor):
        def predict(self, points: list[np.ndarray]) -> list[np.ndarray]:
            return [self.truth(p)[:-1] for p in points]

    with pytest.raises(DataError, match="sequence 08 frame 0"):
        evaluate_models([mut(Short("short"))], KittiScanSource(root, ["08"], LABELS), LABELS, EvaluationConfig())


def test_max_scans_limits_the_stream(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "kitti", {"08": 5}, {"08"})
    pred = TruthPredictor("m")
    report = evaluate_models([mut(pred)], KittiScanSource(root, ["08"], LABELS), LABELS,
                             EvaluationConfig(max_scans=2, batch_size=4))
    assert report.models["m"].scans == 2 and pred.batches == [[400, 417]]


# ---- fused cache --------------------------------------------------------------------------------
@dataclass
class FakeBlock:
    points: np.ndarray
    label: np.ndarray | None
    n_target: int
    sequence: str
    frame: int


class FakeCache:
    """Stands in for `m2s.fuse.open_fused_cache`: each block = the scan's rows, then fused extra rows."""

    def __init__(self, n_blocks: int, label_digest: str, voxel_size: float | None = None, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        self.blocks = []
        for i in range(n_blocks):
            pts, words = _scan(rng, LABELS, 300 + i)
            extra_pts, extra_words = _scan(rng, LABELS, 120)
            self.blocks.append(FakeBlock(np.concatenate([pts, extra_pts]), np.concatenate([words, extra_words]),
                                         pts.shape[0], "8", i))
        self.label_digest = label_digest
        self.content_id = "cafe" * 6
        self.voxel_size = voxel_size
        self.index = [("08", i) for i in range(n_blocks)]

    def __len__(self) -> int:
        return len(self.blocks)

    def read_block(self, i: int) -> FakeBlock:
        return self.blocks[i]

    def target_counts(self) -> dict[str, dict[int, int]]:
        return {"08": {b.frame: b.n_target for b in self.blocks}}


def test_cache_models_see_their_input_but_are_scored_on_the_scan_points(tmp_path: Path) -> None:
    cache = FakeCache(3, LABELS.digest())
    teacher = TruthPredictor("teacher", input_kind="fused")
    student = TruthPredictor("student", input_kind="single", stride=7)
    source = FusedCacheSource(cache, tmp_path / "cache", LABELS)
    outcome = run_evaluation([mut(teacher), mut(student)], source, LABELS, tmp_path / "eval",
                             EvaluationConfig(batch_size=3, export_labels=True))
    assert teacher.batches == [[420, 421, 422]]  # all T rows
    assert student.batches == [[300, 301, 302]]  # the original scan only
    t = outcome.report.models["teacher"]
    assert t.input == "fused" and t.points == 903 and t.miou_present == pytest.approx(1.0)
    assert outcome.report.sequences == ["08"]
    words = read_labels(prediction_path(tmp_path / "eval" / "predictions" / "teacher", "08", 2))
    assert words.shape == (302,)  # the export holds the original scan's points only
    assert outcome.manifest.inputs[-1].kind == "fused-cache" and outcome.manifest.inputs[-1].id == cache.content_id

    # --input single forces the teacher onto single scans.
    teacher.batches.clear()
    evaluate_models([mut(teacher)], source, LABELS, EvaluationConfig(input="single", batch_size=3))
    assert teacher.batches == [[300, 301, 302]]


def test_cache_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--labels"):
        evaluate_models([mut(TruthPredictor("m"))], FusedCacheSource(FakeCache(1, "f" * 64), tmp_path, LABELS),
                        LABELS, EvaluationConfig())
    with pytest.raises(ConfigError, match="voxel size"):
        evaluate_models([mut(TruthPredictor("t", input_kind="fused", voxel_size=0.1))],
                        FusedCacheSource(FakeCache(1, LABELS.digest(), voxel_size=0.05), tmp_path, LABELS),
                        LABELS, EvaluationConfig())
    root = make_dataset(tmp_path / "kitti", {"08": 1}, {"08"})
    with pytest.raises(ConfigError, match="--cache"):
        evaluate_models([mut(TruthPredictor("m"))], KittiScanSource(root, ["08"], LABELS), LABELS,
                        EvaluationConfig(input="fused"))
