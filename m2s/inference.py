"""Loading model artifacts and predicting every original point of a scan.

Points outside the model's `point_range` are not voxelised (they are dropped for training,
never clamped); at inference each of them takes the prediction of its nearest in-range point
of the same scan (scipy KD-tree), so every original point gets a label as the benchmark
requires. A scan with no in-range point at all predicts "unlabeled" (0), an error on every
labelled point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

from m2s.artifacts import Manifest, load_artifact, verify_artifact_files
from m2s.errors import ArtifactError, ConfigError
from m2s.models import ModelConfig, build_model
from m2s.sparse.tensor import SparseTensor
from m2s.voxel import VoxelConfig, grid_extent, voxelize_scan

WEIGHTS_DIR = "weights"


def weights_file(which: str) -> str:
    return f"{WEIGHTS_DIR}/{which}.safetensors"


def fill_unpredicted(xyz: np.ndarray, kept: np.ndarray, kept_pred: np.ndarray) -> np.ndarray:
    """Predictions for all `xyz` rows given predictions for the rows `kept` (nearest neighbour)."""
    n = xyz.shape[0]
    pred = np.zeros(n, dtype=np.int64)
    if kept.shape[0] == n:
        pred[kept] = kept_pred
        return pred
    if kept.shape[0] == 0:
        return pred
    pred[kept] = kept_pred
    missing = np.ones(n, dtype=bool)
    missing[kept] = False
    _, nearest = cKDTree(xyz[kept]).query(xyz[missing], k=1)
    pred[missing] = kept_pred[nearest]
    return pred


def view_to_sparse(view: Any) -> SparseTensor:
    """Network input of a batched view (anything with int32 `coords` (V,4) and `feats` (V,C))."""
    return SparseTensor(view.coords, view.feats)


@dataclass
class LoadedModel:
    net: torch.nn.Module
    manifest: Manifest
    path: Path
    model_cfg: ModelConfig
    voxel: VoxelConfig
    device: torch.device

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label_digest(self) -> str:
        return str(self.manifest.config["label_digest"])

    @property
    def voxel_size(self) -> float:
        return float(self.voxel.voxel_size)

    @property
    def input_kind(self) -> Literal["fused", "single"]:
        return self.manifest.config["input"]

    @property
    def hard_raw_ids(self) -> np.ndarray:
        return np.asarray(self.manifest.config.get("hard_raw_ids", []), dtype=np.int64)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Weights only: safetensors cannot execute code while loading."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for torn/foreign files
        raise ArtifactError(f"{path}: weights cannot be read ({exc})") from None


def load_model_artifact(
    path: str | Path,
    *,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    checkpoint: Literal["best", "last"] = "best",
    verify: bool = True,
) -> LoadedModel:
    """Rebuild a trained network from a `model` artifact (architecture, voxel config, weights)."""
    folder = Path(path)
    manifest = load_artifact(folder, "model")
    if verify:  # sha256 of the weights, checkpoint and log before anything is built from them
        verify_artifact_files(folder, manifest)
    try:
        model_cfg = ModelConfig.model_validate(manifest.config["model"])
        voxel = VoxelConfig.model_validate(manifest.config["voxel"])
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"{folder}: model manifest lacks a valid architecture/voxel config ({exc})") from None
    try:
        grid_extent(voxel)  # the key codec must hold the grid, or coordinates would wrap
    except ConfigError as exc:
        raise ArtifactError(f"{folder}: {exc}") from None
    weights = folder / weights_file(checkpoint)
    if not weights.is_file():
        raise ArtifactError(f"{folder}: no {checkpoint} weights ({weights})")
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA requested but not available")
    net = build_model(model_cfg, backend)
    missing, unexpected = net.load_state_dict(load_state_dict_file(weights), strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"{weights}: weights do not fit the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    net.to(dev).eval()
    return LoadedModel(net=net, manifest=manifest, path=folder, model_cfg=model_cfg, voxel=voxel, device=dev)


class Predictor:
    """Batched inference of whole scans: every original point gets a train id."""

    def __init__(self, loaded: LoadedModel, *, amp: bool = False) -> None:
        self.loaded = loaded
        self.amp = amp and loaded.device.type == "cuda"

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def label_digest(self) -> str:
        return self.loaded.label_digest

    @torch.no_grad()
    def predict(self, scans: list[np.ndarray]) -> list[np.ndarray]:
        voxel = self.loaded.voxel
        coords_list, feats_list, p2v_list, kept_list = [], [], [], []
        offset = 0
        for b, pts in enumerate(scans):
            pts = np.asarray(pts, dtype=np.float32)
            kept, coords, p2v, feats = voxelize_scan(pts[:, :3], pts[:, 3], voxel)
            coords_list.append(np.concatenate([np.full((coords.shape[0], 1), b, np.int32), coords], axis=1))
            feats_list.append(feats)
            p2v_list.append(p2v + offset)
            kept_list.append(kept)
            offset += coords.shape[0]
        results: list[np.ndarray] = []
        if offset == 0:
            return [np.zeros(np.asarray(s).shape[0], dtype=np.int64) for s in scans]
        dev = self.loaded.device
        x = SparseTensor(
            torch.from_numpy(np.concatenate(coords_list)).to(dev), torch.from_numpy(np.concatenate(feats_list)).to(dev)
        )
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.loaded.net(x)
        voxel_pred = logits.argmax(dim=1).cpu().numpy()
        for pts, p2v, kept in zip(scans, p2v_list, kept_list, strict=True):
            results.append(fill_unpredicted(np.asarray(pts)[:, :3], kept, voxel_pred[p2v]))
        return results
