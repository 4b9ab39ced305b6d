"""The parts of `make gpu-check` (benchmarks/gpu_check.py runs each in its own process).

* ``env``       GPU name and memory, driver, torch / CUDA / cuDNN versions, which sparse backends
                import and with which CUDA build;
* ``pytest``    ``pytest -m gpu``: every CUDA-marked test (tests/test_cuda.py and the others);
* ``parity``    CPU <-> CUDA for every backend with CUDA kernels here: MinkUNet18 (same weights,
                same input, train mode, fp32, TF32 off) logits and parameter gradients, against
                LOGITS_RTOL and GRADS_RTOL;
* ``backbone``  MinkUNet18 and 34 forward+backward on a batch of full-size scans (64 beams,
                0.05 m voxels): ms, scans/s and peak memory per backend (torch, spconv) and dtype
                (fp32, bf16 autocast), and spconv's own network (benchmarks/spconv_native.py);
* ``train``     a short synthetic training run at full size of a teacher (pipelines/configs/
                full-teacher.yaml), then of a distilled student taught by it (full-student.yaml):
                training scans/s, the share of each step spent waiting for the loader, peak
                memory, and the projected time of one SemanticKITTI epoch (19,130 scans).

A part records its result as it goes (:class:`Recorder`), checks its :class:`Deadline` between
steps and stops there, and says "skipped: no CUDA" for what needs a GPU while still running its
code on the CPU. Only the standard library is imported at module level: m2s needs pydantic, which
``gpu_check.py --wheels`` may install first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

PARTS = ("env", "pytest", "parity", "backbone", "train")
#: Training scans of SemanticKITTI (sequences 00-07, 09, 10): one epoch, for the projection.
SEMANTICKITTI_TRAIN_SCANS = 19_130
#: CPU <-> CUDA parity, fp32, norm-wise relative error. Logits: one forward of 20+ layers in
#: float32 lands ~1e-6..1e-5 apart on two devices. Gradients (all parameters concatenated):
#: train-mode batch norm cancels so strongly that either device alone lies up to ~1e-3 from
#: float64 (tests/test_sparse_parity.py), hence the same 2e-3 bound as that test.
LOGITS_RTOL = 1e-4
GRADS_RTOL = 2e-3


@dataclass(frozen=True)
class Sizes:
    """Every size a part uses; FULL is what the issue asks, QUICK exercises the same code."""

    beams: int
    columns: int
    points: int  # per synthetic backbone scan (a 64x2048 sensor returns ~125k points)
    voxel: float
    batch: int
    width: float
    model_sizes: tuple[int, ...]
    repeats: int
    warmup: int
    parity_points: int
    train_scans: int  # generated and fused for the training part
    train_s: float  # seconds of measured training per run (teacher, then student)
    train_warmup: int  # steps before the measured window (allocator, kernels, loader start)
    workers: int | None  # loader workers; None: the config's (data.num_workers)
    config_overrides: tuple[tuple[str, Any], ...]


FULL = Sizes(
    beams=64,
    columns=2048,
    points=125_000,
    voxel=0.05,
    batch=4,
    width=1.0,
    model_sizes=(18, 34),
    repeats=5,
    warmup=2,
    parity_points=50_000,
    train_scans=120,
    train_s=60.0,
    train_warmup=3,
    workers=None,
    config_overrides=(),
)
QUICK = Sizes(
    beams=16,
    columns=256,
    points=3_000,
    voxel=0.2,
    batch=2,
    width=0.25,
    model_sizes=(18, 34),
    repeats=2,
    warmup=1,
    parity_points=3_000,
    train_scans=6,
    train_s=3.0,
    train_warmup=1,
    workers=1,
    config_overrides=(("model.width", 0.25), ("voxel.voxel_size", 0.2), ("optim.batch_size", 2)),
)


# ---- time boxes ----------------------------------------------------------------------------------
class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0


class Recorder:
    """A part's result, rewritten atomically after every change: a killed part keeps what it had."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"status": "running"}
        self.flush()

    def update(self, **kw: Any) -> None:
        self.data.update(kw)
        self.flush()

    def append(self, key: str, item: Any) -> None:
        self.data.setdefault(key, []).append(item)
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class PartContext:
    device: str  # "cuda" or "cpu": where the GPU figures are taken
    cuda: bool  # CUDA usable and asked for
    quick: bool
    sizes: Sizes
    deadline: Deadline
    rec: Recorder
    backends: tuple[str, ...]

    @property
    def no_cuda(self) -> str:
        return "skipped: no CUDA (--device cpu)" if self.device == "cpu" else "skipped: no CUDA"


# ---- helpers shared by the parts ---------------------------------------------------------------
def _reset_peak(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: Any) -> float | None:
    """Peak CUDA memory allocated since the last reset; None on the CPU (no per-run figure there)."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rel_err(a: Any, b: Any) -> float:
    """Norm-wise relative error of `a` against `b` (robust to entries near zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def scan_batch(sizes: Sizes, scans: int, points: int, seed: int = 0) -> Any:
    """`scans` seeded synthetic 64-beam scans as one batched SparseTensor (mean xyz + intensity per
    voxel of `sizes.voxel`). Voxelised here with floor + unique, so the benchmark input does not
    depend on the training loader's grid or range (those are timed by the training part)."""
    import torch

    from m2s.sparse import SparseTensor
    from m2s.sparse.synthetic import synthetic_scan

    xyz_l, feat_l, b_l = [], [], []
    for b in range(scans):
        xyz, intensity = synthetic_scan(points, seed=seed + b)
        xyz_l.append(xyz)
        feat_l.append(torch.cat([xyz, intensity[:, None]], 1))
        b_l.append(torch.full((xyz.shape[0],), b, dtype=torch.int64))
    xyz, feats, batch = torch.cat(xyz_l), torch.cat(feat_l), torch.cat(b_l)
    keys = torch.cat([batch[:, None], torch.floor(xyz / sizes.voxel).long()], 1)
    coords, inverse = torch.unique(keys, dim=0, return_inverse=True)
    count = torch.bincount(inverse, minlength=coords.shape[0]).clamp_min(1)
    mean = torch.zeros(coords.shape[0], feats.shape[1]).index_add_(0, inverse, feats) / count[:, None]
    return SparseTensor(coords.to(torch.int32), mean)


def cuda_backends(requested: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """(backends with CUDA kernels here, {backend: why not} for the others requested)."""
    import torch

    from m2s.sparse import available_backends, minkowski_status, spconv_status

    ok: list[str] = []
    why: dict[str, str] = {}
    present = available_backends()
    for name in requested:
        if name not in present:
            status = {"spconv": spconv_status, "minkowski": minkowski_status}.get(name)
            why[name] = f"not installed ({status()[1]})" if status else "not installed"
        elif not torch.cuda.is_available():
            why[name] = "no CUDA"
        elif name == "spconv":
            from m2s.sparse import spconv_backend

            if spconv_backend.has_cuda():
                ok.append(name)
            else:
                why[name] = f"no CUDA kernels ({spconv_backend.describe()})"
        elif name == "minkowski":
            import MinkowskiEngine as ME

            if getattr(ME, "is_cuda_available", lambda: False)():
                ok.append(name)
            else:
                why[name] = "CPU-only build of MinkowskiEngine"
        else:
            ok.append(name)
    return ok, why


# ---- part: env -----------------------------------------------------------------------------------
def _dist_versions(prefixes: tuple[str, ...]) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for d in metadata.distributions():
        name = (d.name or "").lower()
        if name.startswith(prefixes):
            out[name] = d.version
    return dict(sorted(out.items()))


def part_env(ctx: PartContext) -> None:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "shm_GiB": round(shutil.disk_usage("/dev/shm").total / 2**30, 1) if os.path.isdir("/dev/shm") else None,
        "packages": _dist_versions(
            ("numpy", "pydantic", "h5py", "scipy", "spconv", "cumm", "minkowskiengine", "typing")
        ),
    }
    if torch.cuda.is_available():
        info["gpus"] = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append(
                {
                    "name": p.name,
                    "memory_GiB": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}",
                    "multiprocessors": p.multi_processor_count,
                }
            )
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        info["driver"] = smi.stdout.strip().split(",")[1].strip() if smi.returncode == 0 and "," in smi.stdout else None
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["nvidia_smi"] = f"not available ({type(exc).__name__})"
        info["driver"] = None
    ctx.rec.update(info=info)

    from m2s.sparse import available_backends, minkowski_status, resolve_auto, spconv_backend, spconv_status

    backends: dict[str, Any] = {"torch": {"imports": True, "cuda": torch.cuda.is_available()}}
    sp_ok, sp_why = spconv_status()
    backends["spconv"] = {
        "imports": sp_ok,
        "why": sp_why or None,
        "describe": spconv_backend.describe(),
        "cuda": sp_ok and spconv_backend.has_cuda(),
    }
    me_ok, me_why = minkowski_status()
    me: dict[str, Any] = {"imports": me_ok, "why": me_why or None, "cuda": False}
    if me_ok:
        import MinkowskiEngine as ME

        me["version"] = getattr(ME, "__version__", "?")
        me["cuda"] = bool(torch.cuda.is_available() and getattr(ME, "is_cuda_available", lambda: False)())
    backends["minkowski"] = me
    ctx.rec.update(backends=backends, available=available_backends(), auto=resolve_auto())
    log(json.dumps(ctx.rec.data, indent=1, default=str))
    ctx.rec.update(status="ok" if torch.cuda.is_available() or ctx.device == "cpu" else "ok (no CUDA seen)")


# ---- part: pytest -m gpu -------------------------------------------------------------------------
def _junit(path: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    tests: list[dict[str, Any]] = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or "").strip().splitlines()[0][:200] if el.get("message") else ""
                break
        tests.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "time_s": float(case.get("time") or 0.0),
                "message": message,
            }
        )
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


def part_pytest(ctx: PartContext) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu_check_pytest_") as scratch:
        _run_pytest(ctx, Path(scratch) / "junit.xml")


def _run_pytest(ctx: PartContext, junit: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "tests",
    ]
    ctx.rec.update(command="pytest -m gpu -q -rfEs -p no:cacheprovider tests", stage="pytest running")
    log(" ".join(cmd))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=max(5.0, ctx.deadline.left()))
    except subprocess.TimeoutExpired:
        ctx.rec.update(status="stopped at budget: pytest killed", returncode=None)
        return
    ctx.rec.update(returncode=proc.returncode)
    if not junit.is_file():
        ctx.rec.update(status=f"failed: pytest exited {proc.returncode} without a report")
        return
    res = _junit(junit)
    ctx.rec.update(**res)
    c = res["counts"]
    if c["failed"] or c["error"] or proc.returncode not in (0, 5):
        ctx.rec.update(status=f"failed: {c['failed']} failed, {c['error']} errors")
    elif not ctx.cuda:
        ctx.rec.update(status=f"{ctx.no_cuda}: {c['skipped']} CUDA tests collected and skipped")
    elif c["passed"] == 0:
        ctx.rec.update(status="failed: no CUDA test ran")
    else:
        ctx.rec.update(status="ok" if not c["skipped"] else f"ok ({c['skipped']} skipped)")


# ---- part: CPU <-> CUDA parity -------------------------------------------------------------------
def _minkunet_step(
    backend: str, state: dict[str, Any], cfg: Any, x: Any, labels: Any, device: str
) -> tuple[Any, dict[str, Any], float]:
    """One train-mode forward + backward: (logits, {param: grad}, loss), all on the CPU."""
    import torch
    from fwd_bwd_timing import sync

    from m2s.models import build_model
    from m2s.sparse import SparseTensor

    model = build_model(cfg, backend)
    model.load_state_dict(state)
    model = model.to(device).train()
    xd = SparseTensor(x.coords.to(device), x.feats.to(device))
    logits = model(xd)
    loss = torch.nn.functional.cross_entropy(logits, labels.to(device))
    loss.backward()
    sync(device)
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach().cpu(), grads, float(loss.detach())


def part_parity(ctx: PartContext) -> None:
    import torch

    from m2s.models import ModelConfig, build_model

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity: no TF32 on either side
    torch.backends.cudnn.allow_tf32 = False
    ok, why = cuda_backends(ctx.backends)
    dry = not ctx.cuda
    names = ok if not dry else [b for b in ctx.backends if b not in why or why[b] == "no CUDA"]
    other = "cpu" if dry else "cuda"
    ctx.rec.update(
        tolerance={"logits_rtol": LOGITS_RTOL, "grads_rtol": GRADS_RTOL, "dtype": "float32", "tf32": False},
        not_run={k: v for k, v in why.items() if k not in names},
        dry_run=dry,
    )
    sizes = ctx.sizes
    x = scan_batch(sizes, 1, sizes.parity_points, seed=11)
    cfg = ModelConfig(size=18, width=sizes.width, in_channels=4, num_classes=20)
    torch.manual_seed(0)
    state = build_model(cfg, "torch").state_dict()
    labels = torch.randint(0, 20, (x.coords.shape[0],), generator=torch.Generator().manual_seed(0))
    ctx.rec.update(model="MinkUNet18", width=sizes.width, voxels=int(x.coords.shape[0]), compared=f"cpu vs {other}")
    failed = []
    for name in names:
        if ctx.deadline.expired():
            ctx.rec.update(status=f"stopped at budget before {name}")
            return
        log(f"parity {name}: cpu vs {other}, {x.coords.shape[0]} voxels")
        ctx.rec.update(stage=f"{name}: cpu vs {other}")
        t0 = time.perf_counter()
        try:
            l_cpu, g_cpu, loss_cpu = _minkunet_step(name, state, cfg, x, labels, "cpu")
            l_dev, g_dev, loss_dev = _minkunet_step(name, state, cfg, x, labels, other)
        except Exception as exc:  # report and go on with the other backends
            ctx.rec.append("results", {"backend": name, "error": f"{type(exc).__name__}: {exc}"})
            failed.append(name)
            continue
        per_param = {n: rel_err(g_dev[n], g) for n, g in g_cpu.items()}
        worst = max(per_param, key=per_param.get)  # type: ignore[arg-type]
        grads = rel_err(
            torch.cat([g_dev[n].flatten() for n in g_cpu]), torch.cat([g.flatten() for g in g_cpu.values()])
        )
        row: dict[str, Any] = {
            "backend": name,
            "logits_rel_err": rel_err(l_dev, l_cpu),
            "grads_rel_err": grads,
            "worst_param": worst,
            "worst_param_rel_err": per_param[worst],
            "loss_cpu": loss_cpu,
            "loss_other": loss_dev,
            "same_param_set": set(g_cpu) == set(g_dev),
            "seconds": time.perf_counter() - t0,
        }
        row["pass"] = bool(row["logits_rel_err"] <= LOGITS_RTOL and grads <= GRADS_RTOL and row["same_param_set"])
        if not row["pass"]:
            failed.append(name)
        ctx.rec.append("results", row)
        log(json.dumps(row))
    if dry and failed:
        ctx.rec.update(status=f"failed: {', '.join(failed)} in the cpu vs cpu dry run ({ctx.no_cuda})")
    elif dry:
        ctx.rec.update(status=f"{ctx.no_cuda}: ran cpu vs cpu as a dry run ({', '.join(names)})")
    elif not names:
        ctx.rec.update(status="failed: no backend with CUDA kernels")
    else:
        ctx.rec.update(status="ok" if not failed else f"failed: {', '.join(failed)} outside tolerance or errored")


# ---- part: backbone throughput -------------------------------------------------------------------
def _autocast(device: str, dtype: str) -> Any:
    import contextlib

    import torch

    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


def _bench_one(
    backend: str, size: int, dtype: str, x: Any, labels: Any, ctx: PartContext, device: str
) -> dict[str, Any]:
    import torch
    from fwd_bwd_timing import time_fwd_bwd

    from m2s.models import ModelConfig, build_model

    cfg = ModelConfig(size=size, width=ctx.sizes.width, in_channels=4, num_classes=20)
    torch.manual_seed(0)
    model = build_model(cfg, backend).to(device).train()
    _reset_peak(device)
    fwd, bwd, last_loss = time_fwd_bwd(
        model,
        x,
        labels,
        device,
        lambda: _autocast(device, dtype),
        ctx.sizes.warmup,
        ctx.sizes.repeats,
        stop=ctx.deadline.expired,
    )
    if not fwd:
        return {"backend": backend, "model": f"MinkUNet{size}", "dtype": dtype, "stopped": "budget reached in warm-up"}
    total = statistics.median([a + b for a, b in zip(fwd, bwd, strict=True)])
    return {
        "backend": backend,
        "model": f"MinkUNet{size}",
        "dtype": dtype,
        "device": device,
        "forward_ms": 1e3 * statistics.median(fwd),
        "backward_ms": 1e3 * statistics.median(bwd),
        "fwd_bwd_ms": 1e3 * total,
        "scans_per_s": ctx.sizes.batch / total,
        "timed_runs": len(fwd),
        "peak_MiB": _peak_mib(device),
        "loss": last_loss,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def _bench_native(size: int, dtype: str, x: Any, labels: Any, ctx: PartContext, device: str) -> dict[str, Any]:
    import torch
    from fwd_bwd_timing import time_fwd_bwd

    torch.manual_seed(0)
    from spconv_native import spconv_native_minkunet

    model = spconv_native_minkunet(size, ctx.sizes.width).to(device).train()
    _reset_peak(device)
    fwd, bwd, last_loss = time_fwd_bwd(
        model,
        x,
        labels,
        device,
        lambda: _autocast(device, dtype),
        ctx.sizes.warmup,
        ctx.sizes.repeats,
        stop=ctx.deadline.expired,
    )
    times = [f + b for f, b in zip(fwd, bwd, strict=True)]
    total = statistics.median(times)
    return {
        "backend": "spconv-native",
        "model": f"MinkUNet{size}",
        "dtype": dtype,
        "device": device,
        "forward_ms": None,
        "backward_ms": None,
        "fwd_bwd_ms": 1e3 * total,
        "scans_per_s": ctx.sizes.batch / total,
        "timed_runs": len(times),
        "peak_MiB": _peak_mib(device),
        "loss": last_loss,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "note": "spconv.pytorch modules, spconv's default algorithm: the reference of the 1.5x target",
    }


def _native_ratio(results: list[dict[str, Any]], size: int = 18) -> dict[str, Any] | None:
    """The issue's target: the fastest m2s backend's MinkUNet18 fp32 fwd+bwd within 1.5x of spconv's own."""
    ok = [
        r for r in results if r.get("model") == f"MinkUNet{size}" and r.get("dtype") == "fp32" and r.get("fwd_bwd_ms")
    ]
    ref = next((r for r in ok if r["backend"] == "spconv-native"), None)
    ours = [r for r in ok if r["backend"] != "spconv-native"]
    if ref is None or not ours:
        return None
    best = min(ours, key=lambda r: r["fwd_bwd_ms"])
    ratio = best["fwd_bwd_ms"] / ref["fwd_bwd_ms"]
    return {
        "model": f"MinkUNet{size}",
        "dtype": "fp32",
        "fastest_backend": best["backend"],
        "ratio_to_spconv_native": ratio,
        "target": 1.5,
        "met": ratio <= 1.5,
    }


def part_backbone(ctx: PartContext) -> None:
    import torch

    from m2s.sparse import available_backends

    sizes = ctx.sizes
    device = "cuda" if ctx.cuda else "cpu"
    present = available_backends()
    # The comparison is torch vs spconv; MinkowskiEngine joins when it has CUDA kernels.
    ok, why = cuda_backends(ctx.backends)
    names = [b for b in ctx.backends if b in present and (not ctx.cuda or b in ok)]
    if not ctx.cuda:
        names = [b for b in names if b != "minkowski"]  # no bf16 kernels and slow on CPU: not a dry-run need
    x = scan_batch(sizes, sizes.batch, sizes.points, seed=100)
    x = type(x)(x.coords.to(device), x.feats.to(device))
    labels = torch.randint(0, 20, (x.coords.shape[0],), generator=torch.Generator().manual_seed(0)).to(device)
    ctx.rec.update(
        device=device,
        scans=sizes.batch,
        points_per_scan=sizes.points,
        voxel_size=sizes.voxel,
        voxels=int(x.coords.shape[0]),
        width=sizes.width,
        repeats=sizes.repeats,
        warmup=sizes.warmup,
        not_run={k: v for k, v in why.items() if k not in names},
    )
    # Most wanted first, so a budget cut drops MinkUNet34 before MinkUNet18. spconv's own network
    # (spconv-native) in fp32, and in fp16, its own mixed precision (its ops cast to fp16 under autocast).
    native = ["spconv-native"] if "spconv" in (ok if ctx.cuda else present) else []
    plan = [
        (size, dtype, b)
        for size in sizes.model_sizes
        for dtype in ("fp32", "bf16")
        for b in names + native
        if not (b == "spconv-native" and dtype == "bf16")
    ]
    plan += [(size, "fp16", "spconv-native") for size in sizes.model_sizes if native and ctx.cuda]
    done = 0
    for size, dtype, b in plan:
        if ctx.deadline.expired():
            break
        log(f"backbone {b} MinkUNet{size} {dtype} on {device}")
        ctx.rec.update(stage=f"{b} MinkUNet{size} {dtype}")
        try:
            if b == "spconv-native":
                row = _bench_native(size, dtype, x, labels, ctx, device)
            else:
                row = _bench_one(b, size, dtype, x, labels, ctx, device)
        except Exception as exc:
            row = {"backend": b, "model": f"MinkUNet{size}", "dtype": dtype, "error": f"{type(exc).__name__}: {exc}"}
        if b == "spconv" and dtype == "bf16":
            row["note"] = "spconv has no bf16 kernels: computed in fp32, cast to bf16 (m2s/sparse/spconv_backend.py)"
        ctx.rec.append("results", row)
        log(json.dumps(row))
        done += 1
        if device == "cuda":
            torch.cuda.empty_cache()
    results = ctx.rec.data.get("results", [])
    ctx.rec.update(target=_native_ratio(results))
    errors = [r for r in results if "error" in r]
    if done < len(plan):
        status = f"stopped at budget after {done} of {len(plan)} configurations"
    elif errors:
        status = f"failed: {len(errors)} configuration(s) errored"
    else:
        status = "ok"
    if not ctx.cuda and not status.startswith("failed"):  # a broken dry run is a failure all the same
        status = f"{ctx.no_cuda}: ran on cpu as a dry run ({status})"
    ctx.rec.update(status=status)


# ---- part: training throughput -------------------------------------------------------------------
class TimedLoader:
    """Stands in for the trainer's DataLoader: cycles it until `seconds` of measured training
    have passed and times every wait for a batch. The trainer reads each step's loss as a Python
    float, which waits for the GPU, so the time between two requests is one whole step."""

    def __init__(self, loader: Any, seconds: float, warmup: int, deadline: Deadline) -> None:
        self.loader = loader
        self.seconds = seconds
        self.warmup = warmup
        self.deadline = deadline
        self.steps = 0
        self.measured = 0
        self.scans = 0
        self.wait_s = 0.0
        self.waits: list[float] = []
        self.t_measure: float | None = None
        self.t_end: float | None = None
        self.t_first: float | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def _batches(self) -> Iterator[Any]:
        while True:
            n = 0
            for batch in self.loader:
                n += 1
                yield batch
            if n == 0:
                return

    def __iter__(self) -> Iterator[Any]:
        source = self._batches()
        self.t_first = time.perf_counter()
        while True:
            t = time.perf_counter()
            if self.measured and (t - self.t_measure >= self.seconds or self.deadline.expired()):  # type: ignore[operator]
                self.t_end = t
                return
            if not self.measured and self.deadline.expired():
                return  # the budget ran out during the warm-up: nothing measured
            batch = next(source, None)
            if batch is None:
                self.t_end = t
                return
            got = time.perf_counter()
            if self.steps == self.warmup:
                self.t_measure = t
            if self.steps >= self.warmup:
                self.measured += 1
                self.wait_s += got - t
                self.waits.append(got - t)
                self.scans += len(batch.samples)
            self.steps += 1
            yield batch

    def stats(self) -> dict[str, Any]:
        if not self.measured or self.t_end is None or self.t_measure is None:
            return {"measured_steps": 0, "warmup_steps": self.steps}
        window = self.t_end - self.t_measure
        sps = self.scans / window
        return {
            "warmup_steps": self.warmup,
            "measured_steps": self.measured,
            "measured_s": window,
            "scans": self.scans,
            "scans_per_s": sps,
            "step_ms": 1e3 * window / self.measured,
            "data_wait_share": self.wait_s / window,
            "data_wait_ms_median": 1e3 * statistics.median(self.waits),
            "data_wait_ms_max": 1e3 * max(self.waits),
            "semantickitti_epoch_s": SEMANTICKITTI_TRAIN_SCANS / sps,
        }


def _train_run(
    role: str, cfg: Any, module: Any, ds: Any, out: Path, seconds: float, ctx: PartContext, eval_view: str
) -> dict[str, Any]:
    import torch

    from m2s.labels import load_label_manifest
    from m2s.sparse import resolve_auto
    from m2s.train.engine import Trainer, amp_dtype, setup_run, teardown_run

    run_ctx = setup_run(cfg.device)
    amp = amp_dtype(cfg.optim, run_ctx.device)
    info: dict[str, Any] = {
        "role": role,
        "device": str(run_ctx.device),
        "model": f"MinkUNet{cfg.model.size} w{cfg.model.width}",
        "backend": resolve_auto() if cfg.backend == "auto" else cfg.backend,
        "amp": str(amp).replace("torch.", "") if amp else "none",
        "batch_size": cfg.optim.batch_size,
        "num_workers": cfg.data.num_workers,
        "voxel_size": cfg.voxel.voxel_size,
        "dataset_scans": len(ds),
    }
    t0 = time.perf_counter()
    try:
        trainer = Trainer(cfg, module, ds, None, out, load_label_manifest(), run_ctx, eval_view=eval_view)
        timed = TimedLoader(trainer.train_loader, seconds, ctx.sizes.train_warmup, ctx.deadline)
        trainer.train_loader = timed  # type: ignore[assignment]
        _reset_peak(run_ctx.device)
        result = trainer.fit()
        info.update(timed.stats())
        info["peak_MiB"] = _peak_mib(run_ctx.device)
        info["peak_rss_MiB"] = _peak_rss_mib()
        info["last_loss"] = result.history[-1]["train"].get("loss") if result.history else None
        info["wall_s"] = time.perf_counter() - t0
        del trainer
    finally:
        teardown_run(run_ctx)
        if run_ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return info


def part_train(ctx: PartContext) -> None:
    from m2s.artifacts import new_manifest
    from m2s.distill.task import DistillModule, StudentConfig
    from m2s.fuse import FuseConfig, fuse_dataset, open_fused_cache
    from m2s.inference import LoadedModel
    from m2s.labels import load_label_manifest
    from m2s.models import build_model
    from m2s.synth import SynthConfig, generate_dataset
    from m2s.train.config import TrainConfig, build_config
    from m2s.train.dataset import ScanDataset
    from m2s.train.losses import SegmentationLoss
    from m2s.train.run import SupervisedModule

    sizes = ctx.sizes
    device = "cuda" if ctx.cuda else "cpu"
    labels = load_label_manifest()
    work = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    ctx.rec.update(stage="generating and fusing the data")
    try:
        workers = os.cpu_count() or 1
        t0 = time.perf_counter()
        synth = SynthConfig(
            sequences=["00"],
            test_sequences=[],
            scans=sizes.train_scans,
            beams=sizes.beams,
            columns=sizes.columns,
            seed=0,
        )
        generate_dataset(work / "data", synth, workers=workers)
        t1 = time.perf_counter()
        fuse_dataset(work / "data", work / "fused", ["00"], FuseConfig(), labels, workers=workers)
        t2 = time.perf_counter()
        cache = open_fused_cache(work / "fused")
        ctx.rec.update(
            stage="training the teacher (warm-up steps first)",
            data={
                "scans": len(cache),
                "beams": sizes.beams,
                "columns": sizes.columns,
                "generate_s": t1 - t0,
                "fuse_s": t2 - t1,
            },
        )
        log(
            f"data: {len(cache)} scans of {sizes.beams}x{sizes.columns} generated in {t1 - t0:.1f} s, "
            f"fused in {t2 - t1:.1f} s"
        )

        overrides: dict[str, Any] = {"device": device, "epochs": 1, "log_every": 1000, **dict(sizes.config_overrides)}
        if sizes.workers is not None:
            overrides["data.num_workers"] = sizes.workers
        configs = ROOT / "pipelines" / "configs"
        t_cfg = build_config(TrainConfig, configs / "full-teacher.yaml", overrides)
        s_cfg = build_config(StudentConfig, configs / "full-student.yaml", overrides)
        ctx.rec.update(
            configs=["pipelines/configs/full-teacher.yaml", "pipelines/configs/full-student.yaml"],
            overrides=overrides,
            seconds_per_run=sizes.train_s,
        )

        def seconds(runs_left: int) -> float:
            # Leave room for each run's set-up (loader workers, warm-up steps, checkpoints).
            reserve = 25.0 if not ctx.quick else 4.0
            return max(1.0, min(sizes.train_s, (ctx.deadline.left() - reserve * runs_left) / runs_left))

        # Teacher: the supervised module on fused blocks, as `m2s train-teacher` builds it.
        teacher_net = build_model(t_cfg.model, t_cfg.backend)
        t_module = SupervisedModule(teacher_net, SegmentationLoss(t_cfg.loss, None), "fused")
        t_ds = ScanDataset([cache], labels, t_cfg.voxel, ("fused",), augment=t_cfg.augment, seed=t_cfg.seed)
        log(f"teacher: training for {seconds(2):.0f} s")
        row = _train_run("teacher", t_cfg, t_module, t_ds, work / "teacher", seconds(2), ctx, "fused")
        ctx.rec.append("results", row)
        log(json.dumps(row))
        if ctx.deadline.expired():
            ctx.rec.update(status="stopped at budget after the teacher")
            return

        # Student: frozen-teacher distillation (the official terms), as `m2s distill` builds it.
        teacher = LoadedModel(
            net=teacher_net,
            manifest=new_manifest("model", {"gpu_check": "teacher"}, []),
            path=work / "teacher",
            model_cfg=t_cfg.model,
            voxel=t_cfg.voxel,
            device=next(teacher_net.parameters()).device,
        )
        student = build_model(s_cfg.model, s_cfg.backend)
        s_module = DistillModule(student, SegmentationLoss(s_cfg.loss, None), s_cfg, labels, teacher)
        s_ds = ScanDataset([cache], labels, s_cfg.voxel, s_cfg.distill.views, augment=s_cfg.augment, seed=s_cfg.seed)
        log(f"student: training for {seconds(1):.0f} s")
        ctx.rec.update(stage="training the student (warm-up steps first)")
        row = _train_run("student", s_cfg, s_module, s_ds, work / "student", seconds(1), ctx, "single")
        ctx.rec.append("results", row)
        log(json.dumps(row))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = ctx.rec.data.get("results", [])
    status = "ok" if all(r.get("measured_steps") for r in rows) and len(rows) == 2 else "stopped at budget"
    if not ctx.cuda:
        status = f"{ctx.no_cuda}: ran on cpu as a dry run ({status})"
    ctx.rec.update(status=status)


PART_FUNCS: dict[str, Callable[[PartContext], None]] = {
    "env": part_env,
    "pytest": part_pytest,
    "parity": part_parity,
    "backbone": part_backbone,
    "train": part_train,
}


def run_part(args: argparse.Namespace) -> int:
    """Child process: one part, its result written (and rewritten as it goes) to --result."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    rec = Recorder(Path(args.result))
    try:
        import torch

        cuda = args.device == "cuda" and torch.cuda.is_available()
        ctx = PartContext(
            device=args.device,
            cuda=cuda,
            quick=args.quick,
            sizes=QUICK if args.quick else FULL,
            deadline=Deadline(args.budget),
            rec=rec,
            backends=tuple(args.backends.split(",")),
        )
        PART_FUNCS[args.part](ctx)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        rec.update(status=f"failed: {type(exc).__name__}: {str(exc)[:300]}")
        return 1
    return 0
