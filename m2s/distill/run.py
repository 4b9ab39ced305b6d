"""`m2s distill` as a library call: the baseline student (no teacher) or the distilled student."""

from __future__ import annotations

from pathlib import Path

import torch

from m2s.artifacts import ArtifactInput, Manifest
from m2s.distill.config import KdChoice, TeacherChoice
from m2s.distill.task import DistillModule, StudentConfig, load_teacher
from m2s.distill.teachers import pick_teacher
from m2s.fuse import FusedCache
from m2s.labels import LabelManifest
from m2s.models import feature_channels
from m2s.train.engine import TrainResult
from m2s.train.losses import SegmentationLoss
from m2s.train.run import RunOptions, RunSpec, check_run_folders, run_training


def run_distillation(
    cfg: StudentConfig,
    labels: LabelManifest,
    opts: RunOptions,
    *,
    teacher: Path | None = None,
    kd: KdChoice | str = KdChoice.config,
) -> tuple[Manifest, TrainResult | None]:
    """Train a single-scan student: distilled from the frozen `teacher` artifact, from its own
    fused-view branch (``distill.mode: joint``), or with `kd` "none" (or every distillation
    weight at 0) the baseline: same data, schedule and seed, no teacher.

    Which combinations are allowed is :class:`TeacherChoice`'s to say (one ConfigError)."""
    choice = TeacherChoice.parse(cfg.distill, teacher, kd)
    cfg = cfg.model_copy(update={"distill": choice.config})
    baseline = cfg.distill.is_baseline
    loaded = None
    extra_inputs: list[ArtifactInput] = []
    artifact = choice.teacher_artifact
    if artifact is not None:
        check_run_folders(opts.caches, opts.val_caches, opts.out, artifact)  # kinds first; the teacher's digests next
        loaded = load_teacher(artifact, cfg, labels)
        extra_inputs.append(ArtifactInput(kind="model", id=loaded.manifest.content_id, path=str(artifact)))
    spec = RunSpec(
        role="baseline" if baseline else "student",
        train_view="single",
        eval_view="single",
        dataset_views=cfg.distill.views,
        extra_config={
            "distill": cfg.distill.model_dump(mode="json"),
            "teacher_id": None if loaded is None else loaded.manifest.content_id,
        },
        extra_inputs=extra_inputs,
    )

    def make_module(net: torch.nn.Module, loss: SegmentationLoss, _caches: list[FusedCache]) -> torch.nn.Module:
        # The teacher is picked here, once: none (baseline), the frozen artifact, or joint.
        return DistillModule(
            net, loss, cfg, labels, pick_teacher(cfg.distill, net, feature_channels(cfg.model), loss, loaded)
        )

    return run_training(spec, cfg, labels, make_module, opts)
