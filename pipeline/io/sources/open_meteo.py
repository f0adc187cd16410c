"""Open-Meteo: keyless pollution (Air Quality API) and weather (forecast + archive APIs).

Requests ask for UTC (``timezone=GMT``), unix times and explicit units; each
response's ``hourly_units`` is checked and converted to the canonical units,
so a provider-side unit change is an error, not silently wrong numbers.
Several locations go in one request (the API answers with a JSON array).
Weather older than ``past_days_threshold`` days comes from the archive (ERA5)
API, recent hours from the forecast API. Only the [start, end) window is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.core.units import UnitError, to_canonical
from pipeline.io.sources.base import (
    FetchResult,
    SourceStats,
    assemble,
    batched,
    combine,
    time_chunks,
    trim,
)
from pipeline.io.sources.checks import all_missing, check_hourly, guarded, utc_offset
from pipeline.io.sources.http import (
    HttpClient,
    HttpSourceError,
    ProviderRejected,
    ResponseFormatError,
    RetryPolicy,
)
from pipeline.schema import TIME_DTYPE, WEATHER, conform_forecasts, empty_forecasts
from pipeline.timeutil import now_utc

if TYPE_CHECKING:
    from pipeline.config import Location
    from pipeline.config import OpenMeteoSource as OpenMeteoConfig
    from pipeline.settings import Settings

log = logging.getLogger(__name__)

# Open-Meteo variable name -> canonical column
AIR_QUALITY_VARIABLES: dict[str, str] = {
    "pm2_5": "pm2_5",
    "pm10": "pm10",
    "nitrogen_dioxide": "no2",
    "ozone": "o3",
    "sulphur_dioxide": "so2",
    "carbon_monoxide": "co",
}
WEATHER_VARIABLES: dict[str, str] = {name: name for name in WEATHER}

# explicit units on every weather request; hourly_units is still checked on the answer
WEATHER_UNIT_PARAMS = {
    "temperature_unit": "celsius",
    "wind_speed_unit": "ms",
    "precipitation_unit": "mm",
}

PROVIDER_AIR_QUALITY = "open_meteo_air_quality"
PROVIDER_FORECAST = "open_meteo_forecast"
PROVIDER_ARCHIVE = "open_meteo_archive"
PROVIDER_PREVIOUS_RUNS = "open_meteo_previous_runs"
# the previous-runs API's forecasts made 1 and 2 days before each hour
PREVIOUS_DAYS = (1, 2)


def date_params(start: pd.Timestamp, end: pd.Timestamp) -> dict[str, str]:
    """start_date/end_date (UTC, inclusive) covering the hours of [start, end)."""
    last_hour = end - pd.Timedelta(hours=1)
    return {"start_date": f"{start:%Y-%m-%d}", "end_date": f"{last_hour:%Y-%m-%d}"}


def coordinate_params(group: Sequence[Location]) -> dict[str, str]:
    return {
        "latitude": ",".join(f"{loc.latitude:.4f}" for loc in group),
        "longitude": ",".join(f"{loc.longitude:.4f}" for loc in group),
    }


# ------------------------------------------------------------------ parsing


def _times(hourly: Mapping[str, Any], units: Mapping[str, Any], offset_s: float,
           where: str, provider: str) -> pd.DatetimeIndex:
    raw = hourly.get("time")
    if not isinstance(raw, list):
        raise ResponseFormatError(f"{provider}: {where}: hourly.time is missing or not a list",
                                  provider=provider)
    time_format = units.get("time", "iso8601")
    if any(v is None for v in raw):
        raise ResponseFormatError(f"{provider}: {where}: hourly.time contains null",
                                  provider=provider)
    try:
        if time_format == "unixtime":
            seconds = np.asarray(raw, dtype="float64")
            times = pd.to_datetime(seconds, unit="s", utc=True)
        elif time_format == "iso8601":
            times = pd.to_datetime(pd.Index(raw, dtype="object"), format="ISO8601")
            if times.tz is None:
                # local wall time of the requested timezone: subtract its offset to get UTC
                times = times.tz_localize("UTC") - pd.Timedelta(seconds=offset_s)
            else:
                times = times.tz_convert("UTC")
        else:
            raise ResponseFormatError(
                f"{provider}: {where}: unknown time format {time_format!r} "
                "(expected 'iso8601' or 'unixtime')", provider=provider)
    except (ValueError, TypeError) as exc:
        raise ResponseFormatError(f"{provider}: {where}: unreadable hourly.time: {exc}",
                                  provider=provider) from None
    return pd.DatetimeIndex(times).astype(TIME_DTYPE)


def _values(hourly: Mapping[str, Any], name: str, n: int, where: str, provider: str) -> np.ndarray:
    raw = hourly.get(name)
    if not isinstance(raw, list):
        raise ResponseFormatError(
            f"{provider}: {where}: hourly.{name} is missing or not a list (it was requested)",
            provider=provider)
    if len(raw) != n:
        raise ResponseFormatError(
            f"{provider}: {where}: hourly.{name} has {len(raw)} values but hourly.time has {n}",
            provider=provider)
    try:
        return np.array([np.nan if v is None else float(v) for v in raw], dtype="float64")
    except (TypeError, ValueError):
        bad = next(v for v in raw if v is not None and not _is_number(v))
        raise ResponseFormatError(
            f"{provider}: {where}: hourly.{name} holds a non-numeric value {bad!r}",
            provider=provider) from None


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def parse_hourly(payload: Any, group: Sequence[Location], variables: Mapping[str, str],
                 provider: str) -> dict[str, pd.DataFrame]:
    """Per location id, a frame of ``time`` plus canonical columns, in canonical units.

    Accepts one object (one location) or an array (several, in request order);
    ``null`` values become NaN; ``elevation`` and other metadata are optional.
    Raises ResponseFormatError for anything else, naming what is wrong.
    """
    if isinstance(payload, dict) and payload.get("error"):
        raise ResponseFormatError(f"{provider}: error in response: {payload.get('reason')!r}",
                                  provider=provider)
    if isinstance(payload, dict):
        items = [payload]
    elif isinstance(payload, list):
        items = payload
    else:
        raise ResponseFormatError(
            f"{provider}: expected a JSON object or array, got {type(payload).__name__}",
            provider=provider)
    if len(items) != len(group):
        raise ResponseFormatError(
            f"{provider}: answered {len(items)} location(s) for {len(group)} requested",
            provider=provider)
    out: dict[str, pd.DataFrame] = {}
    for item, loc in zip(items, group, strict=True):
        where = f"location {loc.id}"
        if not isinstance(item, dict):
            raise ResponseFormatError(f"{provider}: {where}: expected an object, got "
                                      f"{type(item).__name__}", provider=provider)
        hourly, units = item.get("hourly"), item.get("hourly_units")
        if not isinstance(hourly, dict):
            raise ResponseFormatError(f"{provider}: {where}: no 'hourly' object",
                                      provider=provider)
        if not isinstance(units, dict):
            raise ResponseFormatError(
                f"{provider}: {where}: no 'hourly_units' object (units must be known)",
                provider=provider)
        offset = utc_offset(item.get("utc_offset_seconds"), where, provider)
        times = _times(hourly, units, float(offset), where, provider)
        frame = pd.DataFrame({"time": times})
        for api_name, canonical in variables.items():
            values = _values(hourly, api_name, len(times), where, provider)
            unit = units.get(api_name)
            try:
                frame[canonical] = to_canonical(canonical, values, unit)
            except UnitError as exc:
                raise ResponseFormatError(f"{provider}: {where}: hourly_units.{api_name}: {exc}",
                                          provider=provider) from None
        out[loc.id] = check_hourly(frame, where, provider)
    return out


# ------------------------------------------------------------------ source


class OpenMeteoSource:
    """The keyless live default: pollution and weather from Open-Meteo."""

    name = "open_meteo"

    def __init__(self, config: OpenMeteoConfig, settings: Settings, *,
                 now: Callable[[], pd.Timestamp] = now_utc, session=None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.settings = settings
        self._now = now
        self.client = HttpClient(
            "open_meteo",
            timeout_s=settings.http_timeout_s,
            total_s=settings.http_total_s,
            max_bytes=settings.http_max_bytes,
            retry=RetryPolicy.of(config),
            requests_per_second=config.requests_per_second,
            shared_limit_url=settings.rate_limit_redis_url,
            session=session,
            sleep=sleep,
        )

    @property
    def max_days_per_request(self) -> int:
        return self.config.max_days_per_request

    # -- the Source interface

    def fetch(self, locations: Sequence[Location], start: pd.Timestamp,
              end: pd.Timestamp) -> FetchResult:
        stats = SourceStats()
        pollution, failures = self.fetch_air_quality(locations, start, end, stats)
        remaining = [loc for loc in locations if loc.id not in failures]
        weather, weather_failures = self.fetch_weather(remaining, start, end, stats)
        failures.update(weather_failures)
        frames = [
            assemble(loc.id, [pollution[loc.id], weather[loc.id]], start, end)
            for loc in locations
            if loc.id not in failures
        ]
        return FetchResult(frame=combine(frames), failures=failures, stats=stats)

    # -- weather forecasts for the target hours (the ForecastSource interface)

    def fetch_forecasts(self, locations: Sequence[Location], start: pd.Timestamp,
                        end: pd.Timestamp) -> FetchResult:
        """Weather forecasts for the hours of [start, end), and the current run if the window
        reaches the present hour.

        - For each hour ``T`` of the window, what was forecast 1 and 2 days before it (the
          previous-runs API's ``<variable>_previous_day1/2``): the value of the newest run at
          least N days older than ``T``, taken as known ``forecast_delay_hours`` after that
          (``issue_time = T - N days + delay``: never earlier than it could have been known).
        - When ``end`` reaches the present: the forecast API's current forecast of the next
          ``forecast_hours`` hours, issued at the next full hour after it was fetched.
        Hours with no value at all (before the archive starts, in 2024) are left out.
        """
        stats = SourceStats()
        if not self.config.forecasts or not locations:
            return FetchResult(frame=empty_forecasts(), stats=stats)
        delay = pd.Timedelta(hours=self.config.forecast_delay_hours)
        parts: list[pd.DataFrame] = []
        failures: dict[str, str] = {}
        for day in PREVIOUS_DAYS:
            variables = {f"{name}_previous_day{day}": name for name in WEATHER}
            frames, failed = self._fetch_part(
                lambda a, b, v=variables: self._previous_runs_requests(a, b, v), variables,
                [loc for loc in locations if loc.id not in failures], start, end, stats)
            failures.update(failed)
            for loc_id, frame in frames.items():
                parts.append(frame.assign(
                    location_id=loc_id,
                    issue_time=frame["time"] - pd.Timedelta(days=day) + delay))
        now = self._now().tz_convert("UTC")
        issue = now.ceil("h")
        if end >= now.floor("h"):
            horizon = pd.Timedelta(hours=self.config.forecast_hours)
            current, failed = self._fetch_part(
                lambda a, b: self._current_run_requests(a, b), WEATHER_VARIABLES,
                [loc for loc in locations if loc.id not in failures], issue + pd.Timedelta(
                    hours=1), issue + horizon + pd.Timedelta(hours=1), stats)
            failures.update(failed)
            for loc_id, frame in current.items():
                parts.append(frame.assign(location_id=loc_id, issue_time=issue))
        if not parts:
            return FetchResult(frame=empty_forecasts(), failures=failures, stats=stats)
        frame = pd.concat(parts, ignore_index=True)
        frame = frame[frame[list(WEATHER)].notna().any(axis=1)]
        return FetchResult(frame=conform_forecasts(frame[["location_id", "issue_time", "time",
                                                          *WEATHER]]),
                           failures=failures, stats=stats)

    def _previous_runs_requests(self, start, end, variables):
        for chunk_start, chunk_end in time_chunks(start, end, self.config.max_days_per_request):
            params = {"hourly": ",".join(variables), "timezone": "GMT",
                      "timeformat": "unixtime", **WEATHER_UNIT_PARAMS,
                      **date_params(chunk_start, chunk_end)}
            yield (PROVIDER_PREVIOUS_RUNS, self.settings.open_meteo_previous_runs_url, params,
                   chunk_start, chunk_end)

    def _current_run_requests(self, start, end):
        params = {"hourly": ",".join(WEATHER_VARIABLES), "timezone": "GMT",
                  "timeformat": "unixtime", **WEATHER_UNIT_PARAMS, **date_params(start, end)}
        yield PROVIDER_FORECAST, self.settings.open_meteo_forecast_url, params, start, end

    # -- the two halves, reusable (OpenWeatherMap takes its weather from here)

    def fetch_air_quality(self, locations, start, end, stats):
        return self._fetch_part(self._air_quality_requests, AIR_QUALITY_VARIABLES,
                                locations, start, end, stats)

    def fetch_weather(self, locations, start, end, stats):
        return self._fetch_part(self._weather_requests, WEATHER_VARIABLES,
                                locations, start, end, stats)

    def _air_quality_requests(self, start, end):
        for chunk_start, chunk_end in time_chunks(start, end, self.config.max_days_per_request):
            params = {"hourly": ",".join(AIR_QUALITY_VARIABLES), "timezone": "GMT",
                      "timeformat": "unixtime", **date_params(chunk_start, chunk_end)}
            yield (PROVIDER_AIR_QUALITY, self.settings.open_meteo_air_quality_url, params,
                   chunk_start, chunk_end)

    def archive_boundary(self) -> pd.Timestamp:
        """Weather before this comes from the archive API, from it on from the forecast API."""
        today = self._now().tz_convert("UTC").floor("D")
        return today - pd.Timedelta(days=self.config.past_days_threshold)

    def _weather_requests(self, start, end):
        boundary = self.archive_boundary()
        parts = []
        if start < boundary:
            parts.append((PROVIDER_ARCHIVE, self.settings.open_meteo_archive_url,
                          start, min(end, boundary)))
        if end > boundary:
            parts.append((PROVIDER_FORECAST, self.settings.open_meteo_forecast_url,
                          max(start, boundary), end))
        for provider, url, part_start, part_end in parts:
            for chunk_start, chunk_end in time_chunks(part_start, part_end,
                                                      self.config.max_days_per_request):
                params = {"hourly": ",".join(WEATHER_VARIABLES), "timezone": "GMT",
                          "timeformat": "unixtime", **WEATHER_UNIT_PARAMS,
                          **date_params(chunk_start, chunk_end)}
                yield provider, url, params, chunk_start, chunk_end

    def _fetch_group(self, requests_for, variables, group, start, end, stats):
        """All chunks of one location group; any failed request fails the whole group."""
        pieces: dict[str, list[pd.DataFrame]] = {loc.id: [] for loc in group}
        for provider, url, params, chunk_start, chunk_end in requests_for(start, end):
            payload = self.client.get_json(url, {**coordinate_params(group), **params}, stats,
                                           label=provider)
            where = f"location(s) {','.join(loc.id for loc in group)}"
            parsed = guarded(provider, where, parse_hourly, payload, group, variables, provider)
            for loc_id, frame in parsed.items():
                pieces[loc_id].append(trim(frame, chunk_start, chunk_end))
        return {loc_id: pd.concat(parts, ignore_index=True) for loc_id, parts in pieces.items()}

    def _fetch_part(self, requests_for, variables, locations, start, end, stats):
        """Per-location frames and failures; one bad location does not sink its group."""
        frames: dict[str, pd.DataFrame] = {}
        failures: dict[str, str] = {}
        for group in batched(list(locations), self.config.locations_per_request):
            try:
                frames.update(self._fetch_group(requests_for, variables, group, start, end,
                                                stats))
            except HttpSourceError as exc:
                isolate = len(group) > 1 and (
                    isinstance(exc, ResponseFormatError)
                    or (isinstance(exc, ProviderRejected) and not exc.is_auth)
                )
                if not isolate:
                    failures.update({loc.id: str(exc) for loc in group})
                    continue
                log.warning("%s; retrying the %d locations of the request one by one",
                            exc, len(group))
                for loc in group:
                    try:
                        frames.update(self._fetch_group(requests_for, variables, [loc], start,
                                                        end, stats))
                    except HttpSourceError as single_exc:
                        failures[loc.id] = str(single_exc)
        for loc_id, frame in list(frames.items()):
            if frame.empty:
                failures[loc_id] = (
                    f"open_meteo returned no hours inside [{start}, {end}) for {loc_id}"
                )
                del frames[loc_id]
            elif all_missing(frame, list(variables.values())):
                failures[loc_id] = (
                    f"open_meteo returned {len(frame)} hour(s) in [{start}, {end}) for {loc_id} "
                    f"but every value of {sorted(variables.values())} is null: no data"
                )
                del frames[loc_id]
        return frames, failures
