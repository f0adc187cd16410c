"""Checks every live provider's answer goes through before its rows are kept.

Why here: a provider that stamps values off the hour, repeats an hour with
other values or answers only nulls must fail that location with a reason
(``FetchResult.failures``), not become rows that look valid and fresh. Any
exception while reading an answer fails the location too, never the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pandas as pd

from pipeline.io.sources.http import HttpSourceError, ResponseFormatError, redact

T = TypeVar("T")

# the offsets real time zones use: UTC-12 .. UTC+14, in whole quarter hours
MAX_OFFSET_S = 14 * 3600
MIN_OFFSET_S = -12 * 3600


def guarded(provider: str, where: str, parse: Callable[..., T], *args: Any) -> T:
    """``parse(*args)``; any error reading the answer becomes a ResponseFormatError."""
    try:
        return parse(*args)
    except HttpSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile body can raise anything while read
        detail = redact(f"{type(exc).__name__}: {exc}")
        if len(detail) > 200:
            detail = detail[:200] + "..."
        raise ResponseFormatError(f"{provider}: {where}: unreadable answer ({detail})",
                                  provider=provider) from None


def utc_offset(value: Any, where: str, provider: str) -> int:
    """``utc_offset_seconds`` as an int, refusing text, booleans and impossible offsets."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ResponseFormatError(
            f"{provider}: {where}: utc_offset_seconds must be a whole number of seconds, "
            f"got {value!r}", provider=provider)
    seconds = int(value)
    if not MIN_OFFSET_S <= seconds <= MAX_OFFSET_S or seconds % 900:
        raise ResponseFormatError(
            f"{provider}: {where}: utc_offset_seconds {seconds} is not a real time-zone offset "
            "(whole quarter hours between -12 h and +14 h)", provider=provider)
    return seconds


def check_hourly(frame: pd.DataFrame, where: str, provider: str) -> pd.DataFrame:
    """``frame`` (``time`` + values) sorted by time, or an error naming what is wrong.

    Refused: times off the hour (values would be moved to an hour they do not
    belong to) and an hour repeated with different values (which one is true
    cannot be told). Exact repeats collapse; unsorted hours are sorted.
    """
    times = frame["time"]
    off = times[times.notna() & (times.dt.floor("h") != times)]
    if len(off):
        raise ResponseFormatError(
            f"{provider}: {where}: {len(off)} of {len(frame)} time(s) are not on the hour "
            f"(e.g. {off.iloc[0]}): values cannot be placed on hours", provider=provider)
    frame = frame.drop_duplicates()
    repeated = frame["time"].duplicated(keep=False)
    if repeated.any():
        first = frame.loc[repeated, "time"].iloc[0]
        n = int(frame.loc[repeated, "time"].nunique())
        raise ResponseFormatError(
            f"{provider}: {where}: {n} hour(s) appear more than once with different values "
            f"(e.g. {first}): which is right cannot be told", provider=provider)
    return frame.sort_values("time", kind="stable").reset_index(drop=True)


def all_missing(frame: pd.DataFrame, columns: Sequence[str]) -> bool:
    """True when no value of ``columns`` is present: nothing was observed."""
    present = [c for c in columns if c in frame.columns]
    return not present or not frame[present].notna().any().any()
