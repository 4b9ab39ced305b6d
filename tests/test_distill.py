"""`m2s distill`: correspondence on real batches, baseline vs distilled runs, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cli.main import app
from m2s.artifacts import load_artifact
from m2s.distill.correspondence import match_voxels
from m2s.distill.task import DistillModule, StudentConfig
from m2s.fuse import open_fused_cache
from m2s.inference import load_model_artifact, load_state_dict_file
from m2s.labels import load_label_manifest
from m2s.models import build_model
from m2s.train.config import build_config
from m2s.train.dataset import ScanDataset, collate_views
from m2s.train.losses import SegmentationLoss

KD = {
    "logit_weight": 5.0, "affinity_weight": 1.0, "feature_weight": 1.0, "feature_layers": ["decoder", "down2"],
    "graph_weight": 1.0, "graph_k": 8, "graph_num_queries": 64,
}  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "teacher"
    res = CliRunner().invoke(app, [
        "train-teacher", "--cache", str(tiny_data.train_cache), "--val-cache", str(tiny_data.val_cache),
        "--out", str(out), "--config", str(tiny_data.config), "--epochs", "2", "--backend", "torch",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


def _student_config(tiny_data, tmp_path: Path, **distill) -> Path:
    base = yaml.safe_load(tiny_data.config.read_text())
    base["model"] = {"size": 14, "width": 0.125}  # a compressed student: adapters are needed
    base["distill"] = distill
    p = tmp_path / "student.yaml"
    p.write_text(yaml.safe_dump(base))
    return p


def _distill_cli(tiny_data, out: Path, cfg: Path, *extra: str) -> list[str]:
    return [
        "distill", "--cache", str(tiny_data.train_cache), "--val-cache", str(tiny_data.val_cache),
        "--out", str(out), "--config", str(cfg), "--epochs", "1", "--max-scans", "4", "--backend", "torch", *extra,
    ]  # fmt: skip


@pytest.mark.slow  # needs the 2-epoch teacher (real training)
def test_every_student_voxel_has_its_teacher_voxel_at_every_scale(tiny_data, teacher):
    labels = load_label_manifest()
    loaded = load_model_artifact(teacher, backend="torch")
    ds = ScanDataset([open_fused_cache(tiny_data.train_cache)], labels, loaded.voxel, ("fused", "single"), seed=0)
    batch = collate_views([ds[len(ds) - 1], ds[len(ds) - 2]])
    single, fused = batch.views["single"], batch.views["fused"]
    assert fused.coords.shape[0] > single.coords.shape[0]
    rows = match_voxels(single.coords, fused.coords)
    assert torch.equal(fused.coords[rows], single.coords)
    student = build_model(loaded.model_cfg, "torch")
    with torch.no_grad():
        _, s_feats = student(torch_sparse(single), return_features=True)
        _, t_feats = loaded.net(torch_sparse(fused), return_features=True)
    for name in s_feats:
        s, t = s_feats[name], t_feats[name]
        assert s.stride == t.stride
        r = match_voxels(s.coords, t.coords)
        assert torch.equal(t.coords[r], s.coords), name


def torch_sparse(view):
    from m2s.inference import view_to_sparse

    return view_to_sparse(view)


@pytest.mark.slow  # needs the 2-epoch teacher (real training)
def test_distilled_student_runs_end_to_end_and_exports_only_the_student(tiny_data, teacher, tmp_path):
    cfg = _student_config(tiny_data, tmp_path, **KD)
    out = tmp_path / "student"
    res = CliRunner().invoke(app, _distill_cli(tiny_data, out, cfg, "--teacher", str(teacher)))
    assert res.exit_code == 0, res.output
    manifest = load_artifact(out, "model")
    assert manifest.config["role"] == "student" and manifest.config["input"] == "single"
    assert manifest.config["teacher_id"] == load_artifact(teacher, "model").content_id
    assert any(i.kind == "model" for i in manifest.inputs)
    # per-loss values in the log
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    for term in ("ce", "lovasz", "kd_logit", "kd_feature", "kd_affinity", "kd_graph"):
        assert term in steps[-1], term
    # adapters and graph heads are dropped from the exported student
    state = load_state_dict_file(out / "weights" / "best.safetensors")
    assert not any(k.startswith(("terms", "adapters", "graph", "net.")) for k in state)
    loaded = load_model_artifact(out, backend="torch")
    assert loaded.model_cfg.width == 0.125


@pytest.mark.slow  # two real `m2s distill` runs (~3.5 s)
def test_baseline_needs_no_teacher_and_matches_a_zero_weight_run(tiny_data, tmp_path):
    cfg = _student_config(tiny_data, tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert CliRunner().invoke(app, _distill_cli(tiny_data, a, cfg, "--kd", "none")).exit_code == 0
    (tmp_path / "z").mkdir()
    zero = _student_config(tiny_data, tmp_path / "z", logit_weight=0, affinity_weight=0, feature_weight=0, graph_weight=0)
    res = CliRunner().invoke(app, _distill_cli(tiny_data, b, zero))
    assert res.exit_code == 0, res.output
    ma, mb = load_artifact(a, "model"), load_artifact(b, "model")
    assert ma.config["role"] == mb.config["role"] == "baseline"
    assert ma.metrics["epochs"][0]["train"] == mb.metrics["epochs"][0]["train"]


@pytest.mark.slow  # two real `m2s distill` runs (~4 s)
def test_single_view_control_is_taught_by_any_model_on_the_scan_alone(tiny_data, tmp_path):
    # teacher_view single: a baseline student (a model that never saw a fused row) teaches; the
    # run records it as its teacher and logs the logit term.
    cfg = _student_config(tiny_data, tmp_path)
    base = tmp_path / "baseline"
    assert CliRunner().invoke(app, _distill_cli(tiny_data, base, cfg, "--kd", "none")).exit_code == 0
    (tmp_path / "c").mkdir()
    control = _student_config(tiny_data, tmp_path / "c", logit_weight=5.0, teacher_view="single")
    out = tmp_path / "control"
    res = CliRunner().invoke(app, _distill_cli(tiny_data, out, control, "--teacher", str(base), "--seed", "1"))
    assert res.exit_code == 0, res.output
    manifest = load_artifact(out, "model")
    assert manifest.config["teacher_id"] == load_artifact(base, "model").content_id
    assert manifest.config["distill"]["teacher_view"] == "single"
    steps = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["event"] == "step"]
    assert steps and all(r["kd_logit"] >= 0 for r in steps)


@pytest.mark.slow  # needs the 2-epoch teacher (real training)
def test_distillation_without_teacher_or_with_a_mismatched_teacher_is_refused(tiny_data, teacher, tmp_path):
    cfg = _student_config(tiny_data, tmp_path, **KD)
    res = CliRunner().invoke(app, _distill_cli(tiny_data, tmp_path / "x", cfg))
    assert res.exit_code == 1 and "--teacher" in res.output
    data = yaml.safe_load(cfg.read_text())
    data["voxel"]["voxel_size"] = 0.3
    cfg.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, _distill_cli(tiny_data, tmp_path / "y", cfg, "--teacher", str(teacher)))
    assert res.exit_code == 1 and "voxel" in res.output


@pytest.mark.slow  # needs the 2-epoch teacher (real training)
def test_distill_module_terms_and_teacher_stays_frozen(tiny_data, teacher):
    labels = load_label_manifest()
    loaded = load_model_artifact(teacher, backend="torch")
    cfg = build_config(StudentConfig, tiny_data.config, {})
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_validate(KD)})
    module = DistillModule(build_model(cfg.model, "torch"), SegmentationLoss(cfg.loss, None), cfg, labels, loaded)
    ds = ScanDataset([open_fused_cache(tiny_data.train_cache)], labels, cfg.voxel, ("fused", "single"), seed=0)
    batch = collate_views([ds[len(ds) - 1], ds[len(ds) - 3]])
    before = {k: v.clone() for k, v in loaded.net.state_dict().items()}
    module.train()
    loss, terms = module(batch, 0.5)
    loss.backward()
    assert torch.isfinite(loss) and all(float(v) >= 0 for v in terms.values())
    assert not loaded.net.training
    assert all(p.grad is None for p in loaded.net.parameters())
    assert all(torch.equal(before[k], v) for k, v in loaded.net.state_dict().items())  # BN stats frozen
    # The frozen teacher is not part of the student module: not saved, not optimised.
    assert {k.split(".")[0] for k in module.state_dict()} <= {"net", "loss", "terms"}
    assert not {id(p) for p in loaded.net.parameters()} & {id(p) for p in module.parameters()}
    assert any(p.grad is not None for p in module.terms["feature"].parameters())


JOINT = {"mode": "joint", "logit_weight": 5.0, "affinity_weight": 1.0, "fused_ce_weight": 0.2}


@pytest.mark.slow  # needs the 2-epoch teacher (real training)
def test_joint_mode_needs_no_teacher_artifact_and_logs_its_fused_branch(tiny_data, teacher, tmp_path):
    cfg = _student_config(tiny_data, tmp_path, **{k: v for k, v in JOINT.items() if k != "mode"})
    out = tmp_path / "joint"
    res = CliRunner().invoke(app, _distill_cli(tiny_data, out, cfg, "--mode", "joint"))
    assert res.exit_code == 0, res.output
    manifest = load_artifact(out, "model")
    assert manifest.config["role"] == "student" and manifest.config["teacher_id"] is None
    assert manifest.config["distill"]["mode"] == "joint"
    assert not any(i.kind == "model" for i in manifest.inputs)
    steps = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["event"] == "step"]
    for term in ("ce", "lovasz", "ce_fused", "kd_logit", "kd_affinity"):
        assert term in steps[-1], term
    # A teacher artifact has no place in joint mode.
    res = CliRunner().invoke(app, _distill_cli(tiny_data, tmp_path / "j2", cfg, "--mode", "joint", "--teacher", str(teacher)))
    assert res.exit_code == 1 and "joint" in res.output


def _joint_module_and_batch(tiny_data, **distill):
    labels = load_label_manifest()
    cfg = build_config(StudentConfig, tiny_data.config, {})
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_validate(distill)})
    module = DistillModule(build_model(cfg.model, "torch"), SegmentationLoss(cfg.loss, None), cfg, labels, None)
    ds = ScanDataset([open_fused_cache(tiny_data.train_cache)], labels, cfg.voxel, ("fused", "single"), seed=0)
    batch = collate_views([ds[len(ds) - 1], ds[len(ds) - 3]])
    batch.views["fused"].feats.requires_grad_(True)
    batch.views["single"].feats.requires_grad_(True)
    return module.train(), batch


def test_joint_fused_branch_learns_from_its_ce_and_never_from_kd(tiny_data):
    # KD on, fused CE off: the fused branch is only a (detached) target -> no gradient reaches it.
    module, batch = _joint_module_and_batch(tiny_data, **(JOINT | {"fused_ce_weight": 0.0}))
    loss, terms = module(batch, 1.0)
    assert terms["kd_logit"] > 0 and "ce_fused" not in terms
    loss.backward()
    fused_grad = batch.views["fused"].feats.grad
    assert fused_grad is None or float(fused_grad.abs().sum()) == 0.0
    assert float(batch.views["single"].feats.grad.abs().sum()) > 0
    # Fused CE on: the fused branch gets gradients (only on voxels whose label fusion changed).
    module, batch = _joint_module_and_batch(tiny_data, **JOINT)
    loss, terms = module(batch, 1.0)
    assert terms["ce_fused"] > 0
    loss.backward()
    assert float(batch.views["fused"].feats.grad.abs().sum()) > 0


def test_joint_fused_ce_only_supervises_voxels_whose_label_fusion_changed(tiny_data):
    from m2s.distill.correspondence import lookup_voxels

    module, batch = _joint_module_and_batch(tiny_data, **(JOINT | {"logit_weight": 0.0, "affinity_weight": 0.0}))
    single, fused = batch.views["single"], batch.views["fused"]
    rows, found = lookup_voxels(fused.coords, single.coords)
    changed = ~found | (single.voxel_labels[rows] != fused.voxel_labels)
    assert changed.any() and not changed.all()
    _, terms = module(batch, 1.0)
    logits = module.net(torch_sparse(fused)).detach()
    target = torch.where(changed & (fused.voxel_labels != 0), fused.voxel_labels, torch.zeros_like(fused.voxel_labels))
    expected = 0.2 * torch.nn.functional.cross_entropy(logits, target, ignore_index=0)
    assert float(terms["ce_fused"]) == pytest.approx(float(expected), rel=1e-4)
