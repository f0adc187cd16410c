"""Row-level validation of canonical frames with pandera; failures are quarantined, not dropped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa

from pipeline.schema import (
    FORECAST_KEYS,
    KEYS,
    MAX_FORECAST_LEAD_H,
    TIME_DTYPE,
    VALUE_COLUMNS,
    VARIABLES,
    WEATHER,
    conform,
    conform_forecasts,
    covariate_columns,
)

REASON = "reason"


def _schema(known_locations: Iterable[str] | None,
            covariates: Iterable[str] = ()) -> pa.DataFrameSchema:
    location_checks = [pa.Check.str_length(min_value=1)]
    if known_locations is not None:
        location_checks.append(
            pa.Check.isin(sorted(known_locations), error="location_id not in params.yaml")
        )
    columns = {
        "location_id": pa.Column(str, location_checks, nullable=False),
        "time": pa.Column(
            TIME_DTYPE,
            pa.Check(lambda s: s.dt.floor("h") == s, element_wise=False, error="not on the hour"),
            nullable=False,
        ),
    }
    for name in VALUE_COLUMNS:
        var = VARIABLES[name]
        columns[name] = pa.Column(
            float,
            pa.Check.in_range(
                var.low, var.high, error=f"outside [{var.low:g}, {var.high:g}] {var.unit}"
            ),
            nullable=True,
        )
    for name in covariates:
        columns[name] = pa.Column(
            float, pa.Check(lambda s: s.isna() | np.isfinite(s), element_wise=False,
                            error="not a finite number"), nullable=True)
    return pa.DataFrameSchema(columns, strict=True, ordered=False)


@dataclass
class ValidationResult:
    valid: pd.DataFrame
    quarantine: pd.DataFrame
    reasons: dict[str, int] = field(default_factory=dict)
    duplicates_collapsed: int = 0

    @property
    def rows_in(self) -> int:
        return len(self.valid) + len(self.quarantine) + self.duplicates_collapsed


def _describe(case: pd.Series) -> tuple[str, str]:
    """(category for counting, human-readable reason) of one pandera failure case."""
    column = case["column"]
    check = str(case["check"])
    if "nullable" in check:
        return f"{column}_missing", f"{column} missing"
    if column in VARIABLES:
        return f"{column}_out_of_range", f"{column}={case['failure_case']!r} {check}"
    if column == "time":
        return "time_off_grid", f"time {case['failure_case']} {check}"
    if "params.yaml" in check:
        return "unknown_location", f"location_id {case['failure_case']!r} not in params.yaml"
    return f"{column}_invalid", f"{column}={case['failure_case']!r}: {check}"


def validate(frame: pd.DataFrame, known_locations: Iterable[str] | None = None,
             time_notes: Mapping[int, str] | None = None) -> ValidationResult:
    """Split a frame into valid canonical rows and quarantined rows with a ``reason``.

    Exact duplicate rows collapse to one (nothing is lost); rows sharing a key
    with different values are quarantined except the last one seen, which wins.
    Rows without a time never share a key (they are no hour at all); ``time_notes``
    (row position -> text) says why a row has none, in place of "time missing".
    """
    frame = conform(frame)
    reasons: dict[int, list[tuple[str, str]]] = {}
    notes = dict(time_notes or {})

    try:
        _schema(known_locations, covariate_columns(frame.columns)).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        row_cases = cases[cases["index"].notna()]
        for _, case in row_cases.iterrows():
            index = int(case["index"])
            category, text = _describe(case)
            if category == "time_missing" and index in notes:
                category, text = "time_unknown", notes[index]
            reasons.setdefault(index, []).append((category, text))
        frame_level = cases[cases["index"].isna()]
        if len(frame_level):
            # dtype or column problems that conform() should have prevented
            records = frame_level.to_dict("records")
            raise ValueError(f"frame fails the canonical schema: {records}") from None

    exact_dupes = frame.duplicated(keep="first") & frame["time"].notna()
    collapsed = int(exact_dupes.sum())
    frame = frame[~exact_dupes]
    conflicting = frame.duplicated(subset=list(KEYS), keep="last") & frame["time"].notna()
    for idx in frame.index[conflicting]:
        reasons.setdefault(int(idx), []).append(
            (
                "duplicate_key",
                "duplicate (location_id, time) with conflicting values; the last row was kept",
            )
        )

    bad = frame.index.isin(list(reasons))
    quarantine = frame[bad].copy()
    quarantine[REASON] = ["; ".join(text for _, text in reasons[int(i)]) for i in quarantine.index]
    valid = frame[~bad].sort_values(list(KEYS)).reset_index(drop=True)
    counts: dict[str, int] = {}
    for items in reasons.values():
        for category, _ in items:
            counts[category] = counts.get(category, 0) + 1
    return ValidationResult(
        valid=valid,
        quarantine=quarantine.reset_index(drop=True),
        reasons=counts,
        duplicates_collapsed=collapsed,
    )


def validate_forecasts(frame: pd.DataFrame,
                       known_locations: Iterable[str] | None = None) -> ValidationResult:
    """Weather forecasts split into valid rows and quarantined rows with a ``reason``.

    A row is refused when its location is unknown, a time is off the hour, it is not valid
    after its issue hour (a "forecast" of the past is an observation, and using it would look
    ahead) or more than :data:`MAX_FORECAST_LEAD_H` after it, or a value is outside its
    physical range. Rows sharing a key keep the last one (a re-issued run replaces its values).
    """
    frame = conform_forecasts(frame)
    reasons: dict[int, list[tuple[str, str]]] = {}

    def refuse(mask, category: str, text) -> None:
        for i in np.flatnonzero(np.asarray(mask)):
            reasons.setdefault(int(frame.index[i]), []).append(
                (category, text(i) if callable(text) else text))

    if known_locations is not None:
        refuse(~frame["location_id"].isin(list(known_locations)), "unknown_location",
               lambda i: f"location_id {frame['location_id'].iloc[i]!r} not in params.yaml")
    for key in ("issue_time", "time"):
        refuse(frame[key].isna(), f"{key}_missing", f"{key} missing")
        refuse(frame[key].notna() & (frame[key].dt.floor("h") != frame[key]),
               f"{key}_off_grid", lambda i, k=key: f"{k} {frame[k].iloc[i]} not on the hour")
    lead = (frame["time"] - frame["issue_time"]) / pd.Timedelta(hours=1)
    refuse(lead < 1, "not_a_forecast",
           lambda i: f"time {frame['time'].iloc[i]} is not after issue_time "
                     f"{frame['issue_time'].iloc[i]}")
    refuse(lead > MAX_FORECAST_LEAD_H, "lead_too_long",
           lambda i: f"lead {lead.iloc[i]:g} h beyond {MAX_FORECAST_LEAD_H} h")
    for name in WEATHER:
        var = VARIABLES[name]
        values = frame[name]
        refuse(values.notna() & ((values < var.low) | (values > var.high)),
               f"{name}_out_of_range",
               lambda i, n=name, v=var: f"{n}={frame[n].iloc[i]!r} outside "
                                        f"[{v.low:g}, {v.high:g}] {v.unit}")
    bad = frame.index.isin(list(reasons))
    quarantine = frame[bad].copy()
    quarantine[REASON] = ["; ".join(text for _, text in reasons[int(i)]) for i in quarantine.index]
    valid = frame[~bad]
    before = len(valid)
    valid = valid.drop_duplicates(subset=list(FORECAST_KEYS), keep="last")
    counts: dict[str, int] = {}
    for items in reasons.values():
        for category, _ in items:
            counts[category] = counts.get(category, 0) + 1
    return ValidationResult(
        valid=valid.sort_values(list(FORECAST_KEYS)).reset_index(drop=True),
        quarantine=quarantine.reset_index(drop=True),
        reasons=counts,
        duplicates_collapsed=before - len(valid),
    )
