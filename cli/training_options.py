"""The options `m2s train-teacher` and `m2s distill` share, written once.

Each is an ``Annotated`` type both commands use for the same parameter; :class:`TrainingArgs`
collects their values and turns them into config overrides and the library's `RunOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # the library imports torch; keep `m2s --help` fast
    from m2s.train.hooks import Hook
    from m2s.train.run import RunOptions

Cache = Annotated[list[Path], typer.Option("--cache", help="Fused cache(s) of the training sequences.")]
ValCache = Annotated[list[Path], typer.Option("--val-cache", help="Fused cache(s) of the validation sequences.")]
Out = Annotated[Path, typer.Option("--out", help="Output folder (a `model` artifact).")]
Epochs = Annotated[int | None, typer.Option("--epochs", min=1)]
BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1)]
Lr = Annotated[float | None, typer.Option("--lr")]
Backend = Annotated[str | None, typer.Option("--backend", help="auto|torch|minkowski|spconv")]
Device = Annotated[str | None, typer.Option("--device", help="auto|cpu|cuda")]
Workers = Annotated[int | None, typer.Option("--workers", min=0, help="DataLoader worker processes.")]
MaxScans = Annotated[int | None, typer.Option("--max-scans", min=1, help="Train on N scans spread over the cache.")]
Seed = Annotated[int | None, typer.Option("--seed")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue a killed run from its last checkpoint.")]
Labels = Annotated[Path | None, typer.Option("--labels", help="Label manifest YAML (default: shipped).")]
TensorBoard = Annotated[
    Path | None,
    typer.Option(
        "--tensorboard",
        help="Also write the per-epoch scalars as TensorBoard events to DIR (needs the tensorboard extra).",
    ),
]


@dataclass
class TrainingArgs:
    """The shared options' values (the command's own options are not here)."""

    cache: list[Path]
    out_dir: Path
    val_cache: list[Path]
    epochs: int | None
    batch_size: int | None
    lr: float | None
    backend: str | None
    device: str | None
    workers: int | None
    max_scans: int | None
    seed: int | None
    resume: bool
    labels: Path | None
    tensorboard: Path | None

    @classmethod
    def pick(cls, params: dict[str, Any]) -> TrainingArgs:
        """The shared options out of a command's parameters (``locals()``)."""
        return cls(**{f.name: params[f.name] for f in fields(cls)})

    def overrides(self) -> dict[str, Any]:
        """Dotted config keys the options override (None: not given, the config's value stays)."""
        return {
            "epochs": self.epochs, "optim.batch_size": self.batch_size, "optim.lr": self.lr,
            "backend": self.backend, "device": self.device, "data.num_workers": self.workers,
            "data.max_scans": self.max_scans, "seed": self.seed,
        }  # fmt: skip

    def run_options(self, hooks: list[Hook]) -> RunOptions:
        from m2s.train.run import RunOptions

        return RunOptions(
            caches=self.cache, out=self.out_dir, val_caches=self.val_cache, resume=self.resume,
            tensorboard=self.tensorboard, hooks=hooks,
        )  # fmt: skip
