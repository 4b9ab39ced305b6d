"""`submission.zip`: exported predictions in the SemanticKITTI benchmark's layout, checked the way
the official `validate_submission.py` (semantic-kitti-api) checks a segmentation bundle.

    description.txt
    sequences/                                  explicit directory entries, as the validator
    sequences/SS/                               looks them up by name
    sequences/SS/predictions/
    sequences/SS/predictions/FFFFFF.label       uint32, one word per point of the scan

The official check: the name ends in `.zip`; `sequences/`, every `sequences/SS/` and
`sequences/SS/predictions/` of the test split 11–21 are present; every scan of those sequences has
its `.label`, of exactly 4 bytes per point of its `.bin` (size / 16). A bundle of other sequences
(a validation export) passes the same per-file checks but is not a full submission.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from pydantic import BaseModel

from m2s.errors import DataError
from m2s.io_utils import atomic_path

TEST_SEQUENCES: tuple[str, ...] = tuple(f"{i:02d}" for i in range(11, 22))
SUBMISSION_ZIP = "submission.zip"
DESCRIPTION_FILE = "description.txt"
LABEL_BYTES = 4

# Expected scans: sequence -> frame -> point count.
Expected = dict[str, dict[int, int]]


class SubmissionCheck(BaseModel):
    path: str
    sequences: list[str]  # sequences in the zip
    scans: int  # label files in the zip
    missing_test_sequences: list[str]  # of 11-21, absent from the zip
    missing_scans: dict[str, int]  # sequence -> scans of the source without a label file in the zip
    full: bool  # every test sequence present, every scan of each present: a complete submission

    def summary(self) -> str:
        if self.full:
            return f"a full submission: sequences 11-21, {self.scans} scans"
        why = []
        if self.missing_test_sequences:
            why.append(f"test sequence(s) {','.join(self.missing_test_sequences)} absent")
        if self.missing_scans:
            why.append("scans missing in " + ", ".join(f"{s} ({n})" for s, n in sorted(self.missing_scans.items())))
        return f"not a full submission ({'; '.join(why)}): sequences {','.join(self.sequences)}, {self.scans} scans"


def write_submission_zip(predictions_root: str | Path, zip_path: str | Path, description: str) -> Path:
    """Zip `predictions_root/sequences/SS/predictions/*.label` (with directory entries) and
    `description.txt`, atomically."""
    root = Path(predictions_root)
    files = sorted(root.glob("sequences/*/predictions/*.label"))
    if not files:
        raise DataError(f"{root}: no exported predictions (sequences/SS/predictions/*.label) to zip")
    sequences = sorted({f.parent.parent.name for f in files})
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            zf.writestr(DESCRIPTION_FILE, description.rstrip("\n") + "\n")
            zf.writestr(zipfile.ZipInfo("sequences/"), b"")
            for seq in sequences:
                zf.writestr(zipfile.ZipInfo(f"sequences/{seq}/"), b"")
                zf.writestr(zipfile.ZipInfo(f"sequences/{seq}/predictions/"), b"")
            for f in files:
                zf.write(f, f.relative_to(root).as_posix())
    return Path(zip_path)


def check_submission(zip_path: str | Path, expected: Expected) -> SubmissionCheck:
    """Check a bundle against the scans it must cover (`expected`, from the dataset's `.bin`
    sizes as the official validator reads them). A wrong label count, a missing directory entry, or
    a label file for a scan the source does not have raises :class:`DataError`; missing
    sequences or scans make the bundle partial (``full`` False), not invalid."""
    path = Path(zip_path)
    if path.suffix != ".zip":
        raise DataError(f"{path}: a benchmark bundle must end with .zip")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable zip file ({exc})") from None
    dirs = {i.filename for i in infos if i.filename.endswith("/")}
    sizes = {i.filename: i.file_size for i in infos if not i.filename.endswith("/")}
    if "sequences/" not in dirs:
        raise DataError(f'{path}: directory "sequences/" missing inside the zip')
    in_zip = sorted({name.split("/")[1] for name in sizes if name.startswith("sequences/")})
    for seq in in_zip:
        for d in (f"sequences/{seq}/", f"sequences/{seq}/predictions/"):
            if d not in dirs:
                raise DataError(f'{path}: directory "{d}" missing inside the zip')
    missing: dict[str, int] = {}
    for seq in in_zip:
        want = expected.get(seq)
        if want is None:
            raise DataError(f"{path}: sequence {seq} is not one the predictions were made for")
        have = {name for name in sizes if name.startswith(f"sequences/{seq}/predictions/")}
        for frame, points in want.items():
            name = f"sequences/{seq}/predictions/{frame:06d}.label"
            if name not in sizes:
                missing[seq] = missing.get(seq, 0) + 1
                continue
            have.discard(name)
            if sizes[name] != LABEL_BYTES * points:
                raise DataError(
                    f'{path}: label file "{name}" should have {points} labels, but found {sizes[name] / LABEL_BYTES:g}'
                )
        if have:
            raise DataError(f"{path}: label file(s) for scans the source does not have, e.g. {sorted(have)[0]}")
    missing_test = [s for s in TEST_SEQUENCES if s not in in_zip]
    return SubmissionCheck(
        path=str(path),
        sequences=in_zip,
        scans=sum(1 for n in sizes if n.startswith("sequences/")),
        missing_test_sequences=missing_test,
        missing_scans=missing,
        full=not missing_test and not missing,
    )


def expected_from_dataset(root: str | Path, sequences: list[str]) -> Expected:
    """Scans of `sequences` and their point counts from the `.bin` sizes (16 bytes per point),
    as the official validator counts them."""
    from m2s.data.semantickitti import Sequence

    out: Expected = {}
    for seq in sequences:
        s = Sequence(Path(root), seq)
        out[seq] = {f: s.scan_path(f).stat().st_size // 16 for f in s.frames}
    return out
