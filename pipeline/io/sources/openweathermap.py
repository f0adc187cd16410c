"""OpenWeatherMap Air Pollution API (current, forecast, history); weather from Open-Meteo.

The key comes from ``OPENWEATHERMAP_API_KEY`` (:mod:`pipeline.settings`) and
is redacted from every log line and error. One request per location and
window part: ``/history`` for past hours, the current endpoint for the running
hour, ``/forecast`` for later hours. A 401/403 (bad key) stops requests for
the remaining locations, since they would all be refused the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.core.units import to_canonical
from pipeline.io.sources.base import (
    FetchResult,
    SourceError,
    SourceStats,
    assemble,
    combine,
    time_chunks,
    trim,
)
from pipeline.io.sources.checks import all_missing, check_hourly, guarded
from pipeline.io.sources.http import (
    HttpClient,
    HttpSourceError,
    ProviderRejected,
    ResponseFormatError,
    RetryPolicy,
)
from pipeline.io.sources.open_meteo import OpenMeteoSource
from pipeline.schema import TIME_DTYPE
from pipeline.timeutil import now_utc

if TYPE_CHECKING:
    from pipeline.config import Location
    from pipeline.config import OpenMeteoSource as OpenMeteoConfig
    from pipeline.config import OpenWeatherMapSource as OpenWeatherMapConfig
    from pipeline.settings import Settings

log = logging.getLogger(__name__)

PROVIDER = "openweathermap"
# component -> canonical column; the API documents every component in ug/m3
COMPONENTS = {"pm2_5": "pm2_5", "pm10": "pm10", "no2": "no2", "o3": "o3", "so2": "so2",
              "co": "co"}
COMPONENT_UNITS = dict.fromkeys(COMPONENTS, "μg/m³")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_coord(coord: Any, where: str) -> None:
    """``coord`` is documented both as ``[lon, lat]`` and as ``{"lon": .., "lat": ..}``."""
    if isinstance(coord, dict) and _number(coord.get("lat")) and _number(coord.get("lon")):
        return
    if isinstance(coord, list) and len(coord) == 2 and all(_number(c) for c in coord):
        return
    raise ResponseFormatError(
        f"{PROVIDER}: {where}: 'coord' must be [lon, lat] or {{lon, lat}}, got {coord!r}",
        provider=PROVIDER)


def parse_air_pollution(payload: Any, location_id: str) -> pd.DataFrame:
    """``time`` plus canonical pollutant columns (ug/m3) from one Air Pollution answer.

    ``aqi`` may be an int or a float; component values may be null (NaN) or
    absent (NaN). Anything else is rejected with the reason.
    """
    where = f"location {location_id}"
    if not isinstance(payload, dict):
        raise ResponseFormatError(
            f"{PROVIDER}: {where}: expected a JSON object, got {type(payload).__name__}",
            provider=PROVIDER)
    _check_coord(payload.get("coord"), where)
    items = payload.get("list")
    if not isinstance(items, list):
        raise ResponseFormatError(f"{PROVIDER}: {where}: 'list' is missing or not an array",
                                  provider=PROVIDER)
    times: list[int] = []
    columns: dict[str, list[float]] = {name: [] for name in COMPONENTS}
    for i, item in enumerate(items):
        at = f"{where}: list[{i}]"
        if not isinstance(item, dict) or not _number(item.get("dt")):
            raise ResponseFormatError(f"{PROVIDER}: {at}: needs a numeric 'dt'",
                                      provider=PROVIDER)
        main = item.get("main")
        aqi = main.get("aqi") if isinstance(main, dict) else None
        if not _number(aqi) or not 1 <= aqi <= 5:
            raise ResponseFormatError(
                f"{PROVIDER}: {at}: main.aqi must be a number 1..5, got {aqi!r}",
                provider=PROVIDER)
        components = item.get("components")
        if not isinstance(components, dict):
            raise ResponseFormatError(f"{PROVIDER}: {at}: 'components' is not an object",
                                      provider=PROVIDER)
        for name in COMPONENTS:
            value = components.get(name)
            if value is not None and not _number(value):
                raise ResponseFormatError(
                    f"{PROVIDER}: {at}: components.{name} is not a number: {value!r}",
                    provider=PROVIDER)
            columns[name].append(np.nan if value is None else float(value))
        times.append(int(item["dt"]))
    # the API's hourly values are stamped on the hour: anything else is refused, not moved
    time_index = pd.to_datetime(np.asarray(times, dtype="int64"), unit="s", utc=True)
    frame = pd.DataFrame({"time": time_index.astype(TIME_DTYPE)})
    for name, canonical in COMPONENTS.items():
        frame[canonical] = to_canonical(canonical, columns[name], COMPONENT_UNITS[name])
    return check_hourly(frame, where, PROVIDER)


class OpenWeatherMapSource:
    name = "openweathermap"

    def __init__(self, config: OpenWeatherMapConfig, settings: Settings,
                 open_meteo: OpenMeteoConfig | None = None, *,
                 now: Callable[[], pd.Timestamp] = now_utc, session=None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        from pipeline.config import OpenMeteoSource as OpenMeteoConfig

        self.config = config
        self.settings = settings
        self._now = now
        self._key = settings.openweathermap_api_key
        self.client = HttpClient(
            PROVIDER,
            timeout_s=settings.http_timeout_s,
            total_s=settings.http_total_s,
            max_bytes=settings.http_max_bytes,
            retry=RetryPolicy.of(config),
            requests_per_second=config.requests_per_second,
            shared_limit_url=settings.rate_limit_redis_url,
            secrets=[self._key],
            session=session,
            sleep=sleep,
        )
        self.weather = (
            OpenMeteoSource(open_meteo or OpenMeteoConfig(), settings, now=now, session=session,
                            sleep=sleep)
            if config.weather_from_open_meteo
            else None
        )

    @property
    def max_days_per_request(self) -> int:
        return self.config.max_days_per_request

    def _requests(self, loc: Location, start: pd.Timestamp, end: pd.Timestamp):
        """(url, params, window) per call: history for past hours, current, forecast."""
        base = self.settings.openweathermap_url.rstrip("/")
        coords = {"lat": f"{loc.latitude:.4f}", "lon": f"{loc.longitude:.4f}"}
        current_hour = self._now().tz_convert("UTC").floor("h")
        past_end = min(end, current_hour)
        if start < past_end:
            for chunk_start, chunk_end in time_chunks(start, past_end,
                                                      self.config.max_days_per_request):
                params = {**coords, "start": int(chunk_start.timestamp()),
                          "end": int(chunk_end.timestamp()) - 1}
                yield f"{base}/history", params, (chunk_start, chunk_end)
        if start <= current_hour < end:
            yield base, coords, (current_hour, current_hour + pd.Timedelta(hours=1))
        future_start = max(start, current_hour + pd.Timedelta(hours=1))
        if end > future_start:
            yield f"{base}/forecast", coords, (future_start, end)

    def _pollution(self, loc: Location, start, end, stats: SourceStats) -> pd.DataFrame:
        parts = []
        for url, params, (part_start, part_end) in self._requests(loc, start, end):
            query = {**params, "appid": self._key.get_secret_value()}
            payload = self.client.get_json(url, query, stats)
            frame = guarded(PROVIDER, f"location {loc.id}", parse_air_pollution, payload, loc.id)
            parts.append(trim(frame, part_start, part_end))
        if not parts:
            return pd.DataFrame()
        return guarded(PROVIDER, f"location {loc.id}", check_hourly,
                       pd.concat(parts, ignore_index=True), f"location {loc.id}", PROVIDER)

    def fetch(self, locations: Sequence[Location], start: pd.Timestamp,
              end: pd.Timestamp) -> FetchResult:
        if not self._key:
            raise SourceError(
                "source openweathermap needs an API key: set OPENWEATHERMAP_API_KEY in the "
                "environment (see docs/data-sources.md)")
        stats = SourceStats()
        pollution: dict[str, pd.DataFrame] = {}
        failures: dict[str, str] = {}
        for i, loc in enumerate(locations):
            try:
                frame = self._pollution(loc, start, end, stats)
            except ProviderRejected as exc:
                if exc.is_auth:
                    for rest in locations[i:]:
                        failures[rest.id] = str(exc)
                    break
                failures[loc.id] = str(exc)
                continue
            except HttpSourceError as exc:
                failures[loc.id] = str(exc)
                continue
            if frame.empty:
                failures[loc.id] = (
                    f"{PROVIDER}: empty 'list' for {loc.id} in [{start}, {end}): no data"
                )
                continue
            if all_missing(frame, list(COMPONENTS.values())):
                failures[loc.id] = (
                    f"{PROVIDER}: {len(frame)} hour(s) for {loc.id} in [{start}, {end}) but "
                    "every component is null: no data"
                )
                continue
            pollution[loc.id] = frame
        weather: dict[str, pd.DataFrame] = {}
        ok = [loc for loc in locations if loc.id in pollution]
        if self.weather is not None and ok:
            weather, weather_failures = self.weather.fetch_weather(ok, start, end, stats)
            failures.update(weather_failures)
        frames = [
            assemble(loc.id, [pollution[loc.id]] + ([weather[loc.id]] if loc.id in weather
                                                    else []), start, end)
            for loc in ok
            if loc.id not in failures
        ]
        return FetchResult(frame=combine(frames), failures=failures, stats=stats)
