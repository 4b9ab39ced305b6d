"""The evaluation runner: stream scans through one or more models, score, export, write the artifact.

The predictor is injected (anything with ``predict(list[np.ndarray]) -> list[np.ndarray]``), so the
whole pipeline is testable without a network. Scans are streamed in batches: memory holds one batch
plus fixed-size confusion matrices, whatever the number of scans.

Metrics are always computed on the original scan's points: all points of a raw scan, or the first
``n_target`` rows of a fused-cache block (whether the model saw the fused rows or not), so a teacher
on fused input and students on single scans are compared on exactly the same points.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field, field_validator

from m2s import __version__
from m2s.artifacts import (
    MANIFEST_NAME,
    ArtifactInput,
    Manifest,
    check_output_folder,
    describe_files,
    new_manifest,
    write_manifest,
)
from m2s.data.semantickitti import Sequence, normalize_sequence_id, open_sequences
from m2s.errors import ConfigError, DataError
from m2s.evaluation.export import LabelExporter
from m2s.evaluation.metrics import (
    DEFAULT_DISTANCE_EDGES,
    BandedConfusion,
    ConfusionAccumulator,
    band_labels,
    horizontal_distance,
)
from m2s.evaluation.plots import safe_name, write_plots
from m2s.evaluation.report import (
    METRICS_FILE,
    TABLE_FILE,
    EvaluationReport,
    ModelResult,
    model_result,
    write_metrics_json,
    write_table_csv,
)
from m2s.evaluation.submission import (
    SUBMISSION_ZIP,
    Expected,
    SubmissionCheck,
    check_submission,
    expected_from_dataset,
    write_submission_zip,
)
from m2s.labels import LabelManifest

InputKind = Literal["single", "fused"]
ProgressFn = Callable[[int, int], None]  # (scans done, scans total)
PREDICTIONS_DIR = "predictions"
PLOTS_DIR = "plots"
DISTANCE_MEASURE = "horizontal"  # sqrt(x^2 + y^2) in the LiDAR frame, see metrics.horizontal_distance


class ScanPredictor(Protocol):
    def predict(self, points: list[np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class ModelUnderTest:
    """A predictor plus what the runner must know about the model behind it."""

    name: str
    predictor: ScanPredictor
    label_digest: str
    voxel_size: float | None = None
    input_kind: InputKind = "single"  # what the model was trained on
    artifact: ArtifactInput | None = None  # lineage entry of the model artifact

    @classmethod
    def from_object(cls, obj: Any, **overrides: Any) -> ModelUnderTest:
        """Wrap any object exposing ``predict``, ``name`` and ``label_digest`` (and optionally
        ``voxel_size`` / ``input_kind``)."""
        fields: dict[str, Any] = {
            "name": getattr(obj, "name", None),
            "label_digest": getattr(obj, "label_digest", None),
            "voxel_size": getattr(obj, "voxel_size", None),
            "input_kind": getattr(obj, "input_kind", "single"),
        }
        fields.update(overrides)
        if not fields["name"] or not fields["label_digest"]:
            raise ConfigError(f"predictor {obj!r} does not expose a name and a label_digest")
        return cls(predictor=obj, **fields)


@dataclass(frozen=True)
class ScanItem:
    sequence: str
    frame: int
    points: np.ndarray  # float32 (T,4): the scan, or a fused block whose first n_target rows are the scan
    n_target: int
    gt_train: np.ndarray | None  # int64 (n_target,) train ids, None for a sequence without labels


class ScanSource(Protocol):
    kind: str
    supports_fused: bool
    label_digest: str
    voxel_size: float | None

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[ScanItem]: ...
    def describe(self) -> ArtifactInput: ...
    def expected_scans(self) -> Expected: ...


class KittiScanSource:
    """Raw scans of SemanticKITTI-layout sequences; sequences without `labels/` are predicted only."""

    kind = "raw-dataset"
    supports_fused = False
    voxel_size: float | None = None

    def __init__(self, root: str | Path, sequences: list[str] | None, labels: LabelManifest) -> None:
        self.root = Path(root)
        self.labels = labels
        self.label_digest = labels.digest()  # raw labels are read through this very manifest
        self.sequences: list[Sequence] = open_sequences(self.root, sequences)

    def __len__(self) -> int:
        return sum(len(s.frames) for s in self.sequences)

    def __iter__(self) -> Iterator[ScanItem]:
        for seq in self.sequences:
            # Read ahead in a thread: the disk works while the model runs.
            for frame, points, words in seq.iter_scans(labels=seq.has_labels):
                gt = None if words is None else self.labels.to_train(words, source=seq.label_path(frame))
                yield ScanItem(seq.sequence, frame, points, points.shape[0], gt)

    def expected_scans(self) -> Expected:
        """Every scan of the sequences with its point count from the `.bin` size (as the official
        submission validator counts them)."""
        return expected_from_dataset(self.root, [s.sequence for s in self.sequences])

    def describe(self) -> ArtifactInput:
        h = hashlib.sha256()
        for seq in self.sequences:
            h.update(seq.fingerprint().encode())
        digest = h.hexdigest()
        return ArtifactInput(kind=self.kind, id=digest[:24], path=str(self.root), fingerprint=digest)


class FusedCacheSource:
    """Blocks of a fused cache (``m2s.fuse.open_fused_cache``); metrics use the first n_target rows."""

    kind = "fused-cache"
    supports_fused = True

    def __init__(self, cache: Any, path: str | Path, labels: LabelManifest) -> None:
        self.cache = cache
        self.path = Path(path)
        self.labels = labels
        self.label_digest = str(cache.label_digest)
        self.voxel_size = getattr(cache, "voxel_size", None)

    def __len__(self) -> int:
        return len(self.cache)

    def __iter__(self) -> Iterator[ScanItem]:
        for i in range(len(self.cache)):
            block = self.cache.read_block(i)
            n_total = int(block.points.shape[0])
            n = int(block.n_target)
            where = f"{self.path} block {i} (sequence {block.sequence}, frame {block.frame})"
            if not 0 < n <= n_total:
                raise DataError(f"{where}: n_target {n} outside 1..{n_total}")
            gt = None
            if block.label is not None:
                if block.label.shape[0] < n:
                    raise DataError(f"{where}: {block.label.shape[0]} labels for {n} target points")
                gt = self.labels.to_train(block.label[:n], source=where)
            yield ScanItem(normalize_sequence_id(block.sequence), int(block.frame), block.points, n, gt)

    def expected_scans(self) -> Expected:
        """Every scan of the cache with its point count (the target rows), as the official
        submission validator counts them from the `.bin` sizes."""
        return {
            normalize_sequence_id(seq): {int(f): int(n) for f, n in frames.items()}
            for seq, frames in self.cache.target_counts().items()
        }

    def describe(self) -> ArtifactInput:
        return ArtifactInput(kind=self.kind, id=str(self.cache.content_id), path=str(self.path))


class EvaluationConfig(BaseModel):
    input: Literal["auto", "single", "fused"] = "auto"  # auto: what each model was trained on
    batch_size: int = Field(1, ge=1)
    max_scans: int | None = Field(None, ge=1)
    export_labels: bool = False
    description: str | None = None  # description.txt of submission.zip (default: model, artifact id, m2s version)
    distance_edges: list[float] = Field(default_factory=lambda: list(DEFAULT_DISTANCE_EDGES))

    @field_validator("distance_edges")
    @classmethod
    def _edges(cls, v: list[float]) -> list[float]:
        if not v or v[0] != 0 or any(b <= a for a, b in itertools.pairwise(v)) or not all(math.isfinite(x) for x in v):
            raise ValueError("distance edges must start at 0 and increase strictly")
        return v


@dataclass
class _ModelState:
    model: ModelUnderTest
    input: InputKind
    conf: ConfusionAccumulator
    bands: BandedConfusion
    exporter: LabelExporter | None
    export_rel: str | None
    timings_ms: list[float] = field(default_factory=list)  # one float per scan: negligible memory
    scans: int = 0
    scans_predicted: int = 0
    points: int = 0


@dataclass(frozen=True)
class EvaluationOutcome:
    report: EvaluationReport
    manifest: Manifest
    out_dir: Path
    files: list[str]
    submissions: dict[str, SubmissionCheck] = field(default_factory=dict)  # model name -> its checked zip


# ---- checks -------------------------------------------------------------------------------------
def unique_names(names: list[str]) -> list[str]:
    """Disambiguate repeated display names (two artifacts both called `model`) with a suffix."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def resolve_input(
    model: ModelUnderTest, requested: Literal["auto", "single", "fused"], source: ScanSource
) -> InputKind:
    if not source.supports_fused:
        if requested == "fused":
            raise ConfigError("--input fused needs a fused cache (--cache); raw scans are single-scan input")
        return "single"
    if requested == "auto":
        return model.input_kind
    return requested


def check_compatibility(models: list[ModelUnderTest], source: ScanSource, labels: LabelManifest) -> None:
    """Refuse models and data that were built with a different label mapping or voxel setup."""
    if not models:
        raise ConfigError("no model to evaluate")
    digest = labels.digest()
    if source.label_digest != digest:
        raise ConfigError(
            f"the {source.kind} was built with label manifest digest {source.label_digest[:12]}, but the "
            f"evaluation uses {digest[:12]}; pass the matching manifest with --labels"
        )
    for m in models:
        if m.label_digest != digest:
            raise ConfigError(
                f"model {m.name!r} was trained with label manifest digest {m.label_digest[:12]}, but the data "
                f"and evaluation use {digest[:12]}: its train ids mean different classes; refusing to score it"
            )
        if m.voxel_size is not None and not (math.isfinite(m.voxel_size) and m.voxel_size > 0):
            raise ConfigError(f"model {m.name!r} has an invalid voxel size {m.voxel_size!r}")
        # A cache that records its voxel size must match models fed its fused rows, which were
        # deduplicated at that resolution.
        if (
            source.voxel_size is not None
            and m.voxel_size is not None
            and m.input_kind == "fused"
            and not math.isclose(float(source.voxel_size), float(m.voxel_size), rel_tol=1e-6)
        ):
            raise ConfigError(
                f"model {m.name!r} was trained with voxel size {m.voxel_size} but the fused cache uses "
                f"{source.voxel_size}"
            )


# ---- streaming ----------------------------------------------------------------------------------
def _batched(items: Iterable[ScanItem], size: int) -> Iterator[list[ScanItem]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _predict(state: _ModelState, batch: list[ScanItem]) -> list[np.ndarray]:
    m = state.model
    # Only the rows the model should see; contiguous float32 as the predictor contract says.
    inputs = [
        np.ascontiguousarray(it.points if state.input == "fused" else it.points[: it.n_target], dtype=np.float32)
        for it in batch
    ]
    t0 = time.perf_counter()
    preds = m.predictor.predict(inputs)
    elapsed_ms = 1000.0 * (time.perf_counter() - t0)
    state.timings_ms.extend([elapsed_ms / len(batch)] * len(batch))
    if not isinstance(preds, (list, tuple)) or len(preds) != len(inputs):
        raise DataError(
            f"model {m.name!r} returned {len(preds) if hasattr(preds, '__len__') else '?'} "
            f"predictions for a batch of {len(inputs)} scans"
        )
    out = []
    for it, x, p in zip(batch, inputs, preds, strict=True):
        p = np.asarray(p)
        if p.shape != (x.shape[0],) or not np.issubdtype(p.dtype, np.integer):
            raise DataError(
                f"model {m.name!r} returned predictions of shape {p.shape} and dtype {p.dtype} for the "
                f"{x.shape[0]} points of sequence {it.sequence} frame {it.frame}; expected ({x.shape[0]},) integers"
            )
        out.append(p[: it.n_target].astype(np.int64, copy=False))
    return out


def evaluate_models(
    models: list[ModelUnderTest],
    source: ScanSource,
    labels: LabelManifest,
    config: EvaluationConfig,
    *,
    out_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> EvaluationReport:
    """Stream the source through every model (each batch is read once and shared), accumulate the
    confusions and, with ``config.export_labels``, write benchmark-layout predictions under
    ``out_dir/predictions`` (one subfolder per model when several)."""
    check_compatibility(models, source, labels)
    export_root: Path | None = None
    if config.export_labels:
        if out_dir is None:
            raise ConfigError("exporting labels needs an output folder")
        export_root = Path(out_dir)
    names = unique_names([m.name for m in models])
    c = labels.num_classes
    ignore = labels.ignored_train_ids
    states = []
    for name, m in zip(names, models, strict=True):
        export_rel = None
        exporter = None
        if export_root is not None:
            export_rel = PREDICTIONS_DIR if len(models) == 1 else f"{PREDICTIONS_DIR}/{safe_name(name)}"
            exporter = LabelExporter(export_root / export_rel, labels)
        states.append(
            _ModelState(
                model=dataclasses.replace(m, name=name),
                input=resolve_input(m, config.input, source),
                conf=ConfusionAccumulator(c, ignore),
                bands=BandedConfusion(c, ignore, config.distance_edges),
                exporter=exporter,
                export_rel=export_rel,
            )
        )

    total = len(source) if config.max_scans is None else min(len(source), config.max_scans)
    done = 0
    sequences: list[str] = []
    unlabeled: list[str] = []
    if progress is not None:
        progress(0, total)
    for batch in _batched(itertools.islice(iter(source), total), config.batch_size):
        for it in batch:
            if it.sequence not in sequences:
                sequences.append(it.sequence)
            if it.gt_train is None and it.sequence not in unlabeled:
                unlabeled.append(it.sequence)
        distances = [horizontal_distance(it.points[: it.n_target]) for it in batch]
        for state in states:
            preds = _predict(state, batch)
            for it, pred, dist in zip(batch, preds, distances, strict=True):
                state.scans_predicted += 1
                if state.exporter is not None:
                    state.exporter.write(it.sequence, it.frame, pred)
                if it.gt_train is None:
                    continue  # test split: predicted and exported, not scored
                state.conf.update(pred, it.gt_train)
                state.bands.update(pred, it.gt_train, dist)
                state.scans += 1
                state.points += it.n_target
        done += len(batch)
        if progress is not None:
            progress(done, total)

    edges = list(config.distance_edges)
    bnames = band_labels(edges)
    results: dict[str, ModelResult] = {}
    for st in states:
        results[st.model.name] = model_result(
            name=st.model.name,
            input_kind=st.input,
            labels=labels,
            scores=st.conf.result(),
            confusion=st.conf.confusion,
            band_scores=st.bands.results(),
            band_confusions=st.bands.confusion,
            band_names=bnames,
            edges=edges,
            timings_ms=st.timings_ms,
            scans=st.scans,
            scans_predicted=st.scans_predicted,
            points=st.points,
            artifact_id=st.model.artifact.id if st.model.artifact else None,
            exported_to=st.export_rel,
        )
    names_all = labels.train_names
    return EvaluationReport(
        label_digest=labels.digest(),
        classes=[names_all[i] for i in labels.evaluated_train_ids],
        hard_classes=[names_all[i] for i in labels.hard_train_ids],
        ignored_classes=[names_all[i] for i in labels.ignored_train_ids],
        distance={"measure": DISTANCE_MEASURE, "edges_m": edges, "bands": bnames},
        sequences=sequences,
        unlabeled_sequences=unlabeled,
        models=results,
    )


# ---- artifact -----------------------------------------------------------------------------------
def _summary_metrics(report: EvaluationReport) -> dict[str, Any]:
    """Flat scalars for the manifest (shown by `m2s inspect`)."""
    flat: dict[str, Any] = {}
    for name, m in report.models.items():
        for key in ("miou", "miou_present", "hard_miou", "accuracy", "ms_per_scan_median"):
            value = getattr(m, key)
            if value is not None:
                flat[f"{name}/{key}"] = value
        flat[f"{name}/scans"] = m.scans
    return flat


def run_evaluation(
    models: list[ModelUnderTest],
    source: ScanSource,
    labels: LabelManifest,
    out_dir: str | Path,
    config: EvaluationConfig,
    *,
    progress: ProgressFn | None = None,
) -> EvaluationOutcome:
    """Evaluate and write the `evaluation` artifact in `out_dir`: metrics.json, evaluation.csv,
    plots/*.png (+ predictions/ with export) and, last, manifest.json."""
    out = Path(out_dir)
    check_output_folder(out, "evaluation")
    out.mkdir(parents=True, exist_ok=True)
    # A folder being rewritten must not look finished: the manifest comes back only at the end.
    stale = out / MANIFEST_NAME
    if stale.is_file():
        stale.unlink()
    report = evaluate_models(models, source, labels, config, out_dir=out, progress=progress)
    write_metrics_json(out / METRICS_FILE, report)
    write_table_csv(out / TABLE_FILE, report)
    plot_paths = write_plots(report, out / PLOTS_DIR, labels.train_names)
    rels = [METRICS_FILE, TABLE_FILE] + [p.relative_to(out).as_posix() for p in plot_paths]
    submissions = write_submissions(report, models, source, out, config) if config.export_labels else {}
    rels += [Path(c.path).relative_to(out).as_posix() for c in submissions.values()]

    # Batch size changes speed, not results: it stays out of the content id (and so does an
    # absent description, so ids of earlier evaluations are unchanged).
    excluded = {"batch_size"} | ({"description"} if config.description is None else set())
    run_config = {
        "evaluation": config.model_dump(exclude=excluded),
        "label_digest": labels.digest(),
        "distance_measure": DISTANCE_MEASURE,
        "sequences": report.sequences,
        "models": [{"name": n, "artifact_id": r.artifact_id, "input": r.input} for n, r in report.models.items()],
    }
    inputs = [m.artifact for m in models if m.artifact is not None] + [source.describe()]
    metrics = _summary_metrics(report)
    for name, check in submissions.items():
        metrics[f"{name}/submission"] = {"zip": Path(check.path).name, "full": check.full, "scans": check.scans,
                                         "sequences": check.sequences}  # fmt: skip
    manifest = new_manifest("evaluation", run_config, inputs, files=describe_files(out, rels), metrics=metrics)
    write_manifest(out, manifest)
    return EvaluationOutcome(report=report, manifest=manifest, out_dir=out, files=rels, submissions=submissions)


def submission_zip_name(name: str, n_models: int) -> str:
    return SUBMISSION_ZIP if n_models == 1 else f"submission-{safe_name(name)}.zip"


def write_submissions(
    report: EvaluationReport, models: list[ModelUnderTest], source: ScanSource, out: Path, config: EvaluationConfig
) -> dict[str, SubmissionCheck]:
    """Zip each model's exported predictions in the benchmark layout and check the zip against the
    source's scans (`submission.zip`, or `submission-NAME.zip` per model when several)."""
    expected = source.expected_scans()
    ids = {
        unique: (m.artifact.id if m.artifact else None)
        for unique, m in zip(unique_names([m.name for m in models]), models, strict=True)
    }
    checks: dict[str, SubmissionCheck] = {}
    for name, result in report.models.items():
        if not result.exported_to:
            continue
        description = config.description or (
            f"m2s {__version__}: model {name}" + (f" (artifact {ids.get(name)})" if ids.get(name) else "")
        )
        zip_path = write_submission_zip(
            out / result.exported_to, out / submission_zip_name(name, len(report.models)), description
        )
        checks[name] = check_submission(zip_path, expected)
    return checks
