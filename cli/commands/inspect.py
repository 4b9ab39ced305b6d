"""`m2s inspect`: show an artifact's manifest and lineage, verify its files."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.tree import Tree

from cli.common import err, handle_errors, out
from m2s.artifacts import manifest_path, read_manifest, verify_files
from m2s.errors import ArtifactError


def _lineage(path: Path, depth: int = 0, seen: set[str] | None = None) -> Tree:
    seen = seen if seen is not None else set()
    manifest = read_manifest(path)
    tree = Tree(f"[bold]{manifest.kind}[/] {manifest.content_id}  [dim]{path}[/]")
    for inp in manifest.inputs:
        inp_path = Path(inp.path)
        if inp.kind != "raw-dataset" and manifest_path(inp_path).is_file() and inp.id not in seen and depth < 8:
            seen.add(inp.id)
            try:
                tree.add(_lineage(inp_path, depth + 1, seen))
                continue
            except ArtifactError:
                pass  # shown as a plain reference below
        extra = f" fingerprint {inp.fingerprint[:12]}" if inp.fingerprint else ""
        tree.add(f"[bold]{inp.kind}[/] {inp.id}{extra}  [dim]{inp.path}[/]")
    return tree


@handle_errors
def inspect(
    path: Path = typer.Argument(..., help="Artifact folder (or its manifest.json)."),
    show_config: bool = typer.Option(False, "--config", help="Also print the full resolved config."),
) -> None:
    """Show an artifact's manifest as a table with its lineage; verify file digests (exit 1 on mismatch)."""
    manifest = read_manifest(path)
    folder = manifest_path(path).parent
    table = Table(title=f"{manifest.kind} artifact", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key in ("kind", "content_id", "schema_version", "format_version", "created", "m2s_version"):
        table.add_row(key, str(getattr(manifest, key)))
    table.add_row("files", str(len(manifest.files)))
    for name, value in manifest.metrics.items():
        if isinstance(value, (int, float, str)):
            table.add_row(f"metric: {name}", f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)
    out.print(_lineage(folder))
    if show_config:
        out.print_json(json.dumps(manifest.config))
    problems = verify_files(folder, manifest)
    if problems:
        for p in problems:
            err.print(f"[red]digest check failed:[/] {p}")
        raise ArtifactError(f"{folder}: {len(problems)} file(s) do not match the manifest")
    out.print(f"[green]all {len(manifest.files)} file digests verified[/]")
