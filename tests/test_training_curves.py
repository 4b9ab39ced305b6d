"""`plots/training.png` in every model artifact and `--tensorboard DIR` (an optional extra)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from m2s.artifacts import load_artifact, verify_files
from m2s.errors import ConfigError
from m2s.train.plots import TRAINING_PLOT, epoch_series, plot_training
from m2s.train.tensorboard import MISSING_MESSAGE, epoch_scalars, require_tensorboard


def _history() -> list[dict]:
    """Epoch records as the engine logs them; epoch 1 unvalidated, `kd` appears at epoch 1."""
    recs = []
    for e in range(3):
        rec: dict = {"event": "epoch", "epoch": e, "train": {"loss": 2.0 / (e + 1), "ce": 1.5 / (e + 1)}}
        if e:
            rec["train"]["kd"] = 0.1 * e
        if e != 1:
            rec["val"] = {"miou": 0.1 + 0.1 * e, "hard_miou": 0.05 * e, "accuracy": 0.5, "iou": {}}
        recs.append(rec)
    return recs


def test_epoch_series_and_plot(tmp_path: Path) -> None:
    epochs, train, val = epoch_series(_history())
    assert epochs.tolist() == [0, 1, 2] and list(train) == ["loss", "ce", "kd"]  # total loss first
    assert math.isnan(train["kd"][0]) and train["kd"][2] == pytest.approx(0.2)
    assert math.isnan(val["miou"][1]) and val["hard_miou"][2] == pytest.approx(0.1)
    path = plot_training(_history(), tmp_path / "plots" / "training.png", title="t")
    assert Image.open(path).size == (1100, 420)
    # no validation set at all, and an empty history, still draw
    plot_training([{"event": "epoch", "epoch": 0, "train": {"loss": 1.0}}], tmp_path / "a.png")
    plot_training([], tmp_path / "b.png")


def test_tensorboard_scalars_are_the_plotted_ones() -> None:
    assert epoch_scalars(_history()[2]) == pytest.approx(
        {"train/loss": 2 / 3, "train/ce": 0.5, "train/kd": 0.2, "val/miou": 0.3, "val/hard_miou": 0.1, "val/accuracy": 0.5}
    )
    assert "val/miou" not in epoch_scalars(_history()[1])


def _train(tiny_data, out: Path, *extra: str) -> list[str]:
    return ["train-teacher", "--cache", str(tiny_data.train_cache), "--val-cache", str(tiny_data.val_cache),
            "--out", str(out), "--config", str(tiny_data.config), "--backend", "torch", "--epochs", "2", *extra]  # fmt: skip


@pytest.mark.slow  # trains a real 2-epoch model (~5 s)
def test_model_artifact_has_its_training_plot_in_the_manifest(tiny_data, tmp_path: Path) -> None:
    out = tmp_path / "teacher"
    res = CliRunner().invoke(app, _train(tiny_data, out))
    assert res.exit_code == 0, res.output
    manifest = load_artifact(out, "model")
    digests = {f.path: f.sha256 for f in manifest.files}
    assert TRAINING_PLOT in digests and verify_files(out, manifest) == []
    assert Image.open(out / TRAINING_PLOT).size == (1100, 420)
    # An identical rerun is a no-op: the plot and its digest are unchanged.
    before = (out / TRAINING_PLOT).read_bytes()
    res = CliRunner().invoke(app, _train(tiny_data, out))
    assert res.exit_code == 0 and "up to date" in res.output
    assert (out / TRAINING_PLOT).read_bytes() == before
    assert {f.path: f.sha256 for f in load_artifact(out, "model").files} == digests


@pytest.mark.parametrize("command", ["train-teacher", "distill"])
def test_tensorboard_missing_is_one_clear_line_before_anything_runs(
    command: str, tiny_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    with pytest.raises(ConfigError, match="pip install 'm2s\\[tensorboard\\]'"):
        require_tensorboard()
    out = tmp_path / "model"
    args = _train(tiny_data, out, "--tensorboard", str(tmp_path / "tb"))
    if command == "distill":
        args = ["distill", "--kd", "none", *args[1:]]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0
    assert MISSING_MESSAGE.split(":")[0] in " ".join(res.output.split())
    assert not out.exists() and not (tmp_path / "tb").exists()


def test_tensorboard_events_hold_the_epoch_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the optional `tensorboard` extra is not installed (pip install 'm2s[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from m2s.train.tensorboard import TensorBoardLog

    log = TensorBoardLog(tmp_path / "tb")
    for rec in _history():
        log.epoch(rec)
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"train/loss", "train/kd", "val/miou", "val/hard_miou"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("val/miou")] == [0, 2]
    np.testing.assert_allclose([e.value for e in acc.Scalars("train/loss")], [2.0, 1.0, 2 / 3], rtol=1e-6)
