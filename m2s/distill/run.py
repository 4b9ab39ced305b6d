"""`m2s distill` as a library call: the baseline student (no teacher) or the distilled student."""

from __future__ import annotations

from pathlib import Path

import torch

from m2s.artifacts import ArtifactInput, Manifest
from m2s.distill.task import DistillModule, StudentConfig, load_teacher
from m2s.errors import ConfigError
from m2s.fuse import FusedCache
from m2s.labels import LabelManifest
from m2s.train.engine import EventCallback, TrainResult
from m2s.train.losses import SegmentationLoss
from m2s.train.run import RunSpec, check_run_folders, run_training


def run_distillation(
    cfg: StudentConfig,
    labels: LabelManifest,
    *,
    caches: list[Path],
    val_caches: list[Path],
    out: Path,
    teacher: Path | None,
    resume: bool = False,
    on_event: EventCallback | None = None,
    tensorboard: Path | None = None,
) -> tuple[Manifest, TrainResult | None]:
    """Train a single-scan student. With every distillation weight at 0 this is the baseline:
    same data, schedule and seed, no teacher needed (a given teacher is ignored). In joint mode
    the student is its own teacher on the fused view (no teacher artifact)."""
    baseline = cfg.distill.is_baseline
    loaded = None
    extra_inputs: list[ArtifactInput] = []
    if cfg.distill.mode == "joint" and not baseline and teacher is not None:
        raise ConfigError("joint mode (distill.mode: joint) trains its own fused-view teacher branch; drop --teacher")
    if cfg.distill.needs_teacher_artifact:
        if teacher is None:
            raise ConfigError(
                "distillation needs --teacher MODEL (or --mode joint, or --kd none for the baseline student)"
            )
        check_run_folders(caches, val_caches, out, teacher)  # kinds first; the teacher's digests next
        loaded = load_teacher(teacher, cfg, labels)
        extra_inputs.append(ArtifactInput(kind="model", id=loaded.manifest.content_id, path=str(teacher)))
    spec = RunSpec(
        role="baseline" if baseline else "student",
        train_view="single",
        eval_view="single",
        dataset_views=cfg.distill.views,
        caches=caches,
        val_caches=val_caches,
        out=out,
        extra_config={
            "distill": cfg.distill.model_dump(mode="json"),
            "teacher_id": None if loaded is None else loaded.manifest.content_id,
        },
        extra_inputs=extra_inputs,
    )

    def make_module(net: torch.nn.Module, loss: SegmentationLoss, _caches: list[FusedCache]) -> torch.nn.Module:
        return DistillModule(net, loss, cfg, labels, loaded)

    return run_training(spec, cfg, labels, make_module, resume=resume, on_event=on_event, tensorboard=tensorboard)
