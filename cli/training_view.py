"""Rich rendering of a training run: a progress bar fed by engine events, a final IoU table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.progress import TextColumn
from rich.table import Table

from cli.common import progress_bar
if TYPE_CHECKING:  # the engine imports torch; keep `m2s --help` fast
    from m2s.train.engine import EventCallback


@contextmanager
def training_progress(title: str) -> Iterator[EventCallback]:
    progress = progress_bar(
        f"[bold]{title}[/] epoch {{task.fields[epoch]}}",
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[sps]:.1f} scans/s"),
    )
    task_id = progress.add_task(title, total=1, epoch="-", loss=float("nan"), lr=0.0, sps=0.0)
    started = False

    def on_event(kind: str, payload: dict[str, Any]) -> None:
        nonlocal started
        if kind == "epoch_start":
            progress.reset(task_id, total=payload["batches"], epoch=payload["epoch"], loss=float("nan"), lr=0.0, sps=0.0)
        elif kind == "step":
            if not started:  # shown from the first step on: a run refused before it prints no bar
                progress.start()
                started = True
            progress.update(task_id, advance=1, loss=payload["loss"], lr=payload["lr"], sps=payload["scans_per_s"])
        elif kind == "epoch_end":
            val = payload.get("val")
            msg = f"epoch {payload['epoch']}: train loss {payload['train'].get('loss', float('nan')):.4f}"
            if val:
                msg += f"  val mIoU {100 * val['miou']:.2f}  hard mIoU {100 * val['hard_miou']:.2f}"
            dropped = [f"{v['dropped']}/{v['points']} {k}" for k, v in payload.get("out_of_range", {}).items()]
            if dropped:
                msg += f"  out-of-range points dropped: {', '.join(dropped)}"
            progress.console.print(msg)

    try:
        yield on_event
    finally:
        if started:
            progress.stop()


def iou_table(title: str, val: dict[str, Any] | None) -> Table:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    if not val:
        table.add_row("(no validation)", "-")
        return table
    for name, iou in val["iou"].items():
        table.add_row(name, f"{100 * iou:.2f}")
    table.add_section()
    table.add_row("[bold]mIoU[/]", f"[bold]{100 * val['miou']:.2f}[/]")
    table.add_row("hard-class mIoU", f"{100 * val['hard_miou']:.2f}")
    table.add_row("accuracy", f"{100 * val['accuracy']:.2f}")
    return table
