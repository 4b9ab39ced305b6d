"""The training engine shared by `m2s train-teacher` and `m2s distill`.

The engine trains a *training module*: an ``nn.Module`` whose ``forward(batch)`` returns
``(loss, {term: value})`` and whose ``net`` attribute is the segmentation network that is
validated and exported. The teacher wraps one network with the task loss; the distillation
module wraps the student, its adapters and a frozen teacher.

Reproducibility: the only random state is torch's (saved in every checkpoint) and per-sample
numpy generators seeded from (seed, epoch, index), so a resumed CPU run reproduces the
uninterrupted one exactly.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from m2s.errors import ConfigError, M2SError
from m2s.evaluation.metrics import ConfusionAccumulator
from m2s.inference import fill_unpredicted, view_to_sparse
from m2s.io_utils import atomic_path
from m2s.labels import LabelManifest
from m2s.train.config import OptimConfig, TrainConfig
from m2s.train.dataset import ScanDataset, ViewBatch, collate_views
from m2s.train.hooks import FitState, Hook, JsonlLog, StepInfo

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"


class TrainingDiverged(M2SError):
    """A non-finite loss: the run stopped; the last checkpoint is resumable."""


def _batches(loader: DataLoader) -> Iterator[Any]:
    """Iterate a loader; an m2s error raised in a worker process comes back as its own one line.

    torch re-raises a worker's exception as ``type(exc)("Caught X in DataLoader worker ...
    Original Traceback ...")``: the original message is the traceback's last line.
    """
    try:
        yield from loader
    except M2SError as exc:
        text = str(exc)
        if "Original Traceback" not in text:
            raise
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        _, sep, message = last.partition(f"{type(exc).__name__}: ")
        raise type(exc)(message if sep else last) from None


def count_out_of_range(batch: Any, counts: dict[str, list[int]]) -> None:
    """Add the batch's per-view [points dropped outside `point_range`, points read] to `counts`."""
    for sample in batch.samples:
        for name, view in sample.views.items():
            c = counts.setdefault(name, [0, 0])
            c[0] += view.n_original - view.kept.shape[0]
            c[1] += view.n_original


def _all_reduce_counts(counts: dict[str, list[int]], device: torch.device) -> dict[str, list[int]]:
    """Sum per-view [dropped, points] counts over the ranks (every rank has the same views)."""
    names = sorted(counts)
    t = torch.tensor([counts[n] for n in names], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return {n: [int(x) for x in t[i].tolist()] for i, n in enumerate(names)}


# ---- devices and processes -----------------------------------------------------------------
@dataclass
class RunContext:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: str) -> torch.device:
    if pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but CUDA is not available")
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


def setup_run(device_pref: str) -> RunContext:
    """Single process, or one rank of a `torchrun` launch (WORLD_SIZE/RANK/LOCAL_RANK set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return RunContext(device=resolve_device(device_pref))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return RunContext(device=device, rank=rank, world_size=world)


def teardown_run(ctx: RunContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ---- schedule ------------------------------------------------------------------------------
def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then cosine decay (or one-cycle: cosine up to the peak then down)."""
    total = max(total, 1)
    warm = int(round(cfg.warmup_fraction * total))
    if cfg.schedule == "constant":
        return min(1.0, (step + 1) / warm) if warm else 1.0
    if cfg.schedule == "onecycle":
        warm = max(warm, 1)
        if step < warm:
            return 0.04 + 0.96 * (1 - math.cos(math.pi * step / warm)) / 2
        t = (step - warm) / max(total - warm, 1)
        return 1e-3 + (1 - 1e-3) * (1 + math.cos(math.pi * min(t, 1.0))) / 2
    if warm and step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(total - warm, 1)
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def build_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def amp_dtype(cfg: OptimConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "none":
        return None
    return torch.bfloat16 if cfg.amp == "bf16" else torch.float16


# ---- validation ----------------------------------------------------------------------------
@torch.no_grad()
def predict_batch(net: torch.nn.Module, view: ViewBatch, autocast: torch.dtype | None) -> torch.Tensor:
    """Per-kept-point predicted train ids of one batch view."""
    x = view_to_sparse(view)
    with torch.autocast(view.coords.device.type, dtype=autocast, enabled=autocast is not None):
        logits = net(x)
    return logits.argmax(dim=1)[view.point_to_voxel]


@torch.no_grad()
def validate(
    net: torch.nn.Module,
    loader: DataLoader,
    view_name: str,
    labels: LabelManifest,
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> dict[str, Any]:
    """Per-class IoU / mIoU on the ORIGINAL points of each scan (every point gets a prediction)."""
    was_training = net.training
    net.eval()
    acc = ConfusionAccumulator(labels.num_classes, labels.ignored_train_ids)
    for batch in _batches(loader):
        view = batch.views[view_name].to(device)
        point_pred = predict_batch(net, view, autocast).cpu().numpy()
        start = 0
        for s, n in zip(batch.samples, view.points_per_sample, strict=True):
            v = s.views[view_name]
            pred_kept = point_pred[start : start + n]
            start += n
            assert s.original_xyz is not None and s.original_labels is not None
            n_target = s.original_xyz.shape[0]
            on_target = v.kept < n_target  # fused view: metrics on the scan's own points only
            pred = fill_unpredicted(s.original_xyz, v.kept[on_target], pred_kept[on_target])
            acc.update(pred, s.original_labels)
    net.train(was_training)
    scores = acc.result()
    names = labels.train_names
    iou = {names[i]: float(scores.iou[i]) for i in labels.evaluated_train_ids}
    hard = [iou[names[i]] for i in labels.hard_train_ids]
    return {
        "miou": float(scores.miou),
        "hard_miou": float(np.mean(hard)) if hard else float("nan"),
        "accuracy": float(scores.accuracy),
        "iou": iou,
    }


# ---- the trainer ---------------------------------------------------------------------------
@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_miou: float = float("nan")
    last_val: dict[str, Any] | None = None
    scans_per_second: float = float("nan")
    resumed_from_epoch: int | None = None


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        module: torch.nn.Module,
        train_ds: ScanDataset,
        val_ds: ScanDataset | None,
        out_dir: Path,
        labels: LabelManifest,
        ctx: RunContext,
        *,
        eval_view: str,
        hooks: list[Hook] | None = None,
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.labels = labels
        self.out_dir = Path(out_dir)
        self.eval_view = eval_view
        # The artifact's log first, then the caller's hooks; only rank 0 runs any (the other
        # ranks train silently).
        self.hooks: list[Hook] = (
            [JsonlLog(self.out_dir / "log.jsonl", cfg.log_every), *(hooks or [])] if ctx.is_main else []
        )
        self.module = module.to(ctx.device)
        if cfg.sync_bn and ctx.distributed:
            self.module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
        self.wrapped: torch.nn.Module = self.module
        if ctx.distributed:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.module,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.train_ds = train_ds
        self.val_ds = val_ds
        self.sampler: DistributedSampler[int] = DistributedSampler(
            train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed, drop_last=False
        )
        workers = cfg.data.num_workers
        self.train_loader = DataLoader(
            train_ds,
            batch_size=cfg.optim.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_views,
            pin_memory=ctx.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        self.val_loader = (
            DataLoader(
                val_ds,
                batch_size=cfg.data.val_batch_size,
                shuffle=False,
                num_workers=workers,
                collate_fn=collate_views,
            )
            if val_ds is not None
            else None
        )
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the training module has no trainable parameters")
        self.optimizer = build_optimizer(params, cfg.optim)
        self.steps_per_epoch = max(1, math.ceil(len(self.train_loader) / cfg.optim.accumulate))
        total = self.steps_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, total, cfg.optim))
        self.autocast = amp_dtype(cfg.optim, ctx.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast == torch.float16)
        self.ckpt_dir = self.out_dir / CHECKPOINT_DIR
        self.log_path = self.out_dir / "log.jsonl"

    # -- persistence --
    def _state(self, epoch: int, step: int, result: TrainResult) -> dict[str, Any]:
        state: dict[str, Any] = {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "epoch": epoch,
            "step": step,
            "best_epoch": result.best_epoch,
            "best_miou": result.best_miou,
            "history_json": json.dumps(result.history),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self, epoch: int, step: int, result: TrainResult) -> Path:
        path = self.ckpt_dir / LAST_CHECKPOINT
        if self.ctx.is_main:
            with atomic_path(path) as tmp:
                torch.save(self._state(epoch, step, result), tmp)
        return path

    def load_checkpoint(self, result: TrainResult) -> tuple[int, int]:
        path = self.ckpt_dir / LAST_CHECKPOINT
        if not path.is_file():
            raise M2SError(f"--resume: no checkpoint at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: say so instead of a pickle traceback
            raise M2SError(f"{path}: checkpoint cannot be loaded safely ({exc})") from None
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        result.history = json.loads(state["history_json"])
        result.best_epoch = int(state["best_epoch"])
        result.best_miou = float(state["best_miou"])
        vals = [h["val"] for h in result.history if "val" in h]
        result.last_val = vals[-1] if vals else None
        return int(state["epoch"]), int(state["step"])

    def _call(self, method: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, method)(*args)

    # -- the loop --
    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train from scratch (or, `resume`, from the last checkpoint) to the last epoch; the
        hooks are closed whatever happens."""
        try:
            return self._fit(resume)
        finally:
            self._call("close")

    def _fit(self, resume: bool) -> TrainResult:
        torch.manual_seed(self.cfg.seed)
        result = TrainResult()
        start_epoch, step = 0, 0
        if resume:
            start_epoch, step = self.load_checkpoint(result)
            result.resumed_from_epoch = start_epoch
        else:
            # A checkpoint before the first step: a run that diverges at once is still resumable.
            self.save_checkpoint(0, 0, result)
        state = FitState(
            epochs=self.cfg.epochs, start_epoch=start_epoch, batches=len(self.train_loader), result=result,
            epoch=start_epoch, step=step, resumed=resume,
        )  # fmt: skip
        self._call("before_fit", state)
        accum = self.cfg.optim.accumulate
        scan_times: list[float] = []
        for epoch in range(start_epoch, self.cfg.epochs):
            self.module.train()
            self.sampler.set_epoch(epoch)
            self.train_ds.set_epoch(epoch)
            state.epoch, state.is_best = epoch, False
            self._call("before_epoch", state)
            sums: dict[str, float] = {}
            count = 0
            t_epoch = time.perf_counter()
            scans = 0
            self.optimizer.zero_grad(set_to_none=True)
            n_batches = len(self.train_loader)
            dropped: dict[str, list[int]] = {}
            for bi, batch in enumerate(_batches(self.train_loader)):
                self._call("before_step", state)
                count_out_of_range(batch, dropped)
                batch = batch.to(self.ctx.device)
                progress = epoch + bi / max(n_batches, 1)
                with torch.autocast(self.ctx.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    loss, terms = self.wrapped(batch, progress)
                if not torch.isfinite(loss):
                    bad = {k: float(v) for k, v in terms.items()}
                    ckpt = self.ckpt_dir / LAST_CHECKPOINT
                    self._call("on_diverged", state, {"event": "diverged", "epoch": epoch, "step": step, "terms": bad})
                    raise TrainingDiverged(
                        f"non-finite loss at epoch {epoch} step {step} (terms {bad}); the run stopped. "
                        f"Last good checkpoint: {ckpt} — lower the learning rate, then rerun with --resume"
                    )
                self.scaler.scale(loss / accum).backward()
                last_of_epoch = bi + 1 == n_batches
                if (bi + 1) % accum == 0 or last_of_epoch:
                    if self.cfg.optim.grad_clip is not None:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.optim.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                    step += 1
                    state.step = step
                scans += len(batch.samples) * self.ctx.world_size
                count += 1
                values = {"loss": float(loss.detach())} | {k: float(v) for k, v in terms.items()}
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                elapsed = time.perf_counter() - t_epoch
                lr = self.optimizer.param_groups[0]["lr"]
                self._call("after_step", state, StepInfo(bi, values, lr, scans / max(elapsed, 1e-9), last_of_epoch))
            epoch_time = time.perf_counter() - t_epoch
            scan_times.append(scans / max(epoch_time, 1e-9))
            if self.ctx.distributed:  # the counts of every rank's share of the epoch
                dropped = _all_reduce_counts(dropped, self.ctx.device)
            record: dict[str, Any] = {
                "event": "epoch",
                "epoch": epoch,
                "step": step,
                "train": {k: v / max(count, 1) for k, v in sums.items()},
                "scans_per_s": scan_times[-1],
                "seconds": epoch_time,
                # Points outside voxel.point_range are dropped (documented), counted per view.
                "out_of_range": {k: {"dropped": d, "points": n} for k, (d, n) in sorted(dropped.items())},
            }
            is_last = epoch + 1 == self.cfg.epochs
            if self.val_loader is not None and ((epoch + 1) % self.cfg.val_every == 0 or is_last):
                if self.ctx.is_main:
                    val = validate(
                        self.net, self.val_loader, self.eval_view, self.labels, self.ctx.device, self.autocast
                    )
                    record["val"] = val
                    result.last_val = val
                    if not (val["miou"] <= result.best_miou):  # first, or better
                        result.best_miou, result.best_epoch = val["miou"], epoch
                        state.is_best = True
                if self.ctx.distributed:
                    dist.barrier()
            result.history.append(record)
            self._call("after_epoch", state, record)
            self.save_checkpoint(epoch + 1, step, result)
            self._call("after_checkpoint", state, record)
        result.scans_per_second = float(np.median(scan_times)) if scan_times else float("nan")
        self._call("after_fit", state)
        return result

    @property
    def net(self) -> torch.nn.Module:
        return self.module.net  # type: ignore[return-value]  # nn.Module.__getattr__ is typed Tensor | Module
