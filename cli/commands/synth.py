"""`m2s synth`: the embedded synthetic dataset (SemanticKITTI layout)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.progress import TextColumn
from rich.table import Table

from cli.common import handle_errors, out, progress_bar
from m2s.artifacts import Manifest
from m2s.data.semantickitti import parse_sequence_list
from m2s.errors import ConfigError, DataError
from m2s.synth import SynthConfig, existing_dataset, generate_dataset


def _sequence_option(text: str, option: str, allow_none: bool) -> list[str]:
    if allow_none and text.strip().lower() in ("", "none", "-"):
        return []
    try:
        return parse_sequence_list(text)
    except DataError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _summary(manifest: Manifest) -> Table:
    """One column per sequence (few), one row per quantity: fits a narrow terminal."""
    seqs: dict = manifest.metrics.get("sequences", {})
    hard = sorted({name for s in seqs.values() for name in s.get("hard_instances", {})})
    table = Table(title=f"synthetic dataset {manifest.content_id}")
    table.add_column("sequence", style="bold")
    for seq, s in seqs.items():
        table.add_column(seq if s["labelled"] else f"{seq} (test)", justify="right")
    table.add_row("scans", *(str(s["scans"]) for s in seqs.values()))
    table.add_row("mean points/scan", *(f"{s['mean_points']:.0f}" for s in seqs.values()))
    table.add_row("instances", *(str(s["instances"]) for s in seqs.values()))
    for name in hard:
        table.add_row(f"  {name}", *(str(s["hard_instances"].get(name, 0)) for s in seqs.values()))
    return table


@handle_errors
def synth(
    out_dir: Path = typer.Argument(..., metavar="OUT", help="Output root (gets sequences/SS/... and manifest.json)."),
    sequences: str = typer.Option("00,08", "--sequences", help="Labelled sequences, e.g. '00,08' or '0-3'."),
    test_sequences: str = typer.Option(
        "11", "--test-sequences", help="Sequences written without labels (test split); 'none' for none."
    ),
    scans: int = typer.Option(100, "--scans", min=1, max=100_000, help="Scans per sequence (10 Hz)."),
    beams: int = typer.Option(64, "--beams", min=2, max=256, help="Laser beams (64 = HDL-64E)."),
    columns: int = typer.Option(2048, "--columns", min=16, max=16_384, help="Azimuth steps per revolution."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base seed; each sequence derives its own from it."),
    workers: int = typer.Option(1, "--workers", min=1, max=256, help="Parallel generator processes."),
    hard_rate: float = typer.Option(
        1.0,
        "--hard-rate",
        min=0.01,
        max=100.0,
        help="Multiplier on the rates of hard-class things (1 = shares as on real streets).",
    ),
) -> None:
    """Generate synthetic LiDAR sequences in the SemanticKITTI layout (ray-cast HDL-64E-like scans)."""
    seqs = _sequence_option(sequences, "--sequences", allow_none=True)
    tests = _sequence_option(test_sequences, "--test-sequences", allow_none=True)
    try:
        cfg = SynthConfig(
            sequences=seqs,
            test_sequences=tests,
            scans=scans,
            beams=beams,
            columns=columns,
            seed=seed,
            hard_rate=hard_rate,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"invalid synth options: {first['msg']}") from None

    found = existing_dataset(out_dir, cfg)
    if found is not None:
        out.print(f"[green]up to date:[/] {out_dir} already holds dataset {found.content_id}; nothing to do")
        out.print(_summary(found))
        return

    total = scans * len(cfg.all_sequences)
    start = time.perf_counter()
    with progress_bar("[bold]synth[/]", TextColumn("scans")) as bar:
        task = bar.add_task("synth", total=total)
        manifest = generate_dataset(
            out_dir, cfg, progress=lambda done, _total: bar.update(task, completed=done), workers=workers
        )
    elapsed = time.perf_counter() - start
    out.print(_summary(manifest))
    out.print(
        f"[green]wrote[/] {total} scans of {len(cfg.all_sequences)} sequence(s) to {out_dir} "
        f"in {elapsed:.1f} s ({1000 * elapsed / total:.0f} ms/scan); dataset {manifest.content_id}"
    )
