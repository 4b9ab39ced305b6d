"""`m2s fuse` (stage 1)."""

from __future__ import annotations

from cli.common import not_implemented


def fuse() -> None:
    """Fuse hard-class instances from neighbouring scans into versioned HDF5 caches."""
    not_implemented("fuse")
