"""Real inference, no stand-ins: a tiny model trained by `m2s train-teacher`, loaded from its
artifact, predicting through `Predictor` and `m2s evaluate`, checked against a forward pass of the
same network on hand-voxelised input; points outside the model's range take the class of their
nearest in-range point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from m2s.data.semantickitti import Sequence, read_labels
from m2s.evaluation import prediction_path
from m2s.inference import LoadedModel, Predictor, fill_unpredicted, load_model_artifact
from m2s.labels import load_label_manifest
from m2s.sparse.tensor import SparseTensor

LABELS = load_label_manifest()


@pytest.fixture(scope="module")
def model(tiny_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch on the tiny set (seconds): enough for varied, non-zero predictions."""
    out = tmp_path_factory.mktemp("inference") / "tiny-model"
    res = CliRunner().invoke(app, [
        "train-teacher", "--cache", str(tiny_data.train_cache), "--val-cache", str(tiny_data.val_cache),
        "--out", str(out), "--config", str(tiny_data.config), "--epochs", "1", "--backend", "torch", "--seed", "0",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


def reference_prediction(loaded: LoadedModel, scan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train id per point, in-range mask), written out independently of m2s.inference: the
    half-open point range, floor((p - min) / voxel) cells, mean x/y/z/remission per cell, one
    forward pass, argmax, cell -> point; each out-of-range point takes the class of its nearest
    in-range point (brute force)."""
    lo = np.asarray(loaded.voxel.point_range[:3], dtype=np.float64)
    hi = np.asarray(loaded.voxel.point_range[3:], dtype=np.float64)
    xyz = scan[:, :3].astype(np.float64)
    inside = np.all((xyz >= lo) & (xyz < hi), axis=1)
    cells, p2v = np.unique(np.floor((xyz[inside] - lo) / loaded.voxel_size).astype(np.int64), axis=0, return_inverse=True)
    p2v = p2v.reshape(-1)
    sums = np.zeros((cells.shape[0], 4))
    np.add.at(sums, p2v, scan[inside].astype(np.float64))
    feats = (sums / np.bincount(p2v)[:, None]).astype(np.float32)
    coords = np.concatenate([np.zeros((cells.shape[0], 1), np.int64), cells], axis=1).astype(np.int32)
    with torch.no_grad():
        logits = loaded.net(SparseTensor(torch.from_numpy(coords), torch.from_numpy(feats)))
    pred = np.full(scan.shape[0], -1, dtype=np.int64)
    pred[inside] = logits.argmax(dim=1).numpy()[p2v]
    rows_in = np.flatnonzero(inside)
    for i in np.flatnonzero(~inside):
        pred[i] = pred[rows_in[np.argmin(((xyz[rows_in] - xyz[i]) ** 2).sum(axis=1))]]
    return pred, inside


def test_fill_unpredicted_gives_each_dropped_point_its_nearest_kept_class() -> None:
    xyz = np.array([[0, 0, 0], [10, 0, 0], [0.4, 0, 0], [9, 0, 0], [100, 0, 0], [-3, 1, 0]], dtype=np.float32)
    kept = np.array([1, 0])  # any order
    pred = fill_unpredicted(xyz, kept, np.array([7, 3]))
    np.testing.assert_array_equal(pred, [3, 7, 3, 7, 7, 3])
    np.testing.assert_array_equal(fill_unpredicted(xyz[:2], np.array([0, 1]), np.array([5, 6])), [5, 6])
    # Nothing in range: "unlabeled" everywhere (documented), never an exception.
    np.testing.assert_array_equal(fill_unpredicted(xyz, np.zeros(0, np.int64), np.zeros(0, np.int64)), np.zeros(6))


def test_predictor_equals_a_direct_forward_pass(tiny_data, model: Path) -> None:
    loaded = load_model_artifact(model, backend="torch")
    seq = Sequence(tiny_data.root, "08")
    scans = [seq.read_scan(f) for f in seq.frames[:2]]
    refs = [reference_prediction(loaded, s) for s in scans]
    batched = Predictor(loaded).predict(scans)  # two scans in one forward pass
    for scan, (ref, inside), got in zip(scans, refs, batched):
        assert got.shape == (scan.shape[0],) and got.dtype == np.int64
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(Predictor(loaded).predict([scan])[0], ref)  # alone: the same
        # The case under test is there: out-of-range points whose nearest neighbour is not class 0.
        assert (~inside).sum() > 10 and (ref[~inside] != 0).any()
        assert len(np.unique(ref[inside])) > 2  # a model that predicts something, not a constant


def test_out_of_range_points_take_the_class_of_their_nearest_in_range_point(tiny_data, model: Path) -> None:
    loaded = load_model_artifact(model, backend="torch")
    scan = Sequence(tiny_data.root, "08").read_scan(0)
    # Far copies of the in-range points farthest along x, moved just outside the range along x.
    hi_x = loaded.voxel.point_range[3]
    candidates = np.flatnonzero((scan[:, 0] < hi_x) & (np.abs(scan[:, 1]) < 40))
    inside = candidates[np.argsort(scan[candidates, 0])[-20:]]
    assert inside.size == 20 and scan[inside, 0].min() > 0
    far = scan[inside].copy()
    far[:, 0] = hi_x + 0.001  # just beyond x_max (half-open range)
    alone = Predictor(loaded).predict([scan])[0]
    pred = Predictor(loaded).predict([np.concatenate([scan, far])])[0]
    np.testing.assert_array_equal(pred[: scan.shape[0]], alone)  # extra dropped points change nothing else
    ref, _ = reference_prediction(loaded, np.concatenate([scan, far]))
    np.testing.assert_array_equal(pred, ref)
    assert (pred[scan.shape[0]:] != 0).all()


def test_evaluate_cli_scores_and_exports_the_real_predictions(tiny_data, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, [
        "evaluate", str(model), "--data", str(tiny_data.root), "--sequences", "08", "--out", str(out),
        "--export-labels", "--device", "cpu", "--backend", "torch", "--max-scans", "3",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    loaded = load_model_artifact(model, backend="torch")
    seq = Sequence(tiny_data.root, "08")
    c = LABELS.num_classes
    conf = np.zeros((c, c), dtype=np.int64)  # conf[pred][gt] over every point, as metrics.json stores it
    for f in seq.frames[:3]:
        scan, words = seq.read_scan_and_labels(f)
        ref, _ = reference_prediction(loaded, scan)
        exported = read_labels(prediction_path(out / "predictions", "08", f), expected_count=scan.shape[0])
        np.testing.assert_array_equal(LABELS.to_train(exported), ref)
        conf += np.bincount(ref * c + LABELS.to_train(words), minlength=c * c).reshape(c, c)
    scored = json.loads((out / "metrics.json").read_text())["models"][model.name]
    assert scored["scans"] == 3
    np.testing.assert_array_equal(np.asarray(scored["confusion"]), conf)
    # The headline number follows from that matrix (official: IoU over the 19 classes, 0 ignored).
    tp = np.diag(conf)[1:].astype(float)
    valid = conf[:, 1:]
    iou = tp / np.maximum(valid.sum(axis=0) + conf[1:, 1:].sum(axis=1) - tp, 1)
    assert scored["miou"] == pytest.approx(iou.mean(), abs=1e-9)
