"""The CUDA path, on a GPU: what `pytest -m gpu` (and so `make gpu-check`) runs there.

Every test here is marked ``gpu`` and skipped, with the reason shown, where CUDA is absent; a
backend without CUDA kernels here (a CPU-only spconv or MinkowskiEngine) is skipped by name.

- each backend's three convolutions on CUDA against the torch backend on the CPU (outputs and
  gradients of features and weights, fp32);
- MinkUNet forward + backward on CUDA against the CPU, per backend;
- mixed precision on CUDA: a bf16 step and an fp16 step through GradScaler, against fp32;
- the trainer on CUDA (fp32, bf16, fp16 with its GradScaler) for one epoch;
- a distillation step of both modes (frozen teacher, joint) on CUDA: every tensor on the GPU
  (torch backend: anything created without a device becomes a meta tensor and fails), the
  loss and its terms equal to the CPU step's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from parity_helpers import aligned, rel_err, scan_input, shuffled

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

RTOL = 1e-4  # one op, or one forward, fp32 on two devices
GRAD_RTOL = 2e-3  # a whole network's gradients in fp32 (see tests/test_sparse_parity.py)
#: Every device below is this one; a CPU stand-in of this file (DEV = "cpu") runs the same code.
DEV = "cuda"
CUDA = torch.device(DEV)


def cuda_backend(name: str):
    """The backend `name` if it has CUDA kernels here, else a skip naming why."""
    from m2s.sparse import get_backend, minkowski_status, spconv_status

    if name == "spconv":
        from m2s.sparse import spconv_backend

        ok, why = spconv_status()
        if not ok or (DEV == "cuda" and not spconv_backend.has_cuda()):
            pytest.skip(f"spconv has no CUDA kernels here: {why or spconv_backend.describe()}")
    elif name == "minkowski":
        ok, why = minkowski_status()
        if not ok:
            pytest.skip(f"MinkowskiEngine not installed: {why}")
        import MinkowskiEngine as ME

        if DEV == "cuda" and not getattr(ME, "is_cuda_available", lambda: False)():
            pytest.skip("MinkowskiEngine is a CPU-only build")
    return get_backend(name)


def to_cpu(t):
    from m2s.sparse import SparseTensor

    return SparseTensor(t.coords.cpu(), t.feats.detach().cpu(), t.stride)


@contextlib.contextmanager
def unplaced_tensors_on_meta() -> Iterator[None]:
    """Factory calls without ``device=`` create meta tensors inside this block."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _on_cuda(*objs: object) -> None:
    for o in objs:
        if isinstance(o, torch.Tensor):
            assert o.device.type == DEV, f"tensor on {o.device}"
        elif isinstance(o, dict):
            _on_cuda(*o.values())
        elif isinstance(o, (list, tuple)):
            _on_cuda(*o)


# ---- each backend's ops ---------------------------------------------------------------------------


def _op(be, x, op: str, w: dict[str, torch.Tensor]):
    h, _ = be.prepare(x)
    if op == "subm":
        return be.subm_conv3(h, w["subm"])
    if op == "down":
        return be.down_conv2(h, w["down"])
    return be.up_conv2(be.down_conv2(h, w["down"]), w["up"], h)


@pytest.mark.parametrize("op", ["subm", "down", "up"])
@pytest.mark.parametrize("backend", ["torch", "spconv", "minkowski"])
def test_op_on_cuda_matches_torch_on_cpu(backend: str, op: str) -> None:
    from m2s.sparse import SparseTensor, get_backend

    be = cuda_backend(backend)
    ref_be = get_backend("torch")
    x = shuffled(scan_input(6000, seed=3, voxel=0.1, channels=3), seed=0)
    g = torch.Generator().manual_seed(7)
    w = {
        "subm": torch.randn(27, 3, 6, generator=g),
        "down": torch.randn(8, 3, 5, generator=g),
        "up": torch.randn(8, 5, 4, generator=g),
    }
    runs = {}
    for name, device, b in (("cpu", "cpu", ref_be), ("cuda", DEV, be)):
        feats = x.feats.to(device).clone().requires_grad_(True)
        ws = {k: v.to(device).clone().requires_grad_(True) for k, v in w.items()}
        y = _op(b, SparseTensor(x.coords.to(device), feats), op, ws)
        runs[name] = (y, feats, ws)
    y_cpu, f_cpu, w_cpu = runs["cpu"]
    y_gpu, f_gpu, w_gpu = runs["cuda"]
    assert y_gpu.feats.device.type == DEV
    gy = torch.randn(y_cpu.feats.shape, generator=torch.Generator().manual_seed(8))
    (y_cpu.feats * gy).sum().backward()
    # the same upstream gradient per voxel, in the CUDA output's row order
    gy_gpu = aligned(SparseTensor(y_cpu.coords, gy, y_cpu.stride), to_cpu(y_gpu)).to(CUDA)
    (y_gpu.feats * gy_gpu).sum().backward()
    assert rel_err(aligned(to_cpu(y_gpu), y_cpu).cpu(), y_cpu.feats) < RTOL
    assert f_gpu.grad is not None and f_cpu.grad is not None
    assert rel_err(f_gpu.grad.cpu(), f_cpu.grad) < RTOL
    for k in w_cpu:
        g_cpu, g_gpu = w_cpu[k].grad, w_gpu[k].grad
        if g_cpu is not None:
            assert g_gpu is not None and g_gpu.device.type == DEV
            assert rel_err(g_gpu.cpu(), g_cpu) < RTOL, k


# ---- MinkUNet forward + backward --------------------------------------------------------------------


def _minkunet_step(backend, device: str, x, labels):
    """One train-mode step of MinkUNet18 (width 0.5, seed-0 weights): (model, logits, loss)."""
    from m2s.models import ModelConfig, build_model
    from m2s.sparse import SparseTensor

    torch.manual_seed(0)
    model = build_model(ModelConfig(size=18, width=0.5), backend).to(device).train()
    xd = SparseTensor(x.coords.to(device), x.feats.to(device))
    logits = model(xd)
    loss = torch.nn.functional.cross_entropy(logits, labels.to(device))
    loss.backward()
    return model, logits, loss


@pytest.fixture(scope="module")
def scan() -> tuple[object, torch.Tensor]:
    x = shuffled(scan_input(20000, seed=5), seed=2)
    return x, torch.randint(0, 20, (x.num_voxels,), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cpu_reference(scan) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    torch.backends.cuda.matmul.allow_tf32 = False
    x, labels = scan
    model, logits, loss = _minkunet_step("torch", "cpu", x, labels)
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}, float(loss.detach())


@pytest.mark.parametrize("backend", ["torch", "spconv", "minkowski"])
def test_minkunet_forward_backward_on_cuda_matches_cpu(backend: str, scan, cpu_reference) -> None:
    be = cuda_backend(backend)
    x, labels = scan
    ref_logits, ref_grads, ref_loss = cpu_reference
    model, logits, loss = _minkunet_step(be, DEV, x, labels)
    assert logits.device.type == DEV and model.backend_name == backend
    assert rel_err(logits.cpu(), ref_logits) < RTOL, "logits come back in the input row order"
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert set(grads) == set(ref_grads) and all(g is not None and g.device.type == DEV for g in grads.values())
    flat = torch.cat([grads[n].cpu().flatten() for n in ref_grads])
    assert rel_err(flat, torch.cat([g.flatten() for g in ref_grads.values()])) < GRAD_RTOL
    assert abs(float(loss.detach()) - ref_loss) < 1e-4 * abs(ref_loss)
    assert model.state_dict()["stem.0.bn.num_batches_tracked"].item() == 1


# ---- mixed precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("backend", ["torch", "spconv"])  # MinkowskiEngine: no bf16 kernels
def test_amp_step_on_cuda(backend: str, dtype: str, scan) -> None:
    """A mixed-precision optimiser step as the trainer takes it (fp16 through a GradScaler, which
    skips steps whose gradients overflowed and lowers its scale: a few tries are allowed)."""
    from m2s.sparse import SparseTensor

    be = cuda_backend(backend)
    x, labels = scan
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    m32, _, loss32 = _minkunet_step(be, DEV, x, labels)
    g32 = torch.cat([p.grad.flatten() for p in m32.parameters()])
    model, _, _ = _minkunet_step(be, DEV, x, labels)  # the same seed-0 weights
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(DEV, enabled=half == torch.float16)  # as the trainer builds it
    xd = SparseTensor(x.coords.to(DEV), x.feats.to(DEV))
    for _ in range(8):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEV, dtype=half):
            logits = model(xd)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels.to(DEV))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [p.grad.clone() for p in model.parameters()]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        if finite:
            break
    assert finite, f"every fp16 step overflowed (scale now {scaler.get_scale()})"
    assert logits.dtype == half
    assert all(g.dtype == torch.float32 for g in grads)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)), (
        "the optimiser step was skipped"
    )
    if scaler.is_enabled():
        assert math.isfinite(scaler.get_scale()) and scaler.get_scale() > 0
    assert abs(float(loss.detach()) - float(loss32.detach())) < 0.05 * abs(float(loss32.detach()))
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grads]), g32, dim=0)
    assert float(cos) > 0.9


# ---- the trainer on CUDA ---------------------------------------------------------------------------


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_trainer_epoch_on_cuda(tiny_data, tmp_path: Path, amp: str) -> None:
    from m2s.distill.task import StudentConfig
    from m2s.fuse import open_fused_cache
    from m2s.labels import load_label_manifest
    from m2s.models import build_model
    from m2s.train import engine
    from m2s.train.config import build_config
    from m2s.train.dataset import ScanDataset
    from m2s.train.losses import SegmentationLoss
    from m2s.train.run import SupervisedModule

    labels = load_label_manifest()
    cfg = build_config(StudentConfig, tiny_data.config, {"epochs": 1, "optim.amp": amp, "device": DEV})
    train_ds = ScanDataset(
        [open_fused_cache(tiny_data.train_cache)], labels, cfg.voxel, ("fused",), seed=0, max_scans=4
    )
    val_ds = ScanDataset(
        [open_fused_cache(tiny_data.val_cache)], labels, cfg.voxel, ("fused",), keep_original=True, max_scans=2
    )
    module = SupervisedModule(build_model(cfg.model, "auto"), SegmentationLoss(cfg.loss, None), "fused")
    ctx = engine.setup_run(DEV)
    try:
        trainer = engine.Trainer(cfg, module, train_ds, val_ds, tmp_path, labels, ctx, eval_view="fused")
        result = trainer.fit()
    finally:
        engine.teardown_run(ctx)
    assert ctx.device.type == DEV and all(p.device.type == DEV for p in trainer.net.parameters())
    assert trainer.autocast == {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    assert math.isfinite(result.history[-1]["train"]["loss"])
    assert 0.0 <= result.history[-1]["val"]["miou"] <= 1.0
    assert (tmp_path / engine.CHECKPOINT_DIR / engine.LAST_CHECKPOINT).is_file()


# ---- distillation, both modes ---------------------------------------------------------------------

# Deterministic terms (no sampled graph queries), so the CPU and CUDA steps compute the same loss.
FROZEN = {
    "logit_weight": 1.0,
    "feature_weight": 1.0,
    "feature_layers": ["down2", "decoder"],
    "affinity_weight": 1.0,
    "graph_weight": 0.0,
}
FROZEN_ALL = FROZEN | {"graph_weight": 1.0, "graph_num_queries": 64, "graph_k": 4, "graph_hidden": 8}
JOINT = {
    "mode": "joint",
    "logit_weight": 1.0,
    "fused_ce_weight": 0.5,
    "feature_weight": 1.0,
    "feature_layers": ["down2", "decoder"],
}


@pytest.fixture(scope="module")
def batch(tiny_data):
    from m2s.distill.task import StudentConfig
    from m2s.fuse import open_fused_cache
    from m2s.labels import load_label_manifest
    from m2s.train.config import build_config
    from m2s.train.dataset import ScanDataset, collate_views

    voxel = build_config(StudentConfig, tiny_data.config, {}).voxel
    ds = ScanDataset(
        [open_fused_cache(tiny_data.train_cache)], load_label_manifest(), voxel, ("fused", "single"), seed=0
    )
    return collate_views([ds[len(ds) - 1], ds[len(ds) - 3]])


def _distill_module(tiny_data, backend: str, distill: dict):
    from m2s.distill.config import DistillConfig
    from m2s.distill.task import DistillModule, StudentConfig
    from m2s.inference import LoadedModel
    from m2s.labels import load_label_manifest
    from m2s.models import build_model
    from m2s.train.config import build_config
    from m2s.train.losses import SegmentationLoss

    labels = load_label_manifest()
    cfg = build_config(StudentConfig, tiny_data.config, {})
    cfg = cfg.model_copy(update={"distill": DistillConfig.model_validate(distill)})
    torch.manual_seed(0)
    student = build_model(cfg.model, backend)
    teacher = None
    if distill.get("mode") != "joint":
        net = build_model(cfg.model.model_copy(update={"width": 0.75}), backend)
        teacher = LoadedModel(
            net=net,
            manifest=None,  # type: ignore[arg-type]  # the module never reads it
            path=Path("fake-teacher"),
            model_cfg=net.cfg,
            voxel=cfg.voxel,
            device=torch.device("cpu"),
        )
    weights = torch.rand(labels.num_classes, generator=torch.Generator().manual_seed(0)) + 0.5
    module = DistillModule(student, SegmentationLoss(cfg.loss, weights.numpy()), cfg, labels, teacher).train()
    return module, (teacher.net if teacher is not None else None)


def _distill_step(module, batch):
    module.zero_grad(set_to_none=True)
    loss, terms = module(batch, 0.5)
    loss.backward()
    return loss, terms, {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["frozen", "joint"])
@pytest.mark.parametrize("backend", ["torch", "spconv"])
def test_distill_step_on_cuda_matches_cpu(tiny_data, batch, backend: str, mode: str) -> None:
    cuda_backend(backend)
    distill = FROZEN if mode == "frozen" else JOINT
    loss_cpu, terms_cpu, grads_cpu = _distill_step(_distill_module(tiny_data, backend, distill)[0], batch)
    module, teacher_net = _distill_module(tiny_data, backend, distill)
    module = module.to(CUDA)
    guard = unplaced_tensors_on_meta() if backend == "torch" else contextlib.nullcontext()
    with guard:
        loss, terms, grads = _distill_step(module, batch.to(CUDA))
    _on_cuda(loss, terms, grads)
    if teacher_net is not None:
        assert next(teacher_net.parameters()).device.type == DEV  # moved to the batch's device by the module
    assert set(terms) == set(terms_cpu) and len(terms) >= 3, terms
    for k, v in terms.items():
        assert abs(float(v) - float(terms_cpu[k])) <= 1e-3 * abs(float(terms_cpu[k])) + 1e-6, (
            k,
            float(v),
            float(terms_cpu[k]),
        )
    assert abs(float(loss.detach()) - float(loss_cpu.detach())) <= 1e-3 * abs(float(loss_cpu.detach()))
    assert set(grads) == set(grads_cpu)
    flat = torch.cat([grads[n].cpu().flatten() for n in grads_cpu])
    assert rel_err(flat, torch.cat([g.flatten() for g in grads_cpu.values()])) < 1e-2


@pytest.mark.parametrize("backend", ["torch", "spconv"])
def test_distill_step_every_term_on_cuda(tiny_data, batch, backend: str) -> None:
    """Every distillation term, the sampled local-graph term included, runs on the GPU."""
    cuda_backend(backend)
    module = _distill_module(tiny_data, backend, FROZEN_ALL)[0].to(CUDA)
    guard = unplaced_tensors_on_meta() if backend == "torch" else contextlib.nullcontext()
    with guard:
        loss, terms, grads = _distill_step(module, batch.to(CUDA))
    _on_cuda(loss, terms, grads)
    assert math.isfinite(float(loss.detach())) and all(math.isfinite(float(v)) for v in terms.values())
    assert "kd_graph" in terms, terms
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
