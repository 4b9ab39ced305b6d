"""Render time of `m2s show` per frame at full size.

Generates full-size synthetic scans (64 beams x 2048 columns, ~120 k points, the HDL-64E of
SemanticKITTI), fuses them, and times :func:`m2s.show.render_frame` (projection, z-buffer, layout,
text and PNG writing; not the models' inference) for each view, with `--models` stand-in
predictions (the ground truth with a share of points flipped to another class). Defaults: the
bird's-eye view at ±50 m / 0.125 m per pixel (800 x 800 px per panel) and the 64 x 2048 range
image, i.e. `m2s show`'s defaults on SemanticKITTI.

Usage:
    python benchmarks/bench_show.py                      # 1 model, 3 frames, every view
    python benchmarks/bench_show.py --models 2 --json bench_show.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from m2s.fuse import FuseConfig, fuse_dataset
from m2s.labels import load_label_manifest
from m2s.show import ModelPrediction, RangeGeometry, ShowConfig, class_colors, load_frames, render_frame
from m2s.synth import SynthConfig, generate_dataset

VIEWS = ("bev", "range", "fused", "crops")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=1, help="stand-in model predictions per frame")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--wrong", type=float, default=0.1, help="share of points each stand-in model gets wrong")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    labels = load_label_manifest()
    colors = class_colors(labels)
    rng = np.random.default_rng(0)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in (*VIEWS, "default views", "all views")}
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "fused"
        generate_dataset(root, SynthConfig(sequences=["08"], test_sequences=[], scans=args.frames + 4, beams=64, columns=2048, seed=1))
        fuse_dataset(root, cache, ["08"], FuseConfig(), labels)
        frames = list(range(2, 2 + args.frames))
        for frame in load_frames(labels, "08", frames, data=root, cache=cache):
            assert frame.gt_train is not None
            preds = []
            for m in range(args.models):
                pred = frame.gt_train.copy()
                flip = rng.random(pred.shape[0]) < args.wrong
                pred[flip] = rng.integers(1, labels.num_classes, int(flip.sum()))
                preds.append(ModelPrediction(f"model-{m + 1}", "single", pred))
            frame = dataclasses.replace(frame, predictions=tuple(preds))
            per_view: dict[str, tuple[float, float]] = {}
            for view in VIEWS:
                cfg = ShowConfig(views=(view,), range=RangeGeometry())
                wall, cpu = time.perf_counter(), time.process_time()
                render_frame(frame, cfg, colors, Path(tmp) / "images")
                per_view[view] = (time.perf_counter() - wall, time.process_time() - cpu)
            n_fused = 0 if frame.fused_points is None else frame.fused_points.shape[0]
            for name, views in ((v, (v,)) for v in VIEWS):
                results[name].append({"wall_s": per_view[views[0]][0], "cpu_s": per_view[views[0]][1]})
            for name, views in (("default views", ("bev", "range", "fused")), ("all views", VIEWS)):
                results[name].append({"wall_s": sum(per_view[v][0] for v in views), "cpu_s": sum(per_view[v][1] for v in views)})
            print(f"frame {frame.frame}: {frame.points.shape[0]} points + {n_fused} fused rows, "
                  + ", ".join(f"{v} {per_view[v][0]:.3f} s" for v in VIEWS))  # fmt: skip
    summary = {
        name: {"median_wall_s": float(np.median([r["wall_s"] for r in rs])), "median_cpu_s": float(np.median([r["cpu_s"] for r in rs]))}
        for name, rs in results.items()
    }
    print(f"{args.models} model(s), median per frame:")
    for name, s in summary.items():
        print(f"  {name:14s} {s['median_wall_s']:.3f} s wall, {s['median_cpu_s']:.3f} s CPU")
    if args.json is not None:
        args.json.write_text(json.dumps({"models": args.models, "frames": args.frames, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
