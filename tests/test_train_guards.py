"""Two wirings no other fast test pins: the class weights a run trains with, and --resume.

Both were found by mutating the code: counting class frequencies on the fused view instead of
the rows the loss is on, setting every weight to 1, or dropping the optimizer state on resume
left `make test-fast` green.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from m2s.artifacts import load_artifact
from m2s.fuse import open_fused_cache
from m2s.inference import load_state_dict_file
from m2s.labels import load_label_manifest
from m2s.train.hooks import Hook

FAST = ["--epochs", "1", "--backend", "torch", "--device", "cpu"]


def _hand_counts(cache_path: Path, own_only: bool, voxel_size_range: tuple[float, ...]) -> np.ndarray:
    """Train-id point counts of every scan of the cache, counted without m2s's dataset code."""
    labels = load_label_manifest()
    cache = open_fused_cache(cache_path)
    lo, hi = np.asarray(voxel_size_range[:3]), np.asarray(voxel_size_range[3:])
    counts = np.zeros(labels.num_classes, dtype=np.int64)
    for i in range(len(cache)):
        block = cache.read_block(i)
        rows = slice(0, block.n_target) if own_only else slice(None)
        xyz = block.points[rows, :3]
        inside = np.all((xyz >= lo) & (xyz < hi), axis=1)
        train = labels.to_train(block.label[rows][inside], source=cache.source_name(i))
        counts += np.bincount(train, minlength=labels.num_classes)
    return counts


def _hand_weights(counts: np.ndarray, cap: float) -> np.ndarray:
    """Inverse-sqrt frequency, mean 1 over the seen classes (class 0 ignored), capped; unseen = cap."""
    c = counts.astype(np.float64)
    c[0] = 0
    w = np.full(c.shape, cap)
    seen = c > 0
    w[seen] = 1.0 / np.sqrt(c[seen] / c.sum())
    w[seen] /= w[seen].mean()
    w = np.minimum(w, cap)
    w[0] = 0.0
    return w


def test_class_weights_are_counted_on_the_rows_the_loss_is_on(tiny_data, tmp_path):
    # frequency_scans (10) covers every scan of the tiny training cache: the count is exact.
    assert len(open_fused_cache(tiny_data.train_cache)) <= 10
    default_range = (-51.2, -51.2, -4.0, 51.2, 51.2, 2.4)  # the tiny config sets only voxel_size
    fused = _hand_counts(tiny_data.train_cache, own_only=False, voxel_size_range=default_range)
    single = _hand_counts(tiny_data.train_cache, own_only=True, voxel_size_range=default_range)
    assert not np.array_equal(fused, single), "the tiny data must tell the two views apart"
    runs = {
        "teacher": (["train-teacher"], fused),  # a pooled teacher's loss is on the whole fused block
        "baseline": (["distill", "--kd", "none"], single),  # a student's on its own scan
    }
    for name, (command, expect) in runs.items():
        out = tmp_path / name
        res = CliRunner().invoke(app, [*command, "--cache", str(tiny_data.train_cache), "--out", str(out),
                                       "--config", str(tiny_data.config), *FAST])
        assert res.exit_code == 0, res.output
        metrics = load_artifact(out, "model").metrics
        assert metrics["class_point_counts"] == expect.tolist(), name
        weights = np.asarray(metrics["class_weights"])
        assert np.allclose(weights, _hand_weights(expect, 10.0), rtol=1e-6), name
        assert not np.allclose(weights[1:], 1.0), "frequency weights are not all ones"


class _InterruptAfterFirstEpoch(Hook):
    def after_checkpoint(self, state, record) -> None:
        if record["epoch"] == 0:
            raise KeyboardInterrupt  # as a kill right after epoch 0's checkpoint


@pytest.mark.timeout(120)
def test_resume_restores_the_optimizer_and_continues_exactly(tiny_data, tmp_path):
    from m2s.train.config import TrainConfig, build_config
    from m2s.train.run import RunOptions, run_teacher

    cfg = build_config(TrainConfig, tiny_data.config, {"epochs": 2, "data.max_scans": 4, "backend": "torch", "device": "cpu"})
    labels = load_label_manifest()

    def opts(out: Path, **kw) -> RunOptions:
        return RunOptions(caches=[tiny_data.train_cache], out=out, **kw)

    run_teacher(cfg, labels, opts(tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        run_teacher(cfg, labels, opts(tmp_path / "cut", hooks=[_InterruptAfterFirstEpoch()]))
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["optimizer"]["state"], "epoch 0's checkpoint holds the Adam moments"
    run_teacher(cfg, labels, opts(tmp_path / "cut", resume=True))
    full = load_state_dict_file(tmp_path / "full" / "weights" / "last.safetensors")
    resumed = load_state_dict_file(tmp_path / "cut" / "weights" / "last.safetensors")
    assert full.keys() == resumed.keys()
    differ = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not differ, f"the resumed run's second epoch differs from the uninterrupted one: {differ[:3]}"
    # The final optimizer state as well (a dropped state would restart the Adam moments).
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["optimizer"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["optimizer"]
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k][n], b["state"][k][n]) for k in a["state"] for n in ("exp_avg", "exp_avg_sq", "step"))
