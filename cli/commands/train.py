"""`m2s train-teacher` (stage 2): a MinkUNet on the fused, denser clouds."""

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


@handle_errors
def train_teacher(
    cache: Cache,
    out_dir: Out,
    val_cache: ValCache = [],  # noqa: B006 (typer reads the default, never mutates it)
    config: Path | None = typer.Option(None, "--config", help="Training config YAML (see pipelines/configs)."),
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
    """Train the teacher on the fused blocks (all rows of each scan's block)."""
    from m2s.labels import load_label_manifest
    from m2s.train.config import TrainConfig, build_config
    from m2s.train.run import run_teacher

    args = TrainingArgs.pick(locals())
    cfg = build_config(TrainConfig, config, args.overrides())
    manifest, result = run_teacher(cfg, load_label_manifest(labels), args.run_options([ProgressHook("teacher")]))
    report_run("teacher", out_dir, manifest, result)
