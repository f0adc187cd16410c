"""The one interface every source implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.config import Location


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


class Source(Protocol):
    name: str

    def fetch(
        self, locations: Sequence[Location], start: pd.Timestamp, end: pd.Timestamp
    ) -> FetchResult:
        """Rows for every location and every UTC hour in [start, end)."""
        ...
