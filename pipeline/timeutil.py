"""UTC time parsing shared by the CLI, steps and DAGs."""

from __future__ import annotations

import datetime as dt

import pandas as pd

ACCEPTED_FORMATS = ("YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS] (UTC), or with an offset: "
                    "YYYY-MM-DDTHH:MM[:SS]Z / +HH:MM")


class TimeFormatError(ValueError):
    """A date or time that is not ISO 8601 (the message lists the accepted formats)."""


def utc(value: str | dt.date | dt.datetime | pd.Timestamp) -> pd.Timestamp:
    """A UTC timestamp from an ISO 8601 string, date or datetime; naive values are UTC.

    Strings must be ISO 8601: ``01/02/2025`` (which day?) or ``yesterday`` are
    refused with the accepted formats rather than guessed.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = dt.datetime.fromisoformat(text) if text[:4].isdigit() else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise TimeFormatError(
                f"not an ISO 8601 date or time: {value!r} (accepted: {ACCEPTED_FORMATS})")
        value = parsed
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TimeFormatError(f"not a date or time: {value!r} ({exc})") from None
    if ts is pd.NaT:
        raise TimeFormatError(f"not a date or time: {value!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def cli_time(text: str) -> str:
    """argparse type for --start/--end: checks the value, hands the step the text unchanged."""
    import argparse

    try:
        utc(text)
    except TimeFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def floor_hour(ts: pd.Timestamp) -> pd.Timestamp:
    return utc(ts).floor("h")


def now_utc() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")
