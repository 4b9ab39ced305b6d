"""`m2s train-teacher` (stage 2): a MinkUNet on the fused, denser clouds."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import handle_errors, out
from cli.training_view import iou_table, training_progress


@handle_errors
def train_teacher(
    cache: list[Path] = typer.Option(..., "--cache", help="Fused cache(s) of the training sequences."),
    val_cache: list[Path] = typer.Option([], "--val-cache", help="Fused cache(s) of the validation sequences."),
    out_dir: Path = typer.Option(..., "--out", help="Output folder (a `model` artifact)."),
    config: Path | None = typer.Option(None, "--config", help="Training config YAML (see pipelines/configs)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    lr: float | None = typer.Option(None, "--lr"),
    backend: str | None = typer.Option(None, "--backend", help="auto|torch|minkowski|spconv"),
    device: str | None = typer.Option(None, "--device", help="auto|cpu|cuda"),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DataLoader worker processes."),
    max_scans: int | None = typer.Option(None, "--max-scans", min=1, help="Train on N scans spread over the cache."),
    seed: int | None = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last checkpoint."),
    labels: Path | None = typer.Option(None, "--labels", help="Label manifest YAML (default: shipped)."),
    tensorboard: Path | None = typer.Option(
        None, "--tensorboard", help="Also write the per-epoch scalars as TensorBoard events to DIR (needs the tensorboard extra)."
    ),
) -> None:
    """Train the teacher on the fused blocks (all rows of each scan's block)."""
    from m2s.labels import load_label_manifest
    from m2s.train.config import TrainConfig, build_config
    from m2s.train.run import RunSpec, run_training, teacher_module

    cfg = build_config(TrainConfig, config, {
        "epochs": epochs, "optim.batch_size": batch_size, "optim.lr": lr, "backend": backend,
        "device": device, "data.num_workers": workers, "data.max_scans": max_scans, "seed": seed,
    })
    spec = RunSpec(
        role="teacher", train_view="fused", eval_view="fused", dataset_views=("fused",),
        caches=cache, val_caches=val_cache, out=out_dir, extra_config={}, extra_inputs=[],
    )
    with training_progress("teacher") as on_event:
        manifest, result = run_training(spec, cfg, load_label_manifest(labels), teacher_module, resume=resume, on_event=on_event, tensorboard=tensorboard)
    if result is None:
        out.print(f"[green]up to date:[/] {out_dir} already holds this teacher ({manifest.content_id})")
        return
    out.print(iou_table(f"teacher — validation (best epoch {result.best_epoch})", result.last_val))
    out.print(f"model artifact {manifest.content_id} written to {out_dir}  ({result.scans_per_second:.2f} scans/s)")
