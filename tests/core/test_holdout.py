"""The holdout by date: a start date or the last N observed days, refused when impossible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ConfigError, parse_params
from pipeline.core.models import Split, eligible_rows


def hourly(start: str, end: str, missing_share: float = 0.0, seed: int = 0) -> pd.DataFrame:
    times = pd.date_range(start, end, freq="h", tz="UTC", inclusive="left")
    rng = np.random.default_rng(seed)
    values = rng.uniform(5, 50, len(times))
    values[rng.random(len(times)) < missing_share] = np.nan
    frame = pd.DataFrame({"location_id": "a", "time": times, "pm2_5": values})
    for h in (1, 24):
        frame[f"y__pm2_5__h{h}"] = frame["pm2_5"].shift(-h)
    return frame


def test_a_calendar_year_can_be_held_out_by_days_despite_missing_hours():
    """365 days of data with 10 % of hours missing is still 365 days, not 328."""
    frame = hourly("2024-01-01", "2026-01-01", missing_share=0.1)
    split = Split.for_holdout(frame, ["pm2_5"], [1, 24], days=365)
    assert split.holdout_start == pd.Timestamp("2025-01-01", tz="UTC")
    # every label a model learns from is known before the first holdout forecast is issued
    assert split.label_cutoff == pd.Timestamp("2024-12-31", tz="UTC")
    trained = eligible_rows(frame, "pm2_5", 24, split.label_cutoff)
    assert (frame.loc[trained, "time"] + pd.Timedelta(hours=24) < split.holdout_start).all()


def test_a_holdout_start_date_is_honoured_and_described():
    frame = hourly("2024-01-01", "2026-01-01")
    split = Split.for_holdout(frame, ["pm2_5"], [1, 24], start=pd.Timestamp("2025-01-01"))
    assert split.holdout_start == pd.Timestamp("2025-01-01", tz="UTC")
    described = split.describe(frame, ["pm2_5"])
    assert described["start"] == "2025-01-01T00:00:00+00:00"
    assert described["end"] == "2026-01-01T00:00:00+00:00"
    assert described["holdout_days"] == 365
    assert described["holdout_rows"] == 365 * 24
    assert described["train_start"] == "2024-01-01T00:00:00+00:00"
    assert described["train_rows"] == 365 * 24  # 2024 has 366 days, less the 24 h purge


def test_holdouts_that_cannot_be_honoured_are_errors_not_a_silent_half():
    frame = hourly("2025-01-01", "2025-03-01")  # 59 days
    with pytest.raises(ValueError, match="holdout of 59 observed days leaves nothing to train"):
        Split.for_holdout(frame, ["pm2_5"], [1], days=59)
    with pytest.raises(ValueError, match="after the newest observation"):
        Split.for_holdout(frame, ["pm2_5"], [1], start=pd.Timestamp("2025-04-01"))
    with pytest.raises(ValueError, match="no data before the holdout start"):
        Split.for_holdout(frame, ["pm2_5"], [24], start=pd.Timestamp("2025-01-01 12:00"))
    # the old rule quietly used half the data; now 40 of 59 days is what is asked for
    split = Split.for_holdout(frame, ["pm2_5"], [1], days=40)
    assert split.holdout_start == pd.Timestamp("2025-01-20", tz="UTC")


def test_days_count_dates_with_data_so_a_resumed_feed_still_has_a_holdout():
    """Hourly ingestion resuming months after a backfill: the holdout spans the gap."""
    before = hourly("2025-01-01", "2025-02-01")
    after = hourly("2025-11-30 06:00", "2025-11-30 12:00")
    frame = pd.concat([before, after], ignore_index=True)
    split = Split.for_holdout(frame, ["pm2_5"], [1, 24], days=5)
    assert split.holdout_start == pd.Timestamp("2025-01-28", tz="UTC")  # 4 days + the new one
    assert eligible_rows(frame, "pm2_5", 24, split.label_cutoff).sum() > 0


def test_holdout_settings_are_validated():
    base = {"locations": [{"id": "a", "name": "A", "latitude": 1, "longitude": 1}]}
    params = parse_params({**base, "evaluation": {"holdout_start": "2025-01-01",
                                                  "holdout_days": 3000}})
    assert pd.Timestamp(params.evaluation.holdout_start) == pd.Timestamp("2025-01-01")
    with pytest.raises(ConfigError, match="evaluation.holdout_days"):
        parse_params({**base, "evaluation": {"holdout_days": 0}})
    with pytest.raises(ConfigError, match="evaluation.holdout_start"):
        parse_params({**base, "evaluation": {"holdout_start": "yesterday"}})
