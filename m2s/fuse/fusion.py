"""The fusion algorithm: stream a sequence once and emit, per scan, its points plus the aligned
points of its hard-class instances taken from neighbouring scans.

Instance identity: an instance is keyed by its instance id (high 16 bits of the label word)
among the *hard-class* points of the sequence, regardless of the semantic id. In SemanticKITTI
instance ids are per sequence and one object keeps its id when its semantic id flips between the
static and moving variants (``person`` <-> ``moving-person``), so keying by (semantic, instance)
would miss exactly the moving frames. Points of non-hard classes are never considered, even when
they share an instance id with a hard instance, and instance id 0 ("no instance") is never fused.

Every `.bin`/`.label` is read once: a sliding window keeps only the hard-instance points of the
neighbouring scans (plus, with ``future``, the full scans not yet emitted).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from m2s.data.semantickitti import Sequence
from m2s.errors import ConfigError, DataError
from m2s.fuse.align import ExtentMatch, box_extents, box_yaw, concat_ranges, extent_match, icp_align_batch
from m2s.fuse.config import FuseConfig
from m2s.labels import LabelManifest

_N_RAW = 1 << 16  # semantic raw ids are 16-bit: lookup tables cover all of them


@dataclass(frozen=True)
class HardSpec:
    """Lookup tables over all 16-bit semantic raw ids (vectorised membership tests)."""

    class_names: list[str]  # hard train-class names; index = class index used in the stats
    raw_ids: np.ndarray  # int64 raw ids of the hard classes (incl. moving-*)
    hard_lut: np.ndarray  # bool (65536,)
    moving_lut: np.ndarray  # bool (65536,): moving-* raw ids
    class_lut: np.ndarray  # int64 (65536,): class index of hard raw ids, -1 otherwise
    known_lut: np.ndarray  # bool (65536,): raw ids the label map's learning_map knows

    @classmethod
    def from_manifest(cls, labels: LabelManifest, hard_classes: list[str] | None) -> HardSpec:
        names = list(labels.hard_classes) if hard_classes is None else list(hard_classes)
        if not names:
            raise ConfigError("no hard classes: the label manifest lists none and --hard-classes was not given")
        if len(set(names)) != len(names):
            raise ConfigError(f"hard classes listed twice: {names}")
        raw_ids = labels.raw_ids_of_train_classes(names)  # ConfigError on unknown names
        names = sorted(names, key=labels.train_names.index)  # canonical order: by train id
        hard_lut = np.zeros(_N_RAW, dtype=bool)
        hard_lut[raw_ids] = True
        moving_lut = np.zeros(_N_RAW, dtype=bool)
        moving_lut[labels.moving_raw_ids] = True
        class_lut = np.full(_N_RAW, -1, dtype=np.int64)
        for raw in raw_ids:
            class_lut[raw] = names.index(labels.train_names[labels.learning_map[int(raw)]])
        known_lut = np.zeros(_N_RAW, dtype=bool)
        known_lut[np.fromiter(labels.learning_map.keys(), dtype=np.int64)] = True
        return cls(names, raw_ids, hard_lut, moving_lut, class_lut, known_lut)

    def check_known(self, words: np.ndarray, source: str) -> None:
        """Refuse label words whose raw semantic id the label map does not know."""
        unknown = ~self.known_lut[words & np.uint32(0xFFFF)]
        if unknown.any():
            bad = np.unique(words[unknown] & np.uint32(0xFFFF))[:10].tolist()
            raise DataError(
                f"{source}: unknown raw semantic id(s) {bad} on {int(unknown.sum())} point(s); "
                "the label map has no learning_map entry for them (pass the matching --labels)"
            )


@dataclass
class HardPoints:
    """The hard-instance points of one scan, grouped by instance id (contiguous, ids ascending).

    Coordinates are stored column-wise (3, M): the per-pair transforms and row selections of
    :func:`fuse_target` then run on contiguous 1-D arrays, several times faster than on (M,3) rows.
    """

    frame: int
    coords: np.ndarray  # float64 (3,M): x, y, z in the scan's own LiDAR frame
    rem: np.ndarray  # float32 (M,)
    word: np.ndarray  # uint32 (M,)
    ids: np.ndarray  # uint32 (U,) instance ids, ascending
    counts: np.ndarray  # int64 (U,)
    starts: np.ndarray  # int64 (U+1,): rows of instance j are starts[j]:starts[j+1]
    centroid: np.ndarray  # float64 (U,3)
    moving: np.ndarray  # bool (U,): any point carries a moving-* raw id
    cls: np.ndarray  # int64 (U,): majority hard-class index


def extract_hard(frame: int, points: np.ndarray, labels: np.ndarray, spec: HardSpec) -> HardPoints:
    """Group the hard-class points with a non-zero instance id by instance (vectorised)."""
    idx = np.flatnonzero(spec.hard_lut[labels & np.uint32(0xFFFF)])
    inst = (labels[idx] >> np.uint32(16)).astype(np.uint16)  # 16-bit keys: numpy radix-sorts them
    keep = inst != 0
    idx, inst = idx[keep], inst[keep]
    perm = np.argsort(inst, kind="stable")  # stable: keep scan order within an instance
    order = idx[perm]
    inst = inst[perm]
    m = order.shape[0]
    # Runs of equal ids in the sorted keys (np.unique would sort them again).
    first = np.flatnonzero(np.concatenate(([m > 0], inst[1:] != inst[:-1])))
    starts = np.append(first, m).astype(np.int64)
    counts = np.diff(starts)
    n = first.shape[0]
    rows = np.take(points, order, axis=0)  # take: far faster than fancy indexing of 2-D rows
    coords = np.ascontiguousarray(rows[:, :3].T, dtype=np.float64)
    word = labels[order]
    sem = word & np.uint32(0xFFFF)
    n_cls = len(spec.class_names)
    if n:
        centroid = np.add.reduceat(coords, first, axis=1).T / counts[:, None]
        moving = np.logical_or.reduceat(spec.moving_lut[sem], first)
        seg = np.repeat(np.arange(n), counts)
        votes = np.bincount(seg * n_cls + spec.class_lut[sem], minlength=n * n_cls).reshape(n, n_cls)
        cls = votes.argmax(axis=1)
    else:
        centroid, moving, cls = np.zeros((0, 3)), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    return HardPoints(
        frame=frame,
        coords=coords,
        rem=np.ascontiguousarray(rows[:, 3]),
        word=word,
        ids=inst[first].astype(np.uint32),
        counts=counts,
        starts=starts,
        centroid=centroid,
        moving=moving,
        cls=cls,
    )


@dataclass
class FusedScan:
    """One emitted block: the target scan's rows exactly as read, then the fused rows.

    Kept as two parts so the writer streams them without concatenating; `points`, `label` and
    `source` give the whole block.
    """

    frame: int
    target_points: np.ndarray  # float32 (N,4), the .bin content
    target_label: np.ndarray  # uint32 (N,), the .label content
    fused_points: np.ndarray  # float32 (K,4)
    fused_label: np.ndarray  # uint32 (K,)
    fused_source: np.ndarray  # int32 (K,)

    @property
    def n_target(self) -> int:
        return int(self.target_points.shape[0])

    @property
    def n_rows(self) -> int:
        return self.n_target + int(self.fused_points.shape[0])

    @property
    def target_source(self) -> np.ndarray:
        return np.full(self.n_target, self.frame, dtype=np.int32)

    @property
    def points(self) -> np.ndarray:
        return np.concatenate([self.target_points, self.fused_points])

    @property
    def label(self) -> np.ndarray:
        return np.concatenate([self.target_label, self.fused_label])

    @property
    def source(self) -> np.ndarray:
        return np.concatenate([self.target_source, self.fused_source])


def _rigid_into(
    out: np.ndarray,
    coords: np.ndarray,
    rows: np.ndarray | None,
    m: np.ndarray,
    shift: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> None:
    """out[:, k] = (R @ p + t)_k for the columns `coords` (3,M) restricted to the boolean `rows`
    (all if None), plus a per-instance `shift` (U,3) over runs of `counts`.

    Column by column on contiguous float64 arrays: several times faster than an (N,3) @ (3,3)
    product plus a strided row gather.
    """
    a, b, c = (coords[k] if rows is None else coords[k][rows] for k in range(3))
    for k in range(3):
        col = a * m[k, 0]
        col += b * m[k, 1]
        col += c * m[k, 2]
        col += m[k, 3]
        if shift is not None:
            if counts is None:
                raise ValueError("a per-instance shift needs `counts`, the rows of each instance")
            col += np.repeat(shift[:, k], counts)
        out[:, k] = col


_ALIGN_COUNTERS = ("pose", "centroid", "icp", "icp_fallback", "planar", "planar_fallback")


@dataclass
class SequenceStats:
    """Per-class counters of one sequence (JSON-friendly via :meth:`to_dict`)."""

    class_names: list[str]
    instances: np.ndarray = field(init=False)  # (scan, instance) occurrences per class
    single_points: np.ndarray = field(init=False)  # sum of points per instance in its own scan
    fused_points: np.ndarray = field(init=False)  # the same after fusion
    unique_ids: list[set[int]] = field(init=False)
    aligned: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_ALIGN_COUNTERS, 0))
    scans: int = 0
    rows: int = 0
    fused_rows: int = 0

    def __post_init__(self) -> None:
        c = len(self.class_names)
        self.instances = np.zeros(c, dtype=np.int64)
        self.single_points = np.zeros(c, dtype=np.int64)
        self.fused_points = np.zeros(c, dtype=np.int64)
        self.unique_ids = [set() for _ in range(c)]

    def to_dict(self) -> dict:
        return {
            "scans": self.scans,
            "rows": self.rows,
            "fused_rows": self.fused_rows,
            "aligned": dict(self.aligned),
            "classes": {
                name: {
                    "instances": int(self.instances[i]),
                    "unique_instances": len(self.unique_ids[i]),
                    "single_points": int(self.single_points[i]),
                    "fused_points": int(self.fused_points[i]),
                }
                for i, name in enumerate(self.class_names)
            },
        }


def _neighbours(frames_in_window: list[int], f: int, cfg: FuseConfig) -> list[int]:
    lo, hi = f - cfg.window, (f + cfg.window if cfg.future else f)
    return [g for g in frames_in_window if lo <= g <= hi and g != f]


# An ICP job: (first output row of each instance block, its rows, its target instance index,
# initial shift (U,3) or None for the centroid shift).
IcpJob = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


def _icp_refine(
    out_pts: np.ndarray,
    tgt: HardPoints,
    jobs: list[IcpJob],
    cfg: FuseConfig,
    stats: SequenceStats | None,
    planar: bool = False,
) -> None:
    """ICP of every instance block listed in `jobs` onto its target instance, in one batch, in
    place: `icp` (centroid start, 3-D) or, with `planar`, `planar` (extremes start, bird's-eye)."""
    first = np.concatenate([j[0] for j in jobs])
    counts = np.concatenate([j[1] for j in jobs])
    target = np.concatenate([j[2] for j in jobs])
    init = np.concatenate([j[3] for j in jobs if j[3] is not None]) if planar else None
    rows = concat_ranges(first, counts)  # all blocks back to back
    block = out_pts[rows, :3].astype(np.float64)
    icp_cfg = cfg.planar if planar else cfg.icp
    res = icp_align_batch(block, counts, tgt.coords.T, tgt.starts, target, icp_cfg, init, planar)
    seg = np.repeat(np.arange(counts.shape[0]), counts)
    out_pts[rows, :3] = np.einsum("rij,rj->ri", res.rotation[seg], block) + res.translation[seg]
    if stats is not None:
        key = "planar" if planar else "icp"
        used = int(res.used_icp.sum())
        stats.aligned[key] += used
        stats.aligned[f"{key}_fallback"] += int(counts.shape[0] - used)


@dataclass
class _TargetBoxes:
    """Per target instance: the axes of its bounding rectangle and its extremes along them."""

    yaw: np.ndarray  # (U,)
    ext: np.ndarray  # (U,4)

    @classmethod
    def of(cls, tgt: HardPoints, steps: int) -> _TargetBoxes:
        xyz = tgt.coords.T
        yaw = box_yaw(xyz, tgt.starts, steps)
        return cls(yaw, box_extents(xyz, tgt.starts, yaw))


def _extent_match(
    boxes: _TargetBoxes, pts: np.ndarray, counts: np.ndarray, tidx: np.ndarray, rel: np.ndarray
) -> ExtentMatch:
    """:func:`extent_match` of the pose-aligned instance blocks `pts` (rows of `counts`) onto their
    target instances `tidx`, in the target instances' axes."""
    yaw = boxes.yaw[tidx]
    src_ext = box_extents(pts, np.concatenate(([0], np.cumsum(counts))), yaw)
    return extent_match(src_ext, boxes.ext[tidx], yaw, np.broadcast_to(rel[:2, 3], (counts.shape[0], 2)))


def fuse_target(
    tgt: HardPoints,
    sources: list[HardPoints],
    rel_transforms: list[np.ndarray],
    cfg: FuseConfig,
    stats: SequenceStats | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Align the instances of `sources` that also appear in `tgt` into `tgt`'s LiDAR frame.

    `rel_transforms[i]` maps LiDAR points of `sources[i]` into the target's LiDAR frame.
    Returns (points float32 (K,4), label uint32 (K,), source int32 (K,), fused count per target
    instance int64 (U,)). Rows are ordered by source scan (as given), then by instance id.
    """
    fused_count = np.zeros(tgt.ids.shape[0], dtype=np.int64)
    # First pass: which instances of each source are in the target, and how many rows in all,
    # so the output is allocated once.
    plan = []
    for src, rel in zip(sources, rel_transforms, strict=True):
        common = np.isin(src.ids, tgt.ids)
        if common.any():
            mask = None if common.all() else np.repeat(common, src.counts)
            plan.append((src, rel, common, mask, int(src.counts[common].sum())))
    total = sum(p[4] for p in plan)
    out_pts = np.empty((total, 4), dtype=np.float32)
    out_word = np.empty(total, dtype=np.uint32)
    out_src = np.empty(total, dtype=np.int32)
    icp_jobs: list[IcpJob] = []
    planar_jobs: list[IcpJob] = []
    # auto needs the extremes of every instance (motion test), planar of every one it aligns.
    use_boxes = cfg.align in ("auto", "planar") and tgt.ids.shape[0] > 0
    boxes = _TargetBoxes.of(tgt, cfg.planar.yaw_steps) if use_boxes else None
    a = 0
    for src, rel, common, mask, n_rows in plan:
        b = a + n_rows
        counts = src.counts[common]
        tidx = np.searchsorted(tgt.ids, src.ids[common])
        c_src = src.centroid[common] @ rel[:3, :3].T + rel[:3, 3]
        shift = tgt.centroid[tidx] - c_src
        n = counts.shape[0]
        none = np.zeros(n, dtype=bool)
        use_centroid, use_icp, use_planar = none, none, none
        if cfg.align == "centroid":
            use_centroid = ~none
        elif cfg.align == "icp":
            use_icp = ~none
        elif cfg.align == "planar":
            use_planar = ~none
        inst_shift = np.where(use_centroid[:, None], shift, 0.0) if use_centroid.any() else None
        _rigid_into(out_pts[a:b], src.coords, mask, rel, inst_shift, counts)
        out_pts[a:b, 3] = src.rem if mask is None else src.rem[mask]
        out_word[a:b] = src.word if mask is None else src.word[mask]
        out_src[a:b] = src.frame
        starts = a + np.concatenate(([0], np.cumsum(counts)))
        if boxes is not None:
            match = _extent_match(boxes, out_pts[a:b, :3].astype(np.float64), counts, tidx, rel)
            if cfg.align == "auto":
                # Moving by its label in either scan, or because its extremes moved (a label can be
                # wrong; a centroid moves with the view, extremes that all move the same way do not).
                use_planar = src.moving[common] | tgt.moving[tidx] | (match.displacement > cfg.moving_threshold)
            k = np.flatnonzero(use_planar)
            if k.shape[0]:
                planar_jobs.append((starts[k], counts[k], tidx[k], match.shift[k]))
        if use_icp.any():
            k = np.flatnonzero(use_icp)
            icp_jobs.append((starts[k], counts[k], tidx[k], None))
        if stats is not None:
            stats.aligned["pose"] += int(n - use_centroid.sum() - use_icp.sum() - use_planar.sum())
            stats.aligned["centroid"] += int(use_centroid.sum())
        fused_count += np.bincount(tidx, weights=counts, minlength=fused_count.shape[0]).astype(np.int64)
        a = b
    if icp_jobs:
        _icp_refine(out_pts, tgt, icp_jobs, cfg, stats)
    if planar_jobs:
        _icp_refine(out_pts, tgt, planar_jobs, cfg, stats, planar=True)
    return out_pts, out_word, out_src, fused_count


def fuse_sequence(
    seq: Sequence,
    spec: HardSpec,
    cfg: FuseConfig,
    stats: SequenceStats | None = None,
    on_scan: Callable[[int, int], None] | None = None,
    prefetch: int = 4,
) -> Iterator[FusedScan]:
    """Yield one :class:`FusedScan` per frame of `seq`, in frame order, reading each file once.

    `on_scan(done, total)` is called after each emitted scan; `prefetch` scans are read ahead
    in a background thread (0: read inline).
    """
    frames = seq.frames
    poses = seq.poses  # validated: one LiDAR-frame pose per frame
    window: deque[HardPoints] = deque()  # hard points of frames in [f - K, f + K], ascending
    pending: deque[tuple[int, np.ndarray, np.ndarray]] = deque()  # full scans read, not yet emitted
    total = len(frames)
    # Each file read once, ahead of use; closing stops the reader thread if the caller stops early.
    with contextlib.closing(seq.iter_scans(frames, prefetch=prefetch)) as scans:
        r = 0
        for i, f in enumerate(frames):
            horizon = f + cfg.window if cfg.future else f
            while r < total and (r <= i or frames[r] <= horizon):
                g, points, labels = next(scans)
                if points.shape[0] == 0:
                    raise DataError(f"{seq.scan_path(g)}: empty scan (0 points) in sequence {seq.sequence} frame {g}")
                spec.check_known(labels, f"{seq.label_path(g)} (sequence {seq.sequence} frame {g})")
                window.append(extract_hard(g, points, labels, spec))
                pending.append((g, points, labels))
                r += 1
            while window and window[0].frame < f - cfg.window:
                window.popleft()
            g, points, labels = pending.popleft()
            assert g == f  # frames are read in order
            tgt = next(h for h in window if h.frame == f)
            nb = _neighbours([h.frame for h in window], f, cfg)
            sources = [h for h in window if h.frame in nb]
            inv_f = np.linalg.inv(poses[f])
            rels = [inv_f @ poses[h.frame] for h in sources]
            fpts, flab, fsrc, fused_count = fuse_target(tgt, sources, rels, cfg, stats)
            block = FusedScan(f, points, labels, fpts, flab, fsrc)
            if stats is not None:
                stats.scans += 1
                stats.rows += block.n_rows
                stats.fused_rows += fpts.shape[0]
                n_cls = len(spec.class_names)
                stats.instances += np.bincount(tgt.cls, minlength=n_cls)
                stats.single_points += np.bincount(tgt.cls, weights=tgt.counts, minlength=n_cls).astype(np.int64)
                stats.fused_points += np.bincount(tgt.cls, weights=tgt.counts + fused_count, minlength=n_cls).astype(
                    np.int64
                )
                for c, iid in zip(tgt.cls.tolist(), tgt.ids.tolist(), strict=True):
                    stats.unique_ids[c].add(iid)
            yield block
            if on_scan is not None:
                on_scan(i + 1, total)
