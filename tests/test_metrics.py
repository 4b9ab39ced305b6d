"""Metric definitions: hand-computed cases and agreement with the official evaluator's semantics."""

from __future__ import annotations

import numpy as np
import pytest

from m2s.errors import DataError
from m2s.evaluation.metrics import (
    BandedConfusion,
    ConfusionAccumulator,
    band_labels,
    horizontal_distance,
    scores_from_confusion,
)
from m2s.labels import load_label_manifest


class OfficialIouEval:
    """Literal re-implementation of semantic-kitti-api `auxiliary/np_ioueval.py` (numpy backend of
    `evaluate_semantics.py`), kept deliberately naive as an independent oracle."""

    def __init__(self, n_classes: int, ignore: list[int]) -> None:
        self.n_classes = n_classes
        self.ignore = np.array(ignore, dtype=np.int64)
        self.include = np.array([n for n in range(n_classes) if n not in self.ignore], dtype=np.int64)
        self.conf_matrix = np.zeros((n_classes, n_classes), dtype=np.int64)

    def addBatch(self, x: np.ndarray, y: np.ndarray) -> None:  # noqa: N802 - official name
        idxs = tuple(np.stack((x.reshape(-1), y.reshape(-1)), axis=0))
        np.add.at(self.conf_matrix, idxs, 1)

    def getStats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: N802
        conf = self.conf_matrix.copy()
        conf[:, self.ignore] = 0
        tp = np.diag(conf)
        fp = conf.sum(axis=1) - tp
        fn = conf.sum(axis=0) - tp
        return tp, fp, fn

    def getIoU(self) -> tuple[float, np.ndarray]:  # noqa: N802
        tp, fp, fn = self.getStats()
        union = tp + fp + fn + 1e-15
        iou = tp / union
        return (tp[self.include] / union[self.include]).mean(), iou

    def getacc(self) -> float:
        tp, fp, fn = self.getStats()
        return tp.sum() / (tp[self.include].sum() + fp[self.include].sum() + 1e-15)


def official_remap_lut(labels) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The official script's raw -> train lookup table (int32, +100 slack)."""
    lut = np.zeros(max(labels.learning_map) + 100, dtype=np.int32)
    lut[list(labels.learning_map.keys())] = list(labels.learning_map.values())
    return lut


# ---- hand-computed ------------------------------------------------------------------------------
def test_hand_computed_confusion_with_ignored_and_absent_classes() -> None:
    # 4 classes: 0 = ignored ("unlabeled"), 1..3 evaluated; class 3 absent from the ground truth.
    gt = np.array([1, 1, 1, 1, 2, 2, 2, 0, 0, 0])
    pred = np.array([1, 1, 2, 0, 2, 2, 3, 1, 2, 3])
    acc = ConfusionAccumulator(4, ignore=[0])
    acc.update(pred, gt)
    expected = np.zeros((4, 4), dtype=np.int64)  # [pred, gt]
    expected[1, 1] = 2
    expected[2, 1] = 1
    expected[0, 1] = 1
    expected[2, 2] = 2
    expected[3, 2] = 1
    expected[1, 0] = expected[2, 0] = expected[3, 0] = 1
    np.testing.assert_array_equal(acc.confusion, expected)

    s = acc.result()
    # Ignored-gt points (last three) count nowhere; the gt-1 point predicted "0" is a FN of class 1.
    assert s.tp == [0, 2, 2, 0]
    assert s.fp == [1, 0, 1, 1]
    assert s.fn == [0, 2, 1, 0]
    assert s.iou[1] == pytest.approx(2 / 4)
    assert s.iou[2] == pytest.approx(2 / 4)
    assert s.iou[3] == 0.0  # predicted once, never in gt: 0 / (0 + 1 + 0)
    assert s.present == [False, True, True, False]
    assert s.miou == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert s.miou_present == pytest.approx(0.5)
    # accuracy = sum tp / (tp + fp over evaluated classes): the "0" prediction leaves the denominator.
    assert s.accuracy == pytest.approx(4 / (4 + 0 + 1 + 1))
    assert s.labelled_points == 7


def test_class_absent_from_gt_and_predictions_counts_zero_in_official_miou() -> None:
    acc = ConfusionAccumulator(4, ignore=[0])
    acc.update(np.array([1, 2, 2]), np.array([1, 2, 2]))
    s = acc.result()
    assert s.iou[3] == 0.0 and not s.present[3]
    assert s.miou == pytest.approx(2 / 3)
    assert s.miou_present == pytest.approx(1.0)
    assert s.mean_iou_of([2, 3]) == pytest.approx(0.5)
    assert s.mean_iou_of([2, 3], present_only=True) == pytest.approx(1.0)
    assert s.mean_iou_of([3], present_only=True) is None


def test_empty_accumulator_has_no_present_mean() -> None:
    s = ConfusionAccumulator(3, ignore=[0]).result()
    assert s.miou == 0.0 and s.miou_present is None and s.accuracy == 0.0


def test_out_of_range_and_mismatched_inputs_refused() -> None:
    acc = ConfusionAccumulator(4, ignore=[0])
    with pytest.raises(DataError, match="outside 0..3"):
        acc.update(np.array([4]), np.array([1]))
    with pytest.raises(DataError, match="outside 0..3"):
        acc.update(np.array([1]), np.array([-1]))
    with pytest.raises(DataError, match="2 predictions for 1"):
        acc.update(np.array([1, 1]), np.array([1]))
    with pytest.raises(DataError, match="integer"):
        acc.update(np.array([1.0]), np.array([1]))


# ---- official oracle ----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agrees_with_official_evaluator_on_random_predictions(seed: int) -> None:
    labels = load_label_manifest()
    lut = official_remap_lut(labels)
    rng = np.random.default_rng(seed)
    raw_ids = np.array(sorted(labels.learning_map), dtype=np.uint32)
    # Drop every raw id of two classes from the ground truth, and one of them from the predictions
    # too, so both "absent from gt only" and "absent from both" cases occur.
    absent_gt = set(labels.raw_ids_of_train_classes(["motorcyclist", "bicycle"]).tolist())
    absent_both = set(labels.raw_ids_of_train_classes(["motorcyclist"]).tolist())
    gt_pool = np.array([r for r in raw_ids if r not in absent_gt], dtype=np.uint32)
    pred_pool = np.array([r for r in raw_ids if r not in absent_both], dtype=np.uint32)

    official = OfficialIouEval(labels.num_classes, labels.ignored_train_ids.tolist())
    ours = ConfusionAccumulator(labels.num_classes, labels.ignored_train_ids)
    for _ in range(5):  # several "scans"
        n = int(rng.integers(1000, 5000))
        gt_words = rng.choice(gt_pool, n) | (rng.integers(0, 50, n).astype(np.uint32) << 16)  # instance bits
        truth_raw = gt_words & 0xFFFF
        # Mostly right, sometimes any raw id (incl. unlabeled/outlier, i.e. ignored-class predictions).
        pred_raw = np.where(rng.random(n) < 0.6, truth_raw, rng.choice(pred_pool, n))
        official.addBatch(lut[pred_raw.astype(np.int64)], lut[(gt_words & 0xFFFF).astype(np.int64)])
        ours.update(labels.to_train(pred_raw), labels.to_train(gt_words))

    o_miou, o_iou = official.getIoU()
    s = ours.result()
    np.testing.assert_array_equal(ours.confusion, official.conf_matrix)
    np.testing.assert_allclose(s.iou, o_iou, atol=1e-6, rtol=0)
    assert abs(s.miou - o_miou) < 1e-6
    assert abs(s.accuracy - official.getacc()) < 1e-6
    mc = labels.train_names.index("motorcyclist")
    bc = labels.train_names.index("bicycle")
    assert s.iou[mc] == 0.0 and not s.present[mc]
    assert s.iou[bc] == 0.0 and not s.present[bc]
    assert s.miou_present is not None and s.miou_present > s.miou


def test_merge_equals_one_shot() -> None:
    rng = np.random.default_rng(7)
    pred = rng.integers(0, 20, 20000)
    gt = rng.integers(0, 20, 20000)
    dist = rng.uniform(0, 80, 20000)
    one = ConfusionAccumulator(20, [0])
    one.update(pred, gt)
    parts = [ConfusionAccumulator(20, [0]) for _ in range(3)]
    bands_one = BandedConfusion(20, [0])
    bands_one.update(pred, gt, dist)
    bands_parts = [BandedConfusion(20, [0]) for _ in range(3)]
    for i, sl in enumerate(np.array_split(np.arange(20000), 3)):
        parts[i].update(pred[sl], gt[sl])
        bands_parts[i].update(pred[sl], gt[sl], dist[sl])
    merged = parts[0].merge(parts[1]).merge(parts[2])
    np.testing.assert_array_equal(merged.confusion, one.confusion)
    assert merged.result() == one.result()
    bmerged = bands_parts[0].merge(bands_parts[1]).merge(bands_parts[2])
    np.testing.assert_array_equal(bmerged.confusion, bands_one.confusion)
    with pytest.raises(DataError):
        one.merge(ConfusionAccumulator(19, [0]))


# ---- distance bands -----------------------------------------------------------------------------
def test_distance_bands_are_horizontal_and_half_open() -> None:
    pts = np.array(
        [[3, 4, -1.7, 0], [0, 9.999, 5, 0], [10, 0, 0, 0], [0, -15, 0, 0], [20, 0, 9, 0], [30, 0, 0, 0], [0, 49.9, 0, 0],
         [50, 0, 0, 0], [60, 80, 0, 0]],
        dtype=np.float32,
    )
    d = horizontal_distance(pts)
    assert d[0] == pytest.approx(5.0)  # z does not count
    bc = BandedConfusion(3, [0])
    np.testing.assert_array_equal(bc.band_of(d), [0, 0, 1, 1, 2, 3, 3, 4, 4])
    assert bc.labels == band_labels([0, 10, 20, 30, 50]) == ["0-10 m", "10-20 m", "20-30 m", "30-50 m", "50+ m"]

    gt = np.array([1, 1, 1, 2, 2, 1, 1, 2, 2])
    pred = np.array([1, 2, 1, 2, 0, 1, 1, 2, 1])
    bc.update(pred, gt, d)
    total = ConfusionAccumulator(3, [0])
    total.update(pred, gt)
    np.testing.assert_array_equal(bc.confusion.sum(axis=0), total.confusion)  # bands partition the points
    res = bc.results()
    assert res[0].iou[1] == pytest.approx(0.5) and res[0].iou[2] == 0.0  # 0-10 m: one right, one confused
    assert res[1].iou[1] == pytest.approx(1.0) and res[1].iou[2] == pytest.approx(1.0)
    assert res[2].iou[2] == 0.0 and res[2].fn[2] == 1  # predicted the ignored class: a miss
    assert res[3].iou[1] == pytest.approx(1.0) and not res[3].present[2]
    assert res[4].iou[2] == pytest.approx(0.5) and res[4].iou[1] == 0.0


def test_bad_band_edges_refused() -> None:
    with pytest.raises(DataError):
        BandedConfusion(3, [0], edges=[5, 10])
    with pytest.raises(DataError):
        BandedConfusion(3, [0], edges=[0, 10, 10])


def test_scores_from_confusion_requires_square() -> None:
    with pytest.raises(DataError):
        scores_from_confusion(np.zeros((3, 4)), [0])
