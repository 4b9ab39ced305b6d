"""Seed-study statistics (m2s.evaluation.seeds) and the study script end to end (slow)."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from m2s.data.semantickitti import parse_sequence_list
from m2s.evaluation.seeds import goal_met, mean_std, paired_difference, summarise_seeds

ROOT = Path(__file__).resolve().parents[1]


def scores(miou: float, hard: float, person: float) -> dict[str, object]:
    return {"miou": miou, "hard_miou": hard, "iou": {"car": 50.0, "person": person}}


def test_mean_std_is_the_sample_std() -> None:
    ms = mean_std([1.0, 2.0, 4.0])
    assert ms.mean == pytest.approx(7 / 3)
    assert ms.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert math.isnan(mean_std([3.0]).std)


def test_paired_difference_removes_the_shared_seed_offset() -> None:
    # The seeds differ by a lot, the model's gain over the baseline is a steady +1.
    base = [20.0, 30.0, 25.0]
    model = [21.0, 31.2, 25.8]
    p = paired_difference(model, base)
    assert p.diffs == pytest.approx([1.0, 1.2, 0.8])
    assert p.mean == pytest.approx(1.0)
    assert p.se == pytest.approx(0.2 / math.sqrt(3))
    assert goal_met(p, paired_difference([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]))
    # Same mean gain, unpaired spread: the gain is within noise.
    noisy = paired_difference([25.0, 26.0, 27.0], [20.0, 30.0, 25.0])
    assert noisy.mean == pytest.approx(1.0)
    assert not goal_met(noisy, paired_difference([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]))


def test_goal_needs_overall_miou_not_lower_and_two_seeds() -> None:
    hard = paired_difference([2.0, 2.1, 1.9], [0.0, 0.0, 0.0])
    assert goal_met(hard, paired_difference([0.0, 0.1, 0.0], [0.0, 0.0, 0.0]))
    assert not goal_met(hard, paired_difference([-0.5, -0.4, -0.6], [0.0, 0.0, 0.0]))
    assert not goal_met(paired_difference([5.0], [0.0]), paired_difference([1.0], [0.0]))


def test_summarise_seeds_per_model_and_paired() -> None:
    per_seed = {
        1: {"baseline": scores(30.0, 20.0, 10.0), "joint": scores(31.0, 23.0, 16.0)},
        0: {"baseline": scores(28.0, 18.0, 12.0), "joint": scores(28.5, 20.0, 14.0)},
    }
    s = summarise_seeds(per_seed, compared=["joint"])
    assert s.seeds == [0, 1]
    assert s.models["baseline"].miou.mean == pytest.approx(29.0)
    assert s.models["joint"].iou["person"].mean == pytest.approx(15.0)
    pj = s.paired["joint"]
    assert pj.hard_miou.diffs == pytest.approx([2.0, 3.0])  # seed order, not insertion order
    assert pj.miou.diffs == pytest.approx([0.5, 1.0])
    assert pj.hard_miou.se == pytest.approx(0.5)
    assert pj.goal_met  # 2.5 > 2 * 0.5 and mIoU +0.75
    with pytest.raises(ValueError, match="cannot pair"):
        summarise_seeds(per_seed, compared=["student"])
    with pytest.raises(ValueError, match="scores models"):
        summarise_seeds({0: {"baseline": scores(1, 1, 1)}, 1: {"joint": scores(1, 1, 1)}})


@pytest.mark.slow
def test_study_script_end_to_end(tmp_path: Path) -> None:
    """The real CLI chain at the smoke size: two seeds, baseline, joint student and a named variant
    (a config of its own), evaluated; then a report-only summary of a subset of the models."""
    out = tmp_path / "study"
    variant = "joint-tc=pipelines/configs/study/joint-teacher-correct.yaml"

    def study(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "benchmarks/study.py", "--size", "smoke", "--epochs", "1", "--threads", "1",
             "--out", str(out), *args],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )

    control = "selfkd=pipelines/configs/study/single-view-control.yaml"
    proc = study("--seeds", "0,1", "--models", f"baseline,joint,{variant},{control}", "--data-seed", "13")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "study.json").read_text())
    assert result["seeds"] == [0, 1]
    # --data-seed: the smoke size's scenes drawn with generator seed 13 instead of its own 11
    assert result["synth"].endswith("--seed 13") and result["synth"].count("--seed") == 1
    assert "13" in json.dumps(json.loads((out / "data" / "manifest.json").read_text()))
    assert set(result["per_seed"]["0"]) == {"baseline", "joint", "joint-tc", "selfkd"}
    assert result["variants"]["joint-tc"]["mode"] == "joint"
    # the single-view control is taught by its seed's baseline; no fused-input teacher is trained
    assert result["variants"]["selfkd"]["teacher"] == "baseline"
    for s in (0, 1):
        control_manifest = json.loads((out / f"seed{s}" / "selfkd" / "manifest.json").read_text())
        baseline_manifest = json.loads((out / f"seed{s}" / "baseline" / "manifest.json").read_text())
        assert control_manifest["config"]["teacher_id"] == baseline_manifest["content_id"]
        assert not (out / f"seed{s}" / "teacher").exists()
    assert "logit_voxels" in (out / "seed0" / "joint-tc" / "manifest.json").read_text()
    # the variant file holds only its distill section; the rest comes from the size's student config
    merged = yaml.safe_load(Path(result["variants"]["joint-tc"]["config"]).read_text())
    smoke_student = yaml.safe_load((ROOT / "pipelines/configs/demo-student.yaml").read_text())
    assert merged["model"] == smoke_student["model"] and merged["epochs"] == smoke_student["epochs"]
    assert merged["distill"] == {"mode": "joint", "logit": {"voxels": "teacher_correct"}}
    full = result["per_seed"]
    paired = result["summary"]["paired"]["joint"]["hard_miou"]
    per_seed_diff = [result["per_seed"][s]["joint"]["hard_miou"] - result["per_seed"][s]["baseline"]["hard_miou"] for s in ("0", "1")]
    assert paired["diffs"] == pytest.approx(per_seed_diff)
    # Each seed's models were scored by a real `m2s evaluate` artifact.
    for s in (0, 1):
        metrics = json.loads((out / f"seed{s}" / "eval" / "metrics.json").read_text())
        assert set(metrics["models"]) == {"baseline", "joint", "joint-tc", "selfkd"}
    assert (out / "study.png").stat().st_size > 0
    assert "| joint |" in (out / "study.md").read_text()

    # --report-only trains nothing and summarises the models asked for from the same evaluations.
    proc = study("--seeds", "0,1", "--models", f"baseline,{variant}", "--report-only")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    subset = json.loads((out / "study.json").read_text())
    assert set(subset["per_seed"]["1"]) == {"baseline", "joint-tc"}
    assert subset["per_seed"]["1"]["joint-tc"] == full["1"]["joint-tc"]
    assert "| joint |" not in (out / "study.md").read_text()
    proc = study("--seeds", "0,2", "--models", "baseline", "--report-only")
    assert proc.returncode != 0 and "seed 2 has no evaluation" in proc.stderr


def load_study_script(monkeypatch: pytest.MonkeyPatch) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_script", ROOT / "benchmarks" / "study.py")
    assert spec is not None and spec.loader is not None
    study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, study)  # its dataclasses look their module up while being created
    spec.loader.exec_module(study)
    return study


def test_every_study_size_generates_disjoint_train_and_validation_sequences(monkeypatch: pytest.MonkeyPatch) -> None:
    study = load_study_script(monkeypatch)

    def synth_option(size: dict[str, Any], flag: str) -> str:
        args = shlex.split(size["synth"])
        return args[args.index(flag) + 1]

    for name, size in study.SIZES.items():
        generated = set(parse_sequence_list(synth_option(size, "--sequences")))
        train, val = set(parse_sequence_list(size["train"])), set(parse_sequence_list(size["val"]))
        assert train and val and not train & val, name
        assert train | val <= generated, name
        for cfg in (size["teacher"], size["student"]):
            assert (ROOT / cfg).is_file(), (name, cfg)
    # the wide size: the cpu size's 90 training scans per epoch, twice its validation sequences
    cpu, wide = study.SIZES["cpu"], study.SIZES["wide"]
    assert len(parse_sequence_list(wide["val"])) == 2 * len(parse_sequence_list(cpu["val"]))
    train_scans = {n: int(synth_option(s, "--scans")) * len(parse_sequence_list(s["train"])) for n, s in (("cpu", cpu), ("wide", wide))}
    assert train_scans["wide"] == train_scans["cpu"] == 90
    assert wide["epochs"] == 12


def test_study_reports_whether_the_teacher_beats_the_baseline_where_fusion_adds_points(monkeypatch: pytest.MonkeyPatch) -> None:
    study = load_study_script(monkeypatch)

    def seed(teacher_car: float, teacher_person: float) -> dict[str, object]:
        return {
            "baseline": {"miou": 40.0, "hard_miou": 30.0, "iou": {"car": 80.0, "road": 90.0, "person": 30.0}},
            "teacher": {"miou": 41.0, "hard_miou": teacher_person, "iou": {"car": teacher_car, "road": 90.0, "person": teacher_person}},
        }

    # hard classes better, car (untouched by fusion) 0.5 lower on average: target met
    lines = study.teacher_check({0: seed(79.0, 33.0), 1: seed(80.0, 35.0)}, ["person"])
    assert "| teacher | +4.00 ± 1.00 | car -0.5, road +0.0 | met |" in lines
    # car 2 points lower: not met, however much the hard classes gain
    lines = study.teacher_check({0: seed(78.0, 40.0), 1: seed(78.0, 40.0)}, ["person"])
    assert lines[-1].endswith("| not met |") and "car -2.0" in lines[-1]
    assert study.teacher_check({0: {"baseline": seed(80, 30)["baseline"]}}, ["person"]) == []


def test_study_sizes_are_the_yaml_files_and_a_broken_one_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = load_study_script(monkeypatch)
    files = sorted(p.stem for p in (ROOT / "pipelines" / "configs" / "study" / "sizes").glob("*.yaml"))
    assert sorted(study.SIZES) == files and {"cpu", "smoke", "wide"} <= set(files)
    assert study.SIZES["smoke"]["train"] == "02" and study.SIZES["wide"]["epochs"] == 12
    good = "synth: --seed 1\ntrain: '00'\nval: '01'\nteacher: t.yaml\nstudent: s.yaml\n"
    (tmp_path / "ok.yaml").write_text(good)
    assert study.load_sizes(tmp_path)["ok"]["val"] == "01"
    for bad, why in ((good + "epoch: 3\n", "unknown"), (good.replace("val: '01'\n", ""), "missing"), (good + "epochs: many\n", "epochs")):
        (tmp_path / "bad.yaml").write_text(bad)
        with pytest.raises(ValueError, match=why) as err:
            study.load_sizes(tmp_path)
        assert "bad.yaml" in str(err.value)
        (tmp_path / "bad.yaml").unlink()
