"""UTC time parsing shared by the CLI, steps and DAGs."""

from __future__ import annotations

import datetime as dt

import pandas as pd


def utc(value: str | dt.date | dt.datetime | pd.Timestamp) -> pd.Timestamp:
    """A UTC timestamp from an ISO string, date or datetime; naive values are taken as UTC."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a date or time: {value!r}") from exc
    if ts is pd.NaT:
        raise ValueError(f"not a date or time: {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def floor_hour(ts: pd.Timestamp) -> pd.Timestamp:
    return utc(ts).floor("h")


def now_utc() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")
