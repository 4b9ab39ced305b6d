"""Training engine and `m2s train-teacher`: learning, artifact, resume after a kill, NaN guard, DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from m2s.artifacts import load_artifact, verify_files
from m2s.errors import ConfigError
from m2s.fuse import open_fused_cache
from m2s.inference import load_model_artifact, load_state_dict_file
from m2s.labels import load_label_manifest
from m2s.train.config import TrainConfig, VoxelConfig, build_config
from m2s.train.dataset import ScanDataset, collate_views, in_range_mask
from m2s.train.engine import RunContext, Trainer, TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]


def _train_cli(tiny_data, out: Path, *extra: str) -> list[str]:
    return [
        "train-teacher", "--cache", str(tiny_data.train_cache), "--val-cache", str(tiny_data.val_cache),
        "--out", str(out), "--config", str(tiny_data.config), "--backend", "torch", *extra,
    ]


@pytest.fixture(scope="module")
def trained_teacher(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    res = CliRunner().invoke(app, _train_cli(tiny_data, out, "--epochs", "8"))
    assert res.exit_code == 0, res.output
    return out, res.output


@pytest.mark.slow  # an 8-epoch teacher (~15 s)
def test_teacher_learns_well_beyond_chance_and_writes_a_model_artifact(trained_teacher, tiny_data):
    out, output = trained_teacher
    manifest = load_artifact(out, "model")
    assert verify_files(out, manifest) == []
    labels = load_label_manifest()
    # Chance: always predicting the most frequent class of the validation scans.
    cache = open_fused_cache(tiny_data.val_cache)
    gt = np.concatenate([labels.to_train(cache.read_block(i).label[: cache.read_block(i).n_target]) for i in range(len(cache))])
    counts = np.bincount(gt[gt > 0], minlength=20)
    majority_miou = (counts.max() / counts.sum()) / 19
    best = manifest.metrics["best_miou"]
    # generator 3's tiny draw (clutter, ignored points, more classes) is harder than generator 2's:
    # the 8-epoch teacher reaches about 0.10, over 6x the majority-class mIoU (about 0.015)
    assert best > 0.08 and best > 5 * majority_miou, (best, majority_miou)
    assert manifest.config["role"] == "teacher" and manifest.config["input"] == "fused"
    assert manifest.config["label_digest"] == labels.digest()
    assert {i.id for i in manifest.inputs} >= {open_fused_cache(tiny_data.train_cache).content_id}
    # per-epoch metrics, a JSONL log with steps and epochs, the final per-class table
    assert len(manifest.metrics["epochs"]) == 8
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["event"] for r in records} == {"step", "epoch"}
    assert "mIoU" in output and "person" in output
    # weights load without executing code and rebuild the network
    state = load_state_dict_file(out / "weights" / "best.safetensors")
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded = load_model_artifact(out, backend="torch")
    assert loaded.input_kind == "fused" and loaded.voxel_size == 0.25


@pytest.mark.slow  # the same 8-epoch teacher
def test_identical_rerun_is_a_no_op_and_unfinished_run_needs_resume(trained_teacher, tiny_data, tmp_path):
    out, _ = trained_teacher
    before = (out / "manifest.json").read_text()
    res = CliRunner().invoke(app, _train_cli(tiny_data, out, "--epochs", "8"))
    assert res.exit_code == 0 and "up to date" in res.output
    assert (out / "manifest.json").read_text() == before
    # loader workers cannot change the weights: not part of the identity either
    res = CliRunner().invoke(app, _train_cli(tiny_data, out, "--epochs", "8", "--workers", "1"))
    assert res.exit_code == 0 and "up to date" in res.output
    # another config into a finished folder: refused as another model, even with --resume
    for extra in ([], ["--resume"]):
        res = CliRunner().invoke(app, _train_cli(tiny_data, out, "--epochs", "9", *extra))
        assert res.exit_code == 1 and "holds another finished model" in res.output, res.output
    assert (out / "manifest.json").read_text() == before
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "manifest.json").unlink()
    res = CliRunner().invoke(app, _train_cli(tiny_data, copy, "--epochs", "8"))
    assert res.exit_code == 1 and "--resume" in res.output


@pytest.mark.slow  # two real runs and a SIGKILL (~13 s)
def test_resume_after_kill_reproduces_the_uninterrupted_run(tiny_data, tmp_path):
    args = ["--epochs", "4", "--max-scans", "6"]
    full = tmp_path / "full"
    res = CliRunner().invoke(app, _train_cli(tiny_data, full, *args))
    assert res.exit_code == 0, res.output

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cli.main", *_train_cli(tiny_data, killed, *args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = killed / "log.jsonl"
    deadline = time.time() + 240
    # Kill once the second epoch is under way (its first step is logged after epoch 0's checkpoint).
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and any(json.loads(ln).get("epoch") == 1 for ln in log.read_text().splitlines() if ln):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists()

    res = CliRunner().invoke(app, _train_cli(tiny_data, killed, *args, "--resume"))
    assert res.exit_code == 0, res.output
    a = load_artifact(full, "model").metrics["epochs"]
    b = load_artifact(killed, "model").metrics["epochs"]
    assert [e["val"] for e in a] == [e["val"] for e in b]
    assert [e["train"] for e in a] == [e["train"] for e in b]
    wa = load_state_dict_file(full / "weights" / "last.safetensors")
    wb = load_state_dict_file(killed / "weights" / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the log holds each step once, as if the run had never been interrupted
    steps_a = [json.loads(x)["step"] for x in (full / "log.jsonl").read_text().splitlines()]
    steps_b = [json.loads(x)["step"] for x in (killed / "log.jsonl").read_text().splitlines()]
    assert steps_a == steps_b


class _NaNAfter(torch.nn.Module):
    """A training module whose loss turns non-finite at a given step."""

    def __init__(self, net: torch.nn.Module, bad_call: int) -> None:
        super().__init__()
        self.net = net
        self.calls = 0
        self.bad_call = bad_call

    def forward(self, batch, progress):
        from m2s.inference import view_to_sparse

        self.calls += 1
        logits = self.net(view_to_sparse(batch.views["fused"]))
        loss = logits.float().pow(2).mean()
        if self.calls >= self.bad_call:
            loss = loss * float("nan")
        return loss, {"sq": loss.detach()}


@pytest.mark.slow  # two real training runs (~3 s)
def test_nan_loss_stops_with_a_clear_message_and_a_resumable_checkpoint(tiny_data, tmp_path):
    from m2s.models import build_model

    cfg = build_config(TrainConfig, tiny_data.config, {"epochs": 3, "backend": "torch"})
    labels = load_label_manifest()
    ds = ScanDataset([open_fused_cache(tiny_data.train_cache)], labels, cfg.voxel, ("fused",), max_scans=6)
    module = _NaNAfter(build_model(cfg.model, "torch"), bad_call=5)
    trainer = Trainer(cfg, module, ds, None, tmp_path, labels, RunContext(torch.device("cpu")), eval_view="fused")
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at epoch 1 .*--resume"):
        trainer.fit()
    ckpt = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1  # the last good epoch boundary
    assert all(torch.isfinite(v).all() for v in state["module"].values() if v.is_floating_point())
    # resumable: a fresh trainer continues from it (with a loss that stays finite)
    module2 = _NaNAfter(build_model(cfg.model, "torch"), bad_call=10**9)
    trainer2 = Trainer(cfg, module2, ds, None, tmp_path, labels, RunContext(torch.device("cpu")), eval_view="fused")
    result = trainer2.fit(resume=True)
    assert result.resumed_from_epoch == 1 and len(result.history) == 3


def test_views_share_one_grid_and_out_of_range_points_are_dropped(tiny_data):
    labels = load_label_manifest()
    voxel = VoxelConfig(voxel_size=0.25, point_range=(-20, -20, -3, 20, 20, 2))
    cache = open_fused_cache(tiny_data.train_cache)
    ds = ScanDataset([cache], labels, voxel, ("fused", "single"), augment=TrainConfig().augment, seed=1)
    i = len(ds) - 1
    s = ds[i]
    fused, single = s.views["fused"], s.views["single"]
    block = cache.read_block(i)
    assert single.n_original == block.n_target and fused.n_original == block.points.shape[0]
    assert fused.n_original > single.n_original  # the teacher sees fused points
    # own rows are the block's first n_target rows; the single view has nothing else
    assert np.array_equal(fused.point_own, fused.kept < block.n_target) and single.point_own.all()
    assert not fused.point_own.all()
    # dropped, not clamped: every kept point is in range, and out-of-range points exist
    assert single.kept.shape[0] < single.n_original
    # every single-scan voxel is a fused voxel with the same integer coordinates
    f_keys = {tuple(c) for c in fused.coords.tolist()}
    assert all(tuple(c) in f_keys for c in single.coords.tolist())
    # augmentation is a function of (seed, epoch, index): reproducible, and it changes with the epoch
    assert np.array_equal(ds[i].views["single"].feats, single.feats)
    ds.set_epoch(1)
    assert not np.array_equal(ds[i].views["single"].feats, single.feats)
    batch = collate_views([ds[0], ds[1]])
    v = batch.views["single"]
    assert v.coords[:, 0].unique().tolist() == [0, 1]
    assert int(v.point_to_voxel.max()) < v.coords.shape[0]


def test_appended_keep_drops_whole_instances_of_appended_rows_and_never_own_rows(tiny_data):
    from m2s.train.config import AugmentConfig

    labels = load_label_manifest()
    cache = open_fused_cache(tiny_data.train_cache)
    i = next(j for j in range(len(cache)) if cache.read_block(j).points.shape[0] > cache.read_block(j).n_target)
    block = cache.read_block(i)
    appended_words = block.label[block.n_target :]

    def fused_view(keep: float, epoch: int = 0):
        ds = ScanDataset([cache], labels, VoxelConfig(voxel_size=0.25), ("fused", "single"), augment=AugmentConfig(appended_keep=keep), seed=3)
        ds.set_epoch(epoch)
        return ds[i].views

    full, none = fused_view(1.0)["fused"], fused_view(0.0)["fused"]
    assert (~full.point_own).sum() > 0 and (~none.point_own).sum() == 0
    assert np.array_equal(none.kept, full.kept[full.point_own])  # own rows always stay
    half = fused_view(0.5)["fused"]
    rows = half.kept[~half.point_own]
    kept_words = set(block.label[rows].tolist())
    # an instance keeps all of its appended rows or none of them
    full_rows = full.kept[~full.point_own]
    assert np.array_equal(rows, full_rows[np.isin(block.label[full_rows], list(kept_words))])
    assert 0 < len(kept_words) < len(set(appended_words.tolist()))
    # drawn from (seed, epoch, index), apart from the geometric augmentation
    assert np.array_equal(fused_view(0.5)["fused"].kept, half.kept)
    assert np.array_equal(fused_view(0.5)["single"].feats, fused_view(1.0)["single"].feats)


def test_appended_rows_own_mode_is_the_own_task_loss_plus_weighted_appended_ce():
    from types import SimpleNamespace

    import torch.nn.functional as F

    from m2s.train.config import LossConfig
    from m2s.train.losses import SegmentationLoss, lovasz_softmax
    from m2s.train.run import task_loss

    g = torch.Generator().manual_seed(0)
    voxel_logits = torch.randn(5, 4, generator=g, requires_grad=True)
    view = SimpleNamespace(
        point_to_voxel=torch.tensor([0, 0, 1, 2, 3, 4, 4]),
        point_labels=torch.tensor([1, 1, 2, 3, 0, 2, 3]),
        point_own=torch.tensor([True, True, True, True, True, False, False]),
        voxel_labels=torch.tensor([1, 2, 3, 0, 2]),
    )
    weights = np.array([0.0, 1.0, 2.0, 0.5], np.float32)
    own_loss = SegmentationLoss(LossConfig(appended="own", appended_ce_weight=0.2), weights)
    total, terms = task_loss(own_loss, voxel_logits, view)
    point_logits = voxel_logits[view.point_to_voxel]
    w = torch.from_numpy(weights)
    expected = (
        F.cross_entropy(point_logits[:5], view.point_labels[:5], weight=w, ignore_index=0)
        + lovasz_softmax(point_logits[:5].softmax(1), view.point_labels[:5])
        + 0.2 * F.cross_entropy(point_logits[5:], view.point_labels[5:], weight=w, ignore_index=0)
    )
    assert torch.allclose(total, expected) and set(terms) == {"ce", "lovasz", "ce_appended"}
    # voxel 4 holds only appended points: its gradient is 0.2 x their CE's, nothing from Lovasz
    total.backward()
    appended_only = voxel_logits.grad[4].clone()
    voxel_logits.grad = None
    (0.2 * F.cross_entropy(point_logits[5:], view.point_labels[5:], weight=w, ignore_index=0)).backward()
    assert torch.allclose(appended_only, voxel_logits.grad[4])
    # "pooled" (the default) is one loss over every row
    pooled, _ = task_loss(SegmentationLoss(LossConfig(), weights), voxel_logits, view)
    assert not torch.allclose(pooled, total)
    with pytest.raises(ValueError, match="level: points"):
        LossConfig(appended="own", level="voxels")


def test_in_range_mask_is_half_open():
    voxel = VoxelConfig(voxel_size=0.1, point_range=(-1, -1, -1, 1, 1, 1))
    xyz = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0.999, 0.5, -0.999]], np.float32)
    assert in_range_mask(xyz, voxel).tolist() == [True, False, True, True]


def test_config_validation_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim: {lr: 0.5}\nmodel: {size: 18, width: 0.5}\n")
    cfg = build_config(TrainConfig, p, {"optim.batch_size": 7, "epochs": None})
    assert cfg.optim.lr == 0.5 and cfg.optim.batch_size == 7 and cfg.model.width == 0.5 and cfg.epochs == 10
    p.write_text("optim: {learning_rate: 0.5}\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        build_config(TrainConfig, p, {})
    for name in ("demo-teacher.yaml", "kitti-teacher.yaml"):
        build_config(TrainConfig, ROOT / "pipelines" / "configs" / name, {})


@pytest.mark.timeout(600)
@pytest.mark.slow  # two DDP processes (~10 s)
def test_ddp_two_processes_on_cpu_gloo(tiny_data, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip(f"torchrun not found next to {sys.executable}")
    out = tmp_path / "ddp"
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "cli.main",
        *_train_cli(tiny_data, out, "--epochs", "2", "--max-scans", "6"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = load_artifact(out, "model")
    epochs = manifest.metrics["epochs"]
    assert len(epochs) == 2 and "val" in epochs[-1]
    # each rank saw half of the 6 scans per epoch: 2 ranks x 2 batches of <= 2 scans
    steps = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in steps) == 4
    # out-of-range counts are summed over the ranks: each epoch counts every point of the 6 scans
    cache = open_fused_cache(tiny_data.train_cache)
    pick = np.unique(np.linspace(0, len(cache) - 1, num=6).round().astype(int))
    total = sum(cache.read_block(int(i)).points.shape[0] for i in pick)
    assert [e["out_of_range"]["fused"]["points"] for e in epochs] == [total, total]
