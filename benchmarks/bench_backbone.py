"""Benchmark: MinkUNet forward+backward on a full-size synthetic scan, per sparse backend.

    .venv/bin/python benchmarks/bench_backbone.py --points 120000 --repeats 5 \
        --backends torch,minkowski,spconv --device cpu --json runs/bench_backbone.json

All backends run the SAME weights (one state_dict loaded into each model). Reported per
backend: median forward, backward and total time over ``--repeats`` timed runs (after
``--warmup`` untimed ones), and the median time to build all kernel maps of one forward
on a fresh input (part of the forward time, shown separately). ``ratio`` is total time
divided by MinkowskiEngine's (<= 1.0 means at least as fast). A backend that is not installed
is reported as skipped, with the reason. spconv has no bfloat16 kernels: with ``--amp`` on CPU
its convolutions compute in float32 (see m2s/sparse/spconv_backend.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from fwd_bwd_timing import sync as _sync  # benchmarks/ is on sys.path as the script's folder
from fwd_bwd_timing import time_fwd_bwd

from m2s.models import ModelConfig, build_model
from m2s.sparse import SparseTensor, get_backend
from m2s.sparse.backend import BACKEND_NAMES
from m2s.sparse.synthetic import synthetic_scan
from m2s.voxel import VoxelConfig, batch_coords, voxelize_scan


def _autocast(device: torch.device, enabled: bool) -> Any:
    if not enabled:
        return nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def bench_backend(
    name: str,
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    x: SparseTensor,
    labels: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    device = torch.device(args.device)
    amp = args.amp
    if name == "minkowski" and amp:
        amp = False  # MinkowskiEngine's kernels have no half/bfloat16 CPU path
    backend = get_backend(name)
    model = build_model(cfg, backend).to(device)
    model.load_state_dict(state)
    model.train()
    fwd, bwd, last_loss = time_fwd_bwd(
        model, x, labels, device, lambda: _autocast(device, amp), args.warmup, args.repeats
    )
    kmap: list[float] = []
    for _ in range(max(1, args.repeats)):
        _sync(device)
        t0 = time.perf_counter()
        prepared, _ = backend.prepare(x)
        backend.build_kernel_maps(prepared, num_levels=4)  # type: ignore[attr-defined]
        _sync(device)
        kmap.append(time.perf_counter() - t0)
    return {
        "backend": name,
        "amp": amp,
        "forward_s": statistics.median(fwd),
        "backward_s": statistics.median(bwd),
        "total_s": statistics.median([a + b for a, b in zip(fwd, bwd, strict=True)]),
        "kernel_map_s": statistics.median(kmap),
        "runs_total_s": [a + b for a, b in zip(fwd, bwd, strict=True)],
        "loss": last_loss,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=120_000, help="points in the synthetic scan")
    p.add_argument("--voxel-size", type=float, default=0.05, help="voxel edge in metres")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per backend (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per backend first")
    p.add_argument("--backends", default="torch,minkowski,spconv", help="comma-separated: torch,minkowski,spconv")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--size", type=int, default=18, choices=[14, 18, 34])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write results here")
    args = p.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    for n in names:
        if n not in BACKEND_NAMES or n == "auto":
            print(f"error: unknown backend {n!r} (torch, minkowski, spconv)", file=sys.stderr)
            return 2

    t0 = time.perf_counter()
    xyz, intensity = synthetic_scan(args.points, seed=args.seed)
    # The grid every stage uses, with a range enclosing the whole synthetic scan.
    lo, hi = xyz.min(0).values.floor() - 1.0, xyz.max(0).values.ceil() + 1.0
    voxel = VoxelConfig(voxel_size=args.voxel_size, point_range=(*lo.tolist(), *hi.tolist()))
    _, grid, _, voxel_feats = voxelize_scan(xyz.numpy(), intensity.numpy(), voxel)
    coords, feats = torch.from_numpy(batch_coords([grid])), torch.from_numpy(voxel_feats)
    x = SparseTensor(coords.to(device), feats.to(device))
    labels = torch.randint(0, 20, (coords.shape[0],), generator=torch.Generator().manual_seed(args.seed)).to(device)
    scan_s = time.perf_counter() - t0

    cfg = ModelConfig(arch="minkunet", size=args.size, width=args.width, in_channels=4, num_classes=20)
    torch.manual_seed(args.seed)
    state = build_model(cfg, "torch").state_dict()

    results: list[dict[str, Any]] = []
    for n in names:
        try:
            results.append(bench_backend(n, state, cfg, x, labels, args))
        except Exception as exc:  # report and go on with the other backends
            results.append({"backend": n, "skipped": f"{type(exc).__name__}: {exc}"})
    ref = next((r for r in results if r["backend"] == "minkowski" and "total_s" in r), None)
    for r in results:
        if "total_s" in r and ref is not None:
            r["ratio_vs_minkowski"] = r["total_s"] / ref["total_s"]

    print(
        f"MinkUNet{args.size} w{args.width} | {args.points} points -> {coords.shape[0]} voxels at "
        f"{args.voxel_size} m | device={args.device} threads={torch.get_num_threads()} amp={args.amp} | "
        f"median of {args.repeats} (scan built in {scan_s:.1f} s)"
    )
    if "spconv" in names:
        from m2s.sparse import spconv_backend

        print(spconv_backend.describe())
    header = (
        f"{'backend':<10} {'forward ms':>11} {'backward ms':>12} {'fwd+bwd ms':>11} {'kernel map ms':>14} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        if "skipped" in r:
            print(f"{r['backend']:<10} skipped: {r['skipped']}")
            continue
        ratio = f"{r['ratio_vs_minkowski']:.2f}" if "ratio_vs_minkowski" in r else "-"
        print(
            f"{r['backend']:<10} {1e3 * r['forward_s']:>11.0f} {1e3 * r['backward_s']:>12.0f} "
            f"{1e3 * r['total_s']:>11.0f} {1e3 * r['kernel_map_s']:>14.0f} {ratio:>6}"
        )
    if args.json is not None:
        spconv_desc = None
        if "spconv" in names:
            from m2s.sparse import spconv_backend

            spconv_desc = spconv_backend.describe()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": cfg.model_dump(),
            "points": args.points,
            "voxels": int(coords.shape[0]),
            "voxel_size": args.voxel_size,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "amp": args.amp,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "spconv": spconv_desc,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
