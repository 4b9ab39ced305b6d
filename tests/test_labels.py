"""The label manifest agrees with the official SemanticKITTI configuration; mapping is a LUT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from m2s.errors import ConfigError, DataError
from m2s.labels import load_label_manifest, make_label_word, split_label_word

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "semantic-kitti.yaml"
OFFICIAL_KEYS = ("labels", "color_map", "content", "learning_map", "learning_map_inv", "learning_ignore", "split")


@pytest.fixture(scope="module")
def manifest():
    return load_label_manifest()


def test_manifest_agrees_exactly_with_official_config(manifest):
    if not OFFICIAL.is_file():
        pytest.skip(f"official reference not present at {OFFICIAL}")
    official = yaml.safe_load(OFFICIAL.read_text())
    ours = yaml.safe_load(Path("data_manifests/semantic-kitti.yaml").read_text())
    for key in OFFICIAL_KEYS:
        assert ours[key] == official[key], key
    # and the parsed model holds the same values
    assert manifest.learning_map == official["learning_map"]
    assert manifest.learning_map_inv == official["learning_map_inv"]
    assert manifest.split == official["split"]


def test_hard_classes_are_the_papers(manifest):
    assert manifest.hard_classes == [
        "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
    ]
    raw = set(manifest.hard_raw_ids_derived.tolist())
    # every moving-* id of a hard class is hard; moving-car and car are not
    assert {253, 254, 255, 258, 259, 11, 15, 18, 20, 30, 31, 32} <= raw
    assert 10 not in raw and 252 not in raw
    assert set(manifest.hard_raw_ids) == raw


def test_lookup_table_maps_words_and_rejects_unknown_ids(manifest):
    sem = np.array([0, 1, 10, 252, 254, 40, 60, 99, 259], dtype=np.uint32)
    words = make_label_word(sem, np.arange(sem.size))
    train = manifest.to_train(words)
    assert train.tolist() == [0, 0, 1, 1, 6, 9, 9, 0, 5]
    s, i = split_label_word(words)
    assert s.tolist() == sem.tolist() and i.tolist() == list(range(sem.size))
    with pytest.raises(DataError, match="unknown raw semantic id"):
        manifest.to_train(np.array([7], dtype=np.uint32), source="x.label")
    with pytest.raises(DataError):
        manifest.to_train(np.array([60000], dtype=np.uint32))


def test_inverse_map_round_trips_train_ids(manifest):
    ids = np.arange(manifest.num_classes)
    assert (manifest.to_train(manifest.to_raw(ids)) == ids).all()
    assert manifest.train_names[1] == "car" and manifest.train_names[19] == "traffic-sign"
    assert manifest.ignored_train_ids.tolist() == [0]
    assert len(manifest.evaluated_train_ids) == 19


def test_digest_is_stable_and_sensitive(manifest, tmp_path):
    assert manifest.digest() == load_label_manifest().digest()
    data = yaml.safe_load(Path("data_manifests/semantic-kitti.yaml").read_text())
    data["learning_map"][52] = 13
    data["hard_raw_ids"] = []
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(data))
    assert load_label_manifest(p).digest() != manifest.digest()


def test_bad_manifest_is_refused(tmp_path):
    p = tmp_path / "m.yaml"
    data = yaml.safe_load(Path("data_manifests/semantic-kitti.yaml").read_text())
    data["hard_classes"] = ["unicorn"]
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="unicorn"):
        load_label_manifest(p)
    with pytest.raises(ConfigError, match="not found"):
        load_label_manifest(tmp_path / "missing.yaml")
