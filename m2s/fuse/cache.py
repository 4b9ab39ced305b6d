"""The fused cache: HDF5 writer and reader (artifact kind ``fused-cache``, format version 1).

Layout::

    OUT/manifest.json       artifact manifest (kind "fused-cache"), written last
    OUT/sequences/SS.h5     one HDF5 file per sequence SS

Each ``SS.h5`` holds the sequence's S scans in frame order as one concatenation of T rows.
Scan i occupies rows ``offset[i]:offset[i+1]`` (its *block*). The first ``n_target[i]`` rows of a
block are the scan's own points, exactly as stored in ``velodyne/FFFFFF.bin`` (same bytes, same
order) with the labels of ``labels/FFFFFF.label``: this is the single-scan student's input. The
remaining rows are hard-class instance points fused from neighbouring scans and expressed in the
target scan's LiDAR frame; the multi-scan teacher sees the whole block. Fused rows are ordered by
source frame (ascending), then instance id, then their order in the source scan.

Datasets (root group):

    frame     int32   (S,)    frame number of each scan (ascending)
    offset    int64   (S+1,)  first row of each block; offset[0] = 0, offset[S] = T
    n_target  int32   (S,)    number of the scan's own rows at the start of its block
    points    float32 (T,4)   x, y, z, remission in the target scan's LiDAR frame
    label     uint32  (T,)    raw label word, instance << 16 | semantic raw id (as in .label)
    source    int32   (T,)    frame each row came from (the block's own frame for target rows)

Attributes (root group):

    format             "m2s-fused-cache"
    format_version     1 (== m2s.artifacts.FORMAT_VERSIONS["fused-cache"])
    sequence           "SS"
    window, future     neighbour window in frame numbers; whether later scans were admitted
    align              "auto" | "pose" | "centroid" | "icp"
    hard_classes       JSON list of the hard train-class names
    hard_raw_ids       int64 array of the raw semantic ids fused (incl. moving-*)
    label_digest       LabelManifest.digest() of the label manifest used
    input_fingerprint  Sequence.fingerprint() of the raw sequence read
    config             JSON of the full fusion config (thresholds, ICP settings)
    storage            JSON of the chunking / compression used
    sequence_key       sha256 over everything above that decides the content (resume check)
    stats              JSON per-hard-class counters of this sequence

``points``/``label``/``source`` are chunked along rows (see :data:`DEFAULT_STORAGE`, chosen by
``benchmarks/bench_fuse.py``); any HDF5 reader can read a block with one slice per dataset.
A file appears under its final name only once complete (written under a temporary name, then
renamed).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from m2s.artifacts import FORMAT_VERSIONS, Manifest, load_artifact, verify_artifact_files
from m2s.errors import ArtifactError, DataError
from m2s.fuse.fusion import FusedScan
from m2s.io_utils import atomic_path

FORMAT_NAME = "m2s-fused-cache"
FORMAT_VERSION = FORMAT_VERSIONS["fused-cache"]
KIND = "fused-cache"
SEQUENCES_DIR = "sequences"
# Chunk cache per open file: a 64x2048 block spans ~2-3 chunks of 64k rows.
_RDCC_NBYTES = 8 << 20


class CacheStorage(BaseModel):
    """HDF5 chunking and compression of the row datasets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_rows: int = Field(65536, ge=1024)
    points_compression: Literal["none", "lzf", "gzip"] = "none"
    aux_compression: Literal["none", "lzf", "gzip"] = "gzip"  # label and source
    gzip_level: int = Field(1, ge=0, le=9)

    def filter_kwargs(self, which: str) -> dict[str, Any]:
        comp = self.points_compression if which == "points" else self.aux_compression
        if comp == "none":
            return {}
        if comp == "gzip":
            return {"compression": "gzip", "compression_opts": self.gzip_level}
        return {"compression": "lzf"}


# Chosen by measurement (benchmarks/bench_fuse.py, see README): float32 coordinates barely
# compress, so `points` stays raw (fastest reads); label/source words shrink the file by a third
# with gzip level 1, which writes faster than lzf here and reads back in ~1 ms per scan.
DEFAULT_STORAGE = CacheStorage()


def sequence_file(out: str | Path, sequence: str) -> Path:
    return Path(out) / SEQUENCES_DIR / f"{sequence}.h5"


def remove_stale_temporaries(out: str | Path, sequence: str) -> list[Path]:
    """Delete temporary files a killed run left for `sequence` (``.SS.h5.*.tmp``)."""
    folder = Path(out) / SEQUENCES_DIR
    removed = []
    if folder.is_dir():
        for p in folder.glob(f".{sequence}.h5.*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class _RowAppender:
    """Append rows to a resizable chunked dataset, writing whole chunks only.

    Each chunk is encoded exactly once. With no compression or gzip the encoded chunk goes to the
    file through HDF5's direct chunk write (``zlib`` produces exactly the stream HDF5's deflate
    filter stores), which skips HDF5's selection machinery and chunk cache: measured ~1.5 ms/scan
    faster on full-size scans than a filtered ``write_direct``. lzf has no Python encoder, so its
    chunks go through the HDF5 filter pipeline. Aligned runs of rows are written straight from
    the caller's array without a staging copy; the last partial chunk is written on close.
    """

    def __init__(self, ds: h5py.Dataset, chunk_rows: int, compression: str, gzip_level: int) -> None:
        self.ds, self.chunk = ds, chunk_rows
        self.compression, self.gzip_level = compression, gzip_level
        self.buf = np.empty((chunk_rows, *ds.shape[1:]), dtype=ds.dtype)
        self.fill = 0
        self.written = 0

    def _write(self, data: np.ndarray) -> None:
        """Write one chunk: `data` holds its rows (fewer than a chunk only for the last one)."""
        n = data.shape[0]
        self.ds.resize(self.written + n, axis=0)
        if self.compression == "lzf":
            self.ds.write_direct(np.ascontiguousarray(data), dest_sel=np.s_[self.written : self.written + n])
        else:
            if n < self.chunk:  # an edge chunk is stored full-size; its tail lies outside the extent
                self.buf[n:] = 0
                self.buf[:n] = data
                data = self.buf
            data = np.ascontiguousarray(data)
            encoded = zlib.compress(data.data, self.gzip_level) if self.compression == "gzip" else data
            self.ds.id.write_direct_chunk((self.written,) + (0,) * (data.ndim - 1), encoded)
        self.written += n

    def append(self, rows: np.ndarray | None = None, *, value: int = 0, count: int = 0) -> None:
        """Append `rows`, or `count` copies of the scalar `value` (no temporary array)."""
        n = rows.shape[0] if rows is not None else count
        i = 0
        while i < n:
            if self.fill == 0 and rows is not None and n - i >= self.chunk:
                self._write(rows[i : i + self.chunk])
                i += self.chunk
                continue
            take = min(n - i, self.chunk - self.fill)
            self.buf[self.fill : self.fill + take] = rows[i : i + take] if rows is not None else value
            self.fill += take
            i += take
            if self.fill == self.chunk:
                self._write(self.buf)
                self.fill = 0

    def close(self) -> None:
        if self.fill:
            self._write(self.buf[: self.fill])
            self.fill = 0


@dataclass(frozen=True)
class WrittenSequence:
    scans: int
    rows: int


def write_sequence_file(
    path: str | Path,
    blocks: Iterable[FusedScan],
    attrs: dict[str, Any],
    storage: CacheStorage = DEFAULT_STORAGE,
    late_attrs: Callable[[], dict[str, Any]] | None = None,
) -> WrittenSequence:
    """Stream `blocks` into `path` (atomic: a temporary file renamed when complete).

    `late_attrs` is called after the last block, for attributes only known then (statistics).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            c = storage.chunk_rows

            def rows_dataset(name: str, shape: tuple[int, ...], dtype: Any, which: str) -> h5py.Dataset:
                return h5.create_dataset(
                    name,
                    shape=(0, *shape),
                    maxshape=(None, *shape),
                    dtype=dtype,
                    chunks=(c, *shape),
                    **storage.filter_kwargs(which),
                )

            level = storage.gzip_level
            pts = _RowAppender(rows_dataset("points", (4,), np.float32, "points"), c, storage.points_compression, level)
            lab = _RowAppender(rows_dataset("label", (), np.uint32, "aux"), c, storage.aux_compression, level)
            src = _RowAppender(rows_dataset("source", (), np.int32, "aux"), c, storage.aux_compression, level)
            frames: list[int] = []
            n_target: list[int] = []
            offsets = [0]
            for b in blocks:
                pts.append(b.target_points)
                pts.append(b.fused_points)
                lab.append(b.target_label)
                lab.append(b.fused_label)
                src.append(value=b.frame, count=b.n_target)
                src.append(b.fused_source)
                frames.append(b.frame)
                n_target.append(b.n_target)
                offsets.append(offsets[-1] + b.n_rows)
            for app in (pts, lab, src):
                app.close()
            h5.create_dataset("frame", data=np.asarray(frames, dtype=np.int32))
            h5.create_dataset("offset", data=np.asarray(offsets, dtype=np.int64))
            h5.create_dataset("n_target", data=np.asarray(n_target, dtype=np.int32))
            h5.attrs["format"] = FORMAT_NAME
            h5.attrs["format_version"] = FORMAT_VERSION
            h5.attrs["storage"] = storage.model_dump_json()
            for key, value in {**attrs, **(late_attrs() if late_attrs else {})}.items():
                h5.attrs[key] = value
    return WrittenSequence(scans=len(frames), rows=offsets[-1])


def read_sequence_attrs(path: str | Path) -> dict[str, Any] | None:
    """The root attributes of a completed sequence file, or None if it is unreadable."""
    try:
        with h5py.File(path, "r") as h5:
            return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
    except (OSError, KeyError):
        return None


# ---- reader -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FusedBlock:
    """One scan of the cache: rows ``[:n_target]`` are the scan itself, the rest fused points."""

    points: np.ndarray  # float32 (T,4)
    label: np.ndarray  # uint32 (T,)
    source: np.ndarray  # int32 (T,)
    n_target: int
    sequence: str
    frame: int


@dataclass(frozen=True)
class _SequenceIndex:
    frames: np.ndarray  # int32 (S,)
    offset: np.ndarray  # int64 (S+1,)
    n_target: np.ndarray  # int32 (S,)


class FusedCache:
    """Random access to the scans of a fused cache.

    Safe in torch DataLoader workers: HDF5 handles are opened lazily per process (tracked by
    pid) and never pickled, so a cache created in the parent can be sent to forked or spawned
    workers.
    """

    def __init__(self, path: str | Path, *, verify: bool = True) -> None:
        self.path = Path(path)
        self.manifest: Manifest = load_artifact(self.path, KIND)
        cfg = self.manifest.config
        try:
            self.sequences: list[str] = list(cfg["sequences"])
            self.label_digest: str = str(cfg["label_digest"])
            self.hard_raw_ids = np.asarray(cfg["hard_classes"]["raw_ids"], dtype=np.int64)
            self.hard_classes: list[str] = list(cfg["hard_classes"]["names"])
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{self.path}: fused-cache manifest lacks config entry {exc}") from None
        for rec in self.manifest.files:
            if not (self.path / rec.path).is_file():
                raise ArtifactError(f"{self.path}: file listed in the manifest is missing: {self.path / rec.path}")
        if verify:  # whole-file sha256 of every sequence file before any of it is used
            verify_artifact_files(self.path, self.manifest)
        self._index: dict[str, _SequenceIndex] = {}
        for seq in self.sequences:
            self._index[seq] = self._read_index(seq)
        counts = np.array([self._index[s].frames.shape[0] for s in self.sequences], dtype=np.int64)
        self._starts = np.concatenate(([0], np.cumsum(counts)))
        self.index: list[tuple[str, int]] = [
            (s, int(f)) for s in self.sequences for f in self._index[s].frames.tolist()
        ]
        self._pid: int | None = None
        self._handles: dict[str, h5py.File] = {}

    @property
    def content_id(self) -> str:
        return self.manifest.content_id

    def _read_index(self, seq: str) -> _SequenceIndex:
        p = sequence_file(self.path, seq)
        if not p.is_file():
            raise ArtifactError(f"{self.path}: fused cache file for sequence {seq} is missing: {p}")
        try:
            with h5py.File(p, "r") as h5:
                version = h5.attrs.get("format_version")
                if h5.attrs.get("format") != FORMAT_NAME or version != FORMAT_VERSION:
                    raise ArtifactError(
                        f"{p}: not a fused-cache file of format version {FORMAT_VERSION} (found {version!r})"
                    )
                idx = _SequenceIndex(h5["frame"][:], h5["offset"][:], h5["n_target"][:])
                total = h5["points"].shape[0]
        except (OSError, KeyError) as exc:
            raise ArtifactError(f"{p}: unreadable fused-cache file ({exc})") from None
        if idx.offset.shape[0] != idx.frames.shape[0] + 1 or int(idx.offset[-1]) != total:
            raise ArtifactError(f"{p}: inconsistent block offsets (corrupted file?)")
        return idx

    def _file(self, seq: str) -> h5py.File:
        pid = os.getpid()
        if self._pid != pid:
            # A new process (DataLoader worker): never reuse handles inherited through fork.
            self._handles = {}
            self._pid = pid
        h5 = self._handles.get(seq)
        if h5 is None:
            h5 = h5py.File(sequence_file(self.path, seq), "r", rdcc_nbytes=_RDCC_NBYTES)
            self._handles[seq] = h5
        return h5

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, i: int) -> tuple[str, int]:
        """(sequence, position within the sequence) of global scan index `i`."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"scan index {i} out of range for a cache of {n} scans")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.sequences[k], i - int(self._starts[k])

    def read_block(self, i: int) -> FusedBlock:
        seq, j = self.locate(i)
        idx = self._index[seq]
        a, b = int(idx.offset[j]), int(idx.offset[j + 1])
        h5 = self._file(seq)
        try:
            points, label, source = h5["points"][a:b], h5["label"][a:b], h5["source"][a:b]
        except (OSError, KeyError) as exc:
            raise ArtifactError(
                f"{sequence_file(self.path, seq)}: sequence {seq} frame {int(idx.frames[j])} unreadable ({exc})"
            ) from None
        if not np.isfinite(points).all():  # fast path on the whole block; rows counted only on failure
            finite = np.isfinite(points).all(axis=1)
            raise DataError(
                f"{sequence_file(self.path, seq)}: sequence {seq} frame {int(idx.frames[j])}: "
                f"{int((~finite).sum())} row(s) with non-finite coordinates or remission (corrupted cache)"
            )
        return FusedBlock(
            points=points,
            label=label,
            source=source,
            n_target=int(idx.n_target[j]),
            sequence=seq,
            frame=int(idx.frames[j]),
        )

    def target_counts(self) -> dict[str, dict[int, int]]:
        """Points of each scan's own rows (the original scan), per sequence and frame, from the
        index read at open: no block is read."""
        return {
            seq: dict(zip(idx.frames.tolist(), idx.n_target.tolist(), strict=True)) for seq, idx in self._index.items()
        }

    def source_name(self, i: int) -> str:
        """Where scan `i` comes from, for error messages: file, sequence and frame."""
        seq, j = self.locate(i)
        return f"{sequence_file(self.path, seq)} (sequence {seq} frame {int(self._index[seq].frames[j])})"

    def close(self) -> None:
        if self._pid == os.getpid():
            for h5 in self._handles.values():
                h5.close()
        self._handles = {}

    def __enter__(self) -> FusedCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def open_fused_cache(path: str | Path, *, verify: bool = True) -> FusedCache:
    """Open a fused cache; :class:`ArtifactError` if it is not one, of another format version, its
    manifest was edited, or a listed sequence file is missing or (with `verify`, the default) does
    not match its recorded size and sha256. Every block read is also checked for non-finite rows."""
    return FusedCache(path, verify=verify)


def sequence_attrs_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
