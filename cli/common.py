"""Shared CLI plumbing: consoles, error rendering and exit codes.

Exit codes: 0 success, 1 runtime/data error (one clear line), 2 usage error (typer/click).
A traceback is shown only with `m2s --debug ...`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from m2s.errors import M2SError

F = TypeVar("F", bound=Callable[..., Any])

out = Console()
err = Console(stderr=True)


DEBUG_ENV = "M2S_DEBUG"


def set_debug(enabled: bool) -> None:
    """Record `--debug` for this process (the root callback runs before every subcommand)."""
    if enabled:
        os.environ[DEBUG_ENV] = "1"
    else:
        os.environ.pop(DEBUG_ENV, None)


def is_debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def handle_errors(fn: F) -> F:
    """Turn m2s errors (and a few OS errors) into one red line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (M2SError, OSError) as exc:
            if is_debug():
                raise
            out.file.flush()  # a progress line already on stdout ends before the error line
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps fn's signature at run time


def progress_bar(
    label: str, *middle: ProgressColumn | str, console: Console = out, transient: bool = False
) -> Progress:
    """The one progress-bar layout of the CLI: label, bar, done/total, extra columns, times."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        *middle,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )
