"""Segmentation task loss: class-weighted cross-entropy plus Lovasz-softmax, ignoring unlabeled."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from m2s.labels import IGNORE_INDEX
from m2s.train.config import LossConfig


def frequency_class_weights(counts: np.ndarray, max_weight: float, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Inverse-square-root frequency weights, mean 1 over seen classes, capped; ignore class 0.

    Classes never seen in the sample get the cap, so a rare class that the sample happened to
    miss is still weighted as rare.
    """
    counts = counts.astype(np.float64).copy()
    counts[ignore_index] = 0
    freq = counts / max(counts.sum(), 1.0)
    seen = freq > 0
    weights = np.full(counts.shape, max_weight, dtype=np.float64)
    weights[seen] = 1.0 / np.sqrt(freq[seen])
    weights[seen] /= weights[seen].mean()
    weights = np.minimum(weights, max_weight)
    weights[ignore_index] = 0.0
    return weights.astype(np.float32)


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Lovasz-softmax loss (Berman et al. 2018) over the classes present in `labels`.

    All classes are handled at once: per-class errors are sorted column-wise, the Lovasz
    extension gradient is a cumulative-sum expression, so there is no loop over classes.
    """
    valid = labels != ignore_index
    probs, labels = probs[valid], labels[valid]
    if labels.numel() == 0:
        return probs.sum() * 0.0
    num_classes = probs.shape[1]
    fg = F.one_hot(labels, num_classes).to(probs.dtype)  # (P, C)
    errors = (fg - probs).abs()
    # stable: tied errors keep their order, so the gradient is reproducible run to run
    errors_sorted, order = torch.sort(errors, dim=0, descending=True, stable=True)
    fg_sorted = torch.gather(fg, 0, order)
    gts = fg_sorted.sum(dim=0, keepdim=True)
    intersection = gts - fg_sorted.cumsum(dim=0)
    union = gts + (1.0 - fg_sorted).cumsum(dim=0)
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)
    per_class = (errors_sorted * grad).sum(dim=0)
    present = gts.squeeze(0) > 0
    return per_class[present].mean()


class SegmentationLoss(torch.nn.Module):
    """`ce_weight * CE(weighted) + lovasz_weight * Lovasz` on points or voxels."""

    class_weights: torch.Tensor  # a buffer (empty: unweighted); declared so type checkers see a Tensor

    def __init__(self, cfg: LossConfig, class_weights: np.ndarray | None) -> None:
        super().__init__()
        self.cfg = cfg
        weights = torch.as_tensor(class_weights) if class_weights is not None else None
        self.register_buffer("class_weights", weights if weights is not None else torch.empty(0), persistent=False)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The class-weighted CE alone (0 when every label is ignored)."""
        logits = logits.float()
        if not bool((labels != IGNORE_INDEX).any()):
            return logits.sum() * 0.0
        weight = self.class_weights if self.class_weights.numel() else None
        return F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = logits.float()
        terms: dict[str, torch.Tensor] = {}
        if self.cfg.ce_weight > 0:
            terms["ce"] = self.cfg.ce_weight * self.cross_entropy(logits, labels)
        if self.cfg.lovasz_weight > 0:
            terms["lovasz"] = self.cfg.lovasz_weight * lovasz_softmax(logits.softmax(dim=1), labels)
        total = torch.stack(list(terms.values())).sum() if terms else logits.sum() * 0.0
        return total, {k: v.detach() for k, v in terms.items()}
