"""``params.yaml`` loaded into typed, validated objects.

Unknown keys, wrong types and impossible values stop the run with a message
that names the key (e.g. ``locations.0.latitude``). Strict on purpose: a key
written twice, ``true`` or ``"150"`` where a number is due, ``.inf``/``.nan``
and windows too long to compute with are refused, never coerced or guessed
(YAML would quietly keep the last duplicate, pydantic would turn ``true``
into 1). Dates may be written quoted or not.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.units import UnitError, check_unit
from pipeline.schema import (
    COVARIATE_NAME,
    MAX_COVARIATE_NAME,
    POLLUTANTS,
    VALUE_COLUMNS,
    WEATHER,
)

Target = Literal["pm2_5", "pm10", "no2", "o3", "so2", "co"]


# the longest span any day-count setting may name (100 years): longer ones overflow pandas
MAX_DAYS = 36_600
# a date outside this range is a typo, and beyond 2262 pandas cannot hold it
MIN_DATE, MAX_DATE = dt.date(1900, 1, 1), dt.date(2200, 1, 1)
Date = Annotated[dt.date, Field(strict=False, ge=MIN_DATE, le=MAX_DATE)]
# a date, or a time of day (with or without an offset; naive = UTC), as YAML or ISO text
Moment = Annotated[dt.datetime, Field(strict=False)] | Date


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid."""


class _Strict(BaseModel):
    # strict: no bool or str where a number is due; allow_inf_nan: every float is finite
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Location(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", min_length=1, max_length=40)]
    name: str
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {value!r}") from exc
        return value


class DriftScenario(_Strict):
    """A change injected into the synthetic data from ``start`` on, to exercise drift checks."""

    kind: Literal["emission_shift", "sensor_recalibration"]
    start: Date
    variable: Literal[
        "pm2_5", "pm10", "no2", "o3", "so2", "co", "temperature_2m", "relative_humidity_2m"
    ] = "pm2_5"
    factor: Annotated[float, Field(gt=0, le=10)] = 1.5
    locations: list[str] | None = None


class SyntheticSource(_Strict):
    seed: int = 42
    gap_rate: Annotated[float, Field(ge=0, le=0.5)] = 0.01
    spike_rate: Annotated[float, Field(ge=0, le=0.05)] = 0.001
    scenarios: list[DriftScenario] = []


class OpenMeteoSource(_Strict):
    """Keyless live default. Endpoints come from the environment (:mod:`pipeline.settings`)."""

    past_days_threshold: Annotated[int, Field(ge=1, le=92)] = 5
    locations_per_request: Annotated[int, Field(ge=1, le=100)] = 10
    max_days_per_request: Annotated[int, Field(ge=1, le=366)] = 92
    requests_per_second: Annotated[float, Field(gt=0, le=100)] = 5.0
    max_retries: Annotated[int, Field(ge=0, le=10)] = 4
    backoff_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    max_backoff_s: Annotated[float, Field(ge=0, le=600)] = 30.0
    # a 429 asking to wait longer than this (e.g. a daily quota) fails the run instead
    max_retry_after_s: Annotated[float, Field(ge=0, le=3600)] = 120.0
    # weather forecasts for the target hours (docs/data-sources.md): the current run from the
    # forecast API when a window reaches the present hour, and for past windows what was
    # forecast 1 and 2 days before each hour (previous-runs API), taken as known this many
    # hours after the model run (publication delay: the honest, conservative side)
    forecasts: bool = True
    forecast_hours: Annotated[int, Field(ge=1, le=384)] = 48
    forecast_delay_hours: Annotated[int, Field(ge=0, le=23)] = 8


class OpenWeatherMapSource(_Strict):
    """Pollution from OpenWeatherMap (key in OPENWEATHERMAP_API_KEY), weather from Open-Meteo."""

    requests_per_second: Annotated[float, Field(gt=0, le=100)] = 1.0
    max_retries: Annotated[int, Field(ge=0, le=10)] = 4
    backoff_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    max_backoff_s: Annotated[float, Field(ge=0, le=600)] = 30.0
    max_retry_after_s: Annotated[float, Field(ge=0, le=3600)] = 120.0
    max_days_per_request: Annotated[int, Field(ge=1, le=366)] = 30
    weather_from_open_meteo: bool = True


_FIXED_OFFSET = re.compile(r"^(?:UTC|GMT)?([+-])(\d{2}):?(\d{2})$")


def fixed_offset(text: str) -> dt.timezone | None:
    """``+08:00`` (also ``UTC+08:00``, ``+0800``) as a fixed zone without daylight saving;
    None when ``text`` is not such an offset (an IANA name, say)."""
    match = _FIXED_OFFSET.match(str(text).strip())
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
    if delta > dt.timedelta(hours=14) or int(minutes) >= 60 or int(minutes) % 15:
        return None
    return dt.timezone(-delta if sign == "-" else delta)


def _check_variables(names, where: str) -> None:
    unknown = sorted(set(names) - set(VALUE_COLUMNS))
    if unknown:
        raise ValueError(f"{where}: unknown variable(s) {unknown}; known: {list(VALUE_COLUMNS)} "
                         "(another numeric column comes in under a name of your choosing with "
                         "mapping.covariates)")


def _check_covariate_names(names, where: str) -> None:
    for name in names:
        if not (isinstance(name, str) and COVARIATE_NAME.match(name)
                and len(name) <= MAX_COVARIATE_NAME):
            raise ValueError(f"{where}: covariate name {name!r} must be lower-case letters, "
                             f"digits and single underscores, starting with a letter, at most "
                             f"{MAX_COVARIATE_NAME} characters")
        if name in VALUE_COLUMNS:
            raise ValueError(f"{where}: {name!r} is a canonical variable: map it in "
                             "mapping.columns (or mapping.parameters)")


class TimeParts(_Strict):
    """A time written over several columns (``year, month, day, hour``), each a whole number;
    hour 24 is 00:00 of the next day."""

    year: str
    month: str
    day: str
    hour: str


class WindMap(_Strict):
    """Wind given as a compass category and a speed (wide layout), e.g. Beijing's ``cbwd``
    (NE, NW, SE, cv) and ``Iws``: stored as ``wind_direction_10m`` (degrees the wind blows
    from, the centre of the category's sector; a category mapped to null, such as calm or
    variable, has no direction) and ``wind_speed_10m``."""

    direction: str  # column of compass categories
    directions: Annotated[dict[str, Annotated[float, Field(ge=0, le=360)] | None],
                          Field(min_length=1)]
    speed: str | None = None  # column of wind speeds
    speed_unit: str = "m/s"
    # the speed column sums the hourly speeds since the direction category last changed
    # (Beijing's Iws): the hourly speed is the difference to the previous hour, or the value
    # itself at a change; where neither can be told (a gap, the first row) it is missing
    speed_cumulated: bool = False

    @model_validator(mode="after")
    def _unit(self) -> WindMap:
        try:
            check_unit("wind_speed_10m", self.speed_unit)
        except UnitError as exc:
            raise ValueError(f"mapping.wind.speed_unit: {exc}") from None
        if self.speed_cumulated and self.speed is None:
            raise ValueError("mapping.wind.speed_cumulated needs mapping.wind.speed")
        return self


class CsvColumnMap(_Strict):
    """How a file's columns map to the canonical schema.

    Wide files have one column per variable (``columns``); long files, such as
    OpenAQ exports, have one row per time and variable (``parameter``, ``value``
    and optionally a per-row ``unit`` column).
    """

    time: str | TimeParts = "time"  # a column, or {year, month, day, hour} columns
    location: str | None = None  # column naming the station; else CsvSource.location_id
    # station value in the file -> location id; values not listed become ids as they are,
    # lower-cased with every other character than a-z and 0-9 as "_" ("Windsor West" ->
    # "windsor_west")
    location_values: dict[str, str] = {}
    # columns describing each station, for `python -m pipeline locations` (writes or checks
    # params.yaml's locations from the file)
    latitude: str | None = None
    longitude: str | None = None
    location_name: str | None = None
    columns: dict[str, str] = {}  # canonical variable -> file column (wide layout)
    units: dict[str, str] = {}  # canonical variable -> unit of the file's values
    parameter: str | None = None  # long layout: column naming the variable
    value: str | None = None  # long layout: column holding the value
    unit: str | None = None  # long layout: column holding each row's unit
    unit_values: dict[str, str] = {}  # a unit spelling the file uses -> a known unit
    parameters: dict[str, str] = {}  # long layout: file parameter name -> canonical variable
    # extra numeric inputs under names of your choosing: name -> file column (wide layout) or
    # parameter name (long layout); stored as cov_<name>, used like co-pollutants (value and
    # lags), values as in the file (no unit conversion)
    covariates: dict[str, str] = {}
    wind: WindMap | None = None  # wind as a compass category (and a speed), wide layout

    @model_validator(mode="after")
    def _consistent(self) -> CsvColumnMap:
        _check_covariate_names(self.covariates, "mapping.covariates")
        _check_variables(self.columns, "mapping.columns")
        _check_variables(self.units, "mapping.units")
        _check_variables(self.parameters.values(), "mapping.parameters")
        for variable, unit in self.units.items():
            try:
                check_unit(variable, unit)
            except UnitError as exc:
                raise ValueError(f"mapping.units: {exc}") from None
        if (self.parameter is None) != (self.value is None):
            raise ValueError("mapping.parameter and mapping.value go together (long layout)")
        if self.parameter is not None and self.columns:
            raise ValueError("mapping.columns (wide layout) and mapping.parameter (long layout) "
                             "exclude each other")
        if self.wind is not None:
            if self.parameter is not None:
                raise ValueError("mapping.wind is for the wide layout (long layout: map the "
                                 "wind parameters in mapping.parameters)")
            twice = sorted({"wind_direction_10m", "wind_speed_10m"} & set(self.columns))
            if twice:
                raise ValueError(f"mapping.wind and mapping.columns both name {twice}: keep one")
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("mapping.latitude and mapping.longitude go together")
        return self


class CsvSource(_Strict):
    path: str = ""  # a .csv, .csv.gz or .parquet file, or a glob of them; relative to the project
    time_zone: str = "UTC"  # zone of naive times in the file (times with an offset keep theirs)
    time_format: str | None = None  # strftime format of the time column; None = ISO-like
    # non-ISO dates like 03/01/2024: true = day first, false = month first, null = detect
    # (refused when the file's dates read both ways)
    day_first: bool | None = None
    # field separator; null = detect from the header (refused when it stays ambiguous)
    separator: Annotated[str, Field(min_length=1, max_length=1)] | None = None
    # decimal mark of the values; null = "." and a column written with "," is refused
    decimal: Literal[".", ","] | None = None
    location_id: str | None = None  # for single-location files without a location column
    # true: a row's time is the END of the hour it measures (hour-ending, as OpenAQ labels
    # hourly values): it is stored at the hour before, the canonical start of the hour
    hour_ending: bool = False
    # locations (python -m pipeline locations): the largest distance in metres between a
    # station's coordinates in the file, and between the file and params.yaml
    coordinate_tolerance_m: Annotated[float, Field(gt=0, le=100_000)] = 200.0
    mapping: CsvColumnMap = CsvColumnMap()

    @field_validator("time_zone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        """An IANA zone, or a fixed offset from UTC without daylight saving (``+08:00``)."""
        if fixed_offset(value) is not None:
            return value
        return Location._known_timezone(value)


class SourceConfig(_Strict):
    kind: Literal["synthetic", "open_meteo", "openweathermap", "csv"] = "synthetic"
    start: Date = dt.date(2025, 1, 1)
    end: Date = dt.date(2026, 1, 1)
    # the hourly schedule resumes each location where it stopped, at most this far per run
    max_catchup_days: Annotated[int, Field(ge=1, le=3660)] = 366
    synthetic: SyntheticSource = SyntheticSource()
    open_meteo: OpenMeteoSource = OpenMeteoSource()
    openweathermap: OpenWeatherMapSource = OpenWeatherMapSource()
    csv: CsvSource = CsvSource()

    @model_validator(mode="after")
    def _window(self) -> SourceConfig:
        if self.end <= self.start:
            raise ValueError(f"source.end ({self.end}) must be after source.start ({self.start})")
        return self


class FeatureConfig(_Strict):
    lags: list[Annotated[int, Field(ge=1, le=24 * 14)]] = [1, 2, 3, 6, 12, 24, 48, 168]
    rolling_windows: list[Annotated[int, Field(ge=2, le=24 * 14)]] = [3, 6, 24, 72]
    co_pollutants: list[Target] = ["pm10", "no2", "o3", "co"]
    co_pollutant_lags: list[Annotated[int, Field(ge=1, le=24 * 14)]] = [1, 24]
    weather: list[str] = list(WEATHER)
    # features of the target hour t + h, one set per horizon (docs/models.md): the weather
    # forecast of these variables for t + h from the newest run issued by t ([] = none; a
    # source without forecasts, such as CSV, leaves them empty and train drops them), ...
    forecast_weather: list[str] = list(WEATHER)
    target_calendar: bool = False  # ... the local hour and weekday of t + h, ...
    profiles: bool = True  # ... the location's usual level at that hour of day and week
    trend: bool = True  # the slope of log1p(level) over the last 24 hours
    # the level now against its usual level at this hour of day and week (log1p differences)
    anomalies: bool = False
    # the observed weather this many hours ago (the wind as a vector): [] = the weather now only
    weather_lags: list[Annotated[int, Field(ge=1, le=24 * 14)]] = [1, 3, 6, 24]
    # extra numeric covariates (source.csv.mapping.covariates), each with its value and the
    # co_pollutant_lags; null = every covariate the CSV mapping names
    covariates: list[str] | None = None

    @field_validator("covariates")
    @classmethod
    def _covariate_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            _check_covariate_names(value, "features.covariates")
        return value

    @field_validator("weather", "forecast_weather")
    @classmethod
    def _known_weather(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(WEATHER))
        if unknown:
            raise ValueError(f"unknown weather variables {unknown}; known: {list(WEATHER)}")
        return value


Loss = Literal["squared_error", "absolute_error"]
Form = Literal["log_change", "log_level", "level", "change"]
BOOSTING_KEYS = ("loss", "max_iter", "learning_rate", "max_leaf_nodes", "min_samples_leaf",
                 "l2_regularization", "early_stopping", "random_state")


class Regularisation(_Strict):
    """One regularisation the per-horizon search may try (unset keys keep the base value)."""

    max_leaf_nodes: Annotated[int, Field(ge=2, le=1024)] | None = None
    min_samples_leaf: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    l2_regularization: Annotated[float, Field(ge=0, le=1e6)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None


class SelectionConfig(_Strict):
    """Per target x horizon, settings chosen on a time-ordered validation window at the end
    of the training period (never the holdout); the same window calibrates the intervals."""

    # at most a quarter of the training period: a year where the data allow, so that the
    # choice and the interval calibration see every season (docs/benchmarks.md, real data)
    validation_days: Annotated[int, Field(ge=1, le=365)] = 365
    max_fits: Annotated[int, Field(ge=1, le=50)] = 6  # 1 = no search: the base settings
    # the mean of the best N candidates of the search when it beats the best one on the
    # validation window (1 = the best candidate alone); each costs one refit
    ensemble: Annotated[int, Field(ge=1, le=10)] = 2
    max_rows: Annotated[int, Field(ge=1000, le=10**10)] | None = 150_000  # rows per search fit
    losses: Annotated[list[Loss], Field(min_length=1)] = ["squared_error", "absolute_error"]
    # forms anchored at the level at the origin: a level form (log_level, level) cannot
    # forecast above the levels it was trained on (a winter after a summer), and a validation
    # window inside the training period cannot show it (docs/benchmarks.md, round 2)
    forms: Annotated[list[Form], Field(min_length=1)] = ["log_change", "change"]
    regularisation: list[Regularisation] = [
        Regularisation(max_leaf_nodes=15, min_samples_leaf=200, l2_regularization=1.0),
        Regularisation(max_leaf_nodes=7, min_samples_leaf=800, l2_regularization=10.0),
    ]


class ModelConfig(_Strict):
    kind: Literal["hist_gradient_boosting"] = "hist_gradient_boosting"
    # the base settings; model.selection may change loss, form, regularisation and
    # iterations per target x horizon (recorded in the model metadata)
    loss: Loss = "absolute_error"  # the median, which the reported MAE rewards
    form: Form = "log_change"
    max_iter: Annotated[int, Field(ge=1, le=5000)] = 100
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 0.1
    max_leaf_nodes: Annotated[int, Field(ge=2, le=1024)] = 31
    min_samples_leaf: Annotated[int, Field(ge=1, le=10_000_000)] = 40
    l2_regularization: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    early_stopping: bool = False
    random_state: int = 0
    # more eligible training rows than this: fit on a seeded uniform sample of them
    # (pipeline/core/models.py training_rows); null = always all rows
    max_train_rows: Annotated[int, Field(ge=1000, le=10**10)] | None = 400_000
    selection: SelectionConfig = SelectionConfig()

    def base_settings(self) -> dict:
        """The plain settings core/models.py builds an estimator from."""
        return {"form": self.form, **{k: getattr(self, k) for k in BOOSTING_KEYS}}


class EvaluationConfig(_Strict):
    """The time-ordered holdout: from ``holdout_start`` (UTC) when set, else the last
    ``holdout_days`` days that have an observation."""

    holdout_days: Annotated[int, Field(ge=1, le=3650)] = 60
    holdout_start: Moment | None = None

    @field_validator("holdout_start")
    @classmethod
    def _utc(cls, value):
        return None if value is None else _utc_naive(value)


class BacktestConfig(_Strict):
    """The window ``python -m pipeline backtest`` (and its DVC stage) uses by default."""

    days: Annotated[int, Field(ge=1, le=3650)] = 60  # the last N days of data, when no start
    start: Moment | None = None  # target hours [start, end), UTC
    end: Moment | None = None  # None: the hour after the newest observation
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "candidate"
    refit_every_days: Annotated[float, Field(ge=0, le=3650)] = 0  # 0 = one model, no refit

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value):
        return None if value is None else _utc_naive(value)

    @model_validator(mode="after")
    def _ordered(self) -> BacktestConfig:
        if self.start is not None and self.end is not None and \
                _utc_naive(self.end) <= _utc_naive(self.start):
            raise ValueError(f"backtest.end ({self.end}) must be after backtest.start "
                             f"({self.start})")
        return self


def _utc_naive(value: dt.datetime | dt.date) -> dt.datetime:
    """A date or time as a naive UTC datetime, refused outside the years pandas can hold."""
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    elif value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    if not dt.datetime.combine(MIN_DATE, dt.time()) <= value <= dt.datetime.combine(
            MAX_DATE, dt.time()):
        raise ValueError(f"{value} is outside {MIN_DATE} .. {MAX_DATE}")
    return value


class PromotionConfig(_Strict):
    tolerance: Annotated[float, Field(ge=0, le=1)] = 0.02
    min_skill: Annotated[float, Field(ge=-1, lt=1)] = 0.0


class DriftConfig(_Strict):
    window_days: Annotated[int, Field(ge=1, le=365)] = 14
    bins: Annotated[int, Field(ge=2, le=100)] = 10
    psi_threshold: Annotated[float, Field(gt=0, le=100)] = 0.25
    share_threshold: Annotated[float, Field(gt=0, le=1)] = 0.3


class ForecastConfig(_Strict):
    """When a location's inputs are too incomplete for an honest forecast (none is issued)."""

    min_input_completeness: Annotated[float, Field(ge=0, le=1)] = 0.8
    max_hours_since_observation: Annotated[float, Field(ge=0, le=24 * 14)] = 3.0


class Params(_Strict):
    locations: Annotated[list[Location], Field(min_length=1)]
    targets: Annotated[list[Target], Field(min_length=1)] = ["pm2_5"]
    horizons: Annotated[list[Annotated[int, Field(ge=1, le=168)]], Field(min_length=1)] = [
        1,
        6,
        12,
        24,
    ]
    history_days: Annotated[int, Field(ge=0, le=MAX_DAYS)] = 0
    source: SourceConfig = SourceConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    promotion: PromotionConfig = PromotionConfig()
    drift: DriftConfig = DriftConfig()
    forecast: ForecastConfig = ForecastConfig()
    backtest: BacktestConfig = BacktestConfig()

    @model_validator(mode="after")
    def _unique(self) -> Params:
        ids = [loc.id for loc in self.locations]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"locations: duplicate id(s) {dupes}")
        for name, values in (("targets", self.targets), ("horizons", self.horizons)):
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: duplicate values in {values}")
        return self

    @model_validator(mode="after")
    def _covariates(self) -> Params:
        """features.covariates resolved (null: the CSV mapping's), and each one mapped."""
        mapped = list(self.source.csv.mapping.covariates) if self.source.kind == "csv" else []
        wanted = self.features.covariates
        if wanted is None:
            return self.model_copy(update={"features": self.features.model_copy(
                update={"covariates": mapped})})
        unmapped = [c for c in wanted if c not in mapped]
        if unmapped:
            raise ValueError(f"features.covariates: {unmapped} not in "
                             f"source.csv.mapping.covariates ({mapped or 'none mapped'})")
        return self

    @property
    def location_ids(self) -> list[str]:
        return [loc.id for loc in self.locations]


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a setting; check spelling)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_params(raw: object, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise ConfigError(f"{source}: expected a mapping at the top level, got {kind}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key written twice (YAML 1.2 says keys are unique)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode,
                              deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[object, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {key!r}", key_node.start_mark) from None
        if first is not None:
            raise yaml.constructor.ConstructorError(
                f"while reading the mapping starting on line {node.start_mark.line + 1}", None,
                f"key {key!r} appears twice (line {first.start_mark.line + 1} and line "
                f"{key_node.start_mark.line + 1}): keep one", key_node.start_mark)
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_unique_mapping)

# a params file is a few kilobytes; refuse to parse something far bigger
MAX_PARAMS_BYTES = 1 << 20


def load_yaml(path: Path | str) -> object:
    """The YAML document at ``path``, refusing duplicate keys; errors name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PARAMS_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_PARAMS_BYTES} bytes: not a params file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None


def load_params(path: Path | str) -> Params:
    return parse_params(load_yaml(path), str(path))


def _top_level_key(line: str) -> bool:
    return bool(line) and not line[0].isspace() and line[0] not in "#-"


def replace_locations(text: str, locations: list[Location]) -> str:
    """``text`` (a params.yaml) with its top-level ``locations`` list replaced by
    ``locations``, one flow mapping per line; every other line, comments included, is kept.
    The result is checked to parse back to exactly these locations."""
    entries = [
        "  - " + yaml.safe_dump(loc.model_dump(), default_flow_style=True, sort_keys=False,
                                width=1 << 16, allow_unicode=True).strip()
        for loc in locations]
    block = ["locations:", *entries]
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if line.startswith("locations:") and _top_level_key(line)), None)
    if start is None:  # after the leading comments
        start = next((i for i, line in enumerate(lines) if line.strip()
                      and not line.startswith("#")), len(lines))
        lines[start:start] = [*block, ""]
    else:
        stop = start + 1
        while stop < len(lines) and not _top_level_key(lines[stop]) and not (
                lines[stop].startswith("#")):
            stop += 1
        while stop > start + 1 and not lines[stop - 1].strip():  # keep the blank lines
            stop -= 1
        lines[start:stop] = block
    result = "\n".join(lines) + "\n"
    written = yaml.load(result, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    if [Location.model_validate(x) for x in written.get("locations") or []] != list(locations):
        raise ConfigError("params.yaml: the locations could not be written back faithfully")
    return result


# the pollutant list is re-exported so callers need only this module for params
__all__ = ["ConfigError", "Params", "load_params", "parse_params", "POLLUTANTS"]
