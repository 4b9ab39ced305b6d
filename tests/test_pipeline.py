"""`make demo`, reduced: the four stages chained by the Makefiles, end to end, then a no-op rerun."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from m2s.artifacts import load_artifact, verify_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_reduced_demo_chain_runs_end_to_end_and_reruns_nothing(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    demo = tmp_path / "demo"
    args = [
        "make", "-C", str(ROOT), "demo", f"DEMO={demo}", f"M2S={sys.executable} -m cli.main",
        "DEMO_SYNTH_ARGS=--sequences 00,08 --test-sequences none --scans 8 --beams 16 --columns 256 --seed 1",
        "DEMO_TRAIN_SEQ=00", "DEMO_VAL_SEQ=08", "DEMO_TRAIN_ARGS=--epochs 1 --workers 0",
    ]  # fmt: skip
    res = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "mIoU" in res.stdout and "hard mIoU" in res.stdout  # the comparison table is printed

    evaluation = load_artifact(demo / "eval", "evaluation")
    assert verify_files(demo / "eval", evaluation) == []
    metrics = json.loads((demo / "eval" / "metrics.json").read_text())
    assert list(metrics["models"]) == ["teacher", "baseline", "student", "joint"]
    for m in metrics["models"].values():
        assert 0.0 <= m["miou"] <= 1.0 and len(m["iou"]) == 19
    plots = sorted(p.name for p in (demo / "eval" / "plots").glob("*.png"))
    assert "class_iou.png" in plots and "iou_by_distance.png" in plots
    # lineage: the student names the teacher, the joint student none; the evaluation names all four
    student = load_artifact(demo / "student", "model")
    teacher = load_artifact(demo / "teacher", "model")
    joint = load_artifact(demo / "joint", "model")
    assert student.config["teacher_id"] == teacher.content_id
    assert joint.config.get("teacher_id") is None
    assert {i.id for i in evaluation.inputs} >= {teacher.content_id, student.content_id, joint.content_id}

    # a finished chain is not recomputed
    again = subprocess.run([*args, "-n"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert "cli.main" not in again.stdout, again.stdout
