"""Model registry: versioned artifacts with metadata, an atomic champion pointer with history.

The champion switches (promote, rollback, rollback to a version) happen under one lock, so
two at once leave one winner and one history entry; every switch is appended to
``models/champion_history.jsonl`` before the pointer moves.

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

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.core.keys import ModelKey, nest, unnest
from pipeline.errors import ArtifactIntegrityError, PipelineError, RegistryError
from pipeline.io.metrics import MetricsReporter, StepRun
from pipeline.io.storage import (
    StateFileError,
    atomic_write_bytes,
    atomic_write_json,
    ensure_dir,
    file_lock,
    raise_naming,
    read_state_json,
    require_keys,
)
from pipeline.paths import ProjectPaths
from pipeline.settings import fault_point
from pipeline.timeutil import now_utc

log = logging.getLogger(__name__)

STAGING_PREFIX = ".register-"
CHAMPION_LOCK_TIMEOUT_S = 15 * 60.0
CHAMPION_RECOVERY = (
    "point it at a registered version with `python -m pipeline rollback --to VERSION` "
    "(versions: models/registry/, past champions: models/champion_history.jsonl)"
)
METADATA_RECOVERY = "retrain (`python -m pipeline train`) or register another version"
ARTIFACT = "model.skops"
LEGACY_ARTIFACT = "model.joblib"  # pickle: refused, never loaded
METADATA = "metadata.json"
# the types a bundle we write holds beyond skops' defaults (scikit-learn estimators, numpy):
# measured with skops.io.get_untrusted_types on a bundle saved by train (tests/io/test_registry.py)
TRUSTED_TYPES: tuple[str, ...] = (
    "pipeline.core.models.LogResidualRegressor",
    "pipeline.core.models.TargetFormRegressor",  # the log_level / level / change forms
    "pipeline.core.models.MeanRegressor",  # the mean of several models (model.selection.ensemble)
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
    models: dict[ModelKey, Any]  # each with a predict(frame of features)
    metadata: dict[str, Any]


def _deprecation_shim(module: object) -> bool:
    """A module whose every attribute lookup warns (Airflow's ``add_deprecated_classes``)."""
    hook = getattr(module, "__dict__", {}).get("__getattr__")
    return getattr(getattr(hook, "func", hook), "__name__", "") == "getattr_with_deprecation"


def skops_io():
    """``skops.io``, imported without its loader scanning deprecation shims.

    At import skops finds the module of every scipy ufunc by looking the name up in every
    module of ``sys.modules``. Inside an Airflow task process those include Airflow's
    deprecated-import shims, which warn for any name: ~1,160 ``DeprecatedImportWarning``
    lines per task log. The shims can hold none of these functions, so they are left out
    of ``sys.modules`` while skops imports, and put back.
    """
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    shims = {name: m for name, m in list(sys.modules.items()) if _deprecation_shim(m)}
    for name in shims:
        del sys.modules[name]
    try:
        import skops.io
    finally:
        for name, module in shims.items():
            sys.modules.setdefault(name, module)
    return skops.io


def untrusted_types(data: bytes, where: Path | str) -> list[str]:
    """Types in a skops file outside skops' defaults and :data:`TRUSTED_TYPES` (nothing built)."""
    import zipfile

    sio = skops_io()

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
    sio = skops_io()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = sio.dumps(nest(models))
    unknown = untrusted_types(data, directory / ARTIFACT)
    if unknown:
        raise RegistryError(
            f"model bundle for {directory} holds types the loader does not trust: {unknown}; "
            "if they are ours, add them to TRUSTED_TYPES in pipeline/io/registry.py")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{ARTIFACT}.", suffix=".tmp")
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o644)
        tmp_path.replace(directory / ARTIFACT)
    except BaseException as exc:  # a full disk included: never leave the partial file behind
        tmp_path.unlink(missing_ok=True)
        raise_naming(exc, directory / ARTIFACT)
        raise
    digest = hashlib.sha256(data).hexdigest()
    (directory / LEGACY_ARTIFACT).unlink(missing_ok=True)
    fault_point("save_bundle:artifact_written")
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
    sio = skops_io()
    directory = Path(directory)
    if not (directory / METADATA).exists():
        raise RegistryError(f"no model metadata at {directory / METADATA}")
    metadata = read_state_json(directory / METADATA, "model metadata", METADATA_RECOVERY)
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
    try:
        models = unnest(stored) if all(isinstance(v, dict) for v in stored.values()) \
            else _legacy_keys(stored)
    except ValueError as exc:
        raise ArtifactIntegrityError(f"refusing to load {artifact}: {exc}") from None
    return ModelBundle(models, metadata)


def _legacy_keys(stored: dict) -> dict[ModelKey, Any]:
    """Bundles written before the keys were nested (``"pm2_5__h6"``): read, never written."""
    models = {}
    for name, model in stored.items():
        target, _, hours = str(name).rpartition("__h")
        models[ModelKey.of(target, hours)] = model
    return models


class Registry:
    def __init__(self, paths: ProjectPaths) -> None:
        self.paths = paths
        self._lock_depth = 0
        self._lock_guard = threading.Lock()

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

    # -- the champion lock (re-entrant within one Registry: promote holds it around the gate)

    @contextlib.contextmanager
    def champion_lock(self):
        """Exclusive right to read-decide-switch the champion, across processes."""
        with self._lock_guard:
            outer = self._lock_depth == 0
            self._lock_depth += 1
        try:
            if outer:
                with file_lock(self.paths.models_dir / ".champion.lock",
                               timeout_s=CHAMPION_LOCK_TIMEOUT_S, what="champion lock"):
                    yield
            else:
                yield
        finally:
            with self._lock_guard:
                self._lock_depth -= 1

    # -- versions

    def register(self, candidate_dir: Path) -> str:
        """Verify a candidate bundle, then copy it into the registry (idempotent by version).

        A torn candidate (a train killed between artifact and metadata) fails verification and
        never enters the registry. Staging directories of copies killed mid-way are removed.
        """
        candidate_dir = Path(candidate_dir)
        try:
            metadata = load_bundle(candidate_dir).metadata
        except PipelineError as exc:
            raise RegistryError(f"candidate in {candidate_dir} is incomplete or damaged ({exc}): "
                                "run `python -m pipeline train` again") from None
        version = metadata["version"]
        target = self.version_dir(version)
        ensure_dir(self.paths.registry_dir)
        self._remove_stale_staging()
        if not target.exists():
            staging = Path(tempfile.mkdtemp(dir=self.paths.models_dir,
                                            prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
            try:
                os.chmod(staging, 0o755)
                for name in (ARTIFACT, METADATA):
                    shutil.copy2(candidate_dir / name, staging / name)
                fault_point("register:staged")
                try:
                    staging.rename(target)
                except OSError:
                    # another process registered the same version meanwhile (two promotes at
                    # once): the version is there, idempotent by version
                    if not (target / METADATA).exists():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return version

    def _remove_stale_staging(self) -> None:
        for path in self.paths.models_dir.glob(f"{STAGING_PREFIX}*"):
            pid = path.name.removeprefix(STAGING_PREFIX).split("-", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            log.info("removing %s left by a register that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)

    def versions(self) -> list[str]:
        if not self.paths.registry_dir.exists():
            return []
        return sorted(p.name for p in self.paths.registry_dir.iterdir()
                      if (p / METADATA).exists())

    def load(self, version: str) -> ModelBundle:
        if not (self.version_dir(version) / METADATA).exists():
            raise RegistryError(f"unknown model version {version!r}")
        return load_bundle(self.version_dir(version))

    def metadata(self, version: str) -> dict[str, Any]:
        """A version's metadata without loading its artifact."""
        path = self.version_dir(version) / METADATA
        if not path.exists():
            raise RegistryError(f"unknown model version {version!r}")
        return read_state_json(path, "model metadata", "register the version again")

    # -- the champion

    def pointer(self) -> dict[str, Any] | None:
        path = self.paths.champion_pointer
        if not path.exists():
            return None
        return require_keys(read_state_json(path, "champion pointer", CHAMPION_RECOVERY),
                            ("version",), path, "champion pointer", CHAMPION_RECOVERY)

    def champion_version(self) -> str | None:
        pointer = self.pointer()
        return None if pointer is None else str(pointer["version"])

    def load_champion(self) -> ModelBundle:
        version = self.champion_version()
        if version is None:
            raise RegistryError("no champion yet: run train, evaluate and promote first")
        return self.load(version)

    def history(self) -> list[dict]:
        """Every champion switch, oldest first."""
        path = self.paths.champion_history
        if not path.exists():
            return []
        entries = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except ValueError:
                raise StateFileError(
                    f"champion history {path} line {number} is not JSON: remove that line "
                    "(the pointer models/champion.json is unaffected)") from None
        return entries

    def _switch(self, version: str, previous: str | None, reason: str) -> dict:
        """Append to the history, then replace the pointer atomically (under the lock)."""
        entry = {"version": version, "previous": previous, "at": now_utc().isoformat(),
                 "reason": reason}
        history = self.history() + [entry]
        atomic_write_bytes(
            self.paths.champion_history,
            "".join(json.dumps(h, sort_keys=True) + "\n" for h in history).encode(),
        )
        atomic_write_json(self.paths.champion_pointer, entry)
        return entry

    def promote(self, version: str, reason: str = "promoted") -> bool:
        """Make ``version`` champion; False (and no history entry) if it already is."""
        with self.champion_lock():
            self.load(version)  # refuses a missing or tampered artifact before switching
            current = self.champion_version()
            if current == version:
                return False
            self._switch(version, current, reason)
            return True

    def rollback(self, to: str | None = None) -> str:
        """Restore the champion before the current one, or make ``to`` champion (roll forward).

        Repeated plain rollbacks walk further back through the history; ``to`` may be any
        registered version, earlier or later.
        """
        with self.champion_lock():
            pointer = self.pointer()
            if pointer is None:
                raise RegistryError("no champion to roll back")
            current = str(pointer["version"])
            if to is not None:
                if to == current:
                    raise RegistryError(f"{to} is already the champion")
                self.load(to)  # unknown, missing or tampered: refused before switching
                self._switch(to, current, f"rollback --to {to} from {current}")
                return to
            previous = pointer.get("previous")
            if not previous:
                raise RegistryError(f"champion {current} has no previous champion to roll back to")
            self.load(previous)
            # the previous entry's own 'previous' lets repeated rollbacks walk further back
            earlier = next((h.get("previous") for h in reversed(self.history())
                            if h.get("version") == previous), None)
            self._switch(previous, earlier, f"rollback from {current}")
            return previous


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def push_champion(reporter: MetricsReporter, registry: Registry,
                  switched_by: str | None = None) -> None:
    """Push the current champion under its own group (step="champion").

    Promote and rollback both change the champion; one group means the latest
    change wins, whichever step made it, and a failing step cannot make an older
    champion look current. ``switched_by`` (the step that just moved the pointer)
    also pushes when it moved, for the dashboards' promotion and rollback marks;
    without it the last switch pushed stays as it was.
    """
    version = registry.champion_version()
    if version is None:
        return
    meta = registry.metadata(version)
    run = StepRun("champion")
    run.info("aq_champion_info", {"version": version})
    created = datetime.fromisoformat(meta["created_at"]).timestamp()
    run.set("aq_champion_created_timestamp_seconds", created)
    if switched_by is not None:
        switched = datetime.fromisoformat(registry.pointer()["at"]).timestamp()
        run.set("aq_champion_switched_timestamp_seconds", switched, action=switched_by)
    reporter.push(run)
