"""GPU readiness without a GPU: the code paths written for CUDA, exercised on CPU.

- Device placement: a training or distillation step runs with torch's default device set to
  ``meta``, so any tensor created without an explicit device (one that would land on the CPU
  while the batch is on the GPU) becomes a meta tensor and fails the step or shows up in the
  outputs. Every tensor the step creates must follow its inputs' device.
- Mixed precision: the same steps under ``torch.autocast("cpu", bfloat16)``, forward and
  backward, on every installed backend; and the trainer's whole AMP path (autocast, GradScaler,
  validation under autocast, checkpoint) with bf16 allowed on CPU for the test.
- The CUDA-only correspondence test (tests/test_distill_losses.py) has its device-placement
  half here: lookups and hashes under the meta guard.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from m2s.distill.config import DistillConfig
from m2s.distill.correspondence import hash_coords, lookup_voxels, match_voxels
from m2s.distill.task import DistillModule, StudentConfig
from m2s.fuse import open_fused_cache
from m2s.inference import LoadedModel
from m2s.labels import load_label_manifest
from m2s.models import FEATURE_NAMES, build_model
from m2s.sparse import available_backends
from m2s.train.config import build_config
from m2s.train.dataset import Batch, ScanDataset, collate_views
from m2s.train.losses import SegmentationLoss
from m2s.train.run import SupervisedModule

LABELS = load_label_manifest()
BACKENDS = [b for b in ("torch", "spconv", "minkowski") if b in available_backends()]

#: Every distillation term on, at every scale (frozen teacher), and the joint mode.
ALL_TERMS = {
    "logit_weight": 1.0,
    "feature_weight": 1.0,
    "feature_layers": list(FEATURE_NAMES),
    "affinity_weight": 1.0,
    "graph_weight": 1.0,
    "graph_num_queries": 64,
    "graph_k": 4,
    "graph_hidden": 8,
    "hard_class_weight": 2.0,
}
JOINT = {"mode": "joint", "logit_weight": 1.0, "fused_ce_weight": 0.5, "feature_weight": 1.0, "feature_layers": ["down2", "decoder"]}
AFFINITY_INSTANCE = {"affinity_weight": 1.0, "affinity_grouping": "instance", "affinity_source": "features", "affinity_layer": "up4", "logit_weight": 0.0}


@contextlib.contextmanager
def unplaced_tensors_on_meta() -> Iterator[None]:
    """Factory calls without ``device=`` create meta tensors inside this block."""
    torch.set_default_device("meta")
    try:
        assert torch.zeros(1).device.type == "meta" and torch.arange(3).device.type == "meta"
        yield
    finally:
        torch.set_default_device(None)


def _all_on(device: torch.device, *objs: object) -> None:
    for o in objs:
        if isinstance(o, torch.Tensor):
            assert o.device == device, f"tensor on {o.device}, expected {device}"
        elif isinstance(o, dict):
            _all_on(device, *o.values())
        elif isinstance(o, (tuple, list)):
            _all_on(device, *o)


@pytest.fixture(scope="module")
def batch(tiny_data) -> Batch:
    voxel = build_config(StudentConfig, tiny_data.config, {}).voxel
    ds = ScanDataset([open_fused_cache(tiny_data.train_cache)], LABELS, voxel, ("fused", "single"), seed=0)
    return collate_views([ds[len(ds) - 1], ds[len(ds) - 3]])


def _config(tiny_data, **distill: object) -> StudentConfig:
    cfg = build_config(StudentConfig, tiny_data.config, {})
    return cfg.model_copy(update={"distill": DistillConfig.model_validate(distill)})


def _distill_module(tiny_data, backend: str, **distill: object) -> DistillModule:
    cfg = _config(tiny_data, **distill)
    torch.manual_seed(0)
    student = build_model(cfg.model, backend)
    teacher = None
    if distill.get("mode") != "joint":
        wider = distill.get("affinity_source") != "features"  # feature affinity needs equal widths
        teacher_net = build_model(cfg.model.model_copy(update={"width": 0.75}) if wider else cfg.model, backend)
        teacher = LoadedModel(net=teacher_net, manifest=None, path=Path("fake-teacher"),  # type: ignore[arg-type]
                              model_cfg=teacher_net.cfg, voxel=cfg.voxel, device=torch.device("cpu"))
    weights = torch.rand(LABELS.num_classes, generator=torch.Generator().manual_seed(0)) + 0.5
    return DistillModule(student, SegmentationLoss(cfg.loss, weights.numpy()), cfg, LABELS, teacher).train()


def _step(module: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss, terms = module(batch, 0.5)
    loss.backward()
    return loss, terms


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]


# ---- device placement --------------------------------------------------------------------------


@pytest.mark.parametrize("distill", [ALL_TERMS, JOINT, AFFINITY_INSTANCE], ids=["all-terms", "joint", "affinity-instance"])
def test_distill_step_creates_every_tensor_on_the_input_device(tiny_data, batch: Batch, distill: dict) -> None:
    module = _distill_module(tiny_data, "torch", **distill)
    with unplaced_tensors_on_meta():
        loss, terms = _step(module, batch)
    cpu = torch.device("cpu")
    _all_on(cpu, loss, terms, _grads(module))
    assert math.isfinite(float(loss.detach()))
    assert len(terms) >= 2, terms


def test_feature_affinity_on_a_strided_layer_is_a_config_error(tiny_data) -> None:
    from m2s.errors import ConfigError

    with pytest.raises(ConfigError, match="stride-1 affinity.layer"):
        _distill_module(tiny_data, "torch", **(AFFINITY_INSTANCE | {"affinity_layer": "up3"}))


def test_supervised_step_creates_every_tensor_on_the_input_device(tiny_data, batch: Batch) -> None:
    cfg = _config(tiny_data)
    for level in ("points", "voxels"):
        loss_cfg = cfg.loss.model_copy(update={"level": level, "lovasz_weight": 1.0})
        weights = torch.rand(LABELS.num_classes).numpy() + 0.5
        module = SupervisedModule(build_model(cfg.model, "torch"), SegmentationLoss(loss_cfg, weights), "fused")
        with unplaced_tensors_on_meta():
            loss, terms = _step(module, batch)
        _all_on(torch.device("cpu"), loss, terms, _grads(module))
        assert math.isfinite(float(loss.detach())) and set(terms) == {"ce", "lovasz"}


def test_correspondence_and_hash_follow_the_input_device() -> None:
    g = torch.Generator().manual_seed(8)
    teacher = torch.unique(torch.cat([torch.randint(0, 3, (4000, 1), generator=g), torch.randint(0, 60, (4000, 3), generator=g)], 1), dim=0)
    student = teacher[torch.randperm(teacher.shape[0], generator=g)[:1500]]
    ref = match_voxels(student, teacher)
    with unplaced_tensors_on_meta():
        rows = match_voxels(student, teacher)
        looked, found = lookup_voxels(student, teacher)
        empty = lookup_voxels(student[:0], teacher)
        h = hash_coords(teacher)
    _all_on(torch.device("cpu"), rows, looked, found, empty, h)
    assert torch.equal(rows, ref) and bool(found.all())


# ---- mixed precision on CPU --------------------------------------------------------------------


# MinkowskiEngine has no bfloat16 kernels (bench_backbone.py runs it without --amp): not listed.
AMP_CASES = [(b, "all-terms") for b in BACKENDS if b != "minkowski"] + [("torch", "affinity-instance"), ("torch", "joint")]


@pytest.mark.slow  # several full distillation steps in bf16 and fp32 (~12 s together)
@pytest.mark.parametrize(("backend", "terms"), AMP_CASES)
def test_distill_step_under_bf16_autocast(tiny_data, batch: Batch, backend: str, terms: str) -> None:
    distill = {"all-terms": ALL_TERMS, "affinity-instance": AFFINITY_INSTANCE, "joint": JOINT}[terms]
    module = _distill_module(tiny_data, backend, **distill)
    loss32, terms32 = _step(module, batch)
    grads32 = [g.clone() for g in _grads(module)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, terms16 = _step(module, batch)  # backward() inside the region, as some loops do
    grads16 = _grads(module)
    assert len(grads16) == len(grads32) > 0
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads16)
    assert math.isfinite(float(loss16.detach()))
    assert abs(float(loss16.detach()) - float(loss32.detach())) < 0.05 * abs(float(loss32.detach())), (terms16, terms32)
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads16]), torch.cat([g.flatten() for g in grads32]), dim=0)
    assert float(cos) > 0.9


@pytest.mark.slow  # a real 1-epoch training run
def test_trainer_amp_path_runs_on_cpu_with_bf16(tiny_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's AMP path (autocast, GradScaler, autocast validation, checkpoint with scaler
    state), normally CUDA-only, with bf16 allowed on CPU for this test."""
    from m2s.train import engine


    seen: list[torch.dtype | None] = []
    original = engine.amp_dtype

    def cpu_bf16(cfg, device):  # type: ignore[no-untyped-def]
        out = torch.bfloat16 if cfg.amp == "bf16" else original(cfg, device)
        seen.append(out)
        return out

    monkeypatch.setattr(engine, "amp_dtype", cpu_bf16)
    cfg = build_config(StudentConfig, tiny_data.config, {"epochs": 1, "optim.amp": "bf16"})
    train_ds = ScanDataset([open_fused_cache(tiny_data.train_cache)], LABELS, cfg.voxel, ("fused",), seed=0, max_scans=4)
    val_ds = ScanDataset([open_fused_cache(tiny_data.val_cache)], LABELS, cfg.voxel, ("fused",), keep_original=True, max_scans=2)
    module = SupervisedModule(build_model(cfg.model, "torch"), SegmentationLoss(cfg.loss, None), "fused")
    ctx = engine.setup_run("cpu")
    try:
        trainer = engine.Trainer(cfg, module, train_ds, val_ds, tmp_path, LABELS, ctx, eval_view="fused")
        result = trainer.fit()
    finally:
        engine.teardown_run(ctx)
    assert seen == [torch.bfloat16]
    assert not trainer.scaler.is_enabled()  # bf16 needs no loss scaling
    assert result.history and math.isfinite(result.history[-1]["train"]["loss"])
    assert 0.0 <= result.history[-1]["val"]["miou"] <= 1.0
    assert (tmp_path / engine.CHECKPOINT_DIR / engine.LAST_CHECKPOINT).is_file()
