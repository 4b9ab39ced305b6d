"""Fault injection through the real CLI: every stage refuses inputs it cannot trust (issue 14).

One table, one row per fault: how to break a copy of the tiny synthetic set (raw scans, a fused
cache, a model artifact, a manifest, an argument), the command that must refuse it, and what its
one line must say. Every row asserts: exit code 1, exactly one line on stderr naming the cause
and the culprit (file, sequence, frame), no traceback, no progress line when the stage fails
before its first step, and nothing a later stage would pick up (no manifest, no sequence file
under its final name, no temporary file, no output folder at all for refused training runs).

`test_print_fault_table` (run with `-s`) prints the fault -> message table from these very runs.
The SIGKILL rows (fuse, train-teacher, distill killed mid-run, then rerun) are in
`test_faults_kill.py` (slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from m2s.artifacts import read_manifest, write_manifest
from m2s.data.semantickitti import Sequence, read_scan, write_labels, write_scan
from m2s.io_utils import sha256_file

ROOT = Path(__file__).resolve().parents[1]
LABELS_YAML = ROOT / "data_manifests" / "semantic-kitti.yaml"
FRAME = 3  # the broken scan of raw-data faults
RESULTS: list[tuple[str, str, str]] = []  # (fault, command, message) for the printed table


# ---- the world each fault is injected into --------------------------------------------------
@dataclass
class World:
    """A private copy of the tiny set: raw sequence 00, the two fused caches and a teacher."""

    tmp: Path
    root: Path
    cache: Path
    val_cache: Path
    teacher: Path
    config: Path
    base: "Base"

    @property
    def seq(self) -> Sequence:
        return Sequence(self.root, "00")


@dataclass
class Base:
    tiny: object
    teacher: Path
    other_labels_teacher: Path
    other_labels: Path


def _cli(*args: str) -> "CliResult":
    res = CliRunner().invoke(app, [str(a) for a in args])
    return CliResult(res.exit_code, res.stdout, res.stderr, res.output)


def _cli_process(*args: str) -> "CliResult":
    """`m2s ARGS` in its own process: DataLoader workers end with it (in-process, a torch worker
    left behind by a failed run costs seconds of join timeouts when it is collected later)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="400")
    res = subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    return CliResult(res.returncode, res.stdout, res.stderr, res.stdout + res.stderr)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    output: str


def _train_args(cache: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return ["train-teacher", "--cache", str(cache), "--out", str(out), "--config", str(config), "--backend", "torch",
            "--epochs", "1", "--max-scans", "2", *extra]


@pytest.fixture(scope="module")
def base(tiny_data, tmp_path_factory) -> Base:
    """A 1-epoch teacher, and one trained under another label map (outlier -> road)."""
    tmp = tmp_path_factory.mktemp("faults")
    teacher = tmp / "teacher"
    res = _cli(*_train_args(tiny_data.train_cache, teacher, tiny_data.config))
    assert res.code == 0, res.output
    other = tmp / "other-labels.yaml"
    text = LABELS_YAML.read_text()
    assert "\n  1 : 0 " in text
    other.write_text(text.replace("\n  1 : 0 ", "\n  1 : 9 ", 1))
    fused_other = tmp / "fused-other"
    res = _cli("fuse", tiny_data.root, "--sequences", "00", "--out", fused_other, "--labels", other)
    assert res.code == 0, res.output
    teacher_other = tmp / "teacher-other"
    res = _cli(*_train_args(fused_other, teacher_other, tiny_data.config, "--labels", str(other)))
    assert res.code == 0, res.output
    return Base(tiny_data, teacher, teacher_other, other)


@pytest.fixture()
def world(base: Base, tmp_path: Path) -> World:
    tiny = base.tiny
    root = tmp_path / "data"
    shutil.copytree(tiny.root / "sequences" / "00", root / "sequences" / "00")  # type: ignore[attr-defined]
    cache, val, teacher = tmp_path / "fused", tmp_path / "fused-val", tmp_path / "teacher"
    shutil.copytree(tiny.train_cache, cache)  # type: ignore[attr-defined]
    shutil.copytree(tiny.val_cache, val)  # type: ignore[attr-defined]
    shutil.copytree(base.teacher, teacher)
    return World(tmp_path, root, cache, val, teacher, tiny.config, base)  # type: ignore[attr-defined]


# ---- how things are broken -----------------------------------------------------------------
def _bin(w: World) -> Path:
    return w.seq.scan_path(FRAME)


def _label(w: World) -> Path:
    return w.seq.label_path(FRAME)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def _truncate(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:-n])


def _set_point(w: World, col: int, value: float) -> None:
    pts = read_scan(_bin(w)).copy()
    pts[7, col] = value
    pts.tofile(_bin(w))  # bypasses write_scan's checks on purpose: a file as another tool wrote it


def _unknown_raw_id(w: World) -> None:
    words = np.fromfile(_label(w), dtype=np.uint32).copy()
    words[5] = (words[5] & np.uint32(0xFFFF0000)) | np.uint32(77)
    write_labels(_label(w), words)


def _empty_scan(w: World) -> None:
    write_scan(_bin(w), np.zeros((0, 4), np.float32))
    write_labels(_label(w), np.zeros(0, np.uint32))


def _edit_lines(path: Path, fn: Callable[[list[str]], list[str]]) -> None:
    path.write_text("".join(fn(path.read_text().splitlines(keepends=True))))


def _h5(w: World) -> Path:
    return w.cache / "sequences" / "00.h5"


def _overwrite_in_dataset(path: Path, name: str, at: int = 256, n: int = 64) -> None:
    """Overwrite `n` bytes inside the stored data of dataset `name` (first chunk), as a disk would."""
    with h5py.File(path, "r") as h5:
        ds = h5[name]
        offset = ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()
        size = ds.id.get_chunk_info(0).size if ds.chunks else ds.id.get_storage_size()
    at = min(at, max(size - n, 0))
    with open(path, "r+b") as fh:
        fh.seek(offset + at)
        fh.write(b"\xff" * n)


def _rewrite_and_rerecord(w: World, name: str, row: int, value: object, cache: Path | None = None) -> None:
    """A buggy writer: a value written through HDF5 itself, digest re-recorded in the manifest."""
    cache = cache or w.cache
    with h5py.File(next((cache / "sequences").glob("*.h5")), "r+") as h5:
        h5[name][row] = value
    manifest = read_manifest(cache)
    for rec in manifest.files:
        p = cache / rec.path
        rec.sha256, rec.size = sha256_file(p), p.stat().st_size
    write_manifest(cache, manifest)


def _edit_manifest(folder: Path, fn: Callable[[dict], None]) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    fn(data)
    (folder / "manifest.json").write_text(json.dumps(data, indent=2))


def _weights(w: World) -> Path:
    return w.teacher / "weights" / "best.safetensors"


def _overwrite_bytes(path: Path, at: int, n: int = 64) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(b"\xa5" * n)


def _student_config(w: World, voxel_size: float | None = None) -> Path:
    text = w.config.read_text()
    if voxel_size is not None:
        text = text.replace("voxel: {voxel_size: 0.25}", f"voxel: {{voxel_size: {voxel_size}}}")
    p = w.tmp / "student.yaml"
    p.write_text(text + "distill: {logit_weight: 1.0}\n")
    return p


# ---- commands ----------------------------------------------------------------------------------
def fuse_cmd(w: World) -> list[str]:
    return ["fuse", str(w.root), "--sequences", "00", "--out", str(w.tmp / "out")]


def train_cmd(w: World) -> list[str]:
    return _train_args(w.cache, w.tmp / "out", w.config, "--val-cache", str(w.val_cache))


def distill_cmd(w: World, teacher: Path | None = None, config: Path | None = None, *extra: str) -> list[str]:
    t = ["--teacher", str(teacher)] if teacher is not None else []
    return ["distill", "--cache", str(w.cache), "--val-cache", str(w.val_cache), "--out", str(w.tmp / "out"),
            "--config", str(config or w.config), "--backend", "torch", "--epochs", "1", "--max-scans", "2", *t, *extra]


def eval_cmd(w: World, *models: Path, cache: Path | None = None) -> list[str]:
    src = ["--cache", str(cache or w.val_cache)]
    return ["evaluate", *[str(m) for m in (models or (w.teacher,))], *src, "--out", str(w.tmp / "out"),
            "--device", "cpu", "--backend", "torch"]


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[World], None]
    command: Callable[[World], list[str]]
    pattern: str  # what the one line must say
    culprit: Callable[[World], str]  # the file / folder it must name
    before_first_step: bool = True  # stdout must stay empty (no progress line)
    own_process: bool = False  # run the real `python -m cli.main` process (DataLoader workers)


def _nothing(w: World) -> None:
    return None


FAULTS = [
    # raw data -> m2s fuse
    Fault("truncated .bin", lambda w: _truncate(_bin(w), 6), fuse_cmd, "not a multiple of 16", lambda w: str(_bin(w)), False),
    Fault("oversized .bin (partial point)", lambda w: _append(_bin(w), b"\0" * 5), fuse_cmd, "not a multiple of 16",
          lambda w: str(_bin(w)), False),
    Fault("oversized .bin (one extra point)", lambda w: _append(_bin(w), b"\0" * 16), fuse_cmd,
          "labels but the scan has", lambda w: f"{_label(w)}: ", False),
    Fault("label/point count mismatch", lambda w: _truncate(_label(w), 8), fuse_cmd, "labels but the scan has",
          lambda w: str(_bin(w)), False),
    Fault("NaN coordinate", lambda w: _set_point(w, 1, np.nan), fuse_cmd, "non-finite", lambda w: str(_bin(w)), False),
    Fault("inf remission", lambda w: _set_point(w, 3, np.inf), fuse_cmd, "non-finite", lambda w: str(_bin(w)), False),
    Fault("unknown raw semantic id 77", _unknown_raw_id, fuse_cmd, "unknown raw semantic id(s) [77]",
          lambda w: f"{_label(w)} (sequence 00 frame {FRAME})", False),
    Fault("empty scan", _empty_scan, fuse_cmd, "empty scan (0 points)",
          lambda w: f"{_bin(w)}: empty scan (0 points) in sequence 00 frame {FRAME}", False),
    Fault("missing poses.txt", lambda w: (w.seq.path / "poses.txt").unlink(), fuse_cmd, "poses file missing",
          lambda w: str(w.seq.path / "poses.txt")),
    Fault("fewer poses than scans", lambda w: _edit_lines(w.seq.path / "poses.txt", lambda ls: ls[:5]), fuse_cmd,
          "5 poses but scans go up to frame 9", lambda w: str(w.seq.path / "poses.txt")),
    Fault("malformed poses (text)", lambda w: _edit_lines(w.seq.path / "poses.txt", lambda ls: ls[:2] + ["1 2 x\n"] + ls[3:]),
          fuse_cmd, "pose line is not numeric", lambda w: f"{w.seq.path / 'poses.txt'}:3"),
    Fault("malformed poses (11 values)", lambda w: _edit_lines(w.seq.path / "poses.txt", lambda ls: [ls[0].rsplit(" ", 1)[0] + "\n"] + ls[1:]),
          fuse_cmd, "pose 0 has 11 values, expected 12", lambda w: str(w.seq.path / "poses.txt")),
    Fault("missing calib.txt", lambda w: (w.seq.path / "calib.txt").unlink(), fuse_cmd, "calibration file missing",
          lambda w: str(w.seq.path / "calib.txt")),
    Fault("calib without Tr", lambda w: _edit_lines(w.seq.path / "calib.txt", lambda ls: [x for x in ls if not x.startswith("Tr")]),
          fuse_cmd, "no 'Tr:' entry", lambda w: str(w.seq.path / "calib.txt")),
    Fault("short calib (Tr with 11 values)",
          lambda w: _edit_lines(w.seq.path / "calib.txt", lambda ls: [x.rsplit(" ", 1)[0] + "\n" if x.startswith("Tr") else x for x in ls]),
          fuse_cmd, "'Tr' has 11 values, expected 12", lambda w: str(w.seq.path / "calib.txt")),
    Fault("malformed calib (text)", lambda w: _edit_lines(w.seq.path / "calib.txt", lambda ls: [x.replace("Tr: ", "Tr: a ") for x in ls]),
          fuse_cmd, "values of 'Tr' are not numeric", lambda w: str(w.seq.path / "calib.txt")),
    # fused cache -> train-teacher / distill / evaluate
    Fault("cache points overwritten (64 bytes)", lambda w: _overwrite_in_dataset(_h5(w), "points"), train_cmd,
          "sha256 mismatch", lambda w: str(_h5(w))),
    Fault("cache labels overwritten (64 bytes)", lambda w: _overwrite_in_dataset(_h5(w), "label", at=8), lambda w: distill_cmd(w, None, None, "--kd", "none"),
          "sha256 mismatch", lambda w: str(_h5(w))),
    Fault("cache offsets overwritten (64 bytes)", lambda w: _overwrite_in_dataset(w.val_cache / "sequences" / "08.h5", "offset", at=0),
          eval_cmd, "sha256 mismatch", lambda w: str(w.val_cache / "sequences" / "08.h5")),
    Fault("cache truncated", lambda w: _truncate(_h5(w), 4096), train_cmd, "size", lambda w: str(_h5(w))),
    Fault("cache NaN rows, digest re-recorded", lambda w: _rewrite_and_rerecord(w, "points", 100, np.full(4, np.nan, np.float32)),
          train_cmd, "1 row(s) with non-finite coordinates", lambda w: f"{_h5(w)}: sequence 00 frame 0"),
    Fault("cache unknown raw id, digest re-recorded", lambda w: _rewrite_and_rerecord(w, "label", 100, 77), train_cmd,
          "unknown raw semantic id(s) [77]", lambda w: f"{_h5(w)} (sequence 00 frame 0)"),
    Fault("validation cache NaN rows, read in a loader worker",
          lambda w: _rewrite_and_rerecord(w, "points", 100, np.full(4, np.inf, np.float32), w.val_cache),
          lambda w: train_cmd(w) + ["--workers", "1"], "1 row(s) with non-finite coordinates",
          lambda w: f"{w.val_cache / 'sequences' / '08.h5'}: sequence 08 frame 0", False, own_process=True),
    Fault("cache manifest edited by hand", lambda w: _edit_manifest(w.cache, lambda m: m["config"].update(window=2)), train_cmd,
          "edited by hand", lambda w: str(w.cache / "manifest.json")),
    Fault("cache manifest not JSON", lambda w: (w.cache / "manifest.json").write_text("{oops"), train_cmd,
          "manifest is not valid JSON", lambda w: str(w.cache / "manifest.json")),
    # model artifacts -> evaluate / distill
    Fault("model weights overwritten (64 bytes)", lambda w: _overwrite_bytes(_weights(w), 4096), eval_cmd, "sha256 mismatch",
          lambda w: str(_weights(w))),
    Fault("model weights truncated", lambda w: _truncate(_weights(w), 100), lambda w: distill_cmd(w, w.teacher, _student_config(w)),
          "the model artifact is corrupted", lambda w: f"{_weights(w)}: size "),
    Fault("model manifest edited by hand", lambda w: _edit_manifest(w.teacher, lambda m: m["config"]["voxel"].update(voxel_size=0.3)),
          eval_cmd, "edited by hand", lambda w: str(w.teacher / "manifest.json")),
    Fault("teacher of another label map", _nothing, lambda w: distill_cmd(w, w.base.other_labels_teacher, _student_config(w)),
          "different label map", lambda w: str(w.base.other_labels_teacher)),
    Fault("teacher of another voxel size", _nothing, lambda w: distill_cmd(w, w.teacher, _student_config(w, 0.3)),
          "distillation needs one voxel grid", lambda w: str(w.teacher)),
    # argument checks first: folders of the wrong kind
    Fault("evaluate: fused cache given as the model", _nothing,
          lambda w: ["evaluate", str(w.cache), "--data", str(w.root), "--out", str(w.tmp / "out")],
          "expected a model artifact, found a fused-cache artifact", lambda w: str(w.cache)),
    Fault("train-teacher: model given as the cache", _nothing, lambda w: _train_args(w.teacher, w.tmp / "out", w.config),
          "expected a fused-cache artifact, found a model artifact", lambda w: str(w.teacher)),
    Fault("distill: fused cache given as the teacher", _nothing, lambda w: distill_cmd(w, w.cache, _student_config(w)),
          "expected a model artifact, found a fused-cache artifact", lambda w: str(w.cache)),
    Fault("distill: model given as the cache (checked before the teacher's digests)",
          lambda w: _overwrite_bytes(_weights(w), 4096),
          lambda w: ["distill", "--cache", str(w.teacher), "--out", str(w.tmp / "out"), "--config", str(_student_config(w)),
                     "--teacher", str(w.teacher), "--backend", "torch"],
          "expected a fused-cache artifact, found a model artifact", lambda w: str(w.teacher)),
    Fault("train-teacher: --out holds a fused cache", _nothing,
          lambda w: _train_args(w.cache, w.val_cache, w.config), "holds a fused-cache artifact, not a model",
          lambda w: str(w.val_cache)),
    Fault("evaluate: --out holds a model", _nothing,
          lambda w: ["evaluate", str(w.teacher), "--cache", str(w.val_cache), "--out", str(w.teacher), "--device", "cpu"],
          "holds a model artifact, not an evaluation", lambda w: str(w.teacher)),
    Fault("fuse: fused cache given as the raw root", _nothing,
          lambda w: ["fuse", str(w.cache), "--sequences", "00", "--out", str(w.tmp / "out")],
          "holds a fused-cache artifact, not a SemanticKITTI dataset root", lambda w: str(w.cache)),
    Fault("evaluate: fused cache given as --data", _nothing,
          lambda w: ["evaluate", str(w.teacher), "--data", str(w.cache), "--sequences", "00", "--out", str(w.tmp / "out"),
                     "--device", "cpu"],
          "holds a fused-cache artifact, not a SemanticKITTI dataset root", lambda w: str(w.cache)),
    Fault("evaluate: model given as --cache", _nothing,
          lambda w: ["evaluate", str(w.teacher), "--cache", str(w.teacher), "--out", str(w.tmp / "out"), "--device", "cpu"],
          "expected a fused-cache artifact, found a model artifact", lambda w: str(w.teacher)),
    Fault("fuse: raw root without sequences/", _nothing, lambda w: ["fuse", str(w.tmp), "--sequences", "00", "--out", str(w.tmp / "out")],
          "not a SemanticKITTI root", lambda w: str(w.tmp)),
]


def _snapshot(w: World) -> dict[str, bytes]:
    """Manifests of the inputs: a refused run must leave them as they were."""
    return {str(p): p.read_bytes() for d in (w.cache, w.val_cache, w.teacher) for p in d.glob("manifest.json")}


# The loader-worker row runs the real command in its own process (~7 s): slow, so `make test` runs it.
@pytest.mark.parametrize(
    "fault",
    [pytest.param(f, marks=pytest.mark.slow) if "loader worker" in f.name else f for f in FAULTS],
    ids=[f.name for f in FAULTS],
)
def test_fault_is_refused_with_one_line(fault: Fault, world: World) -> None:
    fault.inject(world)
    before = _snapshot(world)
    res = (_cli_process if fault.own_process else _cli)(*fault.command(world))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.code == 1, res.output
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in res.output
    assert fault.pattern in line, line
    assert fault.culprit(world) in line, line
    if fault.before_first_step:
        assert res.stdout.strip() == "", f"progress printed before the refusal: {res.stdout!r}"
    out = world.tmp / "out"
    # nothing half-written that a later stage would pick up
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("*.tmp")) if out.exists() else True
    assert not (out / "sequences" / "00.h5").exists()
    if fault.command(world)[0] in ("train-teacher", "distill") and fault.before_first_step:
        assert not out.exists(), "a refused training run must not create its output folder"
    assert _snapshot(world) == before  # the refused inputs are left as they were
    message = line[len("error: "):].replace(str(world.tmp), "…").replace(str(world.base.teacher.parent), "…")
    RESULTS.append((fault.name, fault.command(world)[0], message))


def test_print_fault_table() -> None:
    """The fault -> message table of this run (visible with `pytest -s`; the closing note's table)."""
    if not RESULTS:
        pytest.skip("run together with the catalogue")
    print("\n| fault | command | message |\n|---|---|---|")
    for name, cmd, msg in RESULTS:
        print(f"| {name} | `m2s {cmd}` | `{msg}` |")
    # every fault that ran (the slow loader-worker row only under `make test`) recorded one message
    assert len({name for name, _, _ in RESULTS}) == len(RESULTS) >= len(FAULTS) - 1


def test_rerunning_fuse_on_a_corrupted_cache_fuses_the_damaged_sequence_again(world: World) -> None:
    """The refusal says "re-create it": rerunning `m2s fuse` must do that, not report the damaged
    cache up to date (sizes match) nor keep the damaged file as a completed sequence."""
    original = _h5(world).read_bytes()
    _overwrite_in_dataset(_h5(world), "points")
    assert _h5(world).read_bytes() != original
    res = _cli("fuse", world.root, "--sequences", "00", "--out", world.cache)
    assert res.code == 0, res.output
    assert "up to date" not in res.stdout and "kept" not in res.stdout
    assert _h5(world).read_bytes() == original
    res = _cli(*train_cmd(world))
    assert res.code == 0, res.output
    # Out-of-range points keep being dropped (documented), and each epoch reports how many:
    # the count equals the rows of the trained scans (max-scans 2: the first and last) outside the range.
    from m2s.artifacts import load_artifact
    from m2s.fuse import open_fused_cache
    from m2s.train.config import VoxelConfig
    from m2s.train.dataset import in_range_mask

    cache = open_fused_cache(world.cache)
    voxel = VoxelConfig(voxel_size=0.25)
    blocks = [cache.read_block(i) for i in (0, len(cache) - 1)]
    dropped = sum(int((~in_range_mask(b.points[:, :3], voxel)).sum()) for b in blocks)
    total = sum(b.points.shape[0] for b in blocks)
    epoch = load_artifact(world.tmp / "out", "model").metrics["epochs"][0]
    assert epoch["out_of_range"] == {"fused": {"dropped": dropped, "points": total}} and dropped > 0
    assert f"out-of-range points dropped: {dropped}/{total} fused" in " ".join(res.stdout.split())
