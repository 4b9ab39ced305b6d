"""`make gpu-check` on the CPU: every part of benchmarks/gpu_check.py runs at tiny sizes, so the
one-call GPU check cannot rot between GPU loans (the GPU itself is checked only on a GPU)."""

from __future__ import annotations

import importlib.util
import io
import json
import lzma
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["env", "pytest", "parity", "backbone", "train"]
#: The whole quick CPU run (every part, in subprocesses) takes ~30 s on two cores; `make test` runs it.
slow = pytest.mark.slow


def _gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _finite(*values: object) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu-check")
    cmd = ["make", "-s", "gpu-check", f"PY={sys.executable}", f"GPU_CHECK_ARGS=--device cpu --quick --out {out}"]
    if shutil.which("make") is None:  # the Makefile target is a one-line wrapper of this
        cmd = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    return out, report, (out / "gpu-check.md").read_text(), proc


@slow
def test_quick_cpu_run_writes_at_most_eight_files(quick_run) -> None:
    out, report, md, _ = quick_run
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files
    assert {"gpu-check.md", "gpu-check.json"} <= set(files)
    assert {f"{p}.log" for p in PARTS} <= set(files)
    assert list(report["parts"]) == PARTS
    assert report["quick"] is True and report["cuda"] is False


@slow
def test_every_part_runs_and_says_what_needs_cuda(quick_run) -> None:
    _, report, md, _ = quick_run
    parts = report["parts"]
    assert parts["env"]["status"] == "ok"
    for name in ("pytest", "parity", "backbone", "train"):
        assert parts[name]["status"].startswith("skipped: no CUDA"), (name, parts[name]["status"])
        assert parts[name]["status"] in md
    for name, part in parts.items():
        assert _finite(part["elapsed_s"]) and part["elapsed_s"] <= part["budget_s"] + 15, name
    assert "GPU figures are not measured" in md


@slow
def test_environment_part(quick_run) -> None:
    _, report, _, _ = quick_run
    env = report["parts"]["env"]
    assert env["info"]["cuda_available"] is False and env["info"]["torch"]
    assert set(env["backends"]) == {"torch", "spconv", "minkowski"}
    assert env["backends"]["torch"]["imports"] is True
    assert env["auto"] == "torch"  # no GPU: the pure-PyTorch backend


@slow
def test_pytest_part_collects_the_cuda_tests(quick_run) -> None:
    _, report, _, _ = quick_run
    p = report["parts"]["pytest"]
    counts = p["counts"]
    assert counts["failed"] == counts["error"] == counts["passed"] == 0
    assert counts["skipped"] >= 20  # tests/test_cuda.py and the other gpu-marked tests
    assert any("test_cuda.py" in t["test"] or "test_cuda" in t["test"] for t in p["tests"])
    assert {t["message"] for t in p["tests"]} == {"needs CUDA"}


@slow
def test_parity_part_dry_run_numbers(quick_run) -> None:
    _, report, md, _ = quick_run
    p = report["parts"]["parity"]
    assert p["dry_run"] is True and p["compared"] == "cpu vs cpu"
    assert p["tolerance"] == {"logits_rtol": 1e-4, "grads_rtol": 2e-3, "dtype": "float32", "tf32": False}
    rows = p["results"]
    assert "torch" in [r["backend"] for r in rows]
    for r in rows:
        assert _finite(r["logits_rel_err"], r["grads_rel_err"], r["loss_cpu"], r["loss_other"]), r
        assert r["pass"] and r["same_param_set"]
    assert "CPU ↔ CUDA parity" in md


@slow
def test_backbone_part_numbers(quick_run) -> None:
    _, report, md, _ = quick_run
    p = report["parts"]["backbone"]
    rows = p["results"]
    seen = {(r["backend"], r["model"], r["dtype"]) for r in rows}
    for size in (18, 34):
        for dtype in ("fp32", "bf16"):
            assert ("torch", f"MinkUNet{size}", dtype) in seen
    for r in rows:
        assert "error" not in r, r
        assert _finite(r["fwd_bwd_ms"], r["scans_per_s"], r["loss"]) and r["fwd_bwd_ms"] > 0 and r["scans_per_s"] > 0, r
    # spconv's own network has the m2s MinkUNet's exact parameter count (the same architecture)
    native = {r["model"]: r["params_M"] for r in rows if r["backend"] == "spconv-native"}
    ours = {r["model"]: r["params_M"] for r in rows if r["backend"] == "torch"}
    for model, n in native.items():
        assert n == pytest.approx(ours[model], rel=1e-9)
    assert "| MinkUNet18 | torch | fp32 |" in md


@slow
def test_train_part_numbers(quick_run) -> None:
    _, report, md, _ = quick_run
    p = report["parts"]["train"]
    rows = {r["role"]: r for r in p["results"]}
    assert set(rows) == {"teacher", "student"}
    for r in rows.values():
        assert r["measured_steps"] >= 1
        assert _finite(r["scans_per_s"], r["data_wait_share"], r["semantickitti_epoch_s"], r["step_ms"])
        assert r["scans_per_s"] > 0 and 0.0 <= r["data_wait_share"] <= 1.0
        assert r["semantickitti_epoch_s"] == pytest.approx(19_130 / r["scans_per_s"])
    assert "SemanticKITTI epoch (19,130 scans)" in md


def test_a_part_stops_at_its_budget_and_says_so(tmp_path: Path) -> None:
    """With no time left, a part measures nothing, stops and reports it (the run still writes its report)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_check.py",
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(out),
            "--parts",
            "backbone",
            "--budget",
            "backbone=0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    part = json.loads((out / "gpu-check.json").read_text())["parts"]["backbone"]
    assert "stopped at budget after 0 of" in part["status"]
    assert not part.get("results")


def test_asking_for_cuda_without_one_fails_after_the_dry_run(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--quick", "--out", str(tmp_path), "--parts", "env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "torch sees no CUDA device" in proc.stderr
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["cuda"] is False and report["parts"]["env"]["status"] == "ok (no CUDA seen)"


def _probe_wheel(folder: Path) -> None:
    """A one-module wheel, stored as .whl.xz as scripts/gpu_wheels.sh stores the large ones."""
    name, version = "m2s_gpu_check_probe", "0.1"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 1\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: m2s-gpu-check-probe\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{dist}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for k, v in files.items():
            z.writestr(k, v)
    (folder / f"{name}-{version}-py3-none-any.whl.xz").write_bytes(lzma.compress(buf.getvalue()))
    (folder / "requirements.txt").write_text("# probe\nm2s-gpu-check-probe==0.1\n")


def test_wheels_install_from_the_folder_alone(tmp_path: Path) -> None:
    """--wheels: *.whl.xz decompressed, requirements resolved with no index (pip --dry-run here)."""
    gc = _gpu_check()
    _probe_wheel(tmp_path)
    log = tmp_path / "install.log"
    with open(log, "w") as fh:
        res = gc.install_wheels(tmp_path, fh, dry_run=True)
    text = log.read_text()
    assert res["status"] == "ok", text
    assert "--no-index" in text and "Would install m2s-gpu-check-probe-0.1" in text
    assert res["requirements"] == ["m2s-gpu-check-probe==0.1"]


def test_wheels_folder_without_requirements_is_a_clear_failure(tmp_path: Path) -> None:
    res = _gpu_check().install_wheels(tmp_path, io.StringIO())
    assert res["status"].startswith("failed:") and "scripts/gpu_wheels.sh" in res["status"]
