"""`m2s evaluate` (stage 4): official SemanticKITTI metrics, side-by-side comparison, benchmark export."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import TextColumn
from rich.table import Table

from cli.choices import CheckpointChoice
from cli.common import err, handle_errors, out, progress_bar
from m2s.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from m2s.evaluation import EvaluationReport, ScanSource


class InputChoice(str, Enum):
    auto = "auto"
    single = "single"
    fused = "fused"


class BackendChoice(str, Enum):
    auto = "auto"
    torch = "torch"
    minkowski = "minkowski"
    spconv = "spconv"


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _resolve_device(device: DeviceChoice) -> str:
    if device is not DeviceChoice.auto:
        return device.value
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if unit == "%" else f"{value:.2f}"


def _delta(value: float | None, improved: bool | None, unit: str) -> str:
    if value is None:
        return "–"
    text = f"{value:+.1f}" if unit == "%" else f"{value:+.2f}"
    if improved is None:
        return f"[dim]{text}[/]"
    return f"[green]{text}[/]" if improved else f"[red]{text}[/]"


def render_table(report: EvaluationReport) -> Table:
    """Side-by-side table: IoU per class and summaries per model, with the difference to the first
    model (green: better, red: worse; for IoU that is the sign, for ms/scan lower is better)."""
    from m2s.evaluation import comparison_rows

    names = report.model_names()
    table = Table(
        title="SemanticKITTI evaluation (IoU %, official definitions)",
        caption=f"Δ: difference to {names[0]} (green better, red worse)" if len(names) > 1 else None,
    )
    table.add_column("class / metric", style="bold")
    for i, n in enumerate(names):
        table.add_column(n, justify="right")
        if i:
            table.add_column(f"Δ {n}", justify="right")
    rows = comparison_rows(report)
    for r in rows:
        if r.metric == "mIoU":
            table.add_section()
        label = f"[red]{r.metric}[/] [dim](hard)[/]" if r.hard and r.kind == "class" else r.metric
        if r.no_ground_truth:
            label += " [dim](no GT)[/]"
        cells = [label]
        for i, v in enumerate(r.values):
            cells.append(_fmt(v, r.unit))
            if i:
                cells.append(_delta(r.deltas[i], r.improved(i), r.unit))
        table.add_row(*cells)
    return table


@handle_errors
def evaluate(
    models: list[Path] = typer.Argument(
        ..., help="Model artifact folder(s); the first is the reference for differences."
    ),
    data: Path | None = typer.Option(None, "--data", help="SemanticKITTI-layout root (raw single scans)."),
    sequences: str | None = typer.Option(
        None, "--sequences", help="With --data: sequences, e.g. '08' or '11-21' (default: the manifest's valid split)."
    ),
    cache: Path | None = typer.Option(None, "--cache", help="Fused cache to evaluate on (instead of --data)."),
    input_kind: InputChoice = typer.Option(
        InputChoice.auto,
        "--input",
        help="With --cache: feed models the single scan or the fused block (auto: what each model was trained on).",
    ),
    out_dir: Path = typer.Option(..., "--out", help="Output folder (an `evaluation` artifact)."),
    export_labels: bool = typer.Option(
        False,
        "--export-labels",
        help="Also write predictions in the benchmark submission layout and zip them as submission.zip, "
        "checked like the official validate_submission.py (works for unlabeled test sequences).",
    ),
    description: str | None = typer.Option(
        None,
        "--description",
        help="With --export-labels: the text of the zip's description.txt (default: model name and artifact id).",
    ),
    backend: BackendChoice = typer.Option(BackendChoice.auto, "--backend", help="Sparse-convolution backend."),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, "--device", help="Inference device."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Scans per forward pass (default: 4 on cuda, 1 on cpu)."
    ),
    labels_path: Path | None = typer.Option(
        None, "--labels", help="Label manifest YAML (default: the shipped SemanticKITTI one)."
    ),
    max_scans: int | None = typer.Option(
        None, "--max-scans", min=1, help="Evaluate only the first N scans (smoke tests)."
    ),
    checkpoint: CheckpointChoice = typer.Option(
        CheckpointChoice.best, "--checkpoint", help="Which checkpoint of each model artifact to load."
    ),
) -> None:
    """Evaluate model(s) with the official SemanticKITTI metrics (mIoU, per-class IoU, accuracy), plus
    hard-class mIoU, IoU by distance and speed; writes metrics.json, a CSV and plots."""
    if (data is None) == (cache is None):
        raise typer.BadParameter("give exactly one of --data ROOT or --cache FUSED_CACHE")
    if data is not None and input_kind is InputChoice.fused:
        raise typer.BadParameter("--input fused needs --cache (raw scans are single-scan input)")
    if cache is not None and sequences is not None:
        raise typer.BadParameter("--sequences applies to --data; a fused cache evaluates the scans it holds")
    if description is not None and not export_labels:
        raise typer.BadParameter("--description is the text of the submission zip: it needs --export-labels")

    # Heavy imports only when the command runs, so `m2s --help` stays fast.
    from m2s.artifacts import check_output_folder, load_artifact
    from m2s.data.semantickitti import parse_sequence_list
    from m2s.evaluation import EvaluationConfig, FusedCacheSource, KittiScanSource, ModelUnderTest, run_evaluation
    from m2s.labels import load_label_manifest

    # Argument checks first, cheapest first: every folder must be the kind of artifact it stands for.
    for path in models:
        load_artifact(path, "model")
    if cache is not None:
        load_artifact(cache, "fused-cache")
    check_output_folder(out_dir, "evaluation")
    labels = load_label_manifest(labels_path)
    source: ScanSource
    if data is not None:
        seqs = parse_sequence_list(sequences) if sequences else labels.split_sequences("valid")
        source = KittiScanSource(data, seqs, labels)
    else:
        assert cache is not None  # exactly one of --data / --cache, checked above
        try:
            from m2s.fuse import open_fused_cache
        except ImportError as exc:
            raise ConfigError(f"fused-cache reading is unavailable in this build: {exc}") from None
        source = FusedCacheSource(open_fused_cache(cache), cache, labels)

    try:
        from m2s.inference import Predictor, load_model_artifact
    except ImportError as exc:
        raise BackendUnavailable(f"model inference is unavailable in this build: {exc}") from None
    from m2s.artifacts import as_input

    dev = _resolve_device(device)
    entries = []
    for path in models:
        loaded = load_model_artifact(path, backend=backend.value, device=dev, checkpoint=checkpoint.value)
        entries.append(
            ModelUnderTest(
                name=loaded.name,
                predictor=Predictor(loaded),
                label_digest=loaded.label_digest,
                voxel_size=loaded.voxel_size,
                input_kind=loaded.input_kind,
                artifact=as_input(path, loaded.manifest),
            )
        )
    config = EvaluationConfig(
        input=input_kind.value,
        batch_size=batch_size or (4 if dev == "cuda" else 1),
        max_scans=max_scans,
        export_labels=export_labels,
        description=description,
    )
    with progress_bar("[bold]evaluating[/]", TextColumn("scans"), console=err, transient=True) as bar:
        task = bar.add_task("evaluate", total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        outcome = run_evaluation(entries, source, labels, out_dir, config, progress=on_progress)

    report = outcome.report
    if any(m.scans for m in report.models.values()):
        out.print(render_table(report))
    if report.unlabeled_sequences:
        out.print(
            f"[yellow]sequence(s) {', '.join(report.unlabeled_sequences)} have no labels: predicted"
            f"{' and exported' if export_labels else ''}, not scored[/]"
        )
    for name, m in report.models.items():
        if m.exported_to:
            out.print(f"predictions of {name}: {out_dir / m.exported_to} ({m.scans_predicted} scans)")
    for check in outcome.submissions.values():
        style = "green" if check.full else "yellow"
        out.print(f"[{style}]{check.path}: valid benchmark layout, {check.summary()}[/]")
    out.print(f"[green]evaluation {outcome.manifest.content_id} written to {out_dir}[/]")
