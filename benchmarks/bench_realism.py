"""Model-free realism report of a synthetic SemanticKITTI draw (issue 27): no training involved.

Against real SemanticKITTI (the `content:` ratios of the official config mapped through
`learning_map`): the share of labelled points per train class and its ratio to real, the hard
classes together, the ignored share. Points per instance against range for person, bicyclist
and car beside the geometric estimate at the draw's resolution. The cue test: a 5-NN classifier
on each thing instance's true extents (its points from every scan gathered in its own frame via
`instance_poses.txt`), its lateral offset from the ego path and its speed, for every subset of
these cues, trained on half the sequences and scored on the other half (and vice versa); macro
accuracy over car and the 7 hard classes. Then the no-model targets of issue 27 item 3, pass/fail.

Either generates a draw (`m2s synth` options; kept in --out, else a temporary folder that is
removed) or reads an existing one (--data). A generated draw's cue test runs on a second draw of
the same seed and size with `--cue-hard-rate` times the hard-class rates: at the realistic rates a
draw holds a handful of riders, too few for a k-NN test; the cues of an instance (its shape,
place and speed) do not depend on how many there are. Works from the on-disk layout only.

Usage:
    python benchmarks/bench_realism.py                                  # 6 x 30 scans, 64 x 1024, seed 0
    python benchmarks/bench_realism.py --seed 101 --json realism.json --check
    python benchmarks/bench_realism.py --data runs/demo/data --sequences 00,01
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2s.artifacts import readable_manifest  # noqa: E402
from m2s.data.semantickitti import Sequence, list_sequences, parse_sequence_list  # noqa: E402
from m2s.errors import M2SError  # noqa: E402
from m2s.io_utils import atomic_write_text  # noqa: E402
from m2s.labels import load_label_manifest  # noqa: E402
from m2s.realism import Sensor, Targets, build_report  # noqa: E402
from m2s.synth import SynthConfig, generate_dataset  # noqa: E402


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3f}"


def _times(x: float | None) -> str:
    if x is None:
        return "-"
    return f"x{x:.3g}" if x < 100 else f"x{x:.0f}"


def print_report(r: dict[str, Any]) -> None:
    s = r["sensor"]
    print(f"data: {r['data']} ({', '.join(r['sequences'])}; {r['scans']} scans, {r['points']} points)")
    gen = f", generator version {r['generator_version']}" if r.get("generator_version") is not None else ""
    print(f"resolution: {s['beams']} beams x {s['columns']} columns, "
          f"{s['elevation_top_deg']:+g}..{s['elevation_bottom_deg']:+g} deg, "
          f"sensor {s['sensor_height']:g} m above ground (from {s['source']}){gen}")

    sh = r["shares"]
    hard = set(sh["hard_classes"])
    print("\nshare of labelled points per train class (* hard); real = official config `content:` via learning_map")
    print(f"{'class':<16}{'draw %':>10}{'real %':>10}{'x real':>10}")
    for row in sh["classes"]:
        name = row["class"] + (" *" if row["class"] in hard else "")
        print(f"{name:<16}{_pct(row['share']):>10}{_pct(row['real_share']):>10}{_times(row['ratio']):>10}")
    print(f"{'hard together':<16}{_pct(sh['hard_total']):>10}{_pct(sh['real_hard_total']):>10}"
          f"{_times(sh['hard_total'] / sh['real_hard_total']):>10}")
    print(f"{'ignored (of all)':<16}{_pct(sh['ignored']):>10}{_pct(sh['real_ignored']):>10}"
          f"{_times(sh['ignored'] / sh['real_ignored']):>10}")

    d = r["density"]
    print(f"\npoints per instance-scan against horizontal range: median of the draw vs the geometric estimate "
          f"({d['estimate']})")
    print(f"  estimate 'draw': the draw's beams and columns; 'HDL-64E': the real sensor's two laser blocks "
          f"(1/3 deg above -8.33 deg, 1/2 deg below), 2048 columns")
    for cls, c in d["classes"].items():
        print(f"{cls} (nominal {c['nominal_width']:g} m wide x {c['nominal_height']:g} m high, side-on)")
        print(f"  {'range m':<10}{'n':>7}{'median r':>10}{'median pts':>12}{'est. draw':>11}{'HDL-64E':>9}")
        for b in c["bins"]:
            mr = "-" if b["samples"] == 0 else f"{b['median_range']:.1f}"
            mp = "-" if b["samples"] == 0 else f"{b['median_points']:.0f}"
            print(f"  {b['lo']:>3.0f}-{b['hi']:<6.0f}{b['samples']:>7}{mr:>10}{mp:>12}{b['estimate']:>11.0f}"
                  f"{b['estimate_hdl64e_2048']:>9.0f}")

    c = r["cue_test"]
    print("\ncue test: 5-NN on standardised cues, class-balanced votes, 2-fold by sequence, macro accuracy"
          " (mean per-class recall over classes met in both folds)")
    if not c["available"]:
        print(f"  not available: {c['reason']}")
    else:
        print(f"  draw: {c['data']}")
        print(f"  {c['instances']} instances ({', '.join(f'{k} {v}' for k, v in c['classes'].items())}); "
              f"{c['skipped_below_min_points']} skipped with < {c['min_points']} points; chance {c['chance']:.3f}")
        print(f"  {'cues':<28}{'macro acc':>10}   recall per class")
        for sub in c["subsets"]:
            rec = " ".join(f"{k[:5]} {v:.2f}" for k, v in sub["recall"].items())
            print(f"  {' + '.join(sub['cues']):<28}{sub['macro_accuracy']:>10.3f}   {rec}")
        print(f"  {'max':<28}{c['max_macro_accuracy']:>10.3f}")
    if c.get("per_class_medians"):
        print("  cue medians per class (extents in metres: 1st-99th percentile of all its scans' points in its "
              "own frame; |lateral| from the ego path; speed m/s)")
        print(f"  {'class':<16}{'n':>6}{'length':>8}{'width':>8}{'height':>8}{'|lateral|':>11}{'speed':>8}")
        for name, m in c["per_class_medians"].items():
            print(f"  {name:<16}{m['instances']:>6}{m['length']:>8.2f}{m['width']:>8.2f}{m['height']:>8.2f}"
                  f"{m['abs_lateral']:>11.2f}{m['speed']:>8.2f}")

    print("\nno-model targets (issue 27 item 3)")
    for t in r["targets"]:
        v = t["value"]
        val = "-" if v is None else f"{v:.4g}"
        print(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']:<52}{val:>10}  {t['limit']}")
    print(f"  {'all targets met' if r['all_pass'] else 'some targets missed'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="existing draw (SemanticKITTI layout) to report on")
    ap.add_argument("--out", type=Path, default=None, help="keep the generated draw here (default: a temporary folder)")
    ap.add_argument("--sequences", default=None,
                    help="sequences, e.g. '00-05' (default: 00-05 when generating, every labelled one with --data)")
    ap.add_argument("--scans", type=int, default=100,
                    help="scans per generated sequence (rare classes come in few long encounters: short draws swing)")
    ap.add_argument("--beams", type=int, default=64)
    ap.add_argument("--columns", type=int, default=1024, help="azimuth steps (1024 for speed; HDL-64E ~2048)")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="generator processes")
    ap.add_argument("--min-points", type=int, default=20, help="instances with fewer points skip the cue test")
    ap.add_argument("--cue-hard-rate", type=float, default=8.0,
                    help="when generating: run the cue test on a second draw (same seed and size) with this hard_rate,"
                         " so every class has enough instances (1: the share draw itself)")
    ap.add_argument("--cue-data", type=Path, default=None, help="with --data: run the cue test on this draw instead")
    ap.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    ap.add_argument("--check", action="store_true", help="exit 1 when a no-model target is missed")
    args = ap.parse_args()

    work: Path | None = None
    cue_draw: tuple[Path, list[str]] | None = None
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    try:
        if args.data is None:
            sequences = parse_sequence_list(args.sequences or "00-05")
            if args.out is None:
                work = Path(tempfile.mkdtemp(prefix="bench_realism_"))
                root = work / "data"
            else:
                root = args.out
            cfg = SynthConfig(sequences=sequences, test_sequences=[], scans=args.scans, beams=args.beams,
                              columns=args.columns, seed=args.seed)
            generate_dataset(root, cfg, workers=max(1, args.workers))
            if args.cue_hard_rate != 1.0:
                cue_root = root.parent / f"{root.name}-cue"
                generate_dataset(cue_root, cfg.model_copy(update={"hard_rate": args.cue_hard_rate}),
                                 workers=max(1, args.workers))
                cue_draw = (cue_root, sequences)
            timing["generate_s"] = time.perf_counter() - t0
        else:
            root = args.data
            sequences = (parse_sequence_list(args.sequences) if args.sequences
                         else [s for s in list_sequences(root) if Sequence(root, s).has_labels])
            if args.cue_data is not None:
                cue_draw = (args.cue_data, [s for s in list_sequences(args.cue_data) if Sequence(args.cue_data, s).has_labels])
        fallback = Sensor(beams=args.beams, columns=args.columns)
        t1 = time.perf_counter()
        report = build_report(root, sequences, load_label_manifest(), Sensor.of_draw(root, fallback),
                              Targets(min_points=args.min_points), cue_draw=cue_draw)
        timing["analyse_s"] = time.perf_counter() - t1
        manifest = readable_manifest(root)
        report["generator_version"] = manifest.config.get("generator_version") if manifest is not None else None
        report["seed"] = manifest.config.get("seed") if manifest is not None else None
        report["timing"] = timing
    except M2SError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    print(f"\n{' / '.join(f'{k[:-2]} {v:.1f} s' for k, v in timing.items())}")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if args.check and not report["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
