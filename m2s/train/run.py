"""A training run end to end: plan -> build -> fit(hooks) -> manifest.

Shared by `m2s train-teacher` (:func:`run_teacher`, the supervised module on fused blocks) and
`m2s distill` (:func:`m2s.distill.run.run_distillation`, the distillation module on single
scans), both through :func:`run_training`. The artifact folder holds:

    manifest.json                 kind "model": architecture, voxel config, label digest, inputs
    weights/best.safetensors      the network's weights at the best validation mIoU
    weights/last.safetensors      the network's weights after the last epoch
    checkpoints/last.pt           full training state for --resume (tensors only, weights_only)
    log.jsonl                     one JSON object per logged step and per epoch
    plots/training.png            each loss term and validation mIoU / hard mIoU per epoch
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
from m2s.inference import weights_file
from m2s.labels import LabelManifest
from m2s.models import build_model
from m2s.train.config import TrainConfig
from m2s.train.dataset import ScanDataset, ViewName
from m2s.train.engine import CHECKPOINT_DIR, LAST_CHECKPOINT, RunContext, Trainer, TrainResult, setup_run, teardown_run
from m2s.train.hooks import BestWeights, Hook, TensorBoardHook, save_weights
from m2s.train.losses import SegmentationLoss
from m2s.train.plots import TRAINING_PLOT, plot_training
from m2s.train.task import SupervisedModule, class_weights_for, task_loss, teacher_module
from m2s.train.tensorboard import TensorBoardLog, require_tensorboard

# Older import paths (m2s.train.run was the catch-all): the supervised task and weight saving.
__all__ = [
    "BuiltRun",
    "RunOptions",
    "RunPlan",
    "RunSpec",
    "SupervisedModule",
    "build_run",
    "class_weights_for",
    "plan_run",
    "run_teacher",
    "run_training",
    "save_weights",
    "task_loss",
    "teacher_module",
    "write_model_manifest",
]

Role = Literal["teacher", "student", "baseline"]


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


@dataclass
class RunSpec:
    """What kind of training run this is: role, the views trained and validated on, and what
    the stage adds to the model's config and inputs."""

    role: Role
    train_view: ViewName
    eval_view: ViewName
    dataset_views: tuple[ViewName, ...]
    extra_config: dict[str, Any] = field(default_factory=dict)
    extra_inputs: list[ArtifactInput] = field(default_factory=list)


@dataclass
class RunOptions:
    """What a training command says beyond its config (the options train-teacher and distill
    share): inputs, output folder, resume, TensorBoard and any extra hooks."""

    caches: list[Path]
    out: Path
    val_caches: list[Path] = field(default_factory=list)
    resume: bool = False
    tensorboard: Path | None = None
    hooks: list[Hook] = field(default_factory=list)


@dataclass
class RunPlan:
    """A run checked and identified, nothing computed yet: its opened caches, the manifest it
    will write (content id) and, for an identical finished run, that run's manifest."""

    spec: RunSpec
    cfg: TrainConfig
    labels: LabelManifest
    opts: RunOptions
    caches: list[FusedCache]
    val_caches: list[FusedCache]
    manifest: Manifest
    runtime: dict[str, Any]
    done: Manifest | None


@dataclass
class BuiltRun:
    """Datasets, network, loss and trainer of a planned run, with the class weights it uses."""

    trainer: Trainer
    class_weights: np.ndarray | None
    class_counts: list[int] | None


ModuleFactory = Callable[[torch.nn.Module, SegmentationLoss, list[FusedCache]], torch.nn.Module]


def plan_run(spec: RunSpec, cfg: TrainConfig, labels: LabelManifest, opts: RunOptions) -> RunPlan:
    """Check the inputs, identify the run, apply the resume policy. Checked before anything is
    computed or written, cheapest first: the kind of every input folder and of `--out`, then the
    inputs' content (sha256 of every cache file)."""
    if opts.tensorboard is not None:
        require_tensorboard()
    check_run_folders(opts.caches, opts.val_caches, opts.out)
    caches = open_caches(opts.caches, labels, "training")
    val_caches = open_caches(opts.val_caches, labels, "validation") if opts.val_caches else []
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
    out = opts.out
    done = existing_artifact(out, "model", manifest.content_id)
    plan = RunPlan(spec, cfg, labels, opts, caches, val_caches, manifest, runtime, done)
    if done is not None and not opts.resume:
        return plan
    ckpt = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    prior = readable_manifest(out) if done is None else None
    if prior is not None and prior.content_id != manifest.content_id:
        # A finished model of another run: resuming its checkpoint would mix two configs.
        raise M2SError(
            f"{out} holds another finished model (content id {prior.content_id[:12]}: a different config, "
            f"inputs or m2s version than this run's {manifest.content_id[:12]}); choose a new --out or remove it"
        )
    if ckpt.exists() and not opts.resume:
        raise M2SError(f"{out} holds an unfinished run; continue it with --resume or choose a new --out")
    if opts.resume and not ckpt.exists():
        raise M2SError(f"--resume: {out} has no checkpoint to resume from")
    return plan


def build_run(plan: RunPlan, make_module: ModuleFactory, ctx: RunContext) -> BuiltRun:
    """Datasets, class weights, network, training module and trainer with its hooks."""
    cfg, spec, labels, out = plan.cfg, plan.spec, plan.labels, plan.opts.out
    torch.manual_seed(cfg.seed)
    train_ds = ScanDataset(
        plan.caches,
        labels,
        cfg.voxel,
        spec.dataset_views,
        augment=cfg.augment,
        seed=cfg.seed,
        max_scans=cfg.data.max_scans,
    )
    val_ds = (
        ScanDataset(
            plan.val_caches, labels, cfg.voxel, (spec.eval_view,), max_scans=cfg.data.val_max_scans, keep_original=True
        )
        if plan.val_caches
        else None
    )
    own_rows = cfg.loss.frequency_view == "single" or cfg.loss.appended == "own"
    freq_view: ViewName = "single" if own_rows else spec.train_view
    weights, counts = class_weights_for(cfg, train_ds, freq_view)
    net = build_model(cfg.model, cfg.backend)
    loss = SegmentationLoss(cfg.loss, weights)
    module = make_module(net, loss, plan.caches)
    # Created only now: a run refused while reading its data (class frequencies) leaves no folder.
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, module, train_ds, val_ds, out, labels, ctx, eval_view=spec.eval_view)
    if ctx.is_main:
        trainer.hooks.append(BestWeights(trainer.net, out / weights_file("best"), out / weights_file("last")))
        if plan.opts.tensorboard is not None:
            trainer.hooks.append(TensorBoardHook(plan.opts.tensorboard))
        trainer.hooks.extend(plan.opts.hooks)
    return BuiltRun(trainer, weights, counts)


def write_model_manifest(plan: RunPlan, run: BuiltRun, result: TrainResult) -> Manifest:
    """The finished run's `model` artifact: plot, file digests, metrics, manifest."""
    out, manifest = plan.opts.out, plan.manifest
    plot_training(result.history, out / TRAINING_PLOT, title=f"{plan.spec.role}: {out.name}")
    files = [
        weights_file("best"),
        weights_file("last"),
        f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT}",
        "log.jsonl",
        TRAINING_PLOT,
    ]
    manifest.files = describe_files(out, files)
    manifest.metrics = {
        "best_epoch": result.best_epoch,
        "best_miou": result.best_miou,
        "final_val": result.last_val,
        "scans_per_second_median": result.scans_per_second,
        "class_weights": None if run.class_weights is None else [float(w) for w in run.class_weights],
        "class_point_counts": run.class_counts,
        "epochs": [{k: v for k, v in h.items() if k != "event"} for h in result.history],
        "runtime": plan.runtime,
    }
    write_manifest(out, manifest)
    return manifest


def run_training(
    spec: RunSpec, cfg: TrainConfig, labels: LabelManifest, make_module: ModuleFactory, opts: RunOptions
) -> tuple[Manifest, TrainResult | None]:
    """Train and write the `model` artifact: plan -> build -> fit(hooks) -> manifest. A finished
    identical run is a no-op (returns its manifest and None).

    With `opts.tensorboard`, the per-epoch scalars of `plots/training.png` also go to TensorBoard
    events in that folder (for a finished run: its recorded epochs); without the optional
    package that is refused before anything else."""
    plan = plan_run(spec, cfg, labels, opts)
    if plan.done is not None and not opts.resume:
        if opts.tensorboard is not None:
            _write_tensorboard(opts.tensorboard, plan.done.metrics.get("epochs", []))
        return plan.done, None
    ctx = setup_run(cfg.device)
    try:
        run = build_run(plan, make_module, ctx)
        result = run.trainer.fit(resume=opts.resume)
        if ctx.is_main:
            write_model_manifest(plan, run, result)
        return plan.manifest, result
    finally:
        teardown_run(ctx)


def _write_tensorboard(log_dir: Path, history: list[dict[str, Any]]) -> None:
    tb = TensorBoardLog(log_dir)
    try:
        for record in history:
            tb.epoch(record)
    finally:
        tb.close()


TEACHER = RunSpec(role="teacher", train_view="fused", eval_view="fused", dataset_views=("fused",))


def run_teacher(cfg: TrainConfig, labels: LabelManifest, opts: RunOptions) -> tuple[Manifest, TrainResult | None]:
    """`m2s train-teacher` as a library call: the supervised net on the fused blocks."""
    return run_training(TEACHER, cfg, labels, teacher_module, opts)
