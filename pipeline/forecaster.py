"""The champion, and the one path from its inputs to forecast rows.

A :class:`Champion` is built once from a registry bundle: its version, its own feature spec
(from its metadata, whatever ``params.yaml`` says now), feature order, location codes,
calibration and models keyed by :class:`~pipeline.core.keys.ModelKey`. :func:`forecast` turns
feature rows into forecast rows: input quality and withholding (``core.quality``), the value
(the engine), AQI and category (``core.aqi``), the 80 % interval and ``p_reach_*``
(``core.intervals``). Batch predict and rollback (``steps/forecasting.py``), the backtest
(``steps/backtest.py``) and serving all call it. The engine predicts every model from rows in
the champion's feature order: by default each model's own ``predict`` (scikit-learn
Pipelines, or whatever a model exposes); serving passes its compiled trees
(``serving/predictor.py``, verified equal within 1e-9).

A forecast row (:data:`ROW_COLUMNS`) is the same in ``predictions/*.parquet`` and in the API's
JSON (:func:`items`): an answer carries the per-location fields (location, issue time, input
completeness, model version) once, and one item per target x horizon with the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import FeatureConfig
from pipeline.core.aqi import aqi, category_names
from pipeline.core.features import (
    FeatureSettings,
    FeatureSpec,
    feature_names,
    features_present,
    row_positions,
)
from pipeline.core.intervals import (
    COVERAGE,
    LOWER,
    PROBABILITY_COLUMNS,
    UPPER,
    model_calibration,
    scale_input,
    scale_inputs,
    uncertainty_of_models,
)
from pipeline.core.keys import ModelKey
from pipeline.core.quality import input_problems
from pipeline.errors import PipelineError
from pipeline.io.registry import ModelBundle

# predicts every model of a champion from rows in its feature order
Engine = Callable[[np.ndarray], Mapping[tuple[str, int], np.ndarray]]

ITEM_COLUMNS = ("target", "horizon", "target_time", "value", LOWER, UPPER, "aqi",
                "aqi_category", *PROBABILITY_COLUMNS, "hours_since_observation")
ROW_COLUMNS = ("location_id", "issue_time", *ITEM_COLUMNS, "persistence",
               "input_completeness", "model_version")


class ChampionError(PipelineError):
    """A model cannot forecast from what its own metadata says it needs."""


@dataclass(frozen=True)
class InputLimits:
    """The rule for honest forecasts (``forecast.*`` in params.yaml)."""

    min_completeness: float
    max_hours_since_observation: float

    @classmethod
    def of(cls, config: Any) -> InputLimits:
        return cls(float(config.min_input_completeness), float(config.max_hours_since_observation))


def spec_of(metadata: Mapping[str, Any]) -> FeatureSpec:
    """The feature spec a model was trained with (its metadata), whatever params.yaml says
    now: forecasting builds exactly the features the model knows."""
    targets = sorted({str(t) for t in metadata["targets"]})
    horizons = sorted(int(h) for h in metadata["horizons"])
    config = FeatureConfig.model_validate(metadata["params"]["features"])
    return FeatureSpec(tuple(targets), tuple(horizons), FeatureSettings.of(config))


def _with_arrays(calibration: Mapping) -> dict:
    """A calibration with its quantiles as arrays (read once, not converted per forecast)."""
    out = dict(calibration)
    out["quantiles"] = np.asarray(calibration["quantiles"], dtype=np.float64)
    out["by_location"] = {loc: np.asarray(q, dtype=np.float64)
                          for loc, q in (calibration.get("by_location") or {}).items()}
    return out


@dataclass(frozen=True)
class Champion:
    """A model version ready to forecast: what it needs and how it answers."""

    version: str
    spec: FeatureSpec
    features: tuple[str, ...]
    location_codes: Mapping[str, int]
    models: Mapping[ModelKey, Any]
    calibration: Mapping[ModelKey, Mapping] = field(default_factory=dict)
    coverage: float = COVERAGE
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, bundle: ModelBundle) -> Champion:
        return cls.from_parts(bundle.models, bundle.metadata)

    @classmethod
    def from_parts(cls, models: Mapping[tuple[str, int], Any], metadata: Mapping[str, Any],
                   ) -> Champion:
        version = str(metadata.get("version", "unversioned"))
        spec = spec_of(metadata)
        features = tuple(str(f) for f in metadata["features"])
        built = set(feature_names(spec))
        missing = [f for f in features if f not in built]
        if missing:
            raise ChampionError(f"model {version} needs features its own spec does not build: "
                                f"{missing[:8]}")
        keyed = {ModelKey.of(*key): model for key, model in models.items()}
        uncertainty = metadata.get("intervals") or {}
        calibration = {}
        for key in keyed:
            found = model_calibration(uncertainty, *key) if uncertainty else None
            if found is not None:
                calibration[key] = _with_arrays(found)
        return cls(version, spec, features,
                   {str(k): int(v) for k, v in (metadata.get("location_codes") or {}).items()},
                   keyed, calibration, float(uncertainty.get("coverage", COVERAGE)),
                   dict(metadata))

    def with_models(self, models: Mapping[tuple[str, int], Any]) -> Champion:
        """The same champion with other models of its keys (a backtest's refits)."""
        return dataclasses.replace(self, models={ModelKey.of(*k): m for k, m in models.items()})

    # read on every forecast, computed once (a frozen dataclass keeps its __dict__)
    @functools.cached_property
    def keys(self) -> list[ModelKey]:
        return list(self.models)

    @functools.cached_property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(key.target for key in self.models))

    @functools.cached_property
    def horizons(self) -> list[int]:
        return sorted({key.horizon for key in self.models})

    @functools.cached_property
    def key_targets(self) -> np.ndarray:
        """Each model's target, in the order of :attr:`keys`."""
        return np.array([key.target for key in self.keys], dtype=object)

    @functools.cached_property
    def key_horizons(self) -> np.ndarray:
        """Each model's horizon, in the order of :attr:`keys`."""
        return np.array([key.horizon for key in self.keys], dtype=np.int64)

    @functools.cached_property
    def calibrated(self) -> np.ndarray:
        """The positions in :attr:`keys` of the models with a calibration (intervals)."""
        return np.array([i for i, key in enumerate(self.keys) if key in self.calibration],
                        dtype=np.intp)

    @functools.cached_property
    def calibrated_parts(self) -> tuple[list[Mapping], list[str], list[Mapping | None]]:
        """Of the models with a calibration (:attr:`calibrated`): each calibration, target and
        interval scale (None: it does not scale)."""
        calibrations = [self.calibration[self.keys[i]] for i in self.calibrated]
        return (calibrations, [self.keys[i].target for i in self.calibrated],
                [c.get("scale") or None for c in calibrations])

    @functools.cached_property
    def models_of_target(self) -> dict[str, np.ndarray]:
        """Per target, the positions of its models in :attr:`keys`."""
        return {target: np.flatnonzero(self.key_targets == target) for target in self.targets}

    @functools.cached_property
    def scale_columns(self) -> list[str]:
        """The feature columns the intervals scale by."""
        return sorted({c for calibration in self.calibration.values()
                       for c in scale_inputs(calibration)})

    @functools.cached_property
    def row_inputs(self) -> tuple[np.ndarray, dict[str, int]]:
        """Where the model inputs (:attr:`features`), and the columns a forecast row carries
        besides (each target's level, the interval scales), are in its spec's feature row
        (``core.features.latest_row``)."""
        names = set(feature_names(self.spec))
        extra = [c for c in [*self.targets, *self.scale_columns] if c in names]
        return (row_positions(self.spec, self.features),
                dict(zip(extra, row_positions(self.spec, extra).tolist(), strict=True)))

    def code(self, location_id: str) -> float:
        code = self.location_codes.get(location_id)
        return float("nan") if code is None else float(code)

    def predict(self, rows: np.ndarray) -> dict[ModelKey, np.ndarray]:
        """The default engine: each model's own ``predict`` on the rows as a frame."""
        frame = pd.DataFrame(np.atleast_2d(rows), columns=list(self.features))
        return {key: np.asarray(model.predict(frame), dtype=np.float64)
                for key, model in self.models.items()}


@dataclass(frozen=True)
class Inputs:
    """Feature rows to forecast from, one per location and issue hour."""

    location_id: np.ndarray  # (n,) str
    issue_time: np.ndarray  # (n,) datetime64[us], UTC (the features' resolution)
    rows: np.ndarray  # (n, len(champion.features)) float64, in the champion's order
    extra: Mapping[str, np.ndarray]  # each target's value at the issue hour, interval scales
    hours_since: Mapping[str, np.ndarray] | None = None  # per target; None: not judged

    def __len__(self) -> int:
        return len(self.location_id)

    @classmethod
    def from_frame(cls, champion: Champion, frame: pd.DataFrame,
                   hours_since: Mapping[str, np.ndarray] | None = None) -> Inputs:
        """From built feature rows (``location_id``, ``time`` and the feature columns)."""
        missing = [f for f in champion.features if f not in frame.columns]
        if missing:
            raise ChampionError(f"champion {champion.version} needs features that were not "
                                f"built: {missing[:8]}")
        extra = {c: frame[c].to_numpy(dtype=np.float64)
                 for c in [*champion.targets, *champion.scale_columns] if c in frame.columns}
        return cls(frame["location_id"].astype(str).to_numpy(dtype=object),
                   _utc64(frame["time"]),
                   frame[list(champion.features)].to_numpy(dtype=np.float64), extra,
                   hours_since)

    @classmethod
    def one(cls, champion: Champion, location_id: str, issue_time: pd.Timestamp | np.datetime64,
            features: np.ndarray, hours_since: Mapping[str, float]) -> Inputs:
        """One location's row at one hour (online), from its feature row in the champion's
        spec order (``core.features.latest_row``; the issue time in UTC, a Timestamp or a
        numpy datetime64)."""
        positions, extra_at = champion.row_inputs
        extra = {c: features[i:i + 1] for c, i in extra_at.items()}
        return cls(np.array([location_id], dtype=object),
                   np.array([issue_time if isinstance(issue_time, np.datetime64)
                             else pd.Timestamp(issue_time).value // 1000],
                            dtype="datetime64[us]"),
                   features[positions][None, :], extra,
                   {t: np.array([hours_since.get(t, math.inf)], dtype=np.float64)
                    for t in champion.targets})


def _utc64(times: pd.Series) -> np.ndarray:
    """UTC times as datetime64[us] (what forecast rows carry until written)."""
    times = pd.to_datetime(times, utc=True)
    return times.dt.tz_localize(None).to_numpy(dtype="datetime64[us]")


def observation_ages(valid: pd.DataFrame, latest: pd.DataFrame,
                     targets: Sequence[str]) -> dict[str, np.ndarray]:
    """Per target, hours from its newest observation in ``valid`` to each row's issue time
    (``inf``: never observed there)."""
    out = {}
    for target in targets:
        observed = valid.loc[valid[target].notna(), ["location_id", "time"]]
        last = observed.groupby("location_id")["time"].max()
        seen = latest["location_id"].map(last)
        hours = (latest["time"] - seen).dt.total_seconds() / 3600
        out[target] = hours.fillna(np.inf).to_numpy(dtype=np.float64)
    return out


@dataclass(frozen=True)
class Forecast:
    """Forecast rows (the kept inputs x every model) and what was judged of the inputs."""

    columns: dict[str, np.ndarray]  # ROW_COLUMNS
    completeness: np.ndarray  # per input row
    inputs: Inputs
    withheld: dict[str, list[str]]  # location -> why it gets no forecast

    def __len__(self) -> int:
        return len(self.columns["value"])

    def frame(self) -> pd.DataFrame:
        """The rows as written to predictions/*.parquet."""
        out = pd.DataFrame({c: self.columns[c] for c in ROW_COLUMNS})
        for column in ("issue_time", "target_time"):
            out[column] = pd.to_datetime(out[column], utc=True)
        return out.astype({"horizon": "int64", "hours_since_observation": "float64"})

    def quality(self) -> pd.DataFrame:
        """Per input row: the share of features present and the hours since each target."""
        out = pd.DataFrame({"location_id": self.inputs.location_id,
                            "issue_time": pd.to_datetime(self.inputs.issue_time, utc=True),
                            "input_completeness": self.completeness})
        for target, hours in (self.inputs.hours_since or {}).items():
            out[f"hours_since_{target}"] = hours
        return out

    def items(self) -> list[dict[str, Any]]:
        """The rows as the API's items, by target and horizon."""
        return items(self.columns)


def forecast(champion: Champion, inputs: Inputs, engine: Engine | None = None,
             limits: InputLimits | None = None) -> Forecast:
    """Forecast rows of every model of ``champion`` for each input row it can honestly take.

    With ``limits`` a row whose inputs are too incomplete (``core.quality.input_problems``)
    gets no forecast, and ``withheld`` says why; without (a backtest) every row is forecast.
    """
    n = len(inputs)
    completeness = features_present(inputs.rows) if n else np.zeros(0)
    keep = np.ones(n, dtype=bool)
    withheld: dict[str, list[str]] = {}
    if limits is not None:
        ages = inputs.hours_since or {}
        for i in range(n):
            problems = input_problems(
                float(completeness[i]), {t: float(ages[t][i]) if t in ages else math.inf
                                         for t in champion.targets},
                f"{np.datetime_as_string(inputs.issue_time[i], unit='m')}Z",
                limits.min_completeness,
                limits.max_hours_since_observation)
            if problems:
                keep[i] = False
                withheld[str(inputs.location_id[i])] = problems
    kept = np.flatnonzero(keep)
    predicted = (engine or champion.predict)(inputs.rows[kept]) if len(kept) else {}
    columns = (_rows(champion, predicted, inputs, kept, completeness) if len(kept)
               else {c: np.zeros(0) for c in ROW_COLUMNS})
    return Forecast(columns, completeness, inputs, withheld)


def _rows(champion: Champion, predicted: Mapping[tuple[str, int], np.ndarray], inputs: Inputs,
          kept: np.ndarray, completeness: np.ndarray) -> dict[str, np.ndarray]:
    """Every model's rows (model-major: the kept inputs of the first model, then the next):
    value, AQI, category, interval and probabilities.

    Each step runs once over all models' rows, not once per model: on the online path's
    single input row the number of numpy calls is the cost. Only the intervals go model by
    model (each has its own calibration).
    """
    keys = champion.keys
    n, m = len(kept), len(keys)
    value = np.maximum(np.stack([np.asarray(predicted[key], dtype=np.float64)
                                 for key in keys]), 0)  # (model, row)
    issue = inputs.issue_time[kept]
    locations = inputs.location_id[kept]
    unknown = np.full(n, np.nan)
    extra, ages = inputs.extra, inputs.hours_since or {}
    out: dict[str, np.ndarray] = {
        "location_id": _tile(locations, m),
        "issue_time": _tile(issue, m),
        "target": np.repeat(champion.key_targets, n),
        "horizon": np.repeat(champion.key_horizons, n),
        "target_time": (issue[None, :] + champion.key_horizons.astype("timedelta64[h]")[:, None]
                        ).reshape(-1),
        "value": value.reshape(-1),
        "persistence": np.concatenate([extra[key.target][kept] if key.target in extra
                                       else unknown for key in keys]),
        "input_completeness": _tile(completeness[kept], m),
        "hours_since_observation": np.concatenate([ages[key.target][kept] if key.target in ages
                                                   else unknown for key in keys]),
        "model_version": np.full(n * m, champion.version, dtype=object),
    }
    index = np.full((m, n), np.nan)
    for target, models in champion.models_of_target.items():
        try:
            index[models] = aqi(target, value[models])
        except ValueError:  # a target without AQI breakpoints
            pass
    out["aqi"] = index.reshape(-1)
    out["aqi_category"] = category_names(out["aqi"])
    uncertainty = np.full((2 + len(PROBABILITY_COLUMNS), m, n), np.nan)  # one allocation
    models = champion.calibrated
    if len(models):
        calibrations, targets, scales = champion.calibrated_parts
        missing = [c for c in champion.scale_columns if c not in inputs.extra]
        if missing:
            needs = next(keys[i] for i, calibration in zip(models, calibrations, strict=True)
                         if missing[0] in scale_inputs(calibration))
            raise ChampionError(f"the {needs} interval scales by {missing[0]!r}: the inputs "
                                "lack it")
        volatility = [None if not scale else scale_input(scale, lambda c: inputs.extra[c])[kept]
                      for scale in scales]
        for location in dict.fromkeys(locations):
            if n == 1:  # one row (online): every model's cells at once
                lower, upper, chances = uncertainty_of_models(
                    targets, value[models], calibrations, location, volatility,
                    champion.coverage)
                uncertainty[0, models], uncertainty[1, models] = lower, upper
                uncertainty[2:, models] = chances
                continue
            rows = np.flatnonzero(locations == location)
            lower, upper, chances = uncertainty_of_models(
                targets, value[models][:, rows], calibrations, location,
                [None if v is None else v[rows] for v in volatility], champion.coverage)
            cells = np.ix_(models, rows)
            uncertainty[0][cells], uncertainty[1][cells] = lower, upper
            for j in range(len(PROBABILITY_COLUMNS)):
                uncertainty[2 + j][cells] = chances[j]
    for j, column in enumerate((LOWER, UPPER, *PROBABILITY_COLUMNS)):
        out[column] = uncertainty[j].reshape(-1)
    return out


def _tile(values: np.ndarray, m: int) -> np.ndarray:
    """``np.tile(values, m)`` of a 1-D array: the same new array, without np.tile's Python
    set-up (2.6 against 1.1 us a call on the online path's one row)."""
    return np.concatenate([values] * m) if m else values[:0].copy()


def _json_column(column: str, values: Any) -> list[Any]:
    """One column of forecast rows as JSON values (NaN and infinities are null)."""
    if column in ("target", "aqi_category"):
        return [str(v) for v in values]
    if column == "horizon":
        return [int(v) for v in values]
    if column == "target_time":
        values = np.asarray(values)
        if values.dtype.kind == "M":  # a Forecast's column: UTC
            return [f"{t}+00:00" for t in np.datetime_as_string(values, unit="s")]
        return [pd.Timestamp(v).tz_convert("UTC").isoformat() for v in values]
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float) \
        if not isinstance(values, np.ndarray) or values.dtype.kind not in "fiu" else values
    return [x if math.isfinite(x) else None for x in np.asarray(numbers, dtype=float).tolist()]


def items(rows: Mapping[str, Any] | pd.DataFrame) -> list[dict[str, Any]]:
    """Forecast rows (a Forecast's columns or a predictions parquet) as the API's items, by
    target and horizon: :data:`ITEM_COLUMNS`, JSON-safe (NaN and infinities are null; a
    column an older file lacks is null)."""
    n = len(rows["value"])
    columns = {c: _json_column(c, rows[c].to_numpy() if isinstance(rows, pd.DataFrame)
                               else rows[c]) if c in rows else [None] * n
               for c in ITEM_COLUMNS}
    out = [dict(zip(ITEM_COLUMNS, values, strict=True))
           for values in zip(*(columns[c] for c in ITEM_COLUMNS), strict=True)] if n else []
    out.sort(key=lambda item: (item["target"], item["horizon"]))
    for item in out:
        if item["aqi"] is None:
            item["aqi_category"] = "unknown"
    return out
