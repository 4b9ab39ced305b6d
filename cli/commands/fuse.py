"""`m2s fuse` (stage 1): fuse hard-class instances from neighbouring scans into an HDF5 cache."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.common import handle_errors, out
from m2s.data.semantickitti import parse_sequence_list
from m2s.errors import ConfigError
from m2s.fuse import FuseConfig, FuseProgress, IcpConfig, PlanarConfig, fuse_dataset
from m2s.labels import load_label_manifest


class AlignChoice(str, Enum):
    auto = "auto"
    pose = "pose"
    centroid = "centroid"
    icp = "icp"
    planar = "planar"


def _make_config(**kwargs: object) -> FuseConfig:
    try:
        knobs = {"iterations": kwargs.pop("icp_iterations"), "min_points": kwargs.pop("icp_min_points")}
        return FuseConfig(icp=IcpConfig(**knobs), planar=PlanarConfig(**knobs), **kwargs)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "config"
        raise ConfigError(f"invalid fuse option {where}: {first['msg']}") from None


@handle_errors
def fuse(
    root: Path = typer.Argument(..., help="SemanticKITTI root (the folder holding sequences/)."),
    sequences: str = typer.Option(..., "--sequences", "-s", help="Sequences to fuse, e.g. 00,01 or 0-7."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output cache folder."),
    window: int = typer.Option(4, "--window", "-k", help="Neighbour scans admitted on each side (frames)."),
    future: bool = typer.Option(False, "--future", help="Also fuse from the following scans."),
    align: AlignChoice = typer.Option(AlignChoice.auto, "--align", help="Alignment of fused instances."),
    hard_classes: str | None = typer.Option(
        None, "--hard-classes", help="Comma-separated train-class names (default: the label manifest's)."
    ),
    workers: int = typer.Option(1, "--workers", "-j", help="Sequences fused in parallel (processes)."),
    labels: Path | None = typer.Option(None, "--labels", help="Label manifest YAML (default: shipped)."),
    moving_threshold: float = typer.Option(
        0.5, "--moving-threshold", help="auto: extremes' displacement (m) above which a static-labelled instance moves."
    ),
    icp_iterations: int = typer.Option(10, "--icp-iterations", help="ICP iterations (icp and planar)."),
    icp_min_points: int = typer.Option(
        10, "--icp-min-points", help="Fewer points than this: no ICP (icp: centroid, planar: extremes only)."
    ),
) -> None:
    """Fuse hard-class instances from neighbouring scans into versioned HDF5 caches."""
    label_manifest = load_label_manifest(labels)
    names = [c.strip() for c in hard_classes.split(",") if c.strip()] if hard_classes is not None else None
    cfg = _make_config(
        window=window,
        future=future,
        align=align.value,
        hard_classes=names,
        moving_threshold=moving_threshold,
        icp_iterations=icp_iterations,
        icp_min_points=icp_min_points,
    )
    seq_ids = parse_sequence_list(sequences)

    progress = Progress(
        TextColumn("[bold]seq {task.fields[seq]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeRemainingColumn(),
        console=out,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def on_progress(ev: FuseProgress) -> None:
        if ev.state == "start":
            return  # a sequence's bar appears with its first fused scan: a refused run prints none
        if ev.sequence not in tasks:
            tasks[ev.sequence] = progress.add_task("", total=ev.total or None, seq=ev.sequence, note="")
        note = {"skipped": "[dim]already complete[/]", "done": "[green]done[/]"}.get(ev.state, "")
        progress.update(tasks[ev.sequence], completed=ev.done, total=ev.total or None, note=note)

    with progress:
        result = fuse_dataset(root, out_dir, seq_ids, cfg, label_manifest, workers=workers, on_progress=on_progress)

    m = result.manifest
    if result.up_to_date:
        out.print(f"[green]up to date[/]: {out_dir} already holds this fused cache ({m.content_id}); nothing to do")
    table = Table(
        title=f"fused cache {m.content_id} (align={cfg.align}, window={cfg.window}{', future' if cfg.future else ''})"
    )
    table.add_column("hard class")
    table.add_column("instances", justify="right")
    table.add_column("pts/instance single", justify="right")
    table.add_column("pts/instance fused", justify="right")
    table.add_column("densification", justify="right")
    for name, c in m.metrics["classes"].items():
        table.add_row(
            name,
            str(c["instances"]),
            f"{c['mean_points_single']:.1f}",
            f"{c['mean_points_fused']:.1f}",
            f"x{c['densification']:.2f}",
        )
    out.print(table)
    if not result.up_to_date:
        skipped = (
            f", kept {len(result.skipped)} completed earlier ({', '.join(result.skipped)})" if result.skipped else ""
        )
        out.print(
            f"wrote {len(result.written)} sequence file(s){skipped}: {m.metrics['scans']} scans, "
            f"{m.metrics['rows']} rows, {m.metrics['bytes'] / 2**20:.1f} MiB -> {out_dir}"
        )
