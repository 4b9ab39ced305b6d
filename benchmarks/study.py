"""Seed study: does distillation beat the baseline student, paired by seed?

Runs the real CLI end to end on a synthetic benchmark that the defaults were not tuned on
(other sequences and generator seed than the demo): `m2s synth`, `m2s fuse` (train + validation
caches), then for every training seed the frozen teacher (`train-teacher`), the baseline student
(`distill --kd none`), the frozen-teacher student (`distill --teacher`) and the joint student
(`distill --mode joint`, the official shared-weight scheme), all with the same seed (same
initialisation and data order), and scores every model with `m2s evaluate` on the validation
cache, each on the input it was trained on, from the *last* checkpoint (no selection on the
validation set).

Reports mean +- std over seeds of mIoU, hard mIoU and every class IoU, and for each distilled
model the paired difference to the baseline (mean, standard error, and whether the mean gain
in hard mIoU exceeds twice the standard error with mIoU not lower). Writes study.json,
study.md (the table) and study.png under --out; reruns reuse finished artifacts (the stages
are no-ops on identical inputs) and resume killed trainings.

Sizes (--size NAME) are YAML files, pipelines/configs/study/sizes/NAME.yaml.

Usage:
    python benchmarks/study.py                           # 3 seeds, CPU-sized (see README)
    python benchmarks/study.py --seeds 0,1,2,3,4 --jobs 4 --threads 4
    python benchmarks/study.py --out runs/study-wide --size wide --seeds 0,1 --jobs 2 --threads 1
    python benchmarks/study.py --out runs/study-gpu --size full --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from m2s.evaluation.report import read_metrics_json  # noqa: E402
from m2s.evaluation.seeds import MeanStd, StudySummary, paired_difference, summarise_seeds  # noqa: E402

# Benchmark sizes: one YAML file each (the file name is the --size name) with the synthetic
# data's `synth` arguments, the `train`/`val` sequences, the `teacher`/`student` configs and
# optionally `epochs`.
SIZES_DIR = ROOT / "pipelines" / "configs" / "study" / "sizes"
SIZE_KEYS = {"synth": str, "train": str, "val": str, "teacher": str, "student": str, "epochs": int}
REQUIRED_SIZE_KEYS = ("synth", "train", "val", "teacher", "student")


def load_sizes(folder: Path = SIZES_DIR) -> dict[str, dict[str, Any]]:
    """Every `<name>.yaml` under `folder` as a size; a file with a missing, unknown or mistyped
    key is refused with its name."""
    sizes: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a study size must be a mapping")
        unknown = sorted(set(data) - set(SIZE_KEYS))
        missing = [k for k in REQUIRED_SIZE_KEYS if k not in data]
        if unknown or missing:
            raise ValueError(f"{path}: unknown keys {unknown}, missing keys {missing} (keys: {sorted(SIZE_KEYS)})")
        wrong = [k for k, v in data.items() if not isinstance(v, SIZE_KEYS[k]) or isinstance(v, bool)]
        if wrong:
            raise ValueError(f"{path}: {wrong} must be {[SIZE_KEYS[k].__name__ for k in wrong]}")
        sizes[path.stem] = data
    if not sizes:
        raise ValueError(f"no study sizes (*.yaml) in {folder}")
    return sizes


SIZES: dict[str, dict[str, Any]] = load_sizes()


def with_generator_seed(synth_args: str, seed: int) -> str:
    """`synth_args` with its `--seed` replaced (or added): the same sizes, other scenes."""
    args = shlex.split(synth_args)
    if "--seed" in args:
        i = args.index("--seed")
        del args[i : i + 2]
    return shlex.join([*args, "--seed", str(seed)])


MODELS = ("baseline", "student", "joint")  # teacher is trained whenever a frozen student is asked for
DISTILLED = ("student", "joint")


@dataclass(frozen=True)
class Variant:
    """A distilled model of the study: a name, its student config and its mode."""

    name: str
    config: str | None  # None: the size's student config
    mode: str  # frozen (taught by the seed's teacher) | joint
    # frozen mode: the seed's model that teaches. teacher: the fused-input teacher; baseline: the
    # seed's baseline on the single view (`distill.teacher_view: single`, the self-distillation
    # control: same architecture and schedule, no fused input).
    teacher: str = "teacher"


def parse_variant(spec: str) -> Variant:
    """`student`, `joint`, or `name=config.yaml`: a YAML laid over the size's student config (usually
    just a `distill:` section); its `distill.mode` picks the mode."""
    if "=" not in spec:
        if spec not in DISTILLED:
            raise ValueError(f"unknown model {spec!r}: expected baseline, student, joint or name=config.yaml")
        return Variant(spec, None, "frozen" if spec == "student" else "joint")
    name, config = spec.split("=", 1)
    if not name or name in ("baseline", "teacher", *DISTILLED) or not Path(config).is_file():
        raise ValueError(f"variant {spec!r}: needs a new name and an existing config file")
    from m2s.train.config import load_yaml_mapping

    distill = load_yaml_mapping(config).get("distill") or {}
    mode = str(distill.get("mode", "frozen"))
    return Variant(name, config, mode, "baseline" if distill.get("teacher_view") == "single" else "teacher")


@dataclass(frozen=True)
class StudyPlan:
    out: Path
    seeds: list[int]
    models: list[str]
    variants: dict[str, Variant]
    teacher_locks: dict[int, threading.Lock]  # one teacher per seed, however many frozen variants
    baseline_locks: dict[int, threading.Lock]  # the baseline may also be the control's teacher
    size: dict[str, Any]
    device: str
    threads: int
    jobs: int
    epochs: int | None
    workers: int | None


def m2s_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def run_logged(cmd: list[str], log: Path, threads: int) -> None:
    """Run one CLI stage, its output to `log`; raise with the log's tail on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{shlex.join(cmd)} exited {rc}; log {log}:\n{tail}")


def train_args(plan: StudyPlan, seed: int, out: Path) -> list[str]:
    args = ["--out", str(out), "--seed", str(seed), "--device", plan.device]
    if plan.epochs:
        args += ["--epochs", str(plan.epochs)]
    if plan.workers is not None:
        args += ["--workers", str(plan.workers)]
    if (out / "checkpoints" / "last.pt").exists() and not (out / "manifest.json").exists():
        args.append("--resume")
    return args


def prepare_data(plan: StudyPlan) -> None:
    size, out = plan.size, plan.out
    if not (out / "data" / "manifest.json").exists():
        run_logged(m2s_cmd("synth", str(out / "data"), *shlex.split(size["synth"])), out / "logs" / "data.log", plan.threads)
    for split in ("train", "val"):
        run_logged(
            m2s_cmd("fuse", str(out / "data"), "--sequences", size[split], "--out", str(out / f"fused-{split}")),
            out / "logs" / f"fused-{split}.log",
            plan.threads,
        )


def write_variant_configs(plan: StudyPlan) -> dict[str, str]:
    """Each variant's full student config (the size's, with the variant's file laid over it),
    written once under `--out/configs` before any training starts."""
    from m2s.train.config import deep_update, load_yaml_mapping

    base = load_yaml_mapping(plan.size["student"])
    paths: dict[str, str] = {}
    for v in plan.variants.values():
        if v.config is None:
            continue
        path = plan.out / "configs" / f"{v.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(
            f"# {v.config} laid over {plan.size['student']} by benchmarks/study.py\n"
            + yaml.safe_dump(deep_update(base, load_yaml_mapping(v.config)), sort_keys=False)
        )
        tmp.replace(path)
        paths[v.name] = str(path)
    return paths


def train_model(plan: StudyPlan, seed: int, model: str, configs: dict[str, str]) -> None:
    """Train one model of one seed: first its teacher for a frozen-teacher student (the fused-input
    teacher, or the seed's baseline for the single-view control)."""
    d = plan.out / f"seed{seed}"
    caches = ["--cache", str(plan.out / "fused-train")]
    log = plan.out / "logs" / f"seed{seed}-{model}.log"
    teacher_cfg, student_cfg = plan.size["teacher"], plan.size["student"]
    variant = plan.variants.get(model)
    student_cfg = configs.get(model, student_cfg)
    if model == "baseline" or (variant is not None and variant.mode == "frozen" and variant.teacher == "baseline"):
        with plan.baseline_locks[seed]:  # a second call finds the finished artifact: a no-op
            run_logged(
                m2s_cmd("distill", *caches, "--config", plan.size["student"], "--kd", "none",
                        *train_args(plan, seed, d / "baseline")),
                plan.out / "logs" / f"seed{seed}-baseline.log",
                plan.threads,
            )
        if model == "baseline":
            return
    if variant is not None and variant.mode == "frozen":
        if variant.teacher == "teacher":
            with plan.teacher_locks[seed]:
                run_logged(
                    m2s_cmd("train-teacher", *caches, "--config", teacher_cfg, *train_args(plan, seed, d / "teacher")),
                    plan.out / "logs" / f"seed{seed}-teacher.log",
                    plan.threads,
                )
        extra = ["--teacher", str(d / variant.teacher)]
    else:
        extra = ["--mode", "joint"]
    run_logged(
        m2s_cmd("distill", *caches, "--config", student_cfg, *extra, *train_args(plan, seed, d / model)),
        log,
        plan.threads,
    )


def evaluate_seed(plan: StudyPlan, seed: int) -> dict[str, Any]:
    d = plan.out / f"seed{seed}"
    frozen = any(v.mode == "frozen" and v.teacher == "teacher" for v in plan.variants.values())
    names = (["teacher"] if frozen else []) + plan.models
    run_logged(
        m2s_cmd(
            "evaluate", *[str(d / n) for n in names], "--cache", str(plan.out / "fused-val"),
            "--checkpoint", "last", "--device", plan.device, "--out", str(d / "eval"),
        ),
        plan.out / "logs" / f"seed{seed}-eval.log",
        plan.threads,
    )
    return read_seed_metrics(plan, seed)


def read_seed_metrics(plan: StudyPlan, seed: int) -> dict[str, Any]:
    """The seed's evaluation, restricted to the teacher and the plan's models (an evaluation made
    by an earlier, larger study of the same folder may hold more)."""
    path = plan.out / f"seed{seed}" / "eval" / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: seed {seed} has no evaluation; run the study without --report-only first")
    report = read_metrics_json(path)
    missing = sorted(set(plan.models) - set(report.models))
    if missing:
        raise KeyError(f"{path}: no result for {missing}; run the study for these models first")
    result: dict[str, Any] = {}
    for name, m in report.models.items():
        if name != "teacher" and name not in plan.models:
            continue
        result[name] = {
            "miou": 100.0 * (m.miou or 0.0),
            "hard_miou": 100.0 * (m.hard_miou or 0.0),
            "iou": {c: 100.0 * v for c, v in m.iou.items()},
        }
    result["_hard_classes"] = report.hard_classes
    return result


def run_study(plan: StudyPlan) -> dict[int, dict[str, Any]]:
    """Data, every seed's trainings (`plan.jobs` side by side) and evaluations."""
    prepare_data(plan)
    configs = write_variant_configs(plan)
    tasks = [(s, m) for s in plan.seeds for m in plan.models]
    # The frozen-teacher chain (teacher, then student) is the longest: start it first (stable sort:
    # seeds interleave, so side-by-side jobs rarely wait on one seed's teacher).
    no_variant = Variant("", None, "")
    tasks.sort(
        key=lambda t: (plan.variants.get(t[1], no_variant).mode != "frozen", t[1] not in plan.variants, plan.models.index(t[1]))
    )
    with ThreadPoolExecutor(max_workers=plan.jobs) as pool:
        for f in [pool.submit(train_model, plan, s, m, configs) for s, m in tasks]:
            f.result()
        evaluations = {s: pool.submit(evaluate_seed, plan, s) for s in plan.seeds}
        return {s: f.result() for s, f in evaluations.items()}


def teacher_check(per_seed: dict[int, dict[str, Any]], hard_classes: list[str]) -> list[str]:
    """The teacher against the baseline, paired by seed: better on hard mIoU, and on each class
    fusion never touches (every non-hard class) no more than 1 point lower on average."""
    seeds = sorted(per_seed)
    if not all("teacher" in per_seed[s] and "baseline" in per_seed[s] for s in seeds):
        return []
    hard = paired_difference([per_seed[s]["teacher"]["hard_miou"] for s in seeds],
                             [per_seed[s]["baseline"]["hard_miou"] for s in seeds])
    untouched = {
        c: paired_difference([per_seed[s]["teacher"]["iou"][c] for s in seeds], [per_seed[s]["baseline"]["iou"][c] for s in seeds])
        for c in per_seed[seeds[0]]["baseline"]["iou"]
        if c not in hard_classes
    }
    worst = sorted(untouched.items(), key=lambda kv: kv[1].mean)[:4]
    met = hard.mean > 0 and all(d.mean >= -1.0 for d in untouched.values())
    return [
        "",
        "| teacher vs baseline, paired | Δ hard mIoU (mean ± SE) | worst classes fusion does not touch (Δ IoU) | target: Δ hard > 0, none < −1 |",
        "|---|---|---|---|",
        f"| teacher | {hard.mean:+.2f} ± {hard.se:.2f} | "
        + ", ".join(f"{c} {d.mean:+.1f}" for c, d in worst)
        + f" | {'met' if met else 'not met'} |",
    ]


def fmt(ms: MeanStd) -> str:
    return f"{ms.mean:.1f} ± {ms.std:.1f}" if not math.isnan(ms.std) else f"{ms.mean:.1f}"


def markdown_table(summary: StudySummary, hard_classes: list[str], teacher_lines: Sequence[str] = ()) -> str:
    models = list(summary.models)
    head = ["metric", *models]
    lines = [
        f"seeds {','.join(map(str, summary.seeds))}; mean ± std over seeds, IoU in %",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for key, label in (("miou", "mIoU"), ("hard_miou", "hard mIoU")):
        lines.append(f"| **{label}** | " + " | ".join(fmt(getattr(summary.models[m], key)) for m in models) + " |")
    for c in summary.models[models[0]].iou:
        tag = f"{c} (hard)" if c in hard_classes else c
        lines.append(f"| {tag} | " + " | ".join(fmt(summary.models[m].iou[c]) for m in models) + " |")
    if summary.paired:
        lines += [
            "",
            "| paired by seed, vs baseline | Δ mIoU (mean ± SE) | Δ hard mIoU (mean ± SE) | Δ hard mIoU per seed | goal |",
            "|---|---|---|---|---|",
        ]
        for name, p in summary.paired.items():
            per = ", ".join(f"{d:+.1f}" for d in p.hard_miou.diffs)
            lines.append(
                f"| {name} | {p.miou.mean:+.2f} ± {p.miou.se:.2f} | {p.hard_miou.mean:+.2f} ± {p.hard_miou.se:.2f} "
                f"| {per} | {'met' if p.goal_met else 'not met'} |"
            )
    lines.extend(teacher_lines)
    return "\n".join(lines) + "\n"


def plot(summary: StudySummary, hard_classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary.models)
    cols = ["mIoU", "hard mIoU", *hard_classes]
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(cols)), 4))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        res = summary.models[m]
        vals = [res.miou, res.hard_miou, *[res.iou[c] for c in hard_classes]]
        xs = [j + i * width for j in range(len(cols))]
        ax.bar(xs, [v.mean for v in vals], width, yerr=[0 if math.isnan(v.std) else v.std for v in vals],
               label=m, capsize=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, rotation=30, ha="right")
    ax.set_ylabel("IoU (%), mean ± std over seeds")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--models", default=",".join(MODELS),
        help="baseline, student, joint and variants name=config.yaml (mode from the config's distill.mode)",
    )
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument(
        "--data-seed", type=int,
        help="override the size's generator seed: the same benchmark on other synthetic data (held-out confirmation)",
    )
    p.add_argument("--teacher-config", help="override the size's teacher config")
    p.add_argument("--student-config", help="override the size's student config")
    p.add_argument("--epochs", type=int, help="override the configs' (and the size's) epochs")
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda")
    p.add_argument("--jobs", type=int, default=1, help="trainings run side by side")
    p.add_argument("--workers", type=int, help="override the configs' data-loader workers")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)), help="torch threads per job")
    p.add_argument(
        "--report-only", action="store_true",
        help="train and evaluate nothing: summarise the seeds' existing evaluations in --out (e.g. seeds run in two batches)",
    )
    a = p.parse_args(argv)

    specs = [m for m in a.models.split(",") if m]
    try:
        variants = {v.name: v for v in (parse_variant(m) for m in specs if m != "baseline")}
    except ValueError as exc:
        p.error(str(exc))
    models = [m.split("=", 1)[0] for m in specs]
    if not models or len(set(models)) != len(models):
        p.error(f"--models must name each model once, got {a.models!r}")
    size = dict(SIZES[a.size])
    if a.data_seed is not None:
        size["synth"] = with_generator_seed(size["synth"], a.data_seed)
    size["teacher"] = a.teacher_config or size["teacher"]
    size["student"] = a.student_config or size["student"]
    seeds = [int(s) for s in a.seeds.split(",")]
    plan = StudyPlan(
        out=a.out.resolve(), seeds=seeds, models=models, variants=variants,
        teacher_locks={s: threading.Lock() for s in seeds}, baseline_locks={s: threading.Lock() for s in seeds}, size=size,
        device=a.device, threads=a.threads, jobs=a.jobs, epochs=a.epochs or size.get("epochs"), workers=a.workers,
    )
    t0 = time.perf_counter()
    if a.report_only:
        try:
            per_seed = {s: read_seed_metrics(plan, s) for s in plan.seeds}
        except (FileNotFoundError, KeyError) as exc:
            p.error(str(exc.args[0]))
    else:
        per_seed = run_study(plan)
    hard_classes = per_seed[plan.seeds[0]].pop("_hard_classes")
    for s in plan.seeds[1:]:
        per_seed[s].pop("_hard_classes")
    compared = [m for m in plan.models if m in variants] if "baseline" in plan.models else []
    summary = summarise_seeds(per_seed, baseline="baseline", compared=compared)
    wall = time.perf_counter() - t0
    result = {
        "command": shlex.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "size": a.size,
        "synth": size["synth"],
        "train_sequences": size["train"],
        "val_sequences": size["val"],
        "configs": {"teacher": size["teacher"], "student": size["student"]},
        "variants": {
            v.name: {"override": v.config, "config": str(plan.out / "configs" / f"{v.name}.yaml") if v.config else size["student"], "mode": v.mode, "teacher": v.teacher}
            for v in variants.values()
        },
        "epochs": plan.epochs,
        "seeds": plan.seeds,
        "wall_s": wall,
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "summary": summary.model_dump(mode="json"),
    }
    plan.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(summary, hard_classes, teacher_check(per_seed, hard_classes)) + f"\nwall time {wall / 60:.1f} min\n"
    for name, text in (("study.json", json.dumps(result, indent=2) + "\n"), ("study.md", table)):
        tmp = plan.out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(plan.out / name)
    plot(summary, hard_classes, plan.out / "study.png")
    print(table)
    print(f"wrote {plan.out / 'study.json'}, study.md, study.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
