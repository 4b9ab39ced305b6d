"""The realism report of a draw: class shares against real SemanticKITTI, points per instance
against range beside the geometric estimate, the cue test, and the no-model targets of issue 27.

Everything is plain data (a JSON-ready dict); rendering is the caller's job.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from m2s.artifacts import readable_manifest
from m2s.labels import LabelManifest
from m2s.realism.collect import DrawStats, collect
from m2s.realism.cues import cue_test
from m2s.realism.density import (
    DEFAULT_RANGE_BINS,
    KITTI_SENSOR_HEIGHT,
    NOMINAL_SIZES,
    density_by_range,
    hdl64e_elevations,
    uniform_elevations,
)
from m2s.realism.shares import Shares, real_shares, shares_from_counts

# Background classes whose share must be within BACKGROUND_FACTOR of real (issue 27, item 3).
BACKGROUND_CLASSES = ("road", "sidewalk", "building", "vegetation", "terrain")


class Sensor(BaseModel):
    """The draw's beam layout: from the dataset manifest when there is one, else the caller's."""

    model_config = ConfigDict(frozen=True)

    beams: int = Field(64, ge=2)
    columns: int = Field(2048, ge=16)
    elevation_top_deg: float = 2.0
    elevation_bottom_deg: float = -24.8
    sensor_height: float = KITTI_SENSOR_HEIGHT
    source: str = "arguments"

    @classmethod
    def of_draw(cls, root: str | Path, fallback: Sensor) -> Sensor:
        manifest = readable_manifest(root)
        cfg = manifest.config if manifest is not None and manifest.kind == "dataset" else {}
        fields = ("beams", "columns", "elevation_top_deg", "elevation_bottom_deg", "sensor_height")
        if not any(f in cfg for f in fields):
            return fallback
        values = {f: cfg.get(f, getattr(fallback, f)) for f in fields}
        return cls(**values, source="dataset manifest")

    def elevations(self) -> np.ndarray:
        return uniform_elevations(self.beams, self.elevation_top_deg, self.elevation_bottom_deg)


class Targets(BaseModel):
    """The no-model targets of issue 27 item 3."""

    model_config = ConfigDict(frozen=True)

    hard_total_max: float = 0.03  # share of labelled points, all hard classes together
    hard_class_factor_max: float = 10.0  # no hard class above this times its real share
    ignored_min: float = 0.01
    ignored_max: float = 0.06
    background_factor: float = 3.0  # each background class within [1/f, f] of its real share
    cue_accuracy_max: float = 0.80  # every cue subset
    min_points: int = Field(20, ge=1)  # instances with fewer accumulated points skip the cue test


def _share_rows(sim: Shares, real: Shares, labels: LabelManifest) -> list[dict[str, Any]]:
    rows = []
    for tid in range(1, labels.num_classes):
        s, r = float(sim.labelled[tid]), float(real.labelled[tid])
        rows.append(
            {
                "class": labels.train_names[tid],
                "train_id": tid,
                "share": s,
                "real_share": r,
                "ratio": s / r if r > 0 else None,
            }
        )
    return rows


def build_report(
    root: str | Path,
    sequences: list[str],
    labels: LabelManifest,
    sensor: Sensor,
    targets: Targets | None = None,
    *,
    density_classes: tuple[str, ...] = ("person", "bicyclist", "car"),
    range_bins: tuple[float, ...] = DEFAULT_RANGE_BINS,
    k: int = 5,
    cue_draw: tuple[str | Path, list[str]] | None = None,
) -> dict[str, Any]:
    """The whole report of the labelled `sequences` under `root` as a JSON-ready dict.

    `cue_draw` (root, sequences): run the cue test on another draw, e.g. one of the same
    generator with more hard-class things (`hard_rate`), so that every class has enough instances
    for a k-NN test; the cues of an instance do not depend on how many there are."""
    targets = targets or Targets()
    things = ["car", *labels.hard_classes]
    stats: DrawStats = collect(root, sequences, labels, things)
    hard_ids = labels.hard_train_ids
    real = real_shares(labels)
    sim = shares_from_counts(stats.counts)
    names = labels.train_names

    # ---- points per instance against range
    elev = sensor.elevations()
    density = {}
    for cls in density_classes:
        tid = names.index(cls)
        sel = stats.instance_scans.train_id == tid
        w, h = NOMINAL_SIZES[cls]
        bins = density_by_range(
            stats.instance_scans.points[sel],
            stats.instance_scans.range[sel],
            range_bins,
            w,
            h,
            elev,
            sensor.columns,
            sensor.sensor_height,
        )
        hdl = density_by_range(
            stats.instance_scans.points[sel],
            stats.instance_scans.range[sel],
            range_bins,
            w,
            h,
            hdl64e_elevations(),
            2048,
            sensor.sensor_height,
        )
        density[cls] = {
            "nominal_width": w,
            "nominal_height": h,
            "bins": [{**asdict(b), "estimate_hdl64e_2048": hb.estimate} for b, hb in zip(bins, hdl, strict=True)],
        }

    # ---- the cue test
    cue: dict[str, Any] = {"available": False, "reason": "no instance_poses.txt (ground truth) in every sequence"}
    cue_stats = stats if cue_draw is None else collect(cue_draw[0], cue_draw[1], labels, things)
    if cue_stats.instances is not None:
        inst = cue_stats.instances
        keep = inst.points >= targets.min_points
        x = {"extents": inst.extents[keep], "lateral": inst.lateral[keep], "speed": inst.speed[keep]}
        y, groups = inst.train_id[keep], inst.sequence[keep]
        present = np.unique(y)
        cue = {"available": False, "reason": "fewer than 2 sequences or classes with instances"}
        if np.unique(groups).size >= 2 and present.size >= 2:
            results = cue_test(x, y, groups, k)
            cue = {
                "available": True,
                "data": str(root if cue_draw is None else cue_draw[0]),
                "votes": "class-balanced (each neighbour weighs 1 / its class's training count)",
                "k": k,
                "folds": "2-fold by sequence (first half of the sorted sequences vs the rest)",
                "instances": int(keep.sum()),
                "skipped_below_min_points": int((~keep).sum()),
                "min_points": targets.min_points,
                "classes": {names[c]: int((y == c).sum()) for c in present.tolist()},
                "chance": 1.0 / present.size,
                "subsets": [
                    {
                        "cues": list(r.cues),
                        "macro_accuracy": r.macro_accuracy,
                        "recall": {names[c]: v for c, v in r.recall.items()},
                    }
                    for r in results
                ],
                "max_macro_accuracy": max(r.macro_accuracy for r in results),
            }
        # what the cues look like per class (instances that enter the test), to see which overlap
        cue["per_class_medians"] = {
            names[c]: {
                "instances": int((y == c).sum()),
                "length": float(np.median(x["extents"][y == c, 0])),
                "width": float(np.median(x["extents"][y == c, 1])),
                "height": float(np.median(x["extents"][y == c, 2])),
                "abs_lateral": float(np.median(np.abs(x["lateral"][y == c]))),
                "speed": float(np.median(x["speed"][y == c])),
            }
            for c in present.tolist()
        }

    # ---- targets
    rows = _share_rows(sim, real, labels)
    by_name = {r["class"]: r for r in rows}
    checks = [
        {
            "target": "hard classes <= 3 % of labelled points",
            "value": sim.hard_total(hard_ids),
            "limit": f"<= {targets.hard_total_max}",
            "pass": sim.hard_total(hard_ids) <= targets.hard_total_max,
        },
    ]
    worst = max(labels.hard_classes, key=lambda n: by_name[n]["ratio"] or 0.0)
    checks.append(
        {
            "target": f"no hard class above {targets.hard_class_factor_max:g}x real (worst: {worst})",
            "value": by_name[worst]["ratio"],
            "limit": f"<= {targets.hard_class_factor_max}",
            "pass": (by_name[worst]["ratio"] or 0.0) <= targets.hard_class_factor_max,
        }
    )
    checks.append(
        {
            "target": "ignored points 1-6 % of all points",
            "value": sim.ignored,
            "limit": f"[{targets.ignored_min}, {targets.ignored_max}]",
            "pass": targets.ignored_min <= sim.ignored <= targets.ignored_max,
        }
    )
    f = targets.background_factor
    for n in BACKGROUND_CLASSES:
        ratio = by_name[n]["ratio"]
        checks.append(
            {
                "target": f"{n} within {f:g}x of real",
                "value": ratio,
                "limit": f"[{1 / f:.3f}, {f}]",
                "pass": ratio is not None and 1 / f <= ratio <= f,
            }
        )
    if cue["available"]:
        checks.append(
            {
                "target": f"cue test <= {targets.cue_accuracy_max} macro accuracy, every subset",
                "value": cue["max_macro_accuracy"],
                "limit": f"<= {targets.cue_accuracy_max}",
                "pass": cue["max_macro_accuracy"] <= targets.cue_accuracy_max,
            }
        )
    else:
        checks.append(
            {
                "target": f"cue test <= {targets.cue_accuracy_max} macro accuracy, every subset",
                "value": None,
                "limit": f"<= {targets.cue_accuracy_max}",
                "pass": False,
            }
        )

    return {
        "data": str(root),
        "sequences": list(sequences),
        "scans": stats.scans,
        "points": int(stats.counts.sum()),
        "sensor": sensor.model_dump(),
        "shares": {
            "classes": rows,
            "hard_classes": list(labels.hard_classes),
            "hard_total": sim.hard_total(hard_ids),
            "real_hard_total": real.hard_total(hard_ids),
            "ignored": sim.ignored,
            "real_ignored": real.ignored,
        },
        "density": {
            "range_bins": list(range_bins),
            "classes": density,
            "estimate": "side-on upright box on the ground, no occlusion; rows from the beam "
            "elevations, columns from the azimuth step",
        },
        "cue_test": cue,
        "missing_poses_points": stats.missing_poses,
        "targets": checks,
        "all_pass": all(c["pass"] for c in checks),
    }
