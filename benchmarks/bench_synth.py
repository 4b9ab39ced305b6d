"""Generator speed: median time to build a sequence's world and to ray-cast one scan.

Usage:
    python benchmarks/bench_synth.py                       # 64 x 2048 (full HDL-64E-like), 10 scans
    python benchmarks/bench_synth.py --beams 32 --columns 512 --scans 20 --json runs/bench/synth.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from m2s.synth import GENERATOR_VERSION, SynthConfig, build_world, render_scan  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beams", type=int, default=64)
    ap.add_argument("--columns", type=int, default=2048)
    ap.add_argument("--scans", type=int, default=10, help="scans timed per sequence")
    ap.add_argument("--sequences", default="00,01,02", help="comma-separated sequence ids")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    seqs = [s for s in args.sequences.split(",") if s]
    cfg = SynthConfig(sequences=seqs, test_sequences=[], scans=args.scans, beams=args.beams, columns=args.columns,
                      seed=args.seed)
    world_s, scan_s, points = [], [], []
    for seq in seqs:
        t0 = time.perf_counter()
        world = build_world(cfg, seq)
        world_s.append(time.perf_counter() - t0)
        for frame in range(args.scans):
            t0 = time.perf_counter()
            scan = render_scan(world, cfg, frame)
            scan_s.append(time.perf_counter() - t0)
            points.append(scan.points.shape[0])
    result = {
        "generator_version": GENERATOR_VERSION,
        "beams": args.beams,
        "columns": args.columns,
        "scans": len(scan_s),
        "world_median_s": statistics.median(world_s),
        "scan_median_s": statistics.median(scan_s),
        "scan_p90_s": sorted(scan_s)[int(0.9 * (len(scan_s) - 1))],
        "points_median": statistics.median(points),
    }
    print(f"generator {GENERATOR_VERSION}, {args.beams} x {args.columns}, {len(scan_s)} scans of {len(seqs)} sequences")
    print(f"{'world build (median)':<24}{result['world_median_s'] * 1000:>10.1f} ms")
    print(f"{'scan (median)':<24}{result['scan_median_s'] * 1000:>10.1f} ms")
    print(f"{'scan (p90)':<24}{result['scan_p90_s'] * 1000:>10.1f} ms")
    print(f"{'points per scan':<24}{result['points_median']:>10.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
