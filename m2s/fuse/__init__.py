"""Stage 1: multi-scan fusion of hard-class instances into a versioned HDF5 cache.

Writer: :func:`fuse_dataset`. Reader (training / evaluation): :func:`open_fused_cache`,
:class:`FusedCache`, :class:`FusedBlock`. The file format is documented in
:mod:`m2s.fuse.cache`.
"""

from m2s.fuse.cache import (
    DEFAULT_STORAGE,
    FORMAT_VERSION,
    CacheStorage,
    FusedBlock,
    FusedCache,
    open_fused_cache,
    sequence_file,
)
from m2s.fuse.config import ALIGN_VERSION, AlignMode, FuseConfig, IcpConfig, PlanarConfig
from m2s.fuse.fusion import FusedScan, HardSpec, fuse_sequence
from m2s.fuse.run import FuseProgress, FuseResult, fuse_dataset

__all__ = [
    "ALIGN_VERSION",
    "AlignMode",
    "CacheStorage",
    "DEFAULT_STORAGE",
    "FORMAT_VERSION",
    "FuseConfig",
    "FuseProgress",
    "FuseResult",
    "FusedBlock",
    "FusedCache",
    "FusedScan",
    "HardSpec",
    "IcpConfig",
    "PlanarConfig",
    "fuse_dataset",
    "fuse_sequence",
    "open_fused_cache",
    "sequence_file",
]
