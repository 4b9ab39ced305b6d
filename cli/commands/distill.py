"""`m2s distill` (stage 3): a single-scan student, distilled from the teacher or the baseline."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from cli.common import handle_errors, out
from cli.training_view import iou_table, training_progress
from m2s.distill.config import KdChoice, TeacherChoice


class DistillModeOption(str, Enum):
    frozen = "frozen"
    joint = "joint"


@handle_errors
def distill(
    teacher: Path | None = typer.Option(None, "--teacher", help="Teacher `model` artifact (not needed with --kd none)."),
    cache: list[Path] = typer.Option(..., "--cache", help="Fused cache(s) of the training sequences."),
    val_cache: list[Path] = typer.Option([], "--val-cache", help="Fused cache(s) of the validation sequences."),
    out_dir: Path = typer.Option(..., "--out", help="Output folder (a `model` artifact)."),
    config: Path | None = typer.Option(None, "--config", help="Student config YAML (training + `distill:` section)."),
    kd: KdChoice = typer.Option(KdChoice.config, "--kd", help="'config': distillation terms from the config; 'none': baseline student."),
    mode: DistillModeOption | None = typer.Option(
        None, "--mode", help="frozen: learn from the --teacher artifact; joint: one shared-weight net on both views "
        "(the official M2SKD scheme, no teacher artifact). Default: the config's distill.mode.",
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    lr: float | None = typer.Option(None, "--lr"),
    backend: str | None = typer.Option(None, "--backend", help="auto|torch|minkowski|spconv"),
    device: str | None = typer.Option(None, "--device", help="auto|cpu|cuda"),
    workers: int | None = typer.Option(None, "--workers", min=0),
    max_scans: int | None = typer.Option(None, "--max-scans", min=1),
    seed: int | None = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last checkpoint."),
    labels: Path | None = typer.Option(None, "--labels", help="Label manifest YAML (default: shipped)."),
    tensorboard: Path | None = typer.Option(
        None, "--tensorboard", help="Also write the per-epoch scalars as TensorBoard events to DIR (needs the tensorboard extra)."
    ),
) -> None:
    """Train the single-scan student: distilled from a frozen teacher (--teacher), from its own fused-view
    branch (--mode joint), or without distillation (--kd none: the baseline)."""
    from m2s.distill.run import run_distillation
    from m2s.distill.task import StudentConfig
    from m2s.labels import load_label_manifest
    from m2s.train.config import build_config

    cfg = build_config(StudentConfig, config, {
        "epochs": epochs, "optim.batch_size": batch_size, "optim.lr": lr, "backend": backend,
        "device": device, "data.num_workers": workers, "data.max_scans": max_scans, "seed": seed,
        "distill.mode": None if mode is None else mode.value,
    })
    # Which --kd/--mode/--teacher combinations are allowed is TeacherChoice's to say (refused
    # here, before any progress is shown).
    role = "baseline" if TeacherChoice.parse(cfg.distill, teacher, kd).config.is_baseline else "student"
    with training_progress(role) as on_event:
        manifest, result = run_distillation(
            cfg, load_label_manifest(labels), caches=cache, val_caches=val_cache, out=out_dir,
            teacher=teacher, kd=kd, resume=resume, on_event=on_event, tensorboard=tensorboard,
        )
    if result is None:
        out.print(f"[green]up to date:[/] {out_dir} already holds this {role} ({manifest.content_id})")
        return
    out.print(iou_table(f"{role} — validation (best epoch {result.best_epoch})", result.last_val))
    out.print(f"model artifact {manifest.content_id} written to {out_dir}  ({result.scans_per_second:.2f} scans/s)")
