"""Model registry: versioned artifacts with metadata, an atomic champion pointer, rollback.

An artifact is loaded only if its sha256 matches the one in its metadata.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib

from pipeline.errors import ArtifactIntegrityError, RegistryError
from pipeline.io.storage import atomic_write_bytes, atomic_write_json, read_json
from pipeline.paths import ProjectPaths
from pipeline.timeutil import now_utc

ARTIFACT = "model.joblib"
METADATA = "metadata.json"


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


def save_bundle(directory: Path, models: dict, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write artifact then metadata (with the artifact's sha256 and a version) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
        joblib.dump({f"{t}__h{h}": m for (t, h), m in models.items()}, tmp)
    tmp_path = Path(tmp.name)
    digest = sha256_file(tmp_path)
    tmp_path.replace(directory / ARTIFACT)
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
    """Load a bundle after checking its sha256; a mismatch is never loaded."""
    directory = Path(directory)
    try:
        metadata = json.loads((directory / METADATA).read_text())
    except FileNotFoundError:
        raise RegistryError(f"no model metadata at {directory / METADATA}") from None
    artifact = directory / ARTIFACT
    if not artifact.exists():
        raise RegistryError(f"no model artifact at {artifact}")
    actual = sha256_file(artifact)
    if actual != metadata.get("sha256"):
        raise ArtifactIntegrityError(
            f"refusing to load {artifact}: sha256 {actual[:12]}... does not match "
            f"metadata {str(metadata.get('sha256'))[:12]}... (tampered or corrupt)"
        )
    stored = joblib.load(artifact)
    models = {}
    for key, model in stored.items():
        target, h = key.rsplit("__h", 1)
        models[(target, int(h))] = model
    return ModelBundle(models, metadata)


class Registry:
    def __init__(self, paths: ProjectPaths) -> None:
        self.paths = paths

    def version_dir(self, version: str) -> Path:
        return self.paths.registry_dir / version

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
