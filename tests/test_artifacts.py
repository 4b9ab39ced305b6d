"""Versioned artifacts: deterministic ids, kind/schema checks, digests, and `m2s inspect`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from m2s.artifacts import (
    ArtifactInput,
    describe_files,
    existing_artifact,
    load_artifact,
    new_manifest,
    verify_files,
    write_manifest,
)
from m2s.errors import ArtifactError


def _make(tmp_path, config=None):
    (tmp_path / "data.bin").write_bytes(b"abc" * 100)
    m = new_manifest(
        "evaluation",
        config or {"a": 1, "b": [1, 2]},
        [ArtifactInput(kind="model", id="m1", path="/x")],
        files=describe_files(tmp_path, ["data.bin"]),
        metrics={"miou": 0.5},
    )
    write_manifest(tmp_path, m)
    return m


def test_content_id_is_deterministic_and_config_sensitive(tmp_path):
    a = new_manifest("model", {"x": 1, "y": {"z": 2}}, [])
    b = new_manifest("model", {"y": {"z": 2}, "x": 1}, [])
    c = new_manifest("model", {"x": 2, "y": {"z": 2}}, [])
    d = new_manifest("model", {"x": 1, "y": {"z": 2}}, [ArtifactInput(kind="fused-cache", id="q", path="p")])
    assert a.content_id == b.content_id
    assert len({a.content_id, c.content_id, d.content_id}) == 3


def test_round_trip_kind_check_and_digests(tmp_path):
    m = _make(tmp_path)
    loaded = load_artifact(tmp_path, "evaluation")
    assert loaded.content_id == m.content_id and loaded.metrics["miou"] == 0.5
    with pytest.raises(ArtifactError, match="expected a model artifact, found a evaluation"):
        load_artifact(tmp_path, "model")
    assert verify_files(tmp_path, loaded) == []
    assert existing_artifact(tmp_path, "evaluation", m.content_id) is not None
    (tmp_path / "data.bin").write_bytes(b"abd" * 100)
    assert verify_files(tmp_path, loaded) == ["data.bin: sha256 mismatch"]
    assert existing_artifact(tmp_path, "evaluation", m.content_id) is None


def test_incompatible_schema_and_garbage_are_refused(tmp_path):
    _make(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["schema_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="schema version 99 is not supported"):
        load_artifact(tmp_path, "evaluation")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(tmp_path, "evaluation")
    with pytest.raises(ArtifactError, match="not an m2s artifact"):
        load_artifact(tmp_path / "nowhere", "evaluation")


def test_inspect_shows_table_and_fails_on_digest_mismatch(tmp_path):
    m = _make(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert m.content_id in res.output and "verified" in res.output
    (tmp_path / "data.bin").write_bytes(b"tampered")
    res = runner.invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 1
    assert "do not match the manifest" in res.output
