"""Benchmark of `m2s fuse` on full-size (64 x 2048) synthetic scans.

Measures, on one sequence:
  * the read-only baseline: reading every `.bin` + `.label` once (what fusion must at least do);
  * `fuse_dataset` with --align pose / centroid / icp / planar / auto (1 worker each, in a fresh process
    for a clean peak RSS): scans/s, ratio to the read-only time, peak RSS, output size;
  * the fusion compute alone (no HDF5 writing) for pose/centroid;
  * the cache storage layout: chunk rows x compression -> file size, write time and the time to
    read one random scan, with the page cache warm and cold (evicted with posix_fadvise).

Usage:
    python benchmarks/bench_fuse.py --scans 200 --json bench_fuse.json
    python benchmarks/bench_fuse.py --data /path/to/kitti --sequence 08 --scans 500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2s.data.semantickitti import (  # noqa: E402
    Sequence,
    write_calib,
    write_labels,
    write_poses,
    write_scan,
    write_times,
)
from m2s.fuse import CacheStorage, FuseConfig, HardSpec, fuse_dataset, fuse_sequence, open_fused_cache  # noqa: E402
from m2s.fuse.cache import write_sequence_file  # noqa: E402
from m2s.labels import load_label_manifest, make_label_word  # noqa: E402
from m2s.io_utils import evict_from_page_cache  # noqa: E402


# ---- data --------------------------------------------------------------------------------
def _fallback_generate(root: Path, seq: str, scans: int, beams: int, columns: int, seed: int) -> None:
    """Full-size scans without ray casting: a ground/building cloud plus hard-class actors
    (static and moving) seen from a driving ego vehicle. Used when `m2s.synth` is unavailable."""
    rng = np.random.default_rng(seed)
    n = beams * columns
    # (semantic raw id, instance id, world centre, points per scan, velocity m/scan)
    actors = [(30, 1, (15, 4), 600, 0.0), (254, 2, (20, -3), 500, 0.6), (11, 3, (25, 5), 400, 0.0),
              (253, 4, (30, -4), 700, 1.0), (15, 5, (12, -6), 500, 0.0), (18, 6, (40, 6), 3000, 0.0),
              (259, 7, (35, -2), 2500, 1.5), (31, 8, (22, 7), 600, 0.0), (255, 9, (45, -5), 600, 0.8),
              (30, 10, (50, 3), 300, 0.0)]
    shapes = {a[1]: rng.uniform([-0.6, -0.4, 0], [0.6, 0.4, 1.8], (4000, 3)) for a in actors}
    poses = np.tile(np.eye(4), (scans, 1, 1))
    base = root / "sequences" / seq
    for f in range(scans):
        yaw = 0.01 * f
        poses[f, :2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
        poses[f, :3, 3] = [1.0 * f, 0.1 * f, 0.0]
        xyz_parts, words = [], []
        for sem, inst, (cx, cy), k, v in actors:
            pts = shapes[inst][rng.choice(4000, k, replace=False)] + [cx + v * f + 1.0 * f, cy, 0.0]
            xyz_parts.append(pts)
            words.append(make_label_word(np.full(k, sem), np.full(k, inst)))
        n_bg = n - sum(len(p) for p in xyz_parts)
        r = rng.uniform(2, 80, n_bg)
        a = rng.uniform(-np.pi, np.pi, n_bg)
        bg = np.column_stack([r * np.cos(a), r * np.sin(a), rng.normal(-1.7, 0.3, n_bg)])
        bg = bg @ poses[f, :3, :3].T + poses[f, :3, 3]
        xyz_parts.append(bg)
        words.append(make_label_word(rng.choice([40, 48, 50, 70], n_bg), np.zeros(n_bg)))
        xyz = np.concatenate(xyz_parts)
        xyz = (xyz - poses[f, :3, 3]) @ poses[f, :3, :3]  # world -> LiDAR frame
        perm = rng.permutation(n)
        write_scan(base / "velodyne" / f"{f:06d}.bin",
                   np.column_stack([xyz, rng.uniform(0, 1, n)]).astype(np.float32)[perm])
        write_labels(base / "labels" / f"{f:06d}.label", np.concatenate(words)[perm])
    tr = np.eye(4)
    write_poses(base / "poses.txt", poses)
    write_calib(base / "calib.txt", {"Tr": tr})
    write_times(base / "times.txt", np.arange(scans) * 0.1)


def generate(root: Path, seq: str, scans: int, beams: int, columns: int, seed: int) -> str:
    try:
        from m2s.synth import SynthConfig, generate_dataset  # type: ignore[attr-defined]
    except ImportError:
        _fallback_generate(root, seq, scans, beams, columns, seed)
        return "benchmark fallback generator (m2s.synth not available)"
    cfg = SynthConfig(sequences=[seq], test_sequences=[], scans=scans, beams=beams, columns=columns, seed=seed)
    generate_dataset(root, cfg, workers=os.cpu_count() or 1)
    return "m2s.synth"


# ---- measurements ------------------------------------------------------------------------
def _evict_inputs(seq: Sequence) -> None:
    """Drop the sequence's scans and labels from the page cache (cold-start measurements)."""
    for f in seq.frames:
        for p in (seq.scan_path(f), seq.label_path(f)):
            evict_from_page_cache(p)


def _read_only(seq: Sequence) -> float:
    t = time.perf_counter()
    for f in seq.frames:
        seq.read_scan_and_labels(f)
    return time.perf_counter() - t


def _fuse_child(root: str, seqs: list[str], out: str, align: str, write: bool, workers: int, q: Any) -> None:
    labels = load_label_manifest()
    cfg = FuseConfig(align=align)  # type: ignore[arg-type]
    t = time.perf_counter()
    if write:
        fuse_dataset(root, out, seqs, cfg, labels, workers=workers)
    else:
        for seq in seqs:
            for _ in fuse_sequence(Sequence(Path(root), seq), HardSpec.from_manifest(labels, None), cfg):
                pass
    elapsed = time.perf_counter() - t
    q.put((elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _run_child(
    root: str, seq: str | list[str], out: str, align: str, write: bool, workers: int = 1
) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one fusion run in a fresh process."""
    seqs = [seq] if isinstance(seq, str) else seq
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_fuse_child, args=(root, seqs, out, align, write, workers, q))
    p.start()
    res = q.get()
    p.join()
    return res


def _time_random_reads(path: Path, n_reads: int, cold: bool, seed: int = 0) -> float:
    """Mean seconds to read one random block (points, label, source) through FusedCache."""
    cache = open_fused_cache(path)
    h5file = next((path / "sequences").glob("*.h5"))
    order = np.random.default_rng(seed).integers(0, len(cache), n_reads)
    total = 0.0
    for i in order:
        if cold:
            cache.close()
            evict_from_page_cache(h5file)
        t = time.perf_counter()
        cache.read_block(int(i))
        total += time.perf_counter() - t
    cache.close()
    return total / n_reads


def output_floor(n_bytes: int, work: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds to merely write `n_bytes` to a new file and to sha256 them (median of `repeats`):
    what any implementation producing a file of this size with a digest must at least spend."""
    buf = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    path = work / "floor.bin"
    write_t, hash_t = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        with open(path, "wb") as fh:
            for _ in range(n_bytes >> 20):
                fh.write(buf)
        write_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        h = hashlib.sha256()
        for _ in range(n_bytes >> 20):
            h.update(buf)
        hash_t.append(time.perf_counter() - t)
        path.unlink()
    return {"write_s": float(np.median(write_t)), "sha256_s": float(np.median(hash_t))}


def parallel_scaling(root: Path, seq: str, work: Path, copies: int) -> list[dict[str, Any]]:
    """`pose` over `copies` identical sequences with 1 worker and with `copies` workers."""
    proot = work / "parallel"
    names = [f"{90 + i:02d}" for i in range(copies)]
    for name in names:
        dst = proot / "sequences" / name
        if not dst.exists():
            shutil.copytree(root / "sequences" / seq, dst)
    n = sum(len(Sequence(proot, s).frames) for s in names)
    rows = []
    for workers in (1, copies):
        out = work / f"out_parallel_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        os.sync()  # the copies are dirty pages: their write-back must not run during the timing
        elapsed, _ = _run_child(str(proot), names, str(out), "pose", True, workers)
        rows.append({"sequences": copies, "workers": workers, "seconds": elapsed, "scans_per_s": n / elapsed})
        shutil.rmtree(out)
    shutil.rmtree(proot)
    return rows


def storage_matrix(root: Path, seq: str, work: Path, n_scans: int, n_reads: int) -> list[dict[str, Any]]:
    labels = load_label_manifest()
    spec = HardSpec.from_manifest(labels, None)
    blocks = []
    for b in fuse_sequence(Sequence(root, seq), spec, FuseConfig(align="pose")):
        blocks.append(b)
        if len(blocks) == n_scans:
            break
    ref_dir = work / "storage_ref"
    fuse_dataset(root, ref_dir, [seq], FuseConfig(align="pose"), labels)  # manifest template
    rows = []
    variants = [("none", "none"), ("none", "gzip"), ("none", "lzf"), ("lzf", "lzf"), ("gzip", "gzip")]
    for chunk in (16384, 65536, 262144):
        for pc, ac in variants:
            st = CacheStorage(chunk_rows=chunk, points_compression=pc, aux_compression=ac)
            d = work / f"st_{chunk}_{pc}_{ac}"
            shutil.copytree(ref_dir, d)
            target = d / "sequences" / f"{seq}.h5"
            target.unlink()
            t = time.perf_counter()
            write_sequence_file(target, iter(blocks), {}, st)
            wt = time.perf_counter() - t
            rows.append({
                "chunk_rows": chunk, "points": pc, "aux": ac,
                "MiB": target.stat().st_size / 2**20,
                "write_ms_per_scan": 1000 * wt / len(blocks),
                "read_ms_warm": 1000 * _time_random_reads(d, n_reads, cold=False),
                "read_ms_cold": 1000 * _time_random_reads(d, max(n_reads // 4, 10), cold=True),
            })
            shutil.rmtree(d)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=200)
    ap.add_argument("--data", type=Path, default=None, help="existing SemanticKITTI root (else generated)")
    ap.add_argument("--sequence", default="00")
    ap.add_argument("--beams", type=int, default=64)
    ap.add_argument("--columns", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--storage-scans", type=int, default=60, help="scans used for the storage comparison")
    ap.add_argument("--reads", type=int, default=100, help="random block reads per storage variant")
    ap.add_argument("--skip-storage", action="store_true")
    ap.add_argument("--parallel", type=int, default=2,
                    help="also fuse this many copies of the sequence with 1 and with N workers (0: skip)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_fuse_"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"scans_requested": args.scans}
    if args.data is None:
        root = work / "data"
        t = time.perf_counter()
        result["generator"] = generate(root, args.sequence, args.scans, args.beams, args.columns, args.seed)
        result["generate_s"] = time.perf_counter() - t
    else:
        root = args.data
        result["generator"] = f"given: {root}"
    seq = Sequence(root, args.sequence)
    n = len(seq.frames)
    points = seq.read_scan(seq.frames[0]).shape[0]
    result.update(scans=n, points_per_scan=points, cpu_count=os.cpu_count())
    print(f"data: {result['generator']}; sequence {args.sequence}: {n} scans x {points} points")

    _evict_inputs(seq)
    result["read_only_cold_s"] = read_cold = _read_only(seq)
    _read_only(seq)  # warm the page cache so every mode reads from memory alike
    read_s = min(_read_only(seq) for _ in range(2))
    result["read_only_s"] = read_s
    modes: list[dict[str, Any]] = []
    for align in ("pose", "centroid", "icp", "planar", "auto"):
        out = work / f"out_{align}"
        shutil.rmtree(out, ignore_errors=True)
        elapsed, rss = _run_child(str(root), args.sequence, str(out), align, True)
        size = (out / "sequences" / f"{args.sequence}.h5").stat().st_size
        m = json.loads((out / "manifest.json").read_text())["metrics"]
        row = {"align": align, "seconds": elapsed, "scans_per_s": n / elapsed, "ratio_to_read": elapsed / read_s,
               "peak_rss_MiB": rss, "MiB": size / 2**20, "fused_rows": m["fused_rows"],
               "aligned": m["aligned_instances"]}
        if align in ("pose", "centroid"):
            compute, _ = _run_child(str(root), args.sequence, str(out), align, False)
            row["compute_only_s"] = compute
        if align == "pose":
            result["output_floor"] = output_floor(int(size), work)
            shutil.rmtree(out)
            _evict_inputs(seq)
            row["seconds_cold_input"], _ = _run_child(str(root), args.sequence, str(out), align, True)
        modes.append(row)
        shutil.rmtree(out)
    result["modes"] = modes

    print(f"\nread-only baseline: {read_s:.3f} s = {n / read_s:.0f} scans/s (page cache warm); "
          f"{read_cold:.3f} s = {n / read_cold:.0f} scans/s cold")
    cold = modes[0]["seconds_cold_input"]
    print(f"pose with cold inputs: {cold:.3f} s = {n / cold:.1f} scans/s = {cold / read_cold:.2f} x cold read")
    fl = result["output_floor"]
    floor = fl["write_s"] + fl["sha256_s"]
    print(f"floor of the output alone (write {modes[0]['MiB']:.0f} MiB to a new file {fl['write_s']:.3f} s + sha256 "
          f"{fl['sha256_s']:.3f} s): {floor:.3f} s = {floor / read_s:.2f} x warm read, {floor / read_cold:.2f} x cold read")
    hdr = f"{'align':<9}{'s':>8}{'scans/s':>9}{'x read':>8}{'compute s':>11}{'RSS MiB':>9}{'out MiB':>9}"
    print(hdr)
    for r in modes:
        comp = f"{r['compute_only_s']:.3f}" if "compute_only_s" in r else "-"
        print(f"{r['align']:<9}{r['seconds']:>8.3f}{r['scans_per_s']:>9.1f}{r['ratio_to_read']:>8.2f}"
              f"{comp:>11}{r['peak_rss_MiB']:>9.0f}{r['MiB']:>9.1f}")

    if args.parallel > 1:
        rows = parallel_scaling(root, args.sequence, work, args.parallel)
        result["parallel"] = rows
        print(f"\n{args.parallel} copies of the sequence, align pose ({os.cpu_count()} CPUs)")
        for r in rows:
            print(f"  --workers {r['workers']}: {r['seconds']:.3f} s = {r['scans_per_s']:.1f} scans/s in all")

    if not args.skip_storage:
        rows = storage_matrix(root, args.sequence, work, min(args.storage_scans, n), args.reads)
        result["storage"] = rows
        print(f"\nstorage ({min(args.storage_scans, n)} scans; one random scan read through FusedCache)")
        print(f"{'chunk':>8} {'points':<6} {'aux':<5}{'MiB':>8}{'write ms':>10}{'read warm ms':>14}{'read cold ms':>14}")
        for r in rows:
            print(f"{r['chunk_rows']:>8} {r['points']:<6} {r['aux']:<5}{r['MiB']:>8.1f}{r['write_ms_per_scan']:>10.2f}"
                  f"{r['read_ms_warm']:>14.2f}{r['read_ms_cold']:>14.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
