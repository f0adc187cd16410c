"""What a worker serves from: the champion, the latest batch forecasts, the recent history.

Each is an immutable snapshot held in one attribute; a request reads each attribute once and
finishes on what it read, while :meth:`ServingState.refresh` (a daemon thread, every
``reload_interval_s``) builds a new snapshot when its source changed and swaps the attribute
(a single reference assignment). A champion is swapped in only after the registry's sha256
check, the structure check and the Treelite-vs-scikit-learn verification; if any fails, the
old one keeps serving and a metric and a log line say why.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.context import Context
from pipeline.core.features import (
    FeatureSpec,
    HourlyGrid,
    build_features,
    hour_times,
    hourly_grids,
    window,
)
from pipeline.errors import ArtifactIntegrityError, RegistryError
from pipeline.forecaster import ROW_COLUMNS, Champion, InputLimits, items
from pipeline.inputs import feature_spec, load_forecasts, load_validated_raw, recent_window_start
from pipeline.io.registry import Registry
from pipeline.io.storage import forecast_files, raw_files
from pipeline.schema import MAX_FORECAST_LEAD_H
from pipeline.settings import ServingSettings
from serving import metrics
from serving.predictor import SKLEARN, ServedModel, build_predictor, fuse, verification_rows

log = logging.getLogger(__name__)

# hours of history kept per location: the longest lag or window params.yaml allows, plus the
# issue hour, so any champion's features (built with its own spec) can be computed
HISTORY_HOURS = 24 * 14 + 1
RETRY_FAILED_CHAMPION_S = 60.0  # a champion that failed to load is tried again after this
# what a predictions file must hold to be served (older files may lack the interval columns)
FORECAST_COLUMNS = tuple(c for c in ROW_COLUMNS if c not in (
    "lower", "upper", "hours_since_observation", "persistence", "input_completeness")
    and not c.startswith("p_reach_"))


@dataclass(frozen=True)
class BatchForecast:
    """One location's rows of predictions/latest.parquet, ready to answer."""

    issue_time: pd.Timestamp
    issue_epoch: float
    model_version: str
    items: list[dict[str, Any]]  # pipeline.forecaster.items: sorted by target, horizon
    input_completeness: float | None = None  # share of the model's features present
    # the items as JSON, all and per target: serialised once per file, not per request
    items_json: dict[str | None, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        targets = dict.fromkeys(i["target"] for i in self.items)
        self.items_json[None] = _dumps(self.items)
        for target in targets:
            self.items_json[target] = _dumps([i for i in self.items if i["target"] == target])


@dataclass(frozen=True)
class Signature:
    """Whether a file (or a set of files) changed: (path, inode, size, mtime) tuples."""

    entries: tuple[tuple[str, int, int, int], ...] = ()

    @classmethod
    def of(cls, paths: list[Path]) -> Signature:
        entries = []
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
        return cls(tuple(entries))


@dataclass
class ServingState:
    ctx: Context
    settings: ServingSettings
    spec: FeatureSpec = field(init=False)  # params.yaml's; a champion brings its own
    history_hours: int = field(init=False)
    limits: InputLimits = field(init=False)  # the batch rule for honest forecasts
    timezones: dict[str, str] = field(init=False)
    model: ServedModel | None = None
    not_ready: str = "starting: no champion loaded yet"
    forecasts: dict[str, BatchForecast] | None = None
    history: dict[str, HourlyGrid] = field(default_factory=dict)  # with weather-forecast runs
    forecast_rows: pd.DataFrame | None = None  # the runs of the history (verification rows)
    _failed: tuple[str, float] | None = None  # (version, monotonic time) of the last failure
    _forecast_sig: Signature = field(default_factory=Signature)
    _history_sig: Signature = field(default_factory=Signature)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.spec = feature_spec(self.ctx)
        self.history_hours = max(HISTORY_HOURS, self.spec.warmup_hours)
        self.limits = InputLimits.of(self.ctx.params.forecast)
        self.timezones = {loc.id: loc.timezone for loc in self.ctx.params.locations}
        self.locations = {loc.id: loc for loc in self.ctx.params.locations}

    # --- refresh ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload whatever changed: history first (the model is verified on it), then the rest."""
        for step in (self._refresh_history, self._refresh_model, self._refresh_forecasts):
            try:
                step()
            except Exception:  # a watcher must survive anything; the step logged and counted
                log.exception("serving refresh step %s failed", step.__name__)
        metrics.record_worker_resources()

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._watch, name="serving-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_s):
            self.refresh()

    # --- the champion ----------------------------------------------------------------------

    def _refresh_model(self) -> None:
        registry = Registry(self.ctx.paths)
        try:
            wanted = registry.champion_version()
        except Exception as exc:  # unreadable pointer: keep serving, say why
            self._reload_failed(None, "pointer", f"cannot read the champion pointer: {exc}")
            return
        served = self.model.version if self.model else None
        metrics.MODEL_OUTDATED.set(int(wanted is not None and wanted != served))
        if wanted is None:
            if self.model is None:
                self.not_ready = "no champion yet: run train, evaluate and promote first"
            return
        if wanted == served:
            self._failed = None
            metrics.MODEL_RELOAD_FAILING.set(0)
            return
        if (self._failed and self._failed[0] == wanted
                and time.monotonic() - self._failed[1] < RETRY_FAILED_CHAMPION_S):
            return  # it failed a moment ago: not every few seconds
        try:
            bundle = registry.load(wanted)
            model = self.compile(bundle.metadata, bundle.models)
        except ArtifactIntegrityError as exc:
            self._reload_failed(wanted, "integrity", str(exc))
            return
        except RegistryError as exc:
            self._reload_failed(wanted, "registry", str(exc))
            return
        except Exception as exc:
            self._reload_failed(wanted, "incompatible", f"{type(exc).__name__}: {exc}")
            return
        self.model = model  # the swap: requests that started keep the model they read
        self.not_ready = ""
        self._failed = None
        metrics.MODEL_RELOADS.labels(result="success").inc()
        metrics.MODEL_RELOAD_FAILING.set(0)
        metrics.MODEL_OUTDATED.set(0)
        metrics.set_served(model.version, served,
                           [(*key, p.engine == SKLEARN) for key, p in model.predictors.items()],
                           time.time())
        log.info("serving model %s (was %s): %s", model.version, served,
                 ", ".join(f"{key} {p.engine}" for key, p in model.predictors.items()))

    def _reload_failed(self, version: str | None, reason: str, message: str) -> None:
        self._failed = (str(version), time.monotonic())
        metrics.MODEL_RELOADS.labels(result="failure").inc()
        metrics.MODEL_RELOAD_FAILURES.labels(reason=reason).inc()
        metrics.MODEL_RELOAD_FAILING.set(1)
        served = self.model.version if self.model else None
        log.error("champion %s not loaded (%s): %s; %s", version, reason, message,
                  f"still serving {served}" if served else "nothing served yet")
        if self.model is None:
            self.not_ready = f"champion {version} not loaded ({reason}): {message}"

    def compile(self, metadata: Mapping[str, Any], models: Mapping) -> ServedModel:
        """A verified ServedModel from a registry bundle (raises if it cannot serve).

        The features are the champion's own (its metadata's spec, as the batch predict step
        builds them), whatever params.yaml says now.
        """
        champion = Champion.from_parts(models, metadata)
        spec = champion.spec
        if spec.warmup_hours > self.history_hours:
            raise ValueError(f"champion needs {spec.warmup_hours} hours of history, more than "
                             f"the {self.history_hours} kept")
        features = list(champion.features)
        codes = dict(champion.location_codes)
        rows = verification_rows(features, self._history_rows(spec, features, codes), codes)
        predictors = {key: build_predictor(key.target, key.horizon, pipeline, features, rows)
                      for key, pipeline in champion.models.items()}
        return ServedModel(champion, predictors, fuse(predictors, features, rows))

    def _history_rows(self, spec: FeatureSpec, features: list[str], codes: dict[str, int],
                      ) -> np.ndarray | None:
        """Every feature row of the in-memory history (real inputs for the verification)."""
        frames = [_grid_frame(g) for g in self.history.values()]
        if not frames:
            return None
        built = build_features(pd.concat(frames, ignore_index=True), spec, self.timezones,
                               codes, with_labels=False, forecasts=self.forecast_rows)
        return built[features].to_numpy(dtype=np.float64)

    # --- batch forecasts -------------------------------------------------------------------

    def _refresh_forecasts(self) -> None:
        path = self.ctx.paths.latest_predictions
        sig = Signature.of([path])
        if sig == self._forecast_sig:
            return
        if not sig.entries:
            self._forecast_sig = sig
            return
        try:
            table = read_batch_forecasts(path)
        except Exception as exc:
            metrics.DATA_RELOADS.labels(kind="forecasts", result="failure").inc()
            log.error("batch forecasts %s not loaded: %s; keeping the previous ones", path, exc)
            self._forecast_sig = sig  # retried when the file changes again
            return
        self._forecast_sig = sig
        self.forecasts = table
        metrics.DATA_RELOADS.labels(kind="forecasts", result="success").inc()
        if table:
            metrics.FORECAST_ISSUE_TIME.set(max(f.issue_epoch for f in table.values()))
        log.info("batch forecasts loaded from %s (%d locations)", path, len(table))

    # --- history ---------------------------------------------------------------------------

    def _refresh_history(self) -> None:
        p = self.ctx.params
        observations = raw_files(self.ctx.paths.raw_dir, p.source.kind, p.location_ids)
        sig = Signature.of(observations + forecast_files(self.ctx.paths.raw_dir, p.source.kind,
                                                         p.location_ids))
        if sig == self._history_sig:
            return
        try:
            history, runs = self.load_history() if observations else ({}, None)
        except Exception as exc:
            metrics.DATA_RELOADS.labels(kind="history", result="failure").inc()
            log.error("history not reloaded: %s; keeping the previous one", exc)
            self._history_sig = sig
            return
        self._history_sig = sig
        self.history, self.forecast_rows = history, runs
        metrics.DATA_RELOADS.labels(kind="history", result="success").inc()
        if history:
            metrics.HISTORY_NEWEST.set(max(int(g.hours[-1]) for g in history.values()) * 3600)

    def load_history(self) -> tuple[dict[str, HourlyGrid], pd.DataFrame]:
        """The last ``history_hours`` hours of every location, validated like the batch input,
        with the weather-forecast runs that can cover the hours after them."""
        start = recent_window_start(self.ctx, self.spec, extra_hours=self.history_hours)
        checked = load_validated_raw(self.ctx, start=start)
        runs = load_forecasts(self.ctx, start=None if start is None else start - pd.Timedelta(
            hours=MAX_FORECAST_LEAD_H))
        out = {}
        for grid in hourly_grids(checked.valid, runs):
            end = int(grid.hours[-1])
            out[grid.location_id] = window(grid, end - self.history_hours + 1, end)
        return out, runs


def _grid_frame(grid: HourlyGrid) -> pd.DataFrame:
    frame = pd.DataFrame(dict(grid.series))
    frame.insert(0, "time", hour_times(grid.hours))
    frame.insert(0, "location_id", grid.location_id)
    return frame


def read_batch_forecasts(path: Path) -> dict[str, BatchForecast]:
    """predictions/latest.parquet by location, refusing a file without the expected columns."""
    frame = pd.read_parquet(path)
    missing = [c for c in FORECAST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    out = {}
    for location_id, part in frame.groupby("location_id", sort=True):
        issue = pd.Timestamp(part["issue_time"].max()).tz_convert("UTC")
        versions = part["model_version"].astype(str).unique()
        completeness = (_finite(part["input_completeness"].min())
                        if "input_completeness" in part else None)
        out[str(location_id)] = BatchForecast(issue, issue.timestamp(), ", ".join(versions),
                                              items(part), completeness)
    return out


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> float | None:
    """A JSON-safe number: None for NaN, infinities and missing values."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


__all__ = ["BatchForecast", "ServingState", "read_batch_forecasts", "window"]
