"""Model registry: versioned artifacts with metadata, an atomic champion pointer, rollback.

Loading a model can never run code from the model directory:

* artifacts are skops files (``model.skops``), not pickles: loading builds
  only the types on a trust list, and a file naming any other type is refused
  before anything is built (:data:`TRUSTED_TYPES`, checked on save too, so a
  new model class fails at ``train`` with the name to add, not at serving);
* the sha256 in ``metadata.json`` proves the file is the one written (integrity,
  not origin: the trust list is what keeps a forged file from running code);
* an old ``model.joblib`` (pickle) is never opened: retrain;
* version names are plain names inside the registry (no separators, no ``..``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ArtifactIntegrityError, RegistryError
from pipeline.io.storage import atomic_write_bytes, atomic_write_json, read_json
from pipeline.paths import ProjectPaths
from pipeline.timeutil import now_utc

ARTIFACT = "model.skops"
LEGACY_ARTIFACT = "model.joblib"  # pickle: refused, never loaded
METADATA = "metadata.json"
# the types a bundle we write holds beyond skops' defaults (scikit-learn estimators, numpy):
# measured with skops.io.get_untrusted_types on a bundle saved by train (tests/io/test_registry.py)
TRUSTED_TYPES: tuple[str, ...] = (
    "pipeline.core.models.LogResidualRegressor",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "functools.partial",  # HGB's partial(check_array, ...): the function is checked on its own
    "sklearn.utils.validation.check_array",
)
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_ARTIFACT_BYTES = 4 << 30


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelBundle:
    models: dict  # (target, horizon) -> sklearn Pipeline
    metadata: dict[str, Any]


def untrusted_types(data: bytes, where: Path | str) -> list[str]:
    """Types in a skops file outside skops' defaults and :data:`TRUSTED_TYPES` (nothing built)."""
    import zipfile

    import skops.io as sio

    try:
        found = sio.get_untrusted_types(data=data)
    except (zipfile.BadZipFile, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ArtifactIntegrityError(
            f"refusing to load {where}: not a skops model file ({type(exc).__name__}: {exc})"
        ) from None
    return sorted(set(found) - set(TRUSTED_TYPES))


def save_bundle(directory: Path, models: dict, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write artifact then metadata (with the artifact's sha256 and a version) atomically.

    The artifact is checked against the trust list before it is kept: a model
    holding a type the loader would refuse fails here, naming the type.
    """
    import skops.io as sio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = sio.dumps({f"{t}__h{h}": m for (t, h), m in models.items()})
    unknown = untrusted_types(data, directory / ARTIFACT)
    if unknown:
        raise RegistryError(
            f"model bundle for {directory} holds types the loader does not trust: {unknown}; "
            "if they are ours, add them to TRUSTED_TYPES in pipeline/io/registry.py")
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
        tmp.write(data)
    tmp_path = Path(tmp.name)
    digest = hashlib.sha256(data).hexdigest()
    tmp_path.replace(directory / ARTIFACT)
    (directory / LEGACY_ARTIFACT).unlink(missing_ok=True)
    created = now_utc()
    metadata = {
        **metadata,
        "sha256": digest,
        "created_at": created.isoformat(),
        "version": f"{created:%Y%m%dT%H%M%SZ}-{digest[:8]}",
    }
    atomic_write_json(directory / METADATA, metadata)
    return metadata


def load_bundle(directory: Path) -> ModelBundle:
    """Load a bundle: sha256 checked, then only trusted types built; anything else refused."""
    import skops.io as sio

    directory = Path(directory)
    try:
        metadata = json.loads((directory / METADATA).read_text())
    except FileNotFoundError:
        raise RegistryError(f"no model metadata at {directory / METADATA}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactIntegrityError(f"unreadable model metadata {directory / METADATA}: "
                                     f"{exc}") from None
    if not isinstance(metadata, dict):
        raise ArtifactIntegrityError(f"model metadata {directory / METADATA} is not an object")
    artifact = directory / ARTIFACT
    if not artifact.exists():
        if (directory / LEGACY_ARTIFACT).exists():
            raise RegistryError(
                f"{directory / LEGACY_ARTIFACT} is the old pickle format, which is never loaded "
                "(it could run code): retrain with `python -m pipeline train` (then evaluate "
                "and promote)")
        raise RegistryError(f"no model artifact at {artifact}")
    if artifact.stat().st_size > MAX_ARTIFACT_BYTES:
        raise ArtifactIntegrityError(f"refusing to load {artifact}: larger than "
                                     f"{MAX_ARTIFACT_BYTES} bytes")
    data = artifact.read_bytes()  # checked and loaded from the same bytes
    actual = hashlib.sha256(data).hexdigest()
    if actual != metadata.get("sha256"):
        raise ArtifactIntegrityError(
            f"refusing to load {artifact}: sha256 {actual[:12]}... does not match "
            f"metadata {str(metadata.get('sha256'))[:12]}... (tampered or corrupt)"
        )
    unknown = untrusted_types(data, artifact)
    if unknown:
        raise ArtifactIntegrityError(
            f"refusing to load {artifact}: it names types outside the trust list {unknown} "
            "(nothing was built from it)")
    try:
        stored = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as exc:  # noqa: BLE001 - whatever a forged file does, it is refused
        raise ArtifactIntegrityError(f"refusing to load {artifact}: {type(exc).__name__}: "
                                     f"{exc}") from None
    if not isinstance(stored, dict):
        raise ArtifactIntegrityError(f"refusing to load {artifact}: not a model bundle")
    models = {}
    for key, model in stored.items():
        target, h = key.rsplit("__h", 1)
        models[(target, int(h))] = model
    return ModelBundle(models, metadata)


class Registry:
    def __init__(self, paths: ProjectPaths) -> None:
        self.paths = paths

    def version_dir(self, version: str) -> Path:
        """The directory of ``version``: a plain name inside the registry, never a path."""
        if not isinstance(version, str) or not VERSION_NAME.match(version) or ".." in version:
            raise RegistryError(
                f"invalid model version name {version!r}: letters, digits, '_', '-' and '.' "
                "only (no path separators, no '..')")
        directory = self.paths.registry_dir / version
        if directory.resolve().parent != self.paths.registry_dir.resolve():
            raise RegistryError(f"model version {version!r} is outside the registry")
        return directory

    def register(self, candidate_dir: Path) -> str:
        """Copy a candidate bundle into the registry (idempotent by version)."""
        metadata = read_json(Path(candidate_dir) / METADATA)
        version = metadata["version"]
        target = self.version_dir(version)
        if not target.exists():
            staging = Path(tempfile.mkdtemp(dir=self.paths.registry_dir.parent
                                            if self.paths.registry_dir.parent.exists()
                                            else None, prefix=".register-"))
            try:
                for name in (ARTIFACT, METADATA):
                    shutil.copy2(Path(candidate_dir) / name, staging / name)
                target.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return version

    def versions(self) -> list[str]:
        if not self.paths.registry_dir.exists():
            return []
        return sorted(p.name for p in self.paths.registry_dir.iterdir()
                      if (p / METADATA).exists())

    def champion_version(self) -> str | None:
        pointer = self.paths.champion_pointer
        if not pointer.exists():
            return None
        return read_json(pointer)["version"]

    def load(self, version: str) -> ModelBundle:
        if not (self.version_dir(version) / METADATA).exists():
            raise RegistryError(f"unknown model version {version!r}")
        return load_bundle(self.version_dir(version))

    def load_champion(self) -> ModelBundle:
        version = self.champion_version()
        if version is None:
            raise RegistryError("no champion yet: run train, evaluate and promote first")
        return self.load(version)

    def _history(self) -> list[dict]:
        path = self.paths.champion_history
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _switch(self, version: str, previous: str | None, reason: str) -> None:
        """Append to the history, then replace the pointer atomically."""
        entry = {"version": version, "previous": previous, "at": now_utc().isoformat(),
                 "reason": reason}
        history = self._history() + [entry]
        atomic_write_bytes(
            self.paths.champion_history,
            "".join(json.dumps(h, sort_keys=True) + "\n" for h in history).encode(),
        )
        atomic_write_json(self.paths.champion_pointer, entry)

    def promote(self, version: str, reason: str = "promoted") -> None:
        self.load(version)  # refuses a missing or tampered artifact before switching
        self._switch(version, self.champion_version(), reason)

    def rollback(self) -> str:
        """Restore the champion before the current one."""
        current = self.champion_version()
        if current is None:
            raise RegistryError("no champion to roll back")
        previous = read_json(self.paths.champion_pointer).get("previous")
        if not previous:
            raise RegistryError(f"champion {current} has no previous champion to roll back to")
        self.load(previous)
        # the previous entry's own 'previous' lets repeated rollbacks walk further back
        earlier = next((h.get("previous") for h in reversed(self._history())
                        if h["version"] == previous), None)
        self._switch(previous, earlier, f"rollback from {current}")
        return previous
