"""A training run end to end: inputs checked, engine run, `model` artifact written.

Shared by `m2s train-teacher` (the supervised module on fused blocks) and `m2s distill` (the
distillation module on single scans). The artifact folder holds:

    manifest.json                 kind "model": architecture, voxel config, label digest, inputs
    weights/best.safetensors      the network's weights at the best validation mIoU
    weights/last.safetensors      the network's weights after the last epoch
    checkpoints/last.pt           full training state for --resume (tensors only, weights_only)
    log.jsonl                     one JSON object per logged step and per epoch
    plots/training.png            each loss term and validation mIoU / hard mIoU per epoch
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from m2s.artifacts import (
    ArtifactInput,
    Manifest,
    as_input,
    check_output_folder,
    describe_files,
    existing_artifact,
    load_artifact,
    new_manifest,
    readable_manifest,
    write_manifest,
)
from m2s.errors import ConfigError, M2SError
from m2s.fuse import FusedCache, open_fused_cache
from m2s.inference import view_to_sparse, weights_file
from m2s.io_utils import atomic_path
from m2s.labels import LabelManifest
from m2s.models import build_model
from m2s.train.config import TrainConfig
from m2s.train.dataset import Batch, ScanDataset, ViewName
from m2s.train.engine import CHECKPOINT_DIR, LAST_CHECKPOINT, EventCallback, Trainer, TrainResult, setup_run, teardown_run
from m2s.train.losses import SegmentationLoss, frequency_class_weights
from m2s.train.plots import TRAINING_PLOT, plot_training
from m2s.train.tensorboard import TensorBoardLog, require_tensorboard

Role = Literal["teacher", "student", "baseline"]


class SupervisedModule(torch.nn.Module):
    """The network plus the task loss on one view (`fused` for the teacher)."""

    def __init__(self, net: torch.nn.Module, loss: SegmentationLoss, view: ViewName) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.view = view

    def forward(self, batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        v = batch.views[self.view]
        logits = self.net(view_to_sparse(v))
        return task_loss(self.loss, logits, v)


def task_loss(loss: SegmentationLoss, voxel_logits: torch.Tensor, view: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if loss.cfg.level != "points":
        return loss(voxel_logits, view.voxel_labels)
    if loss.cfg.appended == "own":
        # The scan's own points carry the task loss; the appended ones only a weighted CE
        # (none in a single view or a block fusion added nothing to: then that term is 0).
        own = torch.nonzero(view.point_own).squeeze(1)
        appended = torch.nonzero(~view.point_own).squeeze(1)
        total, terms = loss(voxel_logits.index_select(0, view.point_to_voxel.index_select(0, own)), view.point_labels[own])
        extra = loss.cross_entropy(
            voxel_logits.index_select(0, view.point_to_voxel.index_select(0, appended)), view.point_labels[appended]
        )
        terms["ce_appended"] = (loss.cfg.appended_ce_weight * extra).detach()
        return total + loss.cfg.appended_ce_weight * extra, terms
    # index_select, not `logits[idx]`: its backward (index_add_) is deterministic on CPU,
    # while advanced indexing accumulates duplicate indices in a thread-dependent order.
    return loss(voxel_logits.index_select(0, view.point_to_voxel), view.point_labels)


def check_run_folders(caches: list[Path], val_caches: list[Path], out: Path, teacher: Path | None = None) -> None:
    """Argument checks, before any file is hashed or read: every --cache/--val-cache folder is a
    fused cache, a --teacher a model, and --out holds no artifact of another kind."""
    for path in [*caches, *val_caches]:
        load_artifact(path, "fused-cache")
    if teacher is not None:
        load_artifact(teacher, "model")
    check_output_folder(out, "model")


def open_caches(paths: list[Path], labels: LabelManifest, what: str) -> list[FusedCache]:
    """Open fused caches, verifying every sequence file's sha256 (one line naming a corrupted file)."""
    caches = [open_fused_cache(p, verify=True) for p in paths]
    digest = labels.digest()
    for c in caches:
        if c.label_digest != digest:
            raise ConfigError(
                f"{what} cache {c.path} was fused with a different label map (digest {c.label_digest[:12]}) "
                f"than the one in use ({digest[:12]}); re-fuse it or pass the matching --labels"
            )
    return caches


def save_weights(path: Path, net: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def class_weights_for(cfg: TrainConfig, ds: ScanDataset, view: ViewName) -> tuple[np.ndarray | None, list[int] | None]:
    spec = cfg.loss.class_weights
    if spec == "none":
        return None, None
    if isinstance(spec, list):
        if len(spec) != ds.labels.num_classes:
            raise ConfigError(f"loss.class_weights has {len(spec)} values; expected {ds.labels.num_classes}")
        return np.asarray(spec, dtype=np.float32), None
    counts = ds.class_frequencies(view, cfg.loss.frequency_scans)
    return frequency_class_weights(counts, cfg.loss.max_class_weight), counts.tolist()


@dataclass
class RunSpec:
    """What a training run is: role, view trained on, inputs and the extra config it carries."""

    role: Role
    train_view: ViewName
    eval_view: ViewName
    dataset_views: tuple[ViewName, ...]
    caches: list[Path]
    val_caches: list[Path]
    out: Path
    extra_config: dict[str, Any]
    extra_inputs: list[ArtifactInput]


def run_training(
    spec: RunSpec,
    cfg: TrainConfig,
    labels: LabelManifest,
    make_module: Callable[[torch.nn.Module, SegmentationLoss, list[FusedCache]], torch.nn.Module],
    *,
    resume: bool = False,
    on_event: EventCallback | None = None,
    tensorboard: Path | None = None,
) -> tuple[Manifest, TrainResult | None]:
    """Train and write the `model` artifact; a finished identical run is a no-op.

    With `tensorboard`, the per-epoch scalars of `plots/training.png` also go to TensorBoard
    events in that folder (for a finished run: its recorded epochs); without the optional
    package that is refused before anything else.

    Checked before anything is computed or written, cheapest first: the kind of every input
    folder and of `--out`, then the inputs' content (sha256 of every cache file)."""
    if tensorboard is not None:
        require_tensorboard()
    check_run_folders(spec.caches, spec.val_caches, spec.out)
    caches = open_caches(spec.caches, labels, "training")
    val_caches = open_caches(spec.val_caches, labels, "validation") if spec.val_caches else []
    hard_raw = sorted({int(x) for c in caches for x in c.hard_raw_ids})
    train_cfg = cfg.model_dump(mode="json")
    # Settings that cannot change the trained weights stay out of the content id, so rerunning
    # with more loader workers or another log interval is still a no-op.
    runtime = {"num_workers": train_cfg["data"].pop("num_workers"), "log_every": train_cfg.pop("log_every")}
    config = {
        "role": spec.role,
        "input": spec.train_view,
        "train": train_cfg,
        "model": cfg.model.model_dump(mode="json"),
        "voxel": cfg.voxel.model_dump(mode="json"),
        "label_digest": labels.digest(),
        "class_names": labels.train_names,
        "hard_raw_ids": hard_raw,
        **spec.extra_config,
    }
    inputs = [as_input(c.path, c.manifest) for c in caches]
    inputs += [ArtifactInput(kind="fused-cache", id=c.content_id, path=str(c.path)) for c in val_caches]
    inputs += spec.extra_inputs
    manifest = new_manifest("model", config, inputs)
    out = spec.out
    done = existing_artifact(out, "model", manifest.content_id)
    if done is not None and not resume:
        if tensorboard is not None:
            _write_tensorboard(tensorboard, done.metrics.get("epochs", []))
        return done, None
    ckpt = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    prior = readable_manifest(out) if done is None else None
    if prior is not None and prior.content_id != manifest.content_id:
        # A finished model of another run: resuming its checkpoint would mix two configs.
        raise M2SError(
            f"{out} holds another finished model (content id {prior.content_id[:12]}: a different config, "
            f"inputs or m2s version than this run's {manifest.content_id[:12]}); choose a new --out or remove it"
        )
    if ckpt.exists() and not resume:
        raise M2SError(f"{out} holds an unfinished run; continue it with --resume or choose a new --out")
    if resume and not ckpt.exists():
        raise M2SError(f"--resume: {out} has no checkpoint to resume from")

    ctx = setup_run(cfg.device)
    tb = TensorBoardLog(tensorboard) if (tensorboard is not None and ctx.is_main) else None

    def events(kind: str, payload: dict[str, Any]) -> None:
        if on_event is not None:
            on_event(kind, payload)
        if tb is not None:
            if kind == "start":  # a resumed run: the epochs before the checkpoint
                for record in payload.get("history", []):
                    tb.epoch(record)
            elif kind == "epoch_end":
                tb.epoch(payload)

    try:
        torch.manual_seed(cfg.seed)
        train_ds = ScanDataset(
            caches, labels, cfg.voxel, spec.dataset_views, augment=cfg.augment, seed=cfg.seed, max_scans=cfg.data.max_scans
        )
        val_ds = (
            ScanDataset(val_caches, labels, cfg.voxel, (spec.eval_view,), max_scans=cfg.data.val_max_scans, keep_original=True)
            if val_caches
            else None
        )
        own_rows = cfg.loss.frequency_view == "single" or cfg.loss.appended == "own"
        freq_view: ViewName = "single" if own_rows else spec.train_view
        weights, counts = class_weights_for(cfg, train_ds, freq_view)
        net = build_model(cfg.model, cfg.backend)
        loss = SegmentationLoss(cfg.loss, weights)
        module = make_module(net, loss, caches)
        # Created only now: a run refused while reading its data (class frequencies) leaves no folder.
        out.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(cfg, module, train_ds, val_ds, out, labels, ctx, eval_view=spec.eval_view, on_event=events)

        def on_best(epoch: int) -> None:
            save_weights(out / weights_file("best"), trainer.net)

        result = trainer.fit(resume=resume, on_best=on_best)
        if ctx.is_main:
            save_weights(out / weights_file("last"), trainer.net)
            if not (out / weights_file("best")).exists():  # no validation set: best = last
                save_weights(out / weights_file("best"), trainer.net)
            plot_training(result.history, out / TRAINING_PLOT, title=f"{spec.role}: {out.name}")
            files = [weights_file("best"), weights_file("last"), f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT}", "log.jsonl", TRAINING_PLOT]
            manifest.files = describe_files(out, files)
            manifest.metrics = {
                "best_epoch": result.best_epoch,
                "best_miou": result.best_miou,
                "final_val": result.last_val,
                "scans_per_second_median": result.scans_per_second,
                "class_weights": None if weights is None else [float(w) for w in weights],
                "class_point_counts": counts,
                "epochs": [{k: v for k, v in h.items() if k != "event"} for h in result.history],
                "runtime": runtime,
            }
            write_manifest(out, manifest)
        return manifest, result
    finally:
        if tb is not None:
            tb.close()
        teardown_run(ctx)


def _write_tensorboard(log_dir: Path, history: list[dict[str, Any]]) -> None:
    tb = TensorBoardLog(log_dir)
    try:
        for record in history:
            tb.epoch(record)
    finally:
        tb.close()


def teacher_module(net: torch.nn.Module, loss: SegmentationLoss, caches: list[FusedCache]) -> torch.nn.Module:
    return SupervisedModule(net, loss, "fused")
