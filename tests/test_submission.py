"""`submission.zip`: the benchmark layout, description.txt and the official validator's checks."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from m2s.artifacts import load_artifact, verify_files
from m2s.errors import DataError
from m2s.evaluation import EvaluationConfig, KittiScanSource, run_evaluation
from m2s.evaluation.submission import TEST_SEQUENCES, check_submission, expected_from_dataset, write_submission_zip

try:  # fixtures beside the runner tests (tests/ may or may not be a package)
    from test_evaluate import LABELS, TruthPredictor, make_dataset, mut
    from test_evaluate_cli import _fake_inference, _model
except ImportError:  # pragma: no cover
    from tests.test_evaluate import LABELS, TruthPredictor, make_dataset, mut
    from tests.test_evaluate_cli import _fake_inference, _model


def _dirs_and_files(zip_path: Path) -> tuple[set[str], dict[str, int]]:
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
    return {i.filename for i in infos if i.filename.endswith("/")}, {i.filename: i.file_size for i in infos if not i.filename.endswith("/")}


def test_full_test_split_gives_a_full_submission_in_the_benchmark_layout(tmp_path: Path) -> None:
    frames = {s: 1 + (int(s) % 2) for s in TEST_SEQUENCES}  # 1 or 2 scans per test sequence
    root = make_dataset(tmp_path / "kitti", frames, set(), n=50)
    out = tmp_path / "eval"
    outcome = run_evaluation([mut(TruthPredictor("student"))], KittiScanSource(root, list(TEST_SEQUENCES), LABELS), LABELS,
                             out, EvaluationConfig(export_labels=True, description="student, 2 epochs"))  # fmt: skip
    check = outcome.submissions["student"]
    assert check.full and check.missing_test_sequences == [] and check.scans == sum(frames.values())
    assert check.summary().startswith("a full submission")

    dirs, files = _dirs_and_files(out / "submission.zip")
    # The validator looks the directories up by name: every one has its own entry.
    assert {"sequences/"} | {f"sequences/{s}/" for s in TEST_SEQUENCES} | {f"sequences/{s}/predictions/" for s in TEST_SEQUENCES} <= dirs
    labels = {n for n in files if n != "description.txt"}
    assert len(labels) == sum(frames.values())
    for seq, count in frames.items():
        for f in range(count):
            name = f"sequences/{seq}/predictions/{f:06d}.label"
            points = (root / "sequences" / seq / "velodyne" / f"{f:06d}.bin").stat().st_size // 16
            assert files[name] == 4 * points  # one uint32 label per point
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert zf.read("description.txt").decode() == "student, 2 epochs\n"
        words = np.frombuffer(zf.read("sequences/11/predictions/000000.label"), dtype=np.uint32)
    assert set(np.unique(words)) <= set(LABELS.learning_map_inv.values())
    # The zip is a file of the evaluation artifact, with its digest.
    manifest = load_artifact(out, "evaluation")
    assert "submission.zip" in {f.path for f in manifest.files} and verify_files(out, manifest) == []
    assert manifest.metrics["student/submission"]["full"] is True


def test_a_validation_export_is_valid_but_not_a_full_submission(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "kitti", {"08": 2, "11": 1}, {"08"}, n=40)
    out = tmp_path / "eval"
    outcome = run_evaluation([mut(TruthPredictor("m"))], KittiScanSource(root, ["08", "11"], LABELS), LABELS, out,
                             EvaluationConfig(export_labels=True))  # fmt: skip
    check = outcome.submissions["m"]
    assert not check.full and check.sequences == ["08", "11"] and check.scans == 3
    assert check.missing_test_sequences == [s for s in TEST_SEQUENCES if s != "11"]
    assert "not a full submission" in check.summary() and "12" in check.summary()
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert zf.read("description.txt").decode().startswith("m2s ")  # the default description


def test_the_check_refuses_what_the_official_validator_refuses(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "kitti", {"11": 2}, set(), n=30)
    expected = expected_from_dataset(root, ["11"])
    preds = tmp_path / "preds" / "sequences" / "11" / "predictions"
    preds.mkdir(parents=True)
    for f, n in expected["11"].items():
        np.zeros(n, dtype=np.uint32).tofile(preds / f"{f:06d}.label")
    good = write_submission_zip(tmp_path / "preds", tmp_path / "ok.zip", "x")
    assert check_submission(good, expected).scans == 2

    # one label too few
    np.zeros(expected["11"][1] - 1, dtype=np.uint32).tofile(preds / "000001.label")  # type: ignore[operator]
    short = write_submission_zip(tmp_path / "preds", tmp_path / "short.zip", "x")
    with pytest.raises(DataError, match=r'"sequences/11/predictions/000001.label" should have \d+ labels'):
        check_submission(short, expected)
    # a missing scan makes it partial, not invalid
    (preds / "000001.label").unlink()
    partial = check_submission(write_submission_zip(tmp_path / "preds", tmp_path / "p.zip", "x"), expected)
    assert not partial.full and partial.missing_scans == {"11": 1}
    # no directory entries (a zip made with `zip -D`), and not a .zip name
    with zipfile.ZipFile(tmp_path / "nodirs.zip", "w") as zf:
        zf.writestr("sequences/11/predictions/000000.label", b"\0" * 4 * expected["11"][0])  # type: ignore[operator]
    with pytest.raises(DataError, match='directory "sequences/" missing'):
        check_submission(tmp_path / "nodirs.zip", expected)
    with pytest.raises(DataError, match="must end with .zip"):
        check_submission(tmp_path / "ok.tar", expected)


def test_cli_writes_and_reports_the_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "m2s.inference", _fake_inference([]))
    root = make_dataset(tmp_path / "kitti", {"11": 1}, set(), n=30)
    model = _model(tmp_path / "student", stride=0)
    out = tmp_path / "eval"
    args = ["evaluate", str(model), "--data", str(root), "--sequences", "11", "--out", str(out), "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "--export-labels", "--description", "my method"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long lines
    assert "valid benchmark layout, not a full submission" in text and "absent" in text
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert zf.read("description.txt") == b"my method\n"
    res = CliRunner().invoke(app, [*args, "--description", "x"])
    assert res.exit_code != 0 and "--export-labels" in res.output


def test_a_fused_cache_source_expects_each_scans_own_point_count(tiny_data) -> None:
    """Exports from a fused cache are checked against the count of each scan's own rows (the
    original `.bin`), not only for presence: the counts come from the cache's index, no block read."""
    from m2s.evaluation import FusedCacheSource
    from m2s.fuse import open_fused_cache
    from m2s.labels import load_label_manifest

    cache = open_fused_cache(tiny_data.val_cache)
    source = FusedCacheSource(cache, tiny_data.val_cache, load_label_manifest(None))
    expected = source.expected_scans()
    assert sum(len(frames) for frames in expected.values()) == len(cache)
    for i, (seq, frame) in enumerate(cache.index):
        block = cache.read_block(i)
        assert expected[seq][frame] == block.n_target
        raw = tiny_data.root / "sequences" / seq / "velodyne" / f"{frame:06d}.bin"
        assert expected[seq][frame] == raw.stat().st_size // 16
