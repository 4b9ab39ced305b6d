"""`m2s distill` (stage 3): a single-scan student, distilled from the teacher or the baseline."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import handle_errors
from cli.training_options import (
    Backend,
    BatchSize,
    Cache,
    Device,
    Epochs,
    Labels,
    Lr,
    MaxScans,
    Out,
    Resume,
    Seed,
    TensorBoard,
    TrainingArgs,
    ValCache,
    Workers,
)  # fmt: skip
from cli.training_view import ProgressHook, report_run
from m2s.distill.choices import KdChoice, ModeChoice


@handle_errors
def distill(
    cache: Cache,
    out_dir: Out,
    teacher: Path | None = typer.Option(
        None, "--teacher", help="Teacher `model` artifact (not needed with --kd none)."
    ),
    val_cache: ValCache = [],  # noqa: B006 (typer reads the default, never mutates it)
    config: Path | None = typer.Option(None, "--config", help="Student config YAML (training + `distill:` section)."),
    kd: KdChoice = typer.Option(
        KdChoice.config, "--kd", help="'config': distillation terms from the config; 'none': baseline student."
    ),
    mode: ModeChoice | None = typer.Option(
        None,
        "--mode",
        help="frozen: learn from the --teacher artifact; joint: one shared-weight net on both views "
        "(the official M2SKD scheme, no teacher artifact). Default: the config's distill.mode.",
    ),
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    backend: Backend = None,
    device: Device = None,
    workers: Workers = None,
    max_scans: MaxScans = None,
    seed: Seed = None,
    resume: Resume = False,
    labels: Labels = None,
    tensorboard: TensorBoard = None,
) -> None:
    """Train the single-scan student: distilled from a frozen teacher (--teacher), from its own fused-view
    branch (--mode joint), or without distillation (--kd none: the baseline)."""
    from m2s.distill.config import TeacherChoice
    from m2s.distill.run import run_distillation
    from m2s.distill.task import StudentConfig
    from m2s.labels import load_label_manifest
    from m2s.train.config import build_config

    args = TrainingArgs.pick(locals())
    cfg = build_config(StudentConfig, config, args.overrides() | {"distill.mode": None if mode is None else mode.value})
    # Which --kd/--mode/--teacher combinations are allowed is TeacherChoice's to say (refused
    # here, before any progress is shown).
    role = "baseline" if TeacherChoice.parse(cfg.distill, teacher, kd).config.is_baseline else "student"
    opts = args.run_options([ProgressHook(role)])
    manifest, result = run_distillation(cfg, load_label_manifest(labels), opts, teacher=teacher, kd=kd)
    report_run(role, out_dir, manifest, result)
