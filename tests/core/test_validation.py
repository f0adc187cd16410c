"""Bad rows go to quarantine with a reason; nothing is silently dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.core.validation import validate


def frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["time"] = pd.to_datetime(df["time"], utc=True)
    return df


def test_bad_rows_are_quarantined_with_reasons():
    raw = frame([
        {"location_id": "a", "time": "2025-01-01 00:00", "pm2_5": 5.0, "temperature_2m": 3.0},
        {"location_id": "a", "time": "2025-01-01 01:00", "pm2_5": -2.0, "temperature_2m": 3.0},
        {"location_id": "a", "time": "2025-01-01 02:00", "pm2_5": 9999.0},
        {"location_id": "a", "time": "2025-01-01 03:00", "pm2_5": 4.0, "relative_humidity_2m": 130},
        {"location_id": "a", "time": "2025-01-01 04:30", "pm2_5": 4.0},
        {"location_id": "zz", "time": "2025-01-01 05:00", "pm2_5": 4.0},
        {"location_id": "a", "time": "2025-01-01 06:00", "pm2_5": np.nan},
    ])
    result = validate(raw, known_locations=["a"])
    assert len(result.valid) + len(result.quarantine) == len(raw)
    assert list(result.valid["time"].dt.hour) == [0, 6]  # a NaN value is a gap, not bad
    reasons = dict(zip(result.quarantine["time"].dt.strftime("%H:%M"),
                       result.quarantine["reason"], strict=True))
    assert "pm2_5=-2.0 outside [0, 1500] ug/m3" in reasons["01:00"]
    assert "pm2_5=9999.0" in reasons["02:00"]
    assert "relative_humidity_2m=130.0 outside [0, 100] %" in reasons["03:00"]
    assert "not on the hour" in reasons["04:30"]
    assert "not in params.yaml" in reasons["05:00"]
    assert result.reasons == {
        "pm2_5_out_of_range": 2,
        "relative_humidity_2m_out_of_range": 1,
        "time_off_grid": 1,
        "unknown_location": 1,
    }


def test_duplicates_collapse_or_quarantine():
    raw = frame([
        {"location_id": "a", "time": "2025-01-01 00:00", "pm2_5": 5.0},
        {"location_id": "a", "time": "2025-01-01 00:00", "pm2_5": 5.0},  # exact copy
        {"location_id": "a", "time": "2025-01-01 01:00", "pm2_5": 6.0},
        {"location_id": "a", "time": "2025-01-01 01:00", "pm2_5": 7.0},  # conflict: last wins
    ])
    result = validate(raw)
    assert result.duplicates_collapsed == 1
    assert list(result.valid["pm2_5"]) == [5.0, 7.0]
    assert list(result.quarantine["pm2_5"]) == [6.0]
    assert "duplicate (location_id, time)" in result.quarantine["reason"].iloc[0]
    assert result.rows_in == 4


def test_clean_frame_passes_untouched():
    times = pd.date_range("2025-01-01", periods=48, freq="h", tz="UTC")
    raw = pd.DataFrame({"location_id": "a", "time": times, "pm2_5": np.linspace(1, 50, 48)})
    result = validate(raw, known_locations=["a"])
    assert result.quarantine.empty
    assert len(result.valid) == 48
    assert result.valid["pm2_5"].tolist() == raw["pm2_5"].tolist()
