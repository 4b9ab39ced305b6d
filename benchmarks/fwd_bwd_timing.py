"""Timed forward and backward passes of a segmentation network: the one loop shared by
`bench_backbone.py` and `gpu_check`'s backbone part (the same warm-up, synchronisation and loss)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch


def sync(device: Any) -> None:
    """Wait for queued CUDA work, so wall-clock times measure the kernels."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fwd_bwd(
    model: torch.nn.Module,
    x: Any,
    labels: torch.Tensor,
    device: Any,
    autocast: Callable[[], AbstractContextManager[Any]],
    warmup: int,
    repeats: int,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[list[float], list[float], float]:
    """Seconds of each timed forward (with the loss) and backward, after `warmup` untimed runs,
    and the last run's loss.

    `stop()` ends the timed runs early (a time budget); the runs timed so far are kept."""
    fwd: list[float] = []
    bwd: list[float] = []
    last_loss = float("nan")
    for i in range(warmup + repeats):
        if i >= warmup and fwd and stop():
            break
        model.zero_grad(set_to_none=True)
        sync(device)
        t0 = time.perf_counter()
        with autocast():
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        last_loss = float(loss.detach())
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return fwd, bwd, last_loss
