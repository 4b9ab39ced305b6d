"""`m2s fuse` as a library call: validate inputs, fuse sequences (in parallel), resume, manifest."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import queue as queue_mod
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from m2s.artifacts import (
    ArtifactInput,
    FileRecord,
    Manifest,
    check_output_folder,
    compute_content_id,
    existing_artifact,
    manifest_path,
    new_manifest,
    readable_manifest,
    verify_files,
    write_manifest,
)
from m2s.data.semantickitti import Sequence, open_sequences
from m2s.errors import ConfigError, DataError
from m2s.fuse.cache import (
    DEFAULT_STORAGE,
    FORMAT_VERSION,
    KIND,
    SEQUENCES_DIR,
    CacheStorage,
    read_sequence_attrs,
    remove_stale_temporaries,
    sequence_attrs_json,
    sequence_file,
    write_sequence_file,
)
from m2s.fuse.config import ALIGN_VERSION, FuseConfig
from m2s.fuse.fusion import HardSpec, SequenceStats, fuse_sequence
from m2s.io_utils import sha256_file
from m2s.labels import LabelManifest

ProgressState = Literal["start", "scan", "skipped", "done"]


@dataclass(frozen=True)
class FuseProgress:
    sequence: str
    state: ProgressState
    done: int
    total: int


ProgressFn = Callable[[FuseProgress], None]


@dataclass
class FuseResult:
    out: Path
    manifest: Manifest
    up_to_date: bool  # nothing to do: the same inputs and config were already fused here
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # completed by an earlier (killed) run


@dataclass(frozen=True)
class _Task:
    root: Path
    sequence: str
    out: Path
    cfg: FuseConfig
    spec: HardSpec
    storage: CacheStorage
    attrs: dict[str, Any]


@dataclass(frozen=True)
class _Done:
    sequence: str
    record: FileRecord
    stats: dict[str, Any]


def _config_dict(
    sequences: list[str], cfg: FuseConfig, spec: HardSpec, labels: LabelManifest, storage: CacheStorage
) -> dict[str, Any]:
    return {
        "sequences": sequences,
        "window": cfg.window,
        "future": cfg.future,
        "align": cfg.align,
        "moving_threshold": cfg.moving_threshold,
        "icp": cfg.icp.model_dump(),
        "planar": cfg.planar.model_dump(),
        "align_version": ALIGN_VERSION,
        "hard_classes": {"names": spec.class_names, "raw_ids": [int(r) for r in spec.raw_ids]},
        "label_digest": labels.digest(),
        "storage": storage.model_dump(),
    }


def _sequence_attrs(seq: str, fingerprint: str, config: dict[str, Any]) -> dict[str, Any]:
    shared = {k: v for k, v in config.items() if k != "sequences"}
    key_payload = {"format_version": FORMAT_VERSION, "sequence": seq, "fingerprint": fingerprint, "config": shared}
    return {
        "sequence": seq,
        "window": config["window"],
        "future": config["future"],
        "align": config["align"],
        "hard_classes": sequence_attrs_json(config["hard_classes"]["names"]),
        "hard_raw_ids": config["hard_classes"]["raw_ids"],
        "label_digest": config["label_digest"],
        "input_fingerprint": fingerprint,
        "config": sequence_attrs_json(shared),
        "sequence_key": hashlib.sha256(sequence_attrs_json(key_payload).encode()).hexdigest(),
    }


def _validate(seqs: list[Sequence], labels: LabelManifest) -> None:
    """Fail before writing anything on what can be checked cheaply up front."""
    test_split = set(labels.split.get("test", []))
    for s in seqs:
        if not s.has_labels:
            hint = " (a test-split sequence)" if int(s.sequence) in test_split else ""
            raise DataError(
                f"{s.path}: sequence {s.sequence}{hint} has no labels folder; fusion needs instance labels, "
                "so test-split scans cannot be fused - drop it from --sequences"
            )
        missing = [f for f in s.frames if not s.label_path(f).is_file()]
        if missing:
            raise DataError(
                f"{s.label_path(missing[0])}: label file missing ({len(missing)} scan(s) of sequence "
                f"{s.sequence} have no .label)"
            )
        _ = s.poses  # reads calib + poses; refuses fewer poses than scans


def _run_task(task: _Task, progress: Any = None) -> _Done:
    """Fuse one sequence into its final file (runs in a worker process or inline)."""

    def on_scan(done: int, total: int) -> None:
        if progress is not None:
            progress(FuseProgress(task.sequence, "scan", done, total))

    seq = Sequence(task.root, task.sequence)
    stats = SequenceStats(task.spec.class_names)
    if progress is not None:
        progress(FuseProgress(task.sequence, "start", 0, len(seq.frames)))
    final = sequence_file(task.out, task.sequence)
    remove_stale_temporaries(task.out, task.sequence)
    blocks = fuse_sequence(seq, task.spec, task.cfg, stats, on_scan)
    # Stats are complete only once the stream is consumed: stored as a late attribute.
    write_sequence_file(
        final, blocks, task.attrs, task.storage, late_attrs=lambda: {"stats": sequence_attrs_json(stats.to_dict())}
    )
    record = FileRecord(
        path=f"{SEQUENCES_DIR}/{task.sequence}.h5", sha256=sha256_file(final), size=final.stat().st_size
    )
    if progress is not None:
        progress(FuseProgress(task.sequence, "done", stats.scans, stats.scans))
    return _Done(task.sequence, record, stats.to_dict())


class _QueueProgress:
    """Picklable progress sink for worker processes (a managed queue read by the parent)."""

    def __init__(self, q: Any) -> None:
        self.q = q

    def __call__(self, event: FuseProgress) -> None:
        self.q.put(event)


def _combine_metrics(stats: dict[str, dict[str, Any]], records: list[FileRecord], names: list[str]) -> dict[str, Any]:
    classes: dict[str, dict[str, Any]] = {}
    for name in names:
        inst = sum(s["classes"][name]["instances"] for s in stats.values())
        single = sum(s["classes"][name]["single_points"] for s in stats.values())
        fused = sum(s["classes"][name]["fused_points"] for s in stats.values())
        classes[name] = {
            "instances": inst,
            "unique_instances": sum(s["classes"][name]["unique_instances"] for s in stats.values()),
            "mean_points_single": single / inst if inst else 0.0,
            "mean_points_fused": fused / inst if inst else 0.0,
            "densification": fused / single if single else 0.0,
        }
    aligned: dict[str, int] = {}
    for s in stats.values():
        for k, v in s["aligned"].items():
            aligned[k] = aligned.get(k, 0) + v
    return {
        "scans": sum(s["scans"] for s in stats.values()),
        "rows": sum(s["rows"] for s in stats.values()),
        "fused_rows": sum(s["fused_rows"] for s in stats.values()),
        "bytes": sum(r.size for r in records),
        "aligned_instances": aligned,
        "classes": classes,
        "sequences": stats,
    }


def _completed(out: Path, seq: str, key: str) -> dict[str, Any] | None:
    p = sequence_file(out, seq)
    if not p.is_file():
        return None
    attrs = read_sequence_attrs(p)
    if not attrs or attrs.get("sequence_key") != key or "stats" not in attrs:
        return None
    return attrs


def fuse_dataset(
    root: str | Path,
    out: str | Path,
    sequences: list[str],
    cfg: FuseConfig,
    labels: LabelManifest,
    *,
    workers: int = 1,
    storage: CacheStorage = DEFAULT_STORAGE,
    on_progress: ProgressFn | None = None,
) -> FuseResult:
    """Fuse `sequences` of the SemanticKITTI tree at `root` into the cache folder `out`.

    Resumable: sequence files already complete for the same inputs and config are kept; a
    re-run with nothing to do returns ``up_to_date=True`` without touching anything.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    root, out = Path(root), Path(out)
    if not sequences:
        raise ConfigError("no sequences to fuse")
    seqs = open_sequences(root, sequences)
    names = [s.sequence for s in seqs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sequence listed twice: {names}")
    spec = HardSpec.from_manifest(labels, cfg.hard_classes)
    check_output_folder(out, KIND)  # an unreadable manifest of ours is simply replaced
    _validate(seqs, labels)

    fingerprints = {s.sequence: s.fingerprint() for s in seqs}
    combined = hashlib.sha256("".join(f"{k}:{v};" for k, v in sorted(fingerprints.items())).encode()).hexdigest()
    config = json.loads(sequence_attrs_json(_config_dict(names, cfg, spec, labels, storage)))
    inputs = [ArtifactInput(kind="raw-dataset", id=combined[:24], path=str(root.resolve()), fingerprint=combined)]
    content_id = compute_content_id(KIND, config, inputs)
    seq_attrs = {s: _sequence_attrs(s, fingerprints[s], config) for s in names}

    existing = existing_artifact(out, KIND, content_id, verify=False)
    if existing is not None and _intact(out, existing, seq_attrs):
        return FuseResult(out, existing, up_to_date=True)

    # Digests the previous manifest recorded: a completed file that no longer matches them was
    # corrupted since, and is fused again rather than kept (and blessed with a new digest).
    recorded = _recorded_files(out)
    # From here on files change: drop the old manifest first so a killed run never leaves a
    # manifest describing files that are being replaced.
    manifest_path(out).unlink(missing_ok=True)
    stats: dict[str, dict[str, Any]] = {}
    records: dict[str, FileRecord] = {}
    tasks: list[_Task] = []
    skipped: list[str] = []
    for s in names:
        done = _completed(out, s, seq_attrs[s]["sequence_key"])
        rel = f"{SEQUENCES_DIR}/{s}.h5"
        record = None
        if done is not None:
            p = sequence_file(out, s)
            record = FileRecord(path=rel, sha256=sha256_file(p), size=p.stat().st_size)
            if rel in recorded and recorded[rel] != (record.sha256, record.size):
                done = None  # corrupted since the earlier run recorded it
        if done is not None and record is not None:
            stats[s] = json.loads(done["stats"])
            records[s] = record
            skipped.append(s)
            remove_stale_temporaries(out, s)
            if on_progress is not None:
                on_progress(FuseProgress(s, "skipped", stats[s]["scans"], stats[s]["scans"]))
        else:
            tasks.append(_Task(root, s, out, cfg, spec, storage, seq_attrs[s]))

    for done_task in _execute(tasks, workers, on_progress):
        stats[done_task.sequence] = done_task.stats
        records[done_task.sequence] = done_task.record

    ordered = [records[s] for s in names]
    metrics = _combine_metrics({s: stats[s] for s in names}, ordered, spec.class_names)
    manifest = new_manifest(KIND, config, inputs, files=ordered, metrics=metrics)
    write_manifest(out, manifest)
    return FuseResult(out, manifest, up_to_date=False, written=[t.sequence for t in tasks], skipped=skipped)


def _recorded_files(out: Path) -> dict[str, tuple[str, int]]:
    """(sha256, size) per file of the manifest in `out`, if there is a readable one of ours."""
    manifest = readable_manifest(out)
    if manifest is None or manifest.kind != KIND:
        return {}
    return {r.path: (r.sha256, r.size) for r in manifest.files}


def _intact(out: Path, manifest: Manifest, seq_attrs: dict[str, dict[str, Any]]) -> bool:
    """No-op check: every listed file matches its recorded size and sha256 (≈1.3 s per GB on the
    2-core machine, benchmarks/bench_integrity.py), and the sequence keys match. A corrupted
    cache is never reported up to date: its damaged sequences are fused again."""
    if verify_files(out, manifest):
        return False
    return all(_completed(out, s, a["sequence_key"]) is not None for s, a in seq_attrs.items())


def _execute(tasks: list[_Task], workers: int, on_progress: ProgressFn | None) -> list[_Done]:
    if not tasks:
        return []
    if workers == 1 or len(tasks) == 1:
        return [_run_task(t, on_progress) for t in tasks]
    # fork where available: the parent holds no open HDF5 file here, and a spawned worker would
    # re-import the caller's main module (the CLI imports torch: seconds per worker).
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    results: list[_Done] = []
    with ctx.Manager() as manager:
        q = manager.Queue()
        sink = _QueueProgress(q) if on_progress is not None else None
        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx)
        try:
            pending: set[Future[_Done]] = {pool.submit(_run_task, t, sink) for t in tasks}
            while pending:
                finished, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                _drain(q, on_progress)
                for fut in finished:
                    results.append(fut.result())  # re-raises the worker's error
            _drain(q, on_progress)
        finally:
            # On error, sequences already running finish (atomically); queued ones are dropped.
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _drain(q: Any, on_progress: ProgressFn | None) -> None:
    while True:
        try:
            event = q.get_nowait()
        except (queue_mod.Empty, EOFError, OSError):
            return
        if on_progress is not None:
            on_progress(event)
