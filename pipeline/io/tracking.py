"""MLflow tracking: one run per step, model versions, the ``champion`` / ``candidate`` aliases.

A tracked step (train, evaluate, backtest, promote, rollback) describes its run as a
:class:`RunRecord` (params, metrics, tags, artifact files, the model it registers, the aliases
it moves) and hands it to :func:`log_run`. ``AQ_MLFLOW_TRACKING_URI`` names the server (``make
run`` starts one on 127.0.0.1 and exports it in ``.stack/env``); unset, empty or ``off``:
nothing is logged (docs/mlops.md).

* **MLflow's REST API, not its client.** mlflow and mlflow-skinny 3.x need cachetools < 8,
  which Airflow 3.3.2 pins at 8.0.2: they cannot share ``.venv``. The calls made here are the
  documented ``/api/2.0/mlflow/...`` endpoints MLflow's own client makes (runs, log-batch,
  model versions, aliases, the proxied artifact store of ``mlflow server --serve-artifacts``,
  its default), each bounded by MLflow's own ``MLFLOW_HTTP_REQUEST_TIMEOUT`` and
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (shorter defaults here: 5 s, 1 retry).
* **The project's registry stays the source of truth.** The skops file and its metadata are
  logged as plain artifacts under ``model/`` (no ``MLmodel`` file, no flavour: nothing in MLflow
  can load them, let alone unpickle them); a model version points at them (``runs:/<run>/model``)
  tagged ``aq.version`` and ``aq.sha256``. Serving loads the champion through
  :class:`~pipeline.io.registry.Registry` (sha256 + trusted types), never from MLflow.
* **A server that is down never fails a step.** The first failed call says so once (a warning
  naming the server and the queue), the run is written to ``.tracking/queue/`` (its files hard
  linked or copied) and logged, in order, by the next step that reaches the server; a run that
  cannot be queued either (queue full) is named in an error line, never dropped silently.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from pipeline.errors import PipelineError
from pipeline.io.storage import atomic_write_json, file_lock
from pipeline.settings import TrackingSettings

log = logging.getLogger(__name__)

API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
MODEL_DIR = "model"  # the run's artifact folder holding the skops file and its metadata
VERSION_TAG = "aq.version"  # the project's model version, on runs and model versions
SHA256_TAG = "aq.sha256"
CHAMPION, CANDIDATE = "champion", "candidate"
# MLflow 3's UI opens an experiment of this kind on its runs (model training), not on GenAI traces
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow's limits (mlflow/utils/validation.py): a log-batch call, a param value, a key
MAX_PARAMS_TAGS_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH = 100, 1000, 1000
MAX_PARAM_LENGTH, MAX_TAG_LENGTH, MAX_KEY_LENGTH = 6000, 8000, 250
MAX_RESPONSE_BYTES = 4 << 20
BACKOFF_S = 0.25
# the queue holds at most this much; beyond, a run is reported as not logged
MAX_QUEUED_RUNS = 200
MAX_QUEUE_BYTES = 4 << 30
RUN_FILE = "run.json"
QUEUE_LOCK_TIMEOUT_S = 2.0


class TrackingUnavailable(Exception):
    """The server did not answer (connection, timeout, 5xx or 429 after the retries)."""


class TrackingRefused(Exception):
    """The server answered 4xx: this call will not succeed by trying again."""

    def __init__(self, message: str, error_code: str = "") -> None:
        super().__init__(message)
        self.error_code = error_code


@dataclass(frozen=True)
class ModelRef:
    """A project model version whose ``model.skops`` + ``metadata.json`` back an MLflow model
    version. ``upload``: log the files in this run even if a model version exists already."""

    version: str
    directory: Path
    sha256: str
    upload: bool = False


@dataclass
class RunRecord:
    """Everything one step's MLflow run holds; JSON-able, so a queued run is this on disk."""

    step: str
    name: str
    start_ms: int
    end_ms: int = 0
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)  # artifact path -> local file
    model: ModelRef | None = None
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> project version
    documents: dict[str, Any] = field(default_factory=dict)  # artifact path -> JSON value
    run_id: str | None = None  # set once the server created it (a replay reuses it)

    def files(self) -> dict[str, Path]:
        """Every file the run logs: its artifacts, and the model's when it has one."""
        out = dict(self.artifacts)
        if self.model is not None:
            for name in ("model.skops", "metadata.json"):
                out[f"{MODEL_DIR}/{name}"] = self.model.directory / name
        return out

    def to_json(self, base: Path) -> dict[str, Any]:
        """The record with its files as paths relative to ``base`` (a queue entry)."""
        body = asdict(self)
        body["artifacts"] = {k: str(v.relative_to(base)) for k, v in self.artifacts.items()}
        if self.model is not None:
            body["model"]["directory"] = str(self.model.directory.relative_to(base))
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any], base: Path) -> RunRecord:
        model = body.get("model")
        return cls(
            step=str(body["step"]), name=str(body["name"]), start_ms=int(body["start_ms"]),
            end_ms=int(body.get("end_ms") or 0),
            params={str(k): str(v) for k, v in body.get("params", {}).items()},
            metrics={str(k): float(v) for k, v in body.get("metrics", {}).items()},
            tags={str(k): str(v) for k, v in body.get("tags", {}).items()},
            artifacts={str(k): base / str(v) for k, v in body.get("artifacts", {}).items()},
            model=None if model is None else ModelRef(
                str(model["version"]), base / str(model["directory"]), str(model["sha256"]),
                bool(model.get("upload"))),
            aliases={str(k): str(v) for k, v in body.get("aliases", {}).items()},
            documents=dict(body.get("documents", {})),
            run_id=body.get("run_id"),
        )


# --- what the steps put into a run --------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def metric_key(target: str, horizon: int | str, name: str) -> str:
    """The nested scores' keys joined by ``/`` (``pm2_5/6/mae``, a horizon in hours as in
    metrics.json): MLflow's UI groups metrics by the first part, one section per target."""
    return f"{target}/{int(horizon)}/{name}"


def score_metrics(scores: Mapping[str, Mapping[Any, Mapping[str, float]]],
                  names: Iterable[str] | None = None) -> dict[str, float]:
    """Scores by target x horizon (the evaluate and backtest reports' shape) as metrics;
    non-finite values are left out (MLflow refuses NaN in some stores)."""
    wanted = None if names is None else set(names)
    out = {}
    for target, by_horizon in scores.items():
        for horizon, values in by_horizon.items():
            for name, value in values.items():
                if (wanted is None or name in wanted) and isinstance(value, int | float) \
                        and math.isfinite(value):
                    out[metric_key(target, horizon, name)] = float(value)
    return out


def flat_params(prefix: str, value: Any) -> dict[str, str]:
    """Nested settings as ``a.b.c`` params; lists and scalars as JSON text."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flat_params(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: value if isinstance(value, str) else json.dumps(value, sort_keys=True)}


def horizon_settings(settings: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, str]:
    """The per-horizon choices of the settings search (model metadata ``settings``) as params
    ``settings.<target>.<horizon>.<key>``."""
    out = {}
    for target, by_horizon in settings.items():
        for horizon, chosen in by_horizon.items():
            out.update(flat_params(f"settings.{target}.{int(horizon)}", dict(chosen)))
    return out


def data_params(version: Mapping[str, Any] | None) -> dict[str, str]:
    """The data version (``data.dvc``'s md5, the hash of the raw files read) as params."""
    return {f"data.{k}": str(v) for k, v in (version or {}).items() if v is not None}


def git_commit(root: Path) -> str | None:
    """The checkout's commit (bounded: 2 s), or None outside a git work tree."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=2)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and len(commit) == 40 else None


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "aq-forecast"


def standard_tags(root: Path, step: str, version: str | None) -> dict[str, str]:
    """The tags MLflow's UI shows (commit, source, user) and the project's version."""
    tags = {"mlflow.source.type": "JOB", "mlflow.source.name": f"python -m pipeline {step}",
            "mlflow.user": _user(), "aq.step": step}
    commit = git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if version:
        tags[VERSION_TAG] = version
    return tags


# --- the REST client ----------------------------------------------------------------------


class MlflowRest:
    """The MLflow REST calls the tracker makes, each bounded in time, retries and bytes."""

    def __init__(self, settings: TrackingSettings) -> None:
        assert settings.uri is not None
        self.base = settings.uri
        self.timeout = settings.timeout_s
        self.retries = settings.max_retries
        self.session = requests.Session()
        token = settings.token.get_secret_value()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif settings.username:
            self.session.auth = (settings.username, settings.password.get_secret_value())

    def call(self, method: str, path: str, *, body: dict | None = None,
             params: dict | None = None, upload: Path | bytes | None = None,
             ) -> dict[str, Any]:
        last: str = ""
        started = time.monotonic()
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                if isinstance(upload, bytes):
                    resp = self.session.request(method, self.base + path, data=upload,
                                                timeout=self.timeout, stream=True)
                elif upload is not None:
                    with open(upload, "rb") as handle:
                        resp = self.session.request(method, self.base + path, data=handle,
                                                    timeout=self.timeout, stream=True)
                else:
                    resp = self.session.request(method, self.base + path, json=body,
                                                params=params, timeout=self.timeout,
                                                stream=True)
                with resp:
                    raw = _read_bounded(resp)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code >= 500 or resp.status_code == 429:
                last = f"HTTP {resp.status_code} on {method} {path}"
                continue
            try:
                answer = json.loads(raw) if raw.strip() else {}
            except ValueError:
                answer = {"message": raw[:200].decode(errors="replace")}
            log.debug("mlflow: %s %s -> %d in %.3f s", method, path.split("/artifacts/")[0],
                      resp.status_code, time.monotonic() - started)
            if resp.status_code >= 400:
                code = str(answer.get("error_code", ""))
                raise TrackingRefused(f"{method} {path}: HTTP {resp.status_code} {code}: "
                                      f"{str(answer.get('message', ''))[:300]}", code)
            return answer
        raise TrackingUnavailable(f"{self.base} did not answer {method} {path} "
                                  f"({self.retries + 1} attempt(s), {self.timeout:g} s each): "
                                  f"{last}")

    # runs

    def experiment_id(self, name: str) -> str:
        try:
            found = self.call("GET", f"{API}/experiments/get-by-name",
                              params={"experiment_name": name})["experiment"]
            tags = {t["key"]: t["value"] for t in found.get("tags", [])}
            if tags.get(KIND_TAG) != KIND:  # an experiment made by hand: say what it holds
                self.call("POST", f"{API}/experiments/set-experiment-tag", body={
                    "experiment_id": found["experiment_id"], "key": KIND_TAG, "value": KIND})
            return str(found["experiment_id"])
        except TrackingRefused as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return str(self.call("POST", f"{API}/experiments/create", body={
                "name": name, "tags": [{"key": KIND_TAG, "value": KIND}]})["experiment_id"])
        except TrackingRefused as exc:  # created by another step meanwhile
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.experiment_id(name)

    def create_run(self, experiment_id: str, record: RunRecord) -> tuple[str, str]:
        """(run id, artifact URI) of a new run."""
        answer = self.call("POST", f"{API}/runs/create", body={
            "experiment_id": experiment_id, "run_name": record.name,
            "start_time": record.start_ms,
            "tags": [{"key": "mlflow.runName", "value": record.name}]})
        info = answer["run"]["info"]
        return str(info["run_id"]), str(info["artifact_uri"])

    def artifact_uri(self, run_id: str) -> str:
        answer = self.call("GET", f"{API}/runs/get", params={"run_id": run_id})
        return str(answer["run"]["info"]["artifact_uri"])

    def log_batch(self, run_id: str, params: Mapping[str, str], metrics: Mapping[str, float],
                  tags: Mapping[str, str], timestamp_ms: int) -> None:
        items = ([("params", {"key": k[:MAX_KEY_LENGTH], "value": v[:MAX_PARAM_LENGTH]})
                  for k, v in params.items()]
                 + [("tags", {"key": k[:MAX_KEY_LENGTH], "value": v[:MAX_TAG_LENGTH]})
                    for k, v in tags.items()]
                 + [("metrics", {"key": k[:MAX_KEY_LENGTH], "value": v,
                                 "timestamp": timestamp_ms, "step": 0})
                    for k, v in metrics.items()])
        batch: dict[str, list] = {"params": [], "tags": [], "metrics": []}

        def send() -> None:
            if any(batch.values()):
                self.call("POST", f"{API}/runs/log-batch", body={"run_id": run_id, **batch})
            for values in batch.values():
                values.clear()

        for kind, item in items:
            limit = MAX_METRICS_PER_BATCH if kind == "metrics" else MAX_PARAMS_TAGS_PER_BATCH
            if (len(batch[kind]) >= limit
                    or sum(len(v) for v in batch.values()) >= MAX_ENTITIES_PER_BATCH):
                send()
            batch[kind].append(item)
        send()

    def upload(self, artifact_uri: str, artifact_path: str, local: Path | bytes) -> None:
        """PUT a file into the run's folder of the server's proxied artifact store."""
        parts = urlsplit(artifact_uri)
        if parts.scheme != "mlflow-artifacts":
            raise TrackingRefused(
                f"the run's artifact location {artifact_uri} is not served by the tracking "
                "server (start it with --serve-artifacts, MLflow's default): artifacts not "
                "logged")
        root = parts.path.strip("/")
        self.call("PUT", f"{ARTIFACTS_API}/{root}/{artifact_path}", upload=local)

    def finish(self, run_id: str, end_ms: int, status: str = "FINISHED") -> None:
        self.call("POST", f"{API}/runs/update",
                  body={"run_id": run_id, "status": status, "end_time": end_ms})

    # the model registry

    def ensure_registered_model(self, name: str) -> None:
        try:
            self.call("POST", f"{API}/registered-models/create", body={
                "name": name, "description": "aq-forecast models: skops artifacts of the "
                "project's registry (models/registry/), served from there, never from MLflow"})
        except TrackingRefused as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def model_version(self, name: str, version: str) -> str | None:
        """The MLflow model version of a project version (by its ``aq.version`` tag)."""
        answer = self.call("GET", f"{API}/model-versions/search", params={
            "filter": f"name='{name}' and tags.`{VERSION_TAG}`='{version}'",
            "max_results": 10})
        found = sorted(int(v["version"]) for v in answer.get("model_versions", []))
        return str(found[0]) if found else None

    def create_model_version(self, name: str, run_id: str, model: ModelRef) -> str:
        answer = self.call("POST", f"{API}/model-versions/create", body={
            "name": name, "source": f"runs:/{run_id}/{MODEL_DIR}", "run_id": run_id,
            "description": f"project version {model.version} (models/registry/{model.version})",
            "tags": [{"key": VERSION_TAG, "value": model.version},
                     {"key": SHA256_TAG, "value": model.sha256}]})
        return str(answer["model_version"]["version"])

    def set_alias(self, name: str, alias: str, model_version: str) -> None:
        self.call("POST", f"{API}/registered-models/alias",
                  body={"name": name, "alias": alias, "version": model_version})


def _read_bounded(resp: requests.Response) -> bytes:
    chunks, size = [], 0
    for chunk in resp.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise requests.RequestException(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --- the tracker: send, or queue and replay -----------------------------------------------


class Tracker:
    """Logs runs to one server; queues them while it is down (one warning per process)."""

    def __init__(self, settings: TrackingSettings, queue_dir: Path) -> None:
        self.settings = settings
        self.queue_dir = queue_dir
        self.client = MlflowRest(settings) if settings.enabled else None
        self._experiment: str | None = None
        self._down_said = False

    # public

    def log(self, record: RunRecord) -> str:
        """``logged``, ``queued`` (server down), ``off`` or ``not logged`` (said why)."""
        if self.client is None:
            return "off"
        if not record.end_ms:
            record.end_ms = now_ms()
        try:
            waiting = self.flush()
            if waiting:  # keep the order: this run goes behind the ones still waiting
                return self._enqueue(record, f"{waiting} earlier run(s) still queued")
            self._send(record)
            log.info("mlflow: %s run %s logged to %s", record.step, record.run_id,
                     self.settings.uri)
            return "logged"
        except TrackingUnavailable as exc:
            self._say_down(exc)
            return self._enqueue(record, str(exc))
        except (TrackingRefused, OSError, KeyError, ValueError) as exc:
            log.error("mlflow: the %s run was not logged to %s: %s", record.step,
                      self.settings.uri, exc)
            if record.run_id is not None:
                try:
                    self.client.finish(record.run_id, now_ms(), status="FAILED")
                except (TrackingUnavailable, TrackingRefused):
                    pass
            return "not logged"

    def queued(self) -> list[Path]:
        if not self.queue_dir.is_dir():
            return []
        return sorted(p for p in self.queue_dir.iterdir()
                      if p.is_dir() and (p / RUN_FILE).is_file())

    def flush(self) -> int:
        """Log the queued runs in order; returns how many still wait (server down again,
        or another process flushing)."""
        if not self.queued():
            return 0
        try:
            with file_lock(self.queue_dir / ".lock", timeout_s=QUEUE_LOCK_TIMEOUT_S,
                           what="mlflow queue lock"):
                entries = self.queued()
                if entries:
                    log.info("mlflow: logging %d queued run(s) to %s", len(entries),
                             self.settings.uri)
                for entry in entries:
                    try:
                        self._replay(entry)
                    except TrackingUnavailable:
                        raise
                    except (TrackingRefused, OSError, KeyError, ValueError) as exc:
                        self._set_aside(entry, exc)
        except PipelineError:  # another process holds the queue: leave it the work
            return len(self.queued())
        return 0

    # sending

    def _experiment_id(self) -> str:
        if self._experiment is None:
            self._experiment = self.client.experiment_id(self.settings.experiment)
        return self._experiment

    def _send(self, record: RunRecord, on_created=None) -> None:
        client, name = self.client, self.settings.model_name
        uri = ""
        if record.run_id is None:
            record.run_id, uri = client.create_run(self._experiment_id(), record)
            if on_created is not None:
                on_created(record)
        run_id = record.run_id
        client.log_batch(run_id, record.params, record.metrics, record.tags, record.end_ms)
        files = dict(record.artifacts)
        model_version = None
        if record.model is not None:
            model_version = client.model_version(name, record.model.version)
            if record.model.upload or model_version is None:
                files.update({k: v for k, v in record.files().items() if k not in files})
        if not uri and (files or record.documents):  # a replay of a run created before
            uri = client.artifact_uri(run_id)
        for artifact_path, local in files.items():
            client.upload(uri, artifact_path, local)
        for artifact_path, value in record.documents.items():
            client.upload(uri, artifact_path, json.dumps(value, indent=1, sort_keys=True,
                                                         default=str).encode())
        if record.model is not None and model_version is None:
            try:
                model_version = client.create_model_version(name, run_id, record.model)
            except TrackingRefused as exc:  # the first model version: the model first
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                client.ensure_registered_model(name)
                model_version = client.create_model_version(name, run_id, record.model)
        for alias, version in record.aliases.items():
            found = model_version if record.model and version == record.model.version \
                else client.model_version(name, version)
            if found is None:
                log.warning("mlflow: alias %r not set: %s has no model version in MLflow "
                            "(trained while tracking was off)", alias, version)
                continue
            client.set_alias(name, alias, found)
        client.finish(run_id, record.end_ms)

    def _say_down(self, exc: Exception) -> None:
        if not self._down_said:
            self._down_said = True
            log.warning("mlflow: tracking server not reachable (%s); runs are queued in %s "
                        "and logged when it answers again (the steps go on)", exc,
                        self.queue_dir)

    # the queue

    def _enqueue(self, record: RunRecord, why: str) -> str:
        entries = self.queued()
        size = sum(f.stat().st_size for f in record.files().values() if f.is_file())
        used = sum(f.stat().st_size for e in entries for f in e.rglob("*") if f.is_file())
        if len(entries) >= MAX_QUEUED_RUNS or used + size > MAX_QUEUE_BYTES:
            log.error("mlflow: the %s run %r was NOT logged and not queued: the queue %s is "
                      "full (%d runs, %d MB); start the tracking server to empty it",
                      record.step, record.name, self.queue_dir, len(entries), used >> 20)
            return "not logged"
        final = self.queue_dir / f"{record.start_ms:015d}-{os.getpid()}-{record.step}"
        staging = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        moved = RunRecord(**{**record.__dict__, "artifacts": {}, "model": None})
        for number, (artifact_path, local) in enumerate(sorted(record.artifacts.items())):
            moved.artifacts[artifact_path] = _link(local, staging / f"files/{number:03d}"
                                                   / local.name)
        if record.model is not None:
            for name in ("model.skops", "metadata.json"):
                _link(record.model.directory / name, staging / MODEL_DIR / name)
            moved.model = ModelRef(record.model.version, staging / MODEL_DIR,
                                   record.model.sha256, record.model.upload)
        atomic_write_json(staging / RUN_FILE, moved.to_json(staging))
        staging.rename(final)
        log.info("mlflow: %s run queued in %s (%s)", record.step, final, why)
        return "queued"

    def _replay(self, entry: Path) -> None:
        record = RunRecord.from_json(json.loads((entry / RUN_FILE).read_text()), entry)
        record.tags.setdefault("aq.replayed_at_ms", str(now_ms()))

        def remember(rec: RunRecord) -> None:  # a replay cut short reuses the run
            atomic_write_json(entry / RUN_FILE, rec.to_json(entry))

        self._send(record, on_created=remember)
        shutil.rmtree(entry)
        log.info("mlflow: queued %s run logged as %s", record.step, record.run_id)

    def _set_aside(self, entry: Path, exc: Exception) -> None:
        refused = self.queue_dir.parent / "refused"
        refused.mkdir(parents=True, exist_ok=True)
        entry.rename(refused / entry.name)
        log.error("mlflow: queued run %s refused by %s (%s): kept in %s", entry.name,
                  self.settings.uri, exc, refused)


def _link(source: Path, target: Path) -> Path:
    """``source`` at ``target``: a hard link (the project writes files anew, never in place,
    so the link keeps the content logged), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


_TRACKERS: dict[tuple[str | None, Path], Tracker] = {}
_TRACKERS_LOCK = threading.Lock()


def tracker(settings: TrackingSettings, queue_dir: Path) -> Tracker:
    """One tracker per server and project in a process (it says 'down' once)."""
    key = (settings.uri, queue_dir)
    with _TRACKERS_LOCK:
        found = _TRACKERS.get(key)
        if found is None or found.settings != settings:
            found = _TRACKERS[key] = Tracker(settings, queue_dir)
        return found


def log_run(ctx, record: RunRecord) -> str:
    """Log a step's run to the configured server (see the module docstring); never raises for
    the server's sake. Returns ``logged``, ``queued``, ``off`` or ``not logged``."""
    started = time.monotonic()
    outcome = tracker(ctx.tracking, ctx.paths.tracking_queue).log(record)
    if outcome != "off":  # what tracking adds to the step (bench/bench_tracking.py reads it)
        log.debug("mlflow: %s run %s in %.3f s", record.step, outcome,
                  time.monotonic() - started)
    return outcome


# --- the steps' runs -----------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON value (timestamps and numpy numbers as text or float)."""
    return json.loads(json.dumps(value, default=str))


def data_extents(stats: Mapping[str, Mapping[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """Per location: first and last valid hour and rows (the feature store's stats)."""
    return {loc: {"first_hour": s.get("time_min"), "last_hour": s.get("time_max"),
                  "rows": s.get("rows_valid"), "rows_quarantined": s.get("rows_quarantined")}
            for loc, s in sorted(stats.items()) if s}


def extent_params(extents: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The extents summed up as params (the per-location table is the ``data/extents.json``
    artifact: hundreds of locations would not fit MLflow's params)."""
    if not extents:
        return {}
    firsts = [e["first_hour"] for e in extents.values() if e.get("first_hour")]
    lasts = [e["last_hour"] for e in extents.values() if e.get("last_hour")]
    return {"data.locations": str(len(extents)),
            "data.first_hour": min(firsts) if firsts else "",
            "data.last_hour": max(lasts) if lasts else "",
            "data.rows": str(sum(int(e.get("rows") or 0) for e in extents.values()))}


def train_run(root: Path, metadata: Mapping[str, Any], candidate_dir: Path,
              extents: Mapping[str, Mapping[str, Any]], started: float) -> RunRecord:
    """The candidate: model section, per-horizon choices, data version and extents, the
    validation MAE of each choice, the skops artifact (a new model version, alias
    ``candidate``)."""
    version = str(metadata["version"])
    params = {
        **flat_params("model", (metadata.get("params") or {}).get("model", {})),
        **horizon_settings(metadata.get("settings") or {}),
        **data_params(metadata.get("data_version")),
        **extent_params(extents),
        **flat_params("holdout", metadata.get("holdout") or {}),
        **flat_params("train_sample", metadata.get("train_sample") or {}),
        "targets": json.dumps(list(metadata["targets"])),
        "horizons": json.dumps([int(h) for h in metadata["horizons"]]),
        "features": str(len(metadata["features"])),
        "model.sha256": str(metadata["sha256"]),
    }
    metrics = {metric_key(t, h, "validation_mae"): float(r["validation"]["mae"])
               for t, by_h in (metadata.get("selection") or {}).items()
               for h, r in by_h.items() if "validation" in r}
    return RunRecord(
        step="train", name=f"train {version}", start_ms=int(started * 1000),
        params=params, metrics=metrics,
        tags={**standard_tags(root, "train", version), SHA256_TAG: str(metadata["sha256"])},
        model=ModelRef(version, candidate_dir, str(metadata["sha256"]), upload=True),
        aliases={CANDIDATE: version},
        documents={"data/extents.json": _plain(dict(extents)),
                   "selection.json": _plain(metadata.get("selection") or {})},
    )


def evaluate_run(root: Path, report: Mapping[str, Any], files: Mapping[str, Path],
                 started: float) -> RunRecord:
    """The candidate on the holdout: MAE, skill, coverage ... per target x horizon."""
    version = str(report["version"])
    return RunRecord(
        step="evaluate", name=f"evaluate {version}", start_ms=int(started * 1000),
        params=flat_params("holdout", report.get("holdout") or {}),
        metrics=score_metrics(report["scores"]),
        tags=standard_tags(root, "evaluate", version),
        artifacts={k: v for k, v in files.items() if v.is_file()},
    )


def backtest_run(root: Path, report: Mapping[str, Any], directory: Path,
                 started: float) -> RunRecord:
    """A backtest's window and model, its scores, and its plots and tables as artifacts."""
    model = report["model"]
    files = {f"backtest/{p.name}": p for p in sorted(directory.iterdir())
             if p.is_file() and p.suffix in (".png", ".csv", ".json", ".txt")}
    return RunRecord(
        step="backtest", name=f"backtest {model['version']}", start_ms=int(started * 1000),
        params={"window.start": str(report["window"]["start"]),
                "window.end": str(report["window"]["end"]),
                "model.which": str(model["which"]), "model.train_end": str(model["train_end"]),
                "refit_every_days": str(report.get("refit_every_days")),
                "locations": str(len(report.get("locations", [])))},
        metrics={**score_metrics(report["scores"]), "rows": float(report["rows"]),
                 "refits": float(report.get("refits", 0))},
        tags=standard_tags(root, "backtest", str(model["version"])),
        artifacts=files,
    )


def promote_run(root: Path, report: Mapping[str, Any], registry_dir: Path, sha256: str,
                started: float) -> RunRecord:
    """The gate's decision; the ``champion`` alias follows the registry's champion."""
    candidate = str(report["candidate"])
    aliases = {CHAMPION: str(report["champion"])} if report.get("champion") else {}
    return RunRecord(
        step="promote", name=f"promote {candidate}", start_ms=int(started * 1000),
        params={"candidate": candidate,
                "previous_champion": str(report.get("previous_champion"))},
        metrics={"promoted": float(bool(report["promoted"])),
                 "switched": float(bool(report["switched"]))},
        tags={**standard_tags(root, "promote", candidate),
              "aq.champion": str(report.get("champion")),
              "aq.refusals": "; ".join(report.get("refusals") or []) or "none"},
        model=ModelRef(candidate, registry_dir / candidate, sha256),
        aliases=aliases,
        documents={"promotion.json": _plain(dict(report))},
    )


def rollback_run(root: Path, previous: str | None, restored: str, registry_dir: Path,
                 sha256: str, started: float) -> RunRecord:
    """A champion switch by hand: the ``champion`` alias moves to the restored version."""
    return RunRecord(
        step="rollback", name=f"rollback to {restored}", start_ms=int(started * 1000),
        params={"from": str(previous), "to": restored},
        tags=standard_tags(root, "rollback", restored),
        model=ModelRef(restored, registry_dir / restored, sha256),
        aliases={CHAMPION: restored},
    )
