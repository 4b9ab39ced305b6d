"""Dataset access: the SemanticKITTI layout (real or synthetic) and fused caches."""

from m2s.data.semantickitti import (
    Sequence,
    list_sequences,
    open_sequences,
    parse_sequence_list,
    read_calib,
    read_labels,
    read_poses,
    read_scan,
    read_times,
)

__all__ = [
    "Sequence",
    "list_sequences",
    "open_sequences",
    "parse_sequence_list",
    "read_calib",
    "read_labels",
    "read_poses",
    "read_scan",
    "read_times",
]
