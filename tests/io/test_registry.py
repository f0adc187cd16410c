"""Registry: metadata with sha256, tampered artifacts refused, atomic champion and rollback."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyRegressor

from pipeline.errors import ArtifactIntegrityError, RegistryError
from pipeline.io.registry import Registry, load_bundle, save_bundle, sha256_file
from pipeline.paths import ProjectPaths


def bundle(directory, constant: float) -> dict:
    model = DummyRegressor(strategy="constant", constant=constant).fit(
        pd.DataFrame({"x": [0.0, 1.0]}), np.array([0.0, 1.0])
    )
    return save_bundle(directory, {("pm2_5", 1): model}, {"features": ["x"]})


def test_saved_bundle_carries_sha256_and_loads(tmp_path):
    meta = bundle(tmp_path / "c", 3.0)
    assert meta["sha256"] == sha256_file(tmp_path / "c" / "model.joblib")
    assert meta["version"].endswith(meta["sha256"][:8])
    loaded = load_bundle(tmp_path / "c")
    assert loaded.models[("pm2_5", 1)].predict(pd.DataFrame({"x": [5.0]}))[0] == 3.0


def test_tampered_artifact_is_never_loaded(tmp_path):
    bundle(tmp_path / "c", 3.0)
    artifact = tmp_path / "c" / "model.joblib"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    with pytest.raises(ArtifactIntegrityError, match="does not match"):
        load_bundle(tmp_path / "c")


def test_promote_and_rollback(tmp_path):
    paths = ProjectPaths(tmp_path)
    registry = Registry(paths)
    versions = []
    for i, constant in enumerate([1.0, 2.0, 3.0]):
        meta = bundle(tmp_path / f"cand{i}", constant)
        versions.append(registry.register(tmp_path / f"cand{i}"))
        assert versions[-1] == meta["version"]
        registry.promote(versions[-1])
    assert registry.champion_version() == versions[2]
    assert registry.rollback() == versions[1]
    assert registry.champion_version() == versions[1]
    assert registry.rollback() == versions[0]
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback()
    history = [json.loads(line) for line in paths.champion_history.read_text().splitlines()]
    assert [h["version"] for h in history] == [*versions, versions[1], versions[0]]


def test_tampered_version_cannot_become_champion(tmp_path):
    registry = Registry(ProjectPaths(tmp_path))
    bundle(tmp_path / "good", 1.0)
    good = registry.register(tmp_path / "good")
    registry.promote(good)
    bundle(tmp_path / "bad", 2.0)
    bad = registry.register(tmp_path / "bad")
    artifact = registry.version_dir(bad) / "model.joblib"
    artifact.write_bytes(b"not a model")
    with pytest.raises(ArtifactIntegrityError):
        registry.promote(bad)
    assert registry.champion_version() == good
