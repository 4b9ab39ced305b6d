"""The markdown report of `make gpu-check` (gpu-check.md), rendered from its JSON."""

from __future__ import annotations

import math
from typing import Any

from gpu_check_parts import SEMANTICKITTI_TRAIN_SCANS


def _f(v: Any, fmt: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, fmt)
    return str(v)


def _duration(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    h, rem = divmod(int(round(s)), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render_markdown(report: dict[str, Any]) -> str:
    parts = report["parts"]
    env = parts.get("env", {})
    info = env.get("info", {})
    gpus = info.get("gpus") or []
    gpu = ", ".join(f"{g['name']} ({g['memory_GiB']} GiB)" for g in gpus) or "none (no CUDA)"
    lines = [
        "# m2s GPU check",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- GPU: {gpu}; driver {info.get('driver') or '-'}",
        f"- torch {info.get('torch', '-')}, CUDA {info.get('torch_cuda') or '-'}, cuDNN {info.get('cudnn') or '-'}, "
        f"Python {info.get('python', '-')}, {info.get('cpu_count', '-')} CPU cores, "
        f"/dev/shm {info.get('shm_GiB', '-')} GiB",
        f"- sizes: {'quick (tiny, to prove the code; not the issue sizes)' if report['quick'] else 'full'}; "
        f"total {report['elapsed_s']:.0f} s",
    ]
    if not report["cuda"]:
        lines.append(
            "- **no CUDA: every figure below was taken on the CPU as a dry run; the GPU figures are not measured**"
        )
    if report.get("wheels"):
        w = report["wheels"]
        lines.append(f"- wheels from `{w.get('folder', '-')}`: {w['status']} ({_f(w.get('seconds'), '.0f')} s)")
    lines += ["", "## Parts", ""]
    lines += _table(
        ["part", "status", "seconds / budget", "log"],
        [
            [
                name,
                p.get("status", "-"),
                f"{_f(p.get('elapsed_s'), '.0f')} / {_f(p.get('budget_s'), '.0f')}",
                f"`{p.get('log', '-')}`",
            ]
            for name, p in parts.items()
        ],
    )
    if "env" in parts:
        b = env.get("backends", {})
        lines += ["", "## Environment", ""]
        rows = [
            [
                k,
                "yes" if v.get("imports") else f"no ({v.get('why')})",
                "yes" if v.get("cuda") else "no",
                v.get("describe") or v.get("version") or "",
            ]
            for k, v in b.items()
        ]
        lines += _table(["backend", "imports", "CUDA kernels usable", "build"], rows)
        pk = info.get("packages", {})
        lines += [
            "",
            "packages: " + (", ".join(f"{k} {v}" for k, v in pk.items()) or "-"),
            f"`auto` backend here: {env.get('auto', '-')}",
        ]
    if "pytest" in parts:
        p = parts["pytest"]
        c = p.get("counts", {})
        lines += [
            "",
            "## pytest -m gpu",
            "",
            f"`{p.get('command', '-')}`: " + ", ".join(f"{v} {k}" for k, v in c.items()),
        ]
        bad = [t for t in p.get("tests", []) if t["outcome"] in ("failed", "error")]
        lines += [f"- FAILED `{t['test']}`: {t['message']}" for t in bad]
        reasons = sorted({t["message"] for t in p.get("tests", []) if t["outcome"] == "skipped"})
        lines += [f"- skipped: {r}" for r in reasons]
    if "parity" in parts:
        p = parts["parity"]
        tol = p.get("tolerance", {})
        lines += [
            "",
            "## CPU ↔ CUDA parity",
            "",
            f"{p.get('model', 'MinkUNet18')} width {p.get('width', '-')}, one scan ({p.get('voxels', '-')} voxels), "
            f"train mode, float32, TF32 off, {p.get('compared', '-')}; tolerance: logits ≤ {tol.get('logits_rtol')}, "
            f"all gradients ≤ {tol.get('grads_rtol')} (norm-wise relative error)",
            "",
        ]
        rows = []
        for r in p.get("results", []):
            if "error" in r:
                rows.append([r["backend"], "error", "-", r["error"][:80], "FAIL"])
            else:
                rows.append(
                    [
                        r["backend"],
                        _f(r["logits_rel_err"], ".1e"),
                        _f(r["grads_rel_err"], ".1e"),
                        f"{r['worst_param']} {_f(r['worst_param_rel_err'], '.1e')}",
                        "pass" if r["pass"] else "FAIL",
                    ]
                )
        lines += _table(["backend", "logits", "gradients", "worst parameter", "result"], rows)
        lines += [f"- not run: {k}: {v}" for k, v in p.get("not_run", {}).items()]
    if "backbone" in parts:
        p = parts["backbone"]
        lines += [
            "",
            "## Backbone throughput",
            "",
            f"{p.get('scans', '-')} synthetic scans of {p.get('points_per_scan', '-')} points "
            f"at {p.get('voxel_size', '-')} m "
            f"({p.get('voxels', '-')} voxels per batch), width {p.get('width', '-')}, on {p.get('device', '-')}; "
            f"median of {p.get('repeats', '-')} after {p.get('warmup', '-')} warm-up",
            "",
        ]
        rows = []
        for r in p.get("results", []):
            if "error" in r or "stopped" in r:
                rows.append(
                    [r["model"], r["backend"], r["dtype"], r.get("error", r.get("stopped", ""))[:80], "", "", "", ""]
                )
            else:
                rows.append(
                    [
                        r["model"],
                        r["backend"],
                        r["dtype"],
                        _f(r["forward_ms"], ".0f"),
                        _f(r["backward_ms"], ".0f"),
                        _f(r["fwd_bwd_ms"], ".0f"),
                        _f(r["scans_per_s"], ".2f"),
                        _f(r["peak_MiB"], ".0f"),
                    ]
                )
        lines += _table(["model", "backend", "dtype", "fwd ms", "bwd ms", "fwd+bwd ms", "scans/s", "peak MiB"], rows)
        lines += [f"- not run: {k}: {v}" for k, v in p.get("not_run", {}).items()]
        lines += sorted({f"- {r['backend']}: {r['note']}" for r in p.get("results", []) if "note" in r})
        t = p.get("target")
        if t:
            lines.append(
                f"- target (fastest backend's {t['model']} {t['dtype']} fwd+bwd "
                f"within {t['target']}x of spconv's own): "
                f"{t['fastest_backend']} at {t['ratio_to_spconv_native']:.2f}x: {'met' if t['met'] else 'MISSED'}"
            )
    if "train" in parts:
        p = parts["train"]
        d = p.get("data", {})
        lines += [
            "",
            "## Training throughput",
            "",
            f"{d.get('scans', '-')} synthetic scans of {d.get('beams', '-')}x{d.get('columns', '-')} "
            f"(generated in {_f(d.get('generate_s'), '.0f')} s, fused in {_f(d.get('fuse_s'), '.0f')} s); "
            f"configs {', '.join(p.get('configs', []))}; "
            f"the loader cycles them for ~{_f(p.get('seconds_per_run'), '.0f')} s per run",
            "",
        ]
        rows = []
        for r in p.get("results", []):
            rows.append(
                [
                    r["role"],
                    r["model"],
                    r["backend"],
                    r["amp"],
                    str(r["batch_size"]),
                    str(r["num_workers"]),
                    str(r.get("measured_steps", 0)),
                    _f(r.get("scans_per_s"), ".2f"),
                    _f(100 * r["data_wait_share"], ".1f") if "data_wait_share" in r else "-",
                    _f(r.get("peak_MiB"), ".0f")
                    if r.get("peak_MiB") is not None
                    else f"RSS {_f(r.get('peak_rss_MiB'), '.0f')}",
                    _duration(r.get("semantickitti_epoch_s")),
                ]
            )
        lines += _table(
            [
                "run",
                "model",
                "backend",
                "amp",
                "batch",
                "workers",
                "steps",
                "scans/s",
                "data wait %",
                "peak MiB",
                f"SemanticKITTI epoch ({SEMANTICKITTI_TRAIN_SCANS:,} scans)",
            ],
            rows,
        )
    return "\n".join(lines) + "\n"
