"""`--tensorboard DIR`: the scalars of `plots/training.png` as TensorBoard events.

TensorBoard is an optional extra (``pip install 'm2s[tensorboard]'``); asking for it without the
package is a :class:`ConfigError` raised before any training starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from m2s.errors import ConfigError

MISSING_MESSAGE = (
    "--tensorboard needs the `tensorboard` package, which is not installed: "
    "pip install 'm2s[tensorboard]' (or pip install tensorboard), or drop --tensorboard"
)


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """Tag -> value of one epoch record: `train/<term>` for each loss term, `val/miou`,
    `val/hard_miou`, `val/accuracy` when the epoch was validated."""
    out = {f"train/{k}": float(v) for k, v in record.get("train", {}).items()}
    val = record.get("val")
    if val:
        out |= {f"val/{k}": float(val[k]) for k in ("miou", "hard_miou", "accuracy") if k in val}
    return {k: v for k, v in out.items() if math.isfinite(v)}


class TensorBoardLog:
    """Writes each epoch record's scalars at step = epoch (flushed every epoch)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(MISSING_MESSAGE) from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def epoch(self, record: dict[str, Any]) -> None:
        for tag, value in epoch_scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def require_tensorboard() -> None:
    """Fail early, with one line, when the package is missing."""
    try:
        import tensorboard  # noqa: F401 - imported only to learn whether it is installed
    except ImportError:
        raise ConfigError(MISSING_MESSAGE) from None
