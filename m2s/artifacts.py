"""Versioned artifacts: a folder with `manifest.json` that says what it is and where it came from.

The content id is a hash of (kind, format version, resolved config, input ids): two runs with the
same inputs and config produce the same id, so a stage can recognise that its output is already
there and a later stage can refuse inputs that changed under it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from m2s import __version__
from m2s.errors import ArtifactError
from m2s.io_utils import atomic_write_text, sha256_file

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
KNOWN_KINDS = frozenset({"dataset", "fused-cache", "model", "evaluation"})

# Per-kind format versions: bump when the files of that kind change incompatibly.
FORMAT_VERSIONS: dict[str, int] = {"dataset": 1, "fused-cache": 1, "model": 1, "evaluation": 1}
# Files hashed at once when verifying an artifact (bounded by the CPU count).
_HASH_THREADS = 8


class ArtifactInput(BaseModel):
    kind: str
    id: str
    path: str
    fingerprint: str | None = None  # raw datasets: digest of what was read


class FileRecord(BaseModel):
    path: str  # relative to the artifact folder, POSIX separators
    sha256: str
    size: int


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kind: str
    format_version: int
    content_id: str
    created: str
    m2s_version: str = __version__
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: list[ArtifactInput] = Field(default_factory=list)
    files: list[FileRecord] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)

    def file(self, rel: str) -> FileRecord:
        for rec in self.files:
            if rec.path == rel:
                return rec
        raise ArtifactError(f"artifact {self.kind} {self.content_id} lists no file {rel!r}")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def compute_content_id(kind: str, config: dict[str, Any], inputs: list[ArtifactInput]) -> str:
    payload = {
        "kind": kind,
        "format_version": FORMAT_VERSIONS[kind],
        "config": config,
        "inputs": sorted([i.kind, i.id, i.fingerprint or ""] for i in inputs),
    }
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:24]


def describe_files(folder: str | Path, rel_paths: list[str]) -> list[FileRecord]:
    folder = Path(folder)
    records = []
    for rel in sorted(rel_paths):
        p = folder / rel
        if not p.is_file():
            raise ArtifactError(f"artifact file missing while writing manifest: {p}")
        records.append(FileRecord(path=Path(rel).as_posix(), sha256=sha256_file(p), size=p.stat().st_size))
    return records


def new_manifest(
    kind: str,
    config: dict[str, Any],
    inputs: list[ArtifactInput],
    *,
    files: list[FileRecord] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Manifest:
    if kind not in KNOWN_KINDS:
        raise ArtifactError(f"unknown artifact kind {kind!r}")
    # Round-trip through JSON so the stored config equals what the id was computed from.
    config = json.loads(_canonical(config))
    return Manifest(
        kind=kind,
        format_version=FORMAT_VERSIONS[kind],
        content_id=compute_content_id(kind, config, inputs),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        config=config,
        inputs=inputs,
        files=files or [],
        metrics=metrics or {},
    )


def write_manifest(folder: str | Path, manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST_NAME
    atomic_write_text(path, manifest.model_dump_json(indent=2) + "\n")
    return path


def manifest_path(path: str | Path) -> Path:
    p = Path(path)
    return p if p.name == MANIFEST_NAME else p / MANIFEST_NAME


def read_manifest(path: str | Path) -> Manifest:
    """Parse a manifest without checking its kind (for `m2s inspect`)."""
    mp = manifest_path(path)
    if not mp.is_file():
        raise ArtifactError(f"{Path(path)}: not an m2s artifact (no {MANIFEST_NAME})")
    try:
        data = json.loads(mp.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{mp}: manifest is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{mp}: manifest is not a JSON object")
    version = data.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ArtifactError(
            f"{mp}: manifest schema version {version!r} is not supported by m2s {__version__} "
            f"(supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ArtifactError(f"{mp}: invalid manifest: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def load_artifact(path: str | Path, kind: str) -> Manifest:
    """Load an artifact of the expected kind and format version, or fail clearly."""
    manifest = read_manifest(path)
    if manifest.kind != kind:
        raise ArtifactError(f"{Path(path)}: expected a {kind} artifact, found a {manifest.kind} artifact")
    if manifest.format_version != FORMAT_VERSIONS[kind]:
        raise ArtifactError(
            f"{Path(path)}: {kind} format version {manifest.format_version} is not supported "
            f"(this m2s reads version {FORMAT_VERSIONS[kind]}); re-create it with this m2s"
        )
    check_content_id(path, manifest)
    return manifest


def check_content_id(path: str | Path, manifest: Manifest) -> None:
    """Refuse a manifest whose config or inputs no longer hash to its content id (edited by hand)."""
    if compute_content_id(manifest.kind, manifest.config, manifest.inputs) != manifest.content_id:
        raise ArtifactError(
            f"{manifest_path(path)}: config or inputs do not match the content id {manifest.content_id} "
            "(manifest edited by hand?); re-create the artifact instead of editing it"
        )


def verify_artifact_files(folder: str | Path, manifest: Manifest) -> None:
    """Raise on the first listed file that is missing or whose size/sha256 differ, naming it."""
    folder = manifest_path(folder).parent
    problems = verify_files(folder, manifest)
    if problems:
        rel, _, why = problems[0].partition(": ")
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        raise ArtifactError(f"{folder / rel}: {why}, the {manifest.kind} artifact is corrupted{more}; re-create it")


def verify_files(folder: str | Path, manifest: Manifest) -> list[str]:
    """Return one message per listed file that is missing or whose size/sha256 differ."""
    folder = Path(folder) if Path(folder).name != MANIFEST_NAME else Path(folder).parent
    problems: dict[int, str] = {}
    to_hash: list[int] = []
    for i, rec in enumerate(manifest.files):  # cheap checks first: presence and size
        p = folder / rec.path
        if not p.is_file():
            problems[i] = f"{rec.path}: missing"
        elif p.stat().st_size != rec.size:
            problems[i] = f"{rec.path}: size {p.stat().st_size} != {rec.size}"
        else:
            to_hash.append(i)
    # hashlib releases the GIL on large updates: files are hashed in parallel threads.
    workers = max(1, min(len(to_hash), os.cpu_count() or 1, _HASH_THREADS))
    with ThreadPoolExecutor(workers) as pool:
        digests = pool.map(lambda i: sha256_file(folder / manifest.files[i].path), to_hash)
        for i, digest in zip(to_hash, digests, strict=True):
            if digest != manifest.files[i].sha256:
                problems[i] = f"{manifest.files[i].path}: sha256 mismatch"
    return [problems[i] for i in sorted(problems)]


def as_input(folder: str | Path, manifest: Manifest) -> ArtifactInput:
    return ArtifactInput(kind=manifest.kind, id=manifest.content_id, path=str(Path(folder)))


def existing_artifact(folder: str | Path, kind: str, content_id: str, *, verify: bool = True) -> Manifest | None:
    """The finished artifact in `folder` if it has this exact content id (and intact files)."""
    if not manifest_path(folder).is_file():
        return None
    try:
        manifest = load_artifact(folder, kind)
    except ArtifactError:
        return None
    if manifest.content_id != content_id:
        return None
    if verify and verify_files(folder, manifest):
        return None
    return manifest


def readable_manifest(folder: str | Path) -> Manifest | None:
    """The manifest in `folder`, or None when there is none or it cannot be read (a torn write of
    an earlier run, or a file that is not ours): for the checks that only look at what is there."""
    if not manifest_path(folder).is_file():
        return None
    try:
        return read_manifest(folder)
    except ArtifactError:
        return None


def check_output_folder(out: str | Path, kind: str) -> None:
    """Refuse an output folder that holds an artifact of another kind: it is never overwritten.

    An unreadable manifest is the stage's own to replace (a torn write of an earlier run)."""
    found = readable_manifest(out)
    if found is not None and found.kind != kind:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ArtifactError(
            f"{Path(out)}: holds a {found.kind} artifact, not {article} {kind}; choose another output folder"
        )
