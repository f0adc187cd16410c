"""Registry: metadata with sha256, tampered artifacts refused, atomic champion and rollback.

Loading a model must never run code from the model directory: forged artifacts
below carry payloads that would create a marker file if anything executed them.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.dummy import DummyRegressor

from pipeline.config import ModelConfig
from pipeline.core.keys import ModelKey
from pipeline.core.models import build_estimator
from pipeline.errors import ArtifactIntegrityError, RegistryError
from pipeline.io.registry import (
    ARTIFACT,
    TRUSTED_TYPES,
    Registry,
    load_bundle,
    save_bundle,
    sha256_file,
)
from pipeline.paths import ProjectPaths


def bundle(directory, constant: float) -> dict:
    model = DummyRegressor(strategy="constant", constant=constant).fit(
        pd.DataFrame({"x": [0.0, 1.0]}), np.array([0.0, 1.0])
    )
    return save_bundle(directory, {("pm2_5", 1): model}, {"features": ["x"]})


def test_saved_bundle_carries_sha256_and_loads(tmp_path):
    meta = bundle(tmp_path / "c", 3.0)
    assert meta["sha256"] == sha256_file(tmp_path / "c" / ARTIFACT)
    assert meta["version"].endswith(meta["sha256"][:8])
    loaded = load_bundle(tmp_path / "c")
    assert loaded.models[("pm2_5", 1)].predict(pd.DataFrame({"x": [5.0]}))[0] == 3.0


def test_models_are_stored_nested_by_target_and_hours(tmp_path):
    bundle(tmp_path / "c", 3.0)
    stored = sio.loads((tmp_path / "c" / ARTIFACT).read_bytes(), trusted=list(TRUSTED_TYPES))
    assert stored.keys() == {"pm2_5"}
    assert list(stored["pm2_5"]) == ["1"]
    assert list(load_bundle(tmp_path / "c").models) == [ModelKey("pm2_5", 1)]


def test_a_bundle_written_with_the_old_flat_keys_still_loads(tmp_path):
    """Registries hold champions saved as {"pm2_5__h1": model}: read, never written."""
    bundle(tmp_path / "c", 3.0)
    stored = sio.loads((tmp_path / "c" / ARTIFACT).read_bytes(), trusted=list(TRUSTED_TYPES))
    forge(tmp_path / "c", sio.dumps({"pm2_5__h1": stored["pm2_5"]["1"]}))
    loaded = load_bundle(tmp_path / "c")
    assert list(loaded.models) == [ModelKey("pm2_5", 1)]
    assert loaded.models[("pm2_5", 1)].predict(pd.DataFrame({"x": [5.0]}))[0] == 3.0


def test_tampered_artifact_is_never_loaded(tmp_path):
    bundle(tmp_path / "c", 3.0)
    artifact = tmp_path / "c" / ARTIFACT
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
    artifact = registry.version_dir(bad) / ARTIFACT
    artifact.write_bytes(b"not a model")
    with pytest.raises(ArtifactIntegrityError):
        registry.promote(bad)
    assert registry.champion_version() == good


# ------------------------------------------------------------------ code execution


class Payload:
    """Creates ``marker`` when unpickled or when skops rebuilds it (``__setstate__``)."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))

    def __setstate__(self, state):
        open(state["marker"], "w").close()  # noqa: SIM115 - the test's tell-tale


def forge(directory, data: bytes, name: str = ARTIFACT) -> None:
    """Replace the artifact and update the sha256 in metadata.json, as an attacker would."""
    (directory / ARTIFACT).unlink(missing_ok=True)
    (directory / name).write_bytes(data)
    meta = json.loads((directory / "metadata.json").read_text())
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    (directory / "metadata.json").write_text(json.dumps(meta))


def test_a_pickle_payload_with_a_matching_hash_never_runs(tmp_path):
    bundle(tmp_path / "c", 3.0)
    marker = tmp_path / "pwned"
    payload = Payload()
    payload.marker = str(marker)
    forge(tmp_path / "c", pickle.dumps({"pm2_5__h1": payload}))
    with pytest.raises(ArtifactIntegrityError, match="not a skops model file"):
        load_bundle(tmp_path / "c")
    assert not marker.exists()


def test_a_skops_file_naming_an_untrusted_type_is_refused_before_building(tmp_path):
    bundle(tmp_path / "c", 3.0)
    marker = tmp_path / "pwned"
    payload = Payload.__new__(Payload)
    payload.__dict__["marker"] = str(marker)
    # a forged skops file: our Payload type (would run __setstate__) and os.system by name
    Payload.__reduce__, saved = object.__reduce__, Payload.__reduce__
    try:
        data = sio.dumps({"pm2_5__h1": payload, "pm2_5__h6": os.system})
    finally:
        Payload.__reduce__ = saved
    forge(tmp_path / "c", data)
    with pytest.raises(ArtifactIntegrityError, match=r"outside the trust list .*Payload") as err:
        load_bundle(tmp_path / "c")
    assert "system" in str(err.value)
    assert not marker.exists()


def test_an_old_pickle_bundle_is_refused_with_retrain_advice(tmp_path):
    bundle(tmp_path / "c", 3.0)
    marker = tmp_path / "pwned"
    payload = Payload()
    payload.marker = str(marker)
    forge(tmp_path / "c", pickle.dumps(payload), name="model.joblib")
    with pytest.raises(RegistryError, match=r"old pickle format.*retrain"):
        load_bundle(tmp_path / "c")
    assert not marker.exists()


@pytest.mark.train
@pytest.mark.parametrize(("form", "regressor"), [
    ("log_change", "LogResidualRegressor"), ("log_level", "TargetFormRegressor"),
    ("change", "TargetFormRegressor")])
def test_a_real_forecast_model_needs_exactly_the_trusted_types(tmp_path, form, regressor):
    """The trust list is what a bundle we write holds: HGB internals and our regressors."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"pm2_5_log": rng.normal(2, 0.5, 300), "x": rng.normal(size=300),
                          "location_code": rng.integers(0, 3, 300)})
    target = np.expm1(frame["pm2_5_log"] + 0.1 * frame["x"])
    settings = {**ModelConfig(max_iter=5).base_settings(), "form": form}
    model = build_estimator(["pm2_5_log", "x", "location_code"], "pm2_5", settings
                            ).fit(frame, target)
    save_bundle(tmp_path / "c", {("pm2_5", 1): model}, {"features": ["x"]})
    found = set(sio.get_untrusted_types(file=tmp_path / "c" / ARTIFACT))
    assert f"pipeline.core.models.{regressor}" in found
    assert found <= set(TRUSTED_TYPES)
    loaded = load_bundle(tmp_path / "c").models[("pm2_5", 1)]
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))


def test_saving_a_type_outside_the_trust_list_fails_at_save(tmp_path):
    payload = Payload.__new__(Payload)
    payload.__dict__["marker"] = str(tmp_path / "never")
    Payload.__reduce__, saved = object.__reduce__, Payload.__reduce__
    try:
        with pytest.raises(RegistryError, match=r"does not trust: \[.*Payload.*TRUSTED_TYPES"):
            save_bundle(tmp_path / "c", {("pm2_5", 1): payload}, {})
    finally:
        Payload.__reduce__ = saved
    assert not (tmp_path / "c" / ARTIFACT).exists()


@pytest.mark.parametrize("version", ["../../../elsewhere/models/registry/v1", "a/b", "..",
                                     "/etc", "", ".hidden"])
def test_version_names_cannot_leave_the_registry(tmp_path, version):
    registry = Registry(ProjectPaths(tmp_path))
    elsewhere = tmp_path / "elsewhere" / "models" / "registry" / "v1"
    bundle(elsewhere, 1.0)
    with pytest.raises(RegistryError, match="invalid model version name"):
        registry.load(version)


def test_a_champion_pointer_to_another_directory_is_refused(tmp_path):
    paths = ProjectPaths(tmp_path)
    bundle(tmp_path / "elsewhere", 1.0)
    paths.champion_pointer.parent.mkdir(parents=True, exist_ok=True)
    paths.champion_pointer.write_text(json.dumps({"version": "../../elsewhere"}))
    with pytest.raises(RegistryError, match="invalid model version name"):
        Registry(paths).load_champion()


def test_a_version_registered_meanwhile_by_another_process_is_no_error(tmp_path, monkeypatch):
    """Two promotes at once register the same candidate: the one that renames second finds
    the version there (it failed with "Directory not empty" under load)."""
    import pipeline.io.registry as registry_module

    bundle(tmp_path / "cand", 1.0)
    paths = ProjectPaths(tmp_path)
    other = Registry(paths)
    calls = []

    def meanwhile(name: str) -> None:
        if name == "register:staged" and not calls:
            calls.append(name)
            other.register(tmp_path / "cand")  # the other process wins the rename

    monkeypatch.setattr(registry_module, "fault_point", meanwhile)
    version = Registry(paths).register(tmp_path / "cand")
    assert calls == ["register:staged"]
    assert Registry(paths).versions() == [version]
    assert not list(paths.models_dir.glob(".register-*"))  # no staging left behind
