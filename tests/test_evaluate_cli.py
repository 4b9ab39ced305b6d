"""`m2s evaluate` end to end through the CLI, with a stand-in `m2s.inference` module (fake models)."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from m2s.artifacts import Manifest, load_artifact, new_manifest, write_manifest
from m2s.evaluation import prediction_path

try:  # fixtures beside the runner tests (tests/ may or may not be a package)
    from test_evaluate import LABELS, TruthPredictor, make_dataset
except ImportError:  # pragma: no cover
    from tests.test_evaluate import LABELS, TruthPredictor, make_dataset


@dataclass
class FakeLoaded:
    manifest: Manifest
    name: str
    label_digest: str
    voxel_size: float
    input_kind: str
    stride: int


def _fake_inference(calls: list[dict]) -> types.ModuleType:
    """A module with the contract of `m2s.inference`: the model folder's config picks the corruption."""
    mod = types.ModuleType("m2s.inference")

    def load_model_artifact(path, backend="auto", device="cpu", checkpoint="best"):  # type: ignore[no-untyped-def]
        calls.append({"path": str(path), "backend": backend, "device": device, "checkpoint": checkpoint})
        manifest = load_artifact(path, "model")
        cfg = manifest.config
        return FakeLoaded(manifest, Path(path).name, cfg["label_digest"], 0.05, cfg["input_kind"], cfg["stride"])

    class Predictor:
        def __init__(self, loaded: FakeLoaded) -> None:
            self._inner = TruthPredictor(loaded.name, stride=loaded.stride, wrong=1)

        def predict(self, points: list[np.ndarray]) -> list[np.ndarray]:
            return self._inner.predict(points)

    mod.load_model_artifact = load_model_artifact  # type: ignore[attr-defined]
    mod.Predictor = Predictor  # type: ignore[attr-defined]
    return mod


def _model(folder: Path, stride: int, digest: str | None = None) -> Path:
    cfg = {"label_digest": digest or LABELS.digest(), "input_kind": "single", "stride": stride}
    write_manifest(folder, new_manifest("model", cfg, []))
    return folder


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    log: list[dict] = []
    monkeypatch.setitem(sys.modules, "m2s.inference", _fake_inference(log))
    return log


def test_cli_compares_models_and_exports(tmp_path: Path, calls: list[dict]) -> None:
    root = make_dataset(tmp_path / "kitti", {"08": 2, "11": 1}, {"08"})
    a = _model(tmp_path / "teacher", stride=0)
    b = _model(tmp_path / "student", stride=3)
    out = tmp_path / "eval"
    res = CliRunner().invoke(
        app,
        ["evaluate", str(a), str(b), "--data", str(root), "--sequences", "8,11", "--out", str(out),
         "--export-labels", "--device", "cpu", "--batch-size", "2", "--backend", "torch"],
    )
    assert res.exit_code == 0, res.output
    assert "teacher" in res.output and "student" in res.output and "mIoU" in res.output
    assert "11 have no labels" in res.output
    assert calls[0] == {"path": str(a), "backend": "torch", "device": "cpu", "checkpoint": "best"}

    manifest = load_artifact(out, "evaluation")
    assert [i.kind for i in manifest.inputs] == ["model", "model", "raw-dataset"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["teacher"]["miou_present"] == pytest.approx(1.0)
    assert metrics["models"]["student"]["miou"] < metrics["models"]["teacher"]["miou"]
    for name in ("teacher", "student"):
        assert prediction_path(out / "predictions" / name, "11", 0).is_file()
        assert prediction_path(out / "predictions" / name, "08", 1).is_file()


def test_cli_refuses_label_digest_mismatch(tmp_path: Path, calls: list[dict]) -> None:
    root = make_dataset(tmp_path / "kitti", {"08": 1}, {"08"})
    a = _model(tmp_path / "old", stride=0, digest="ab" * 32)
    res = CliRunner().invoke(app, ["evaluate", str(a), "--data", str(root), "--sequences", "08",
                                   "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert res.exit_code == 1
    assert "label manifest digest" in res.output and "Traceback" not in res.output


def test_cli_usage_errors(tmp_path: Path, calls: list[dict]) -> None:
    a = _model(tmp_path / "m", stride=0)
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(a), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "exactly one of --data" in res.output
    res = runner.invoke(app, ["evaluate", str(a), "--data", str(tmp_path), "--input", "fused", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    res = runner.invoke(app, ["evaluate", str(a), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "not a SemanticKITTI root" in res.output
