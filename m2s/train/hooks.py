"""Hooks of the training loop (the shape of Pointcept's ``HookBase``): what happens around the
optimisation - logging, TensorBoard, best weights, progress, timing - is a hook, not code in
the loop.

:class:`m2s.train.engine.Trainer` calls every hook, in list order, at fixed points with typed
arguments; a hook overrides only the methods it needs. Hooks run on the main rank only. The
trainer always runs :class:`JsonlLog` first (the artifact's ``log.jsonl``); `run_training`
adds :class:`BestWeights` and, with ``--tensorboard``, :class:`TensorBoardHook`; the CLI adds its
progress bar; a benchmark adds :class:`StepTimer`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m2s.io_utils import atomic_path

if TYPE_CHECKING:  # torch stays out of this module's import: the CLI subclasses Hook
    import torch

    from m2s.train.engine import TrainResult


@dataclass
class FitState:
    """Where a fit is: what every hook method receives."""

    epochs: int  # the schedule's total
    start_epoch: int  # 0, or the epoch a resumed run continues with
    batches: int  # per epoch (this rank)
    result: TrainResult
    epoch: int = 0
    step: int = 0  # optimizer steps taken so far
    resumed: bool = False
    is_best: bool = False  # the epoch just validated is the best so far (in after_epoch)


@dataclass
class StepInfo:
    """One training batch, after its backward (and optimizer step, when it made one)."""

    batch: int  # index within the epoch
    values: dict[str, float]  # "loss" and every loss term
    lr: float
    scans_per_s: float
    last_of_epoch: bool


class Hook:
    """Base class: every method is a no-op."""

    def before_fit(self, state: FitState) -> None:
        """Once, before the first epoch (after a resumed run's checkpoint is loaded)."""

    def before_epoch(self, state: FitState) -> None:
        """At the start of every epoch."""

    def before_step(self, state: FitState) -> None:
        """Before every training batch."""

    def after_step(self, state: FitState, step: StepInfo) -> None:
        """After every training batch."""

    def after_epoch(self, state: FitState, record: dict[str, Any]) -> None:
        """After every epoch (validated when due), before its checkpoint is written."""

    def after_checkpoint(self, state: FitState, record: dict[str, Any]) -> None:
        """After the epoch's checkpoint: a run stopped here resumes with the next epoch."""

    def after_fit(self, state: FitState) -> None:
        """Once, after the last epoch."""

    def on_diverged(self, state: FitState, record: dict[str, Any]) -> None:
        """A non-finite loss stopped the run (the trainer raises right after)."""

    def close(self) -> None:
        """Always, when the fit ends (also on an error): release files and writers."""


class JsonlLog(Hook):
    """`log.jsonl`: a line per logged step (every `log_every` steps and each epoch's last), one
    per epoch, one for a divergence. A resumed run first drops the lines a killed run wrote after
    its last checkpoint; a fresh run starts a new file."""

    def __init__(self, path: Path, log_every: int) -> None:
        self.path = Path(path)
        self.log_every = log_every

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def before_fit(self, state: FitState) -> None:
        if not state.resumed:
            if self.path.exists():
                self.path.unlink()
            return
        if not self.path.is_file():
            return
        kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= state.step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(k + "\n" for k in kept))

    def after_step(self, state: FitState, step: StepInfo) -> None:
        if state.step % self.log_every == 0 or step.last_of_epoch:
            self.write({"event": "step", "epoch": state.epoch, "step": state.step, "lr": step.lr, **step.values})

    def after_epoch(self, state: FitState, record: dict[str, Any]) -> None:
        self.write(record)

    def on_diverged(self, state: FitState, record: dict[str, Any]) -> None:
        self.write(record)


def save_weights(path: Path, net: torch.nn.Module) -> None:
    """The network's weights as safetensors (atomic)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


class BestWeights(Hook):
    """`weights/best.safetensors` at every new best validation mIoU; after the fit
    `weights/last.safetensors`, and best = last when nothing was validated."""

    def __init__(self, net: torch.nn.Module, best: Path, last: Path) -> None:
        self.net = net
        self.best = Path(best)
        self.last = Path(last)

    def after_epoch(self, state: FitState, record: dict[str, Any]) -> None:
        if state.is_best:
            save_weights(self.best, self.net)

    def after_fit(self, state: FitState) -> None:
        save_weights(self.last, self.net)
        if not self.best.exists():  # no validation set: best = last
            save_weights(self.best, self.net)


class TensorBoardHook(Hook):
    """`--tensorboard DIR`: each epoch's scalars (a resumed run also writes its earlier epochs)."""

    def __init__(self, log_dir: Path) -> None:
        from m2s.train.tensorboard import TensorBoardLog

        self.log = TensorBoardLog(log_dir)

    def before_fit(self, state: FitState) -> None:
        for record in state.result.history:  # a resumed run: the epochs before the checkpoint
            self.log.epoch(record)

    def after_checkpoint(self, state: FitState, record: dict[str, Any]) -> None:
        self.log.epoch(record)

    def close(self) -> None:
        self.log.close()


@dataclass
class StepTimer(Hook):
    """Wall time of every training step (seconds), e.g. for a benchmark."""

    seconds: list[float] = field(default_factory=list)
    _t0: float = 0.0

    def before_step(self, state: FitState) -> None:
        self._t0 = time.perf_counter()

    def after_step(self, state: FitState, step: StepInfo) -> None:
        self.seconds.append(time.perf_counter() - self._t0)
