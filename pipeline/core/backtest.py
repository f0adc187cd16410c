"""Rolling-origin backtest: forecast every origin whose target hour lies in a window.

Each forecast is made from the feature row of its origin (features are causal:
built from data at or before the origin) by a model that saw no label after the
origin: either one fixed model whose training labels all precede the first
origin, or a model refitted every ``refit_every`` on the labels before each
refit origin. The forecast rows come from the caller (``pipeline/forecaster.py``, the path
batch and serving forecasts take). Pure: frames and plain values in, frames and dicts out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.core.aqi import category_index
from pipeline.core.features import label_column, persistence_column, seasonal_column
from pipeline.core.intervals import LOWER, UPPER
from pipeline.core.keys import ModelKey, nest, unnest

KEY_COLUMNS = ("target", "horizon", "location_id", "origin", "target_time")


@dataclass(frozen=True)
class Window:
    """Target hours ``[start, end)`` (UTC)."""

    start: pd.Timestamp
    end: pd.Timestamp

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"backtest end {self.end} must be after its start {self.start}")

    def first_origin(self, horizons: Sequence[int]) -> pd.Timestamp:
        return self.start - pd.Timedelta(hours=max(horizons))

    def describe(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} .. {self.end:%Y-%m-%d %H:%M} UTC"


def refit_origins(window: Window, horizons: Sequence[int],
                  every: pd.Timedelta | None) -> list[pd.Timestamp]:
    """Where each model's period starts: the first origin, then every ``every``."""
    first = window.first_origin(horizons)
    if every is None:
        return [first]
    if every < pd.Timedelta(hours=1):
        raise ValueError(f"refit interval {every} is shorter than an hour")
    last = window.end - pd.Timedelta(hours=min(horizons))
    return list(pd.date_range(first, last, freq=every))


def forecast(
    frame: pd.DataFrame,
    window: Window,
    horizons: Sequence[int],
    forecast_rows: Callable[[pd.DataFrame, pd.Timestamp], pd.DataFrame],
    refits: Sequence[pd.Timestamp],
) -> pd.DataFrame:
    """Every forecast of the window, with its observation and the baselines.

    ``forecast_rows(part, refit_origin)`` gives the forecast rows (``pipeline.forecaster``:
    location, issue time, target, horizon, target time, value, interval, ...) of the feature
    rows ``part`` from the models serving the origins from ``refit_origin`` to the next one;
    ``frame`` carries the labels and baselines they are scored against.
    """
    bounds = [*refits, pd.Timestamp.max.tz_localize("UTC")]
    in_play = ((frame["time"] >= window.first_origin(horizons))
               & (frame["time"] < window.end - pd.Timedelta(hours=min(horizons))))
    pieces = []
    for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
        part = frame.loc[in_play & (frame["time"] >= begin) & (frame["time"] < end)]
        if not part.empty:
            pieces.append(forecast_rows(part, begin).assign(refit_origin=begin))
    out = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
    if not out.empty:
        out = out[(out["target_time"] >= window.start) & (out["target_time"] < window.end)]
    if out.empty:
        raise ValueError(f"no feature rows forecast into {window.describe()}: "
                         "is there data before and in the window?")
    out = out.rename(columns={"issue_time": "origin"}).drop(
        columns=["persistence", "hours_since_observation"], errors="ignore")
    truth = _truth(frame.loc[in_play], out[["target", "horizon"]].drop_duplicates())
    truth = truth.astype({c: out[c].dtype for c in ("horizon", "location_id", "origin")})
    return out.merge(truth, on=["target", "horizon", "location_id", "origin"], how="left",
                     validate="many_to_one").sort_values(list(KEY_COLUMNS), ignore_index=True)


def _truth(frame: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
    """Per target x horizon and origin: the observation and both baselines."""
    parts = []
    for target, horizon in keys.itertuples(index=False):
        parts.append(pd.DataFrame({
            "target": target, "horizon": horizon,
            "location_id": frame["location_id"].astype(str).to_numpy(dtype=object),
            "origin": pd.to_datetime(frame["time"], utc=True).to_numpy(),
            "observed": frame[label_column(target, horizon)].to_numpy(),
            "persistence": frame[persistence_column(target)].to_numpy(),
            "seasonal_naive": frame[seasonal_column(target, horizon)].to_numpy(),
        }))
    return pd.concat(parts, ignore_index=True)


def scorable(predictions: pd.DataFrame) -> pd.Series:
    """Rows every method is scored on: the observation and both baselines are known."""
    return (predictions["observed"].notna() & predictions["persistence"].notna()
            & predictions["seasonal_naive"].notna())


def _scores(part: pd.DataFrame) -> dict[str, float]:
    observed = part["observed"].to_numpy()
    error = np.abs(part["value"].to_numpy() - observed)
    model_mae = float(error.mean())
    persistence_mae = float(np.abs(part["persistence"].to_numpy() - observed).mean())
    seasonal_mae = float(np.abs(part["seasonal_naive"].to_numpy() - observed).mean())
    out = {
        "n": int(len(part)),
        "mae": model_mae,
        "rmse": float(np.sqrt(np.mean(error ** 2))),
        "bias": float(np.mean(part["value"].to_numpy() - observed)),
        "persistence_mae": persistence_mae,
        "seasonal_naive_mae": seasonal_mae,
        "skill": 1 - model_mae / persistence_mae if persistence_mae > 0 else float("nan"),
        "skill_vs_seasonal": 1 - model_mae / seasonal_mae if seasonal_mae > 0 else float("nan"),
    }
    if LOWER in part and part[LOWER].notna().any():
        has = part[LOWER].notna()
        inside = (observed >= part[LOWER].to_numpy()) & (observed <= part[UPPER].to_numpy())
        out["coverage"] = float(inside[has.to_numpy()].mean())
        out["interval_width"] = float((part[UPPER] - part[LOWER])[has].mean())
    target = part["target"].iloc[0]
    try:
        right = category_index(target, observed) == category_index(target, part["value"])
        out["aqi_category_accuracy"] = float(np.mean(right))
    except ValueError:
        out["aqi_category_accuracy"] = float("nan")
    return out


GROUPINGS = {
    "horizon": [],
    "location": ["location_id"],
    "month": ["month"],
    "hour": ["hour"],
}


def score_tables(predictions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Scores by horizon, and by horizon x location, month and hour of day (target time, UTC).

    Every table is computed on the same rows: those where the observation and both
    baselines are known.
    """
    rows = predictions[scorable(predictions)].assign(
        month=lambda d: d["target_time"].dt.strftime("%Y-%m"),
        hour=lambda d: d["target_time"].dt.hour,
    )
    if rows.empty:
        raise ValueError("no forecast of the window has an observation to score against")
    tables = {}
    for name, extra in GROUPINGS.items():
        keys = ["target", "horizon", *extra]
        records = [{**dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True)),
                    **_scores(part)} for key, part in rows.groupby(keys, sort=True)]
        tables[name] = pd.DataFrame.from_records(records)
    return tables


def nested_by_horizon(table: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """{target: {horizon (str): scores}}: the shape of evaluate's scores."""
    out: dict[ModelKey, dict[str, float]] = {}
    for record in table.to_dict("records"):
        key = ModelKey.of(record.pop("target"), int(record.pop("horizon")))
        out[key] = {k: (int(v) if k == "n" else round(float(v), 4)) for k, v in record.items()}
    return nest(out)


def render_summary(scores: Mapping, header: str) -> str:
    """The table the backtest prints: per target and horizon, like `make run`'s summary."""
    lines = [header]
    for target, by_h in scores.items():
        lines.append(f"{target}:")
        lines.append(f"  {'horizon':>8} {'MAE':>8} {'persist.':>9} {'skill':>7} "
                     f"{'vs seas.':>8} {'cover80':>8} {'AQI acc':>8} {'n':>7}")
        for key, s in sorted(unnest({target: by_h}).items()):
            coverage = f"{s['coverage']:8.1%}" if "coverage" in s else f"{'-':>8}"
            lines.append(f"  {key.hours + ' h':>8} {s['mae']:8.2f} {s['persistence_mae']:9.2f} "
                         f"{s['skill']:7.3f} {s['skill_vs_seasonal']:8.3f} {coverage} "
                         f"{s['aqi_category_accuracy']:8.1%} {s['n']:7d}")
    return "\n".join(lines)
