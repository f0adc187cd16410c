"""The one interface every source implements, and the helpers every source shares."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.schema import TIME_DTYPE, conform, empty_frame

if TYPE_CHECKING:
    from pipeline.config import Location


NO_DATA = "no data"  # how a failure message ends when the provider answered, without values


def answered_without_data(message: str) -> bool:
    """True for a location failure where the provider answered but had no values (a silent
    station), as opposed to an answer that never came or could not be read."""
    return message.rstrip().endswith(NO_DATA)


class SourceError(PipelineError):
    """A source could not deliver (after retries); the message names the provider's reason."""


@dataclass
class SourceStats:
    """Per-provider request figures of one fetch, for the metrics reporter."""

    requests: dict[str, int] = field(default_factory=dict)  # provider -> requests made
    responses: dict[tuple[str, str], int] = field(default_factory=dict)  # (provider, code) -> n
    latency_s: dict[str, list[float]] = field(default_factory=dict)  # provider -> latencies

    def record(self, provider: str, code: int | str, seconds: float) -> None:
        self.requests[provider] = self.requests.get(provider, 0) + 1
        key = (provider, str(code))
        self.responses[key] = self.responses.get(key, 0) + 1
        self.latency_s.setdefault(provider, []).append(seconds)

    def merge(self, other: SourceStats) -> None:
        for k, v in other.requests.items():
            self.requests[k] = self.requests.get(k, 0) + v
        for k, v in other.responses.items():
            self.responses[k] = self.responses.get(k, 0) + v
        for k, v in other.latency_s.items():
            self.latency_s.setdefault(k, []).extend(v)


@dataclass
class FetchResult:
    """Canonical rows (not yet range-validated) plus what failed.

    ``failures`` maps a location id to the error that lost it, after retries;
    rows of the other locations are still in ``frame``.
    """

    frame: pd.DataFrame
    failures: dict[str, str] = field(default_factory=dict)
    stats: SourceStats = field(default_factory=SourceStats)
    # row position in ``frame`` -> why that row has no time (a CSV's local time that does not
    # exist or cannot be told apart at a daylight-saving change): its quarantine reason
    time_notes: dict[int, str] = field(default_factory=dict)
    # readings the source itself refused (canonical rows with a ``reason``: a CSV's negative
    # reading or repeated key, which must not cost the other values of its hour), and their
    # count per reason category; kept in the quarantine like validation's
    quarantine: pd.DataFrame | None = None
    quarantine_reasons: dict[str, int] = field(default_factory=dict)


class Source(Protocol):
    name: str

    def fetch(
        self, locations: Sequence[Location], start: pd.Timestamp, end: pd.Timestamp
    ) -> FetchResult:
        """Rows for every location and every UTC hour in [start, end)."""
        ...


class ForecastSource(Protocol):
    """A source that also has weather forecasts (synthetic, Open-Meteo; not CSV, OpenWeatherMap
    pollution): forecast rows (``pipeline.schema.FORECAST_COLUMNS``) of the runs issued in
    [start, end), for the features of the target hours (``docs/models.md``)."""

    def fetch_forecasts(
        self, locations: Sequence[Location], start: pd.Timestamp, end: pd.Timestamp
    ) -> FetchResult:
        ...


def has_forecasts(source: object) -> bool:
    return callable(getattr(source, "fetch_forecasts", None))


def batched(items: Sequence, size: int) -> Iterator[list]:
    """Consecutive slices of at most ``size`` items."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def time_chunks(start: pd.Timestamp, end: pd.Timestamp, days: int) -> list[tuple]:
    """[start, end) cut into consecutive windows of at most ``days`` days."""
    step = pd.Timedelta(days=days)
    chunks, cursor = [], start
    while cursor < end:
        chunks.append((cursor, min(cursor + step, end)))
        cursor += step
    return chunks


def month_chunks(start: pd.Timestamp, end: pd.Timestamp, days: int) -> list[tuple]:
    """[start, end) cut into windows of at most ``days`` days that end at a UTC month start
    where one falls inside them.

    The store keeps one partition per location and month: a chunk that does not end inside a
    month writes each partition once instead of twice (the merge costs more than the write).
    A window longer than a month covers whole months; one shorter never crosses a month start.
    """
    step = pd.Timedelta(days=days)
    chunks, cursor = [], start
    while cursor < end:
        stop = min(cursor + step, end)
        month_start = pd.Timestamp(year=stop.year, month=stop.month, day=1, tz="UTC")
        if cursor < month_start < stop:
            stop = month_start
        chunks.append((cursor, stop))
        cursor = stop
    return chunks


def trim(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    return frame[(frame["time"] >= start) & (frame["time"] < end)]


def assemble(location_id: str, parts: Sequence[pd.DataFrame], start: pd.Timestamp,
             end: pd.Timestamp) -> pd.DataFrame:
    """One row per hour of [start, end): the parts joined on time (not yet conformed)."""
    grid = pd.DatetimeIndex(pd.date_range(start, end, freq="h", inclusive="left"),
                            name="time").astype(TIME_DTYPE)
    columns = []
    for part in parts:
        indexed = part.assign(time=part["time"].astype(TIME_DTYPE)).set_index("time")
        indexed = indexed[~indexed.index.duplicated(keep="last")]
        columns.append(indexed.reindex(grid))
    frame = pd.concat(columns, axis=1) if columns else pd.DataFrame(index=grid)
    frame = frame.reset_index()
    frame.insert(0, "location_id", location_id)
    return frame


def combine(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Assembled per-location frames as one canonical frame."""
    return conform(pd.concat(frames, ignore_index=True)) if frames else empty_frame()
