"""Cost of verifying a fused cache before training: whole-file sha256 vs HDF5 fletcher32 per chunk.

On an existing fused cache (e.g. `m2s synth --beams 64 --columns 2048` then `m2s fuse`) measures:
  * `open_fused_cache(verify=False)` vs `open_fused_cache(verify=True)` (the whole-file sha256 of
    every sequence file that `train-teacher`, `distill` and `evaluate --cache` now pay once at open),
    as seconds and MB/s, page cache warm (the file was just read) and cold (evicted with
    posix_fadvise where the kernel honours it);
  * reading every block once (what an epoch reads) with the current storage, and with the same
    rows rewritten with the fletcher32 filter on every row dataset (verified by HDF5 on every
    read, every epoch) — the alternative the issue names. The copy is written as the m2s writer
    writes: whole chunks through HDF5's direct chunk write, the checksum computed in numpy
    (`fletcher32`) and appended; HDF5 reading it back equal checks that checksum, and a damaged
    chunk must then be refused;
  * the per-block finite check `read_block` now does.

Measured figures and the choice they led to are in the README ("Integrity: what each stage
verifies").

Usage:
    python benchmarks/bench_integrity.py runs/fused [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2s.fuse import open_fused_cache  # noqa: E402
from m2s.fuse.cache import sequence_file  # noqa: E402
from m2s.io_utils import evict_from_page_cache  # noqa: E402


def _timed(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _read_all(path: Path) -> None:
    cache = open_fused_cache(path, verify=False)
    for i in range(len(cache)):
        cache.read_block(i)
    cache.close()


def _read_all_raw(files: list[Path], offsets: list[np.ndarray]) -> None:
    for f, off in zip(files, offsets):
        with h5py.File(f, "r", rdcc_nbytes=8 << 20) as h5:
            for j in range(off.shape[0] - 1):
                a, b = int(off[j]), int(off[j + 1])
                h5["points"][a:b], h5["label"][a:b], h5["source"][a:b]


def fletcher32(buf: bytes | np.ndarray) -> int:
    """HDF5's Fletcher-32 (H5_checksum_fletcher32) of `buf`, vectorised.

    Big-endian 16-bit words; an odd last byte counts as a word with a zero low byte. HDF5 keeps
    both sums reduced by end-around carry, so each is its residue mod 65535, except that a
    positive multiple of 65535 stays 65535 (and only all-zero data gives 0).
    """
    raw = memoryview(buf).cast("B")
    if len(raw) % 2:
        raw = memoryview(bytes(raw) + b"\0")
    words = np.frombuffer(raw, dtype=">u2").astype(np.int64)
    n = words.shape[0]
    s1 = int(words.sum())
    s2 = int(np.dot(words, np.arange(n, 0, -1, dtype=np.int64)))  # word i is added into sum2 (n - i) times

    def fold(s: int) -> int:
        return 0 if s == 0 else (s - 1) % 65535 + 1

    return (fold(s2) << 16) | fold(s1)


def _read_whole(files: list[Path]) -> None:
    for f in files:
        with h5py.File(f, "r") as h5:
            for name in ("points", "label", "source"):
                h5[name][:]


def _fletcher_copy(src: Path, dst: Path) -> float:
    """Copy with fletcher32 on every row dataset, chunks written as the m2s writer does (direct
    chunk write: encoded once by zlib, then the checksum appended little-endian, as HDF5's filter
    stores it). Returns the seconds spent computing checksums (the write-side cost)."""
    spent = 0.0
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        for name in ("points", "label", "source"):
            ds = a[name]
            kw = {"compression": ds.compression, "compression_opts": ds.compression_opts} if ds.compression else {}
            out = b.create_dataset(
                name, shape=ds.shape, maxshape=(None, *ds.shape[1:]), dtype=ds.dtype, chunks=ds.chunks, fletcher32=True, **kw
            )
            rows = ds.chunks[0]
            for start in range(0, ds.shape[0], rows):
                data = np.zeros(ds.chunks, ds.dtype)  # an edge chunk is stored full-size
                part = ds[start : start + rows]
                data[: part.shape[0]] = part
                encoded = zlib.compress(data, ds.compression_opts) if ds.compression == "gzip" else data.tobytes()
                t = time.perf_counter()
                tail = fletcher32(encoded).to_bytes(4, "little")
                spent += time.perf_counter() - t
                out.id.write_direct_chunk((start,) + (0,) * (data.ndim - 1), encoded + tail)
        for name in ("frame", "offset", "n_target"):
            b.create_dataset(name, data=a[name][:])
    # HDF5 verifies the checksum on every read: the copy reads back equal only if it is right.
    with h5py.File(src, "r") as a, h5py.File(dst, "r") as b:
        for name in ("points", "label", "source"):
            if not np.array_equal(a[name][:], b[name][:]):
                raise SystemExit(f"{dst}: {name} differs after the fletcher32 copy")
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cache = open_fused_cache(args.cache, verify=False)
    files = [sequence_file(args.cache, s) for s in cache.sequences]
    size = sum(f.stat().st_size for f in files)
    mb = size / 1e6
    res: dict[str, Any] = {"cache": str(args.cache), "scans": len(cache), "bytes": size}
    res["open_no_verify_s"] = _timed(lambda: open_fused_cache(args.cache, verify=False))
    res["open_verify_warm_s"] = _timed(lambda: open_fused_cache(args.cache, verify=True))
    colds = []
    for _ in range(3):
        for f in files:
            evict_from_page_cache(f)
        colds.append(_timed(lambda: open_fused_cache(args.cache, verify=True), repeat=1))
    res["open_verify_cold_s"] = min(colds)
    res["sha256_warm_MBps"] = mb / (res["open_verify_warm_s"] - res["open_no_verify_s"])
    res["sha256_cold_MBps"] = mb / (res["open_verify_cold_s"] - res["open_no_verify_s"])
    res["read_all_blocks_s"] = _timed(lambda: _read_all(args.cache))
    offsets = [cache._index[s].offset for s in cache.sequences]  # noqa: SLF001 - benchmark only
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        copies = [Path(tmp) / f.name for f in files]
        res["fletcher32_write_checksum_s"] = sum(_fletcher_copy(f, c) for f, c in zip(files, copies))
        # A damaged chunk is refused by HDF5 itself on read (what the reader would rely on).
        with h5py.File(copies[0], "r") as h5:
            offset = h5["points"].id.get_chunk_info(0).byte_offset
        with open(copies[0], "r+b") as fh:
            fh.seek(offset + 256)
            fh.write(b"\xff" * 64)
        try:
            with h5py.File(copies[0], "r") as h5:
                h5["points"][:16]
            res["fletcher32_detects_damage"] = False
        except OSError:
            res["fletcher32_detects_damage"] = True
        _fletcher_copy(files[0], copies[0])
        res["fletcher32_bytes"] = sum(c.stat().st_size for c in copies)
        # Interleaved, best of 5: the machine's other load hits both alike.
        plain, checked, plain_whole, checked_whole = [], [], [], []
        for _ in range(5):
            plain.append(_timed(lambda: _read_all_raw(files, offsets), repeat=1))
            checked.append(_timed(lambda: _read_all_raw(copies, offsets), repeat=1))
            plain_whole.append(_timed(lambda: _read_whole(files), repeat=1))
            checked_whole.append(_timed(lambda: _read_whole(copies), repeat=1))
        res["read_all_blocks_raw_s"] = min(plain)
        res["read_all_blocks_raw_fletcher32_s"] = min(checked)
        res["read_whole_datasets_s"] = min(plain_whole)
        res["read_whole_datasets_fletcher32_s"] = min(checked_whole)
    pts = cache.read_block(0).points
    res["finite_check_ms_per_block"] = 1e3 * _timed(lambda: np.isfinite(pts).all(), repeat=20)
    res["rows_per_block_0"] = int(pts.shape[0])
    res["fletcher32_extra_s_per_epoch"] = res["read_all_blocks_raw_fletcher32_s"] - res["read_all_blocks_raw_s"]
    res["fletcher32_extra_s_whole_read"] = res["read_whole_datasets_fletcher32_s"] - res["read_whole_datasets_s"]
    res["sha256_extra_s_per_start"] = res["open_verify_warm_s"] - res["open_no_verify_s"]
    for k, v in res.items():
        print(f"{k:36s} {v:.4f}" if isinstance(v, float) else f"{k:36s} {v}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
