"""Shared test setup: tests run from the repository root so relative paths resolve."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# Whole-chain tests in files that carry no marks of their own: `make demo` end to end (minutes).
SLOW_FILES = {"test_pipeline.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _repo_root_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    os.environ.pop("M2S_DEBUG", None)


# ---- a tiny synthetic dataset, fused once per test session ------------------------------------
# hard_rate: the realistic default makes hard classes as rare as on real streets; tiny test draws
# need every class in a few scans
TINY_SYNTH = dict(sequences=["00", "08"], test_sequences=[], scans=10, beams=16, columns=256, seed=3, hard_rate=20.0)
TINY_TRAIN_CONFIG = """
model: {size: 14, width: 0.5}
voxel: {voxel_size: 0.25}
data: {num_workers: 0, val_batch_size: 4}
optim: {batch_size: 2, lr: 0.01, warmup_fraction: 0.0, schedule: constant}
loss: {frequency_scans: 10}
augment: {enabled: false}
log_every: 1
"""


class TinyData:
    def __init__(self, root: Path, train_cache: Path, val_cache: Path, config: Path) -> None:
        self.root = root
        self.train_cache = train_cache
        self.val_cache = val_cache
        self.config = config


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    from m2s.fuse import FuseConfig, fuse_dataset
    from m2s.labels import load_label_manifest
    from m2s.synth import SynthConfig, generate_dataset

    base = tmp_path_factory.mktemp("tiny")
    root = base / "data"
    generate_dataset(root, SynthConfig(**TINY_SYNTH))
    labels = load_label_manifest(ROOT / "data_manifests" / "semantic-kitti.yaml")
    fuse_dataset(root, base / "fused-train", ["00"], FuseConfig(), labels)
    fuse_dataset(root, base / "fused-val", ["08"], FuseConfig(), labels)
    cfg = base / "train.yaml"
    cfg.write_text(TINY_TRAIN_CONFIG)
    return TinyData(root, base / "fused-train", base / "fused-val", cfg)
