"""Rich rendering of a training run: a progress bar (a training-loop hook), a final IoU table."""

from __future__ import annotations

from typing import Any

from rich.progress import TextColumn
from rich.table import Table

from cli.common import progress_bar
from m2s.train.hooks import FitState, Hook, StepInfo


class ProgressHook(Hook):
    """The bar of the current epoch (shown from the first step on: a run refused before it prints
    no bar) and one line per finished epoch."""

    def __init__(self, title: str) -> None:
        self.progress = progress_bar(
            f"[bold]{title}[/] epoch {{task.fields[epoch]}}",
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[sps]:.1f} scans/s"),
        )
        self.task_id = self.progress.add_task(title, total=1, epoch="-", loss=float("nan"), lr=0.0, sps=0.0)
        self.started = False

    def before_epoch(self, state: FitState) -> None:
        self.progress.reset(self.task_id, total=state.batches, epoch=state.epoch, loss=float("nan"), lr=0.0, sps=0.0)

    def after_step(self, state: FitState, step: StepInfo) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        self.progress.update(self.task_id, advance=1, loss=step.values["loss"], lr=step.lr, sps=step.scans_per_s)

    def after_checkpoint(self, state: FitState, record: dict[str, Any]) -> None:
        val = record.get("val")
        msg = f"epoch {record['epoch']}: train loss {record['train'].get('loss', float('nan')):.4f}"
        if val:
            msg += f"  val mIoU {100 * val['miou']:.2f}  hard mIoU {100 * val['hard_miou']:.2f}"
        dropped = [f"{v['dropped']}/{v['points']} {k}" for k, v in record.get("out_of_range", {}).items()]
        if dropped:
            msg += f"  out-of-range points dropped: {', '.join(dropped)}"
        self.progress.console.print(msg)

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


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


def report_run(role: str, out_dir: Any, manifest: Any, result: Any) -> None:
    """The end of a training command: up to date, or the validation table and the artifact."""
    from cli.common import out

    if result is None:
        out.print(f"[green]up to date:[/] {out_dir} already holds this {role} ({manifest.content_id})")
        return
    out.print(iou_table(f"{role} — validation (best epoch {result.best_epoch})", result.last_val))
    out.print(f"model artifact {manifest.content_id} written to {out_dir}  ({result.scans_per_second:.2f} scans/s)")
