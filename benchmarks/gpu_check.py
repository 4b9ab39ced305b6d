"""`make gpu-check`: the GPU path of m2s in one prepared, time-boxed command.

    python3 benchmarks/gpu_check.py --out runs/gpu-check [--wheels .whl] [--device cuda] [--quick]

Runs the parts of benchmarks/gpu_check_parts.py (env, pytest -m gpu, CPU <-> CUDA parity,
backbone throughput, training throughput; docs/gpu.md says what each measures), each in its own
process with a time budget: a part that reaches its budget stops, keeps what it measured and says
so; one still running GRACE_S after its budget is killed (with what it started) and reported as
such, and the run goes on with the next part.

Writes at most 8 files into ``--out``: gpu-check.md (the tables), gpu-check.json (everything),
and one log per part. ``--wheels DIR`` first installs DIR/requirements.txt from DIR alone
(``pip install --no-index --find-links``; ``*.whl.xz`` are decompressed first): what
scripts/gpu_wheels.sh downloads for a GPU machine without network (docs/gpu.md).

Without CUDA (or with ``--device cpu``) every part still runs its code on the CPU, and the parts
that measure the GPU say "skipped: no CUDA"; their CPU figures are a dry run, never GPU figures.
``--quick`` shrinks every size (16x256 scans, narrow networks, seconds of training) so that
``--device cpu --quick`` finishes in well under a minute on two cores: tests/test_gpu_check.py runs
exactly that, so the script cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Only the standard library at import time (here and in the two modules below): m2s needs
# pydantic, which --wheels may install first.
ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from gpu_check_parts import FULL, PARTS, QUICK, run_part  # noqa: E402
from gpu_check_report import render_markdown  # noqa: E402

#: Seconds per part. Full: <= 8 min on one H100 with the wheel install (~30 s) included.
BUDGETS = {"env": 20, "pytest": 100, "parity": 50, "backbone": 100, "train": 170}
# --quick: the budgets only bound a hang; a CI machine loaded by other work measured 65 s (backbone) and
# 75 s (train) where an idle one took 7 s and 11 s (26 s for all five parts)
QUICK_BUDGETS = {"env": 60, "pytest": 120, "parity": 120, "backbone": 180, "train": 180}
#: A part still running this long after its budget is killed.
GRACE_S = 15
RESULT_JSON = "gpu-check.json"
RESULT_MD = "gpu-check.md"


# ---- wheels ----------------------------------------------------------------------------------------
def install_wheels(folder: Path, logfile: Any, dry_run: bool = False) -> dict[str, Any]:
    """pip install FOLDER/requirements.txt from FOLDER alone (no index), into this interpreter's
    environment, resolved against what is installed there; `*.whl.xz` are decompressed first.
    Should that resolution fail (an image whose packages conflict), every wheel of FOLDER goes
    into a private folder with --no-deps instead, returned as "site" for PYTHONPATH."""
    t0 = time.perf_counter()
    folder = folder.resolve()
    req = folder / "requirements.txt"
    if not req.is_file():
        return {"status": f"failed: {req} not found (run scripts/gpu_wheels.sh first)"}
    unpacked = Path(tempfile.mkdtemp(prefix="gpu_check_wheels_"))
    for xz in sorted(folder.glob("*.whl.xz")):
        with lzma.open(xz) as src, open(unpacked / xz.name[: -len(".xz")], "wb") as dst:
            shutil.copyfileobj(src, dst, 2**24)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--no-cache-dir",
        "--no-compile",
        "--disable-pip-version-check",
    ]
    cmd = (
        pip
        + ["--find-links", str(folder), "--find-links", str(unpacked), "-r", str(req)]
        + (["--dry-run"] if dry_run else [])
    )
    print("$ " + " ".join(cmd), file=logfile, flush=True)
    proc = subprocess.run(cmd, stdout=logfile, stderr=subprocess.STDOUT, timeout=300)
    wheels = sorted(p.name for p in folder.iterdir() if p.name.endswith((".whl", ".whl.xz")))
    res: dict[str, Any] = {
        "folder": str(folder),
        "wheels": wheels,
        "requirements": [ln for ln in req.read_text().splitlines() if ln and not ln.startswith("#")],
    }
    if proc.returncode == 0:
        res["status"] = "ok"
    elif dry_run:
        res["status"] = f"failed: pip exited {proc.returncode} (see env.log)"
    else:
        site = Path(tempfile.mkdtemp(prefix="gpu_check_site_"))
        files = [str(p) for p in sorted([*folder.glob("*.whl"), *unpacked.glob("*.whl")])]
        cmd = pip + ["--no-deps", "--target", str(site), *files]
        print("$ " + " ".join(cmd), file=logfile, flush=True)
        again = subprocess.run(cmd, stdout=logfile, stderr=subprocess.STDOUT, timeout=300)
        if again.returncode == 0:
            res.update(
                status=f"ok with --no-deps --target {site} (the resolved install failed: see env.log)", site=str(site)
            )
        else:
            res["status"] = (
                f"failed: pip exited {proc.returncode}, then {again.returncode} with --no-deps (see env.log)"
            )
    shutil.rmtree(unpacked, ignore_errors=True)
    res["seconds"] = time.perf_counter() - t0
    return res


# ---- the orchestrator ------------------------------------------------------------------------------
def _budget_overrides(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        m = re.fullmatch(r"(\w+)=(\d+(?:\.\d+)?)", item)
        if not m or m.group(1) not in PARTS:
            raise SystemExit(f"error: --budget takes PART=SECONDS with PART in {', '.join(PARTS)}; got {item!r}")
        out[m.group(1)] = float(m.group(2))
    return out


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def orchestrate(args: argparse.Namespace, argv: list[str]) -> int:
    t_start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / RESULT_JSON, out / RESULT_MD, *out.glob("*.log")]:
        stale.unlink(missing_ok=True)  # a rerun into the same folder keeps at most 8 files
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"error: unknown part(s) {unknown}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    budgets = dict(QUICK_BUDGETS if args.quick else BUDGETS) | _budget_overrides(args.budget)
    report: dict[str, Any] = {
        "tool": "benchmarks/gpu_check.py",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python3", "benchmarks/gpu_check.py", *argv]),
        "device": args.device,
        "quick": args.quick,
        "sizes": asdict(QUICK if args.quick else FULL),
        "cuda": False,
        "wheels": None,
        "parts": {},
        "budgets_s": {p: budgets[p] for p in parts},
        "grace_s": GRACE_S,
    }
    if args.wheels is not None:
        with open(out / "env.log", "a") as fh:
            report["wheels"] = install_wheels(args.wheels, fh)
        print(f"wheels: {report['wheels']['status']}", flush=True)
    site = (report["wheels"] or {}).get("site")  # the --no-deps fallback's folder, if it came to that
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), site, os.environ.get("PYTHONPATH")])),
    )
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    env["TMPDIR"] = str(tmp)  # the parts' scratch (data, pytest's): removed below, even after a kill
    try:
        for part in parts:
            budget = budgets[part]
            result = tmp / f"{part}.json"
            logname = f"{part}.log"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--part",
                part,
                "--result",
                str(result),
                "--device",
                args.device,
                "--budget",
                str(budget),
                "--backends",
                args.backends,
            ]
            if args.quick:
                cmd.append("--quick")
            print(f"== {part} (budget {budget:.0f} s) -> {out / logname}", flush=True)
            t0 = time.perf_counter()
            killed = False
            with open(out / logname, "a") as fh:
                proc = subprocess.Popen(
                    cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
                )
                try:
                    proc.wait(timeout=budget + GRACE_S)
                except subprocess.TimeoutExpired:
                    killed = True
                    os.killpg(proc.pid, 9)  # the part and what it started (pytest, loader workers)
                    proc.wait()
            data: dict[str, Any] = json.loads(result.read_text()) if result.is_file() else {}
            if killed:
                was = data.get("stage") or data.get("status", "not started")
                data["status"] = f"killed at budget ({budget:.0f} s + {GRACE_S} s grace; it was at: {was})"
            elif "status" not in data or data["status"] == "running":
                data["status"] = f"failed: the part exited {proc.returncode} (see {logname})"
            data.update(elapsed_s=time.perf_counter() - t0, budget_s=budget, log=logname, returncode=proc.returncode)
            report["parts"][part] = data
            if part == "env":
                report["cuda"] = bool(data.get("info", {}).get("cuda_available")) and args.device == "cuda"
            print(f"   {part}: {data['status']} ({data['elapsed_s']:.0f} s)", flush=True)
            report["elapsed_s"] = time.perf_counter() - t_start
            _write(out / RESULT_JSON, json.dumps(report, indent=1, default=str))  # as it goes: a killed run keeps it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "env" not in parts:  # the parts decide CUDA themselves; the report needs it too
        try:
            import torch

            report["cuda"] = args.device == "cuda" and torch.cuda.is_available()
        except ImportError:
            report["cuda"] = False
    report["elapsed_s"] = time.perf_counter() - t_start
    _write(out / RESULT_JSON, json.dumps(report, indent=1, default=str))
    md = render_markdown(report)
    _write(out / RESULT_MD, md)
    print(md)
    print(f"wrote {out / RESULT_MD} and {out / RESULT_JSON} in {report['elapsed_s']:.0f} s")
    failed = [p for p, d in report["parts"].items() if str(d.get("status", "")).startswith(("failed", "killed"))]
    if report.get("wheels") and str(report["wheels"]["status"]).startswith("failed"):
        failed.append("wheels")
    if args.device == "cuda" and not report["cuda"]:
        # Asked to check a GPU and none was visible: the dry run above is no GPU check.
        print("error: --device cuda, but torch sees no CUDA device (use --device cpu for a dry run)", file=sys.stderr)
        failed.append("cuda")
    if failed:
        print(f"gpu-check: not passed ({', '.join(failed)})", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="output folder (at most 8 files)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: every part as a CPU dry run")
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the code, measures nothing worth quoting")
    p.add_argument("--wheels", type=Path, default=None, help="install DIR/requirements.txt from DIR first (no network)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from: {', '.join(PARTS)}")
    p.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS", help="override one part's budget")
    p.add_argument("--backends", default="torch,spconv,minkowski", help="sparse backends to check where present")
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        args.budget = float(args.budget[0]) if args.budget else 60.0
        return run_part(args)
    return orchestrate(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
