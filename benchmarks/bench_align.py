"""Alignment error of `m2s fuse` against the synthetic generator's ground truth.

For every `--align` mode, fuses the labelled sequences (the library's `fuse_sequence`, exactly what
`m2s fuse` runs) and measures, for every fused (non-target) point, the distance between where
fusion put it and where it truly is: ``lidar_from_object[f] @ inv(lidar_from_object[s]) @ p_s``
(`sequences/SS/instance_poses.txt`, written by `m2s synth`; fusion never reads it). Reported per
hard class (train names of the label manifest), plus all / static / moving hard points: mean and
p90 error (metres), the share of points off by more than 0.3 m, the points fused, and the fusion
speed (read + fuse, no writing).

Usage:
    python benchmarks/bench_align.py                       # 2 sequences x 40 scans, 64 x 1024
    python benchmarks/bench_align.py --json bench_align.json
    python benchmarks/bench_align.py --data runs/demo/data --sequences 08
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2s.data.semantickitti import Sequence, parse_sequence_list  # noqa: E402
from m2s.fuse import AlignMode, FuseConfig, HardSpec, fuse_sequence  # noqa: E402
from m2s.fuse.fusion import HardPoints, extract_hard  # noqa: E402
from m2s.fuse.groundtruth import alignment_errors, fused_source_coords  # noqa: E402
from m2s.labels import load_label_manifest  # noqa: E402
from m2s.synth import INSTANCE_POSES_NAME, SynthConfig, generate_dataset, read_instance_poses  # noqa: E402

FAR = 0.3  # metres: a fused point farther than this from its true position smears the instance


def summarise(err: np.ndarray) -> dict[str, float]:
    if err.size == 0:
        return {"points": 0, "mean": float("nan"), "p90": float("nan"), "far_pct": float("nan")}
    return {
        "points": int(err.size),
        "mean": float(err.mean()),
        "p90": float(np.percentile(err, 90)),
        "far_pct": float(100.0 * (err > FAR).mean()),
    }


def measure(root: Path, sequences: list[str], cfg: FuseConfig, spec: HardSpec) -> dict[str, Any]:
    """Fuse `sequences` with `cfg`; errors of every fused row against the ground truth."""
    errs, cls, moving = [], [], []
    fuse_s, scans = 0.0, 0
    for name in sequences:
        seq = Sequence(root, name)
        truth = read_instance_poses(seq.path / INSTANCE_POSES_NAME)
        hard: dict[int, HardPoints] = {}
        blocks = fuse_sequence(seq, spec, cfg)
        while True:
            t = time.perf_counter()
            block = next(blocks, None)
            fuse_s += time.perf_counter() - t
            if block is None:
                break
            scans += 1
            hard[block.frame] = extract_hard(block.frame, block.target_points, block.target_label, spec)
            for old in [g for g in hard if g < block.frame - cfg.window]:
                del hard[old]
            if cfg.future:  # sources after the target: their hard points are needed too
                for g in sorted(set(block.fused_source.tolist()) - set(hard)):
                    hard[g] = extract_hard(g, *seq.read_scan_and_labels(g), spec)
            src_xyz = fused_source_coords(block, hard)
            inst = block.fused_label >> np.uint32(16)
            sem = block.fused_label & np.uint32(0xFFFF)
            errs.append(
                alignment_errors(block.fused_points[:, :3], src_xyz, block.fused_source, inst, block.frame, truth)
            )
            cls.append(spec.class_lut[sem])
            moving.append(spec.moving_lut[sem])
    err, c, mv = (np.concatenate(a) if a else np.zeros(0) for a in (errs, cls, moving))
    c = c.astype(np.int64)
    mv = mv.astype(bool)
    rows = {name: summarise(err[c == k]) for k, name in enumerate(spec.class_names)}
    rows["all hard"] = summarise(err)
    rows["static"] = summarise(err[~mv])
    rows["moving"] = summarise(err[mv])
    return {"align": cfg.align, "scans": scans, "fuse_s": fuse_s, "scans_per_s": scans / max(fuse_s, 1e-9),
            "classes": rows}


def print_table(results: list[dict[str, Any]], names: list[str]) -> None:
    modes = [r["align"] for r in results]
    width = max(14, *(len(m) + 2 for m in modes))
    print(f"\nerror of fused points vs ground truth, mean / p90 (m); points fused [share > {FAR} m]")
    print(f"{'class':<14}" + "".join(f"{m:>{width}}" for m in modes))
    for name in [*names, "all hard", "static", "moving"]:
        cells = []
        for r in results:
            s = r["classes"][name]
            cells.append(f"{s['mean']:.3f} / {s['p90']:.3f}" if s["points"] else "-")
        print(f"{name:<14}" + "".join(f"{c:>{width}}" for c in cells))
        counts = [f"{r['classes'][name]['points']} [{r['classes'][name]['far_pct']:.0f}%]" for r in results]
        print(f"{'':<14}" + "".join(f"{c:>{width}}" for c in counts))
    print(f"{'scans/s':<14}" + "".join(f"{r['scans_per_s']:>{width}.1f}" for r in results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="existing synthetic root with instance_poses.txt")
    ap.add_argument("--sequences", default="00,01")
    ap.add_argument("--scans", type=int, default=40)
    ap.add_argument("--beams", type=int, default=64)
    ap.add_argument("--columns", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--future", action="store_true")
    ap.add_argument("--modes", default=",".join(get_args(AlignMode)), help="comma-separated --align modes")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    sequences = parse_sequence_list(args.sequences)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_align_"))
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.data is None:
        root = work / "data"
        cfg = SynthConfig(sequences=sequences, test_sequences=[], scans=args.scans, beams=args.beams,
                          columns=args.columns, seed=args.seed)
        t = time.perf_counter()
        generate_dataset(root, cfg, workers=min(2, os.cpu_count() or 1))
        result["generate_s"] = time.perf_counter() - t
    else:
        root = args.data
    labels = load_label_manifest()
    spec = HardSpec.from_manifest(labels, None)
    n = sum(len(Sequence(root, s).frames) for s in sequences)
    print(f"data: {root} ({', '.join(sequences)}; {n} scans); window {args.window}, future {args.future}")
    results = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        cfg = FuseConfig(window=args.window, future=args.future, align=mode)  # type: ignore[arg-type]
        results.append(measure(root, sequences, cfg, spec))
    result["modes"] = results
    print_table(results, spec.class_names)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
