"""Row-level validation of canonical frames with pandera; failures are quarantined, not dropped."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd
import pandera.pandas as pa

from pipeline.schema import KEYS, TIME_DTYPE, VALUE_COLUMNS, VARIABLES, conform

REASON = "reason"


def _schema(known_locations: Iterable[str] | None) -> pa.DataFrameSchema:
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


def validate(frame: pd.DataFrame, known_locations: Iterable[str] | None = None) -> ValidationResult:
    """Split a frame into valid canonical rows and quarantined rows with a ``reason``.

    Exact duplicate rows collapse to one (nothing is lost); rows sharing a key
    with different values are quarantined except the last one seen, which wins.
    """
    frame = conform(frame)
    reasons: dict[int, list[tuple[str, str]]] = {}

    try:
        _schema(known_locations).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        row_cases = cases[cases["index"].notna()]
        for _, case in row_cases.iterrows():
            reasons.setdefault(int(case["index"]), []).append(_describe(case))
        frame_level = cases[cases["index"].isna()]
        if len(frame_level):
            # dtype or column problems that conform() should have prevented
            records = frame_level.to_dict("records")
            raise ValueError(f"frame fails the canonical schema: {records}") from None

    exact_dupes = frame.duplicated(keep="first")
    collapsed = int(exact_dupes.sum())
    frame = frame[~exact_dupes]
    conflicting = frame.duplicated(subset=list(KEYS), keep="last")
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
