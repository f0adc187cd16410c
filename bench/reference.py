"""The tuned reference of the real-data benchmark: what a careful practitioner builds by hand.

LightGBM with the absolute-error objective (the median, which MAE rewards), one model per
target x horizon over all sites (site as a category), on lags, differences and rolling
statistics of **every variable the file has** (the pollutants of a site, the weather where the
file has it, wind as vector components), the calendar of the origin and of the target hour.
Settings (target form, leaves / leaf size / L2, the number of trees by early stopping) are
chosen on the validation period only, fitting on the fitting period; the chosen settings are
refitted on fitting + validation and the test period is scored once.

Independent of the project's code on purpose (pandas + LightGBM only): it is the bar the
project's defaults are judged against.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

TARGET_LAGS = (0, 1, 2, 3, 4, 6, 12, 23, 24, 48, 72, 168)
OTHER_LAGS = (0, 1, 3, 6, 24)
TARGET_WINDOWS = (3, 6, 12, 24, 72, 168)
OTHER_WINDOWS = (6, 24)
FORMS = ("level", "change", "log_change")
REGULARISATION = (
    {"num_leaves": 63, "min_child_samples": 50, "reg_lambda": 0.0},
    {"num_leaves": 15, "min_child_samples": 400, "reg_lambda": 10.0},
)
LEARNING_RATE = 0.1
MAX_TREES = 1000
EARLY_STOP = 50


def hourly(frame: pd.DataFrame) -> pd.DataFrame:
    """Each site on a regular hourly grid from its first to its last row (gaps NaN)."""
    parts = []
    for site, part in frame.groupby("location_id", sort=True):
        part = part.set_index("time").sort_index()
        grid = pd.date_range(part.index.min(), part.index.max(), freq="h")
        part = part.drop(columns="location_id").reindex(grid)
        part.index.name = "time"
        parts.append(part.reset_index().assign(location_id=site))
    return pd.concat(parts, ignore_index=True)


def _site_features(part: pd.DataFrame, variables: Sequence[str], targets: Sequence[str],
                   horizons: Sequence[int], timezone: str) -> pd.DataFrame:
    out = {}
    for v in variables:
        x = part[v]
        is_target = v in targets
        for lag in (TARGET_LAGS if is_target else OTHER_LAGS):
            out[f"{v}_lag{lag}"] = x.shift(lag)
        for w in (TARGET_WINDOWS if is_target else OTHER_WINDOWS):
            roll = x.rolling(w, min_periods=max(1, w // 3))
            out[f"{v}_mean{w}"] = roll.mean()
            if is_target:
                out[f"{v}_std{w}"] = roll.std()
                out[f"{v}_max{w}"] = roll.max()
        out[f"{v}_diff1"] = x - x.shift(1)
        out[f"{v}_diff24"] = x - x.shift(24)
        if is_target:
            last = x.ffill(limit=6)
            out[f"{v}_last"] = last  # latest known value (anchor of the change forms)
    if "wind_speed_10m" in part and "wind_direction_10m" in part:
        rad = np.deg2rad(part["wind_direction_10m"])
        speed = part["wind_speed_10m"]
        out["wind_u"], out["wind_v"] = -speed * np.sin(rad), -speed * np.cos(rad)
        out["wind_u_mean6"] = out["wind_u"].rolling(6, min_periods=2).mean()
        out["wind_v_mean6"] = out["wind_v"].rolling(6, min_periods=2).mean()
        out["calm"] = part["wind_direction_10m"].isna().astype(float)
    local = part["time"].dt.tz_convert(timezone)
    out["hour"] = local.dt.hour.astype(float)
    out["dow"] = local.dt.dayofweek.astype(float)
    out["doy"] = local.dt.dayofyear.astype(float)
    for h in horizons:
        ahead = local + pd.Timedelta(hours=h)
        out[f"target_hour__h{h}"] = ahead.dt.hour.astype(float)
        out[f"target_dow__h{h}"] = ahead.dt.dayofweek.astype(float)
        for t in targets:
            out[f"y__{t}__h{h}"] = part[t].shift(-h)
            # the seasonal naive forecast: the same hour of the last day known (not an input)
            out[f"s__{t}__h{h}"] = part[t].shift(24 * int(np.ceil(h / 24)) - h)
    return pd.DataFrame(out, index=part.index)


def build(frame: pd.DataFrame, targets: Sequence[str], horizons: Sequence[int],
          timezones: dict[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """The feature table (every site, every hour) and the names of the model inputs."""
    variables = [c for c in frame.columns if c not in ("location_id", "time")
                 and frame[c].notna().any()]
    grid = hourly(frame)
    codes = {s: i for i, s in enumerate(sorted(grid["location_id"].unique()))}
    parts = []
    for site, part in grid.groupby("location_id", sort=True):
        feats = _site_features(part.reset_index(drop=True), variables, targets, horizons,
                               timezones[site])
        feats.insert(0, "site", codes[site])
        feats.insert(0, "time", part["time"].to_numpy())
        feats.insert(0, "location_id", site)
        parts.append(feats)
    table = pd.concat(parts, ignore_index=True)
    table["site"] = table["site"].astype("category")
    inputs = [c for c in table.columns if c not in ("location_id", "time")
              and not c.startswith(("y__", "s__"))]
    return table, inputs


def _inputs_for(inputs: Sequence[str], horizon: int) -> list[str]:
    return [c for c in inputs if "__h" not in c or c.endswith(f"__h{horizon}")]


def _to_model(form: str, y: np.ndarray, last: np.ndarray) -> np.ndarray:
    if form == "level":
        return y
    if form == "change":
        return y - last
    return np.log1p(np.clip(y, 0, None)) - np.log1p(np.clip(last, 0, None))


def _from_model(form: str, raw: np.ndarray, last: np.ndarray) -> np.ndarray:
    if form == "level":
        value = raw
    elif form == "change":
        value = last + raw
    else:
        value = np.expm1(np.log1p(np.clip(last, 0, None)) + raw)
    return np.clip(value, 0, None)


def _regressor(settings: dict, trees: int):
    from lightgbm import LGBMRegressor

    return LGBMRegressor(objective="l1", learning_rate=LEARNING_RATE, n_estimators=trees,
                         num_leaves=settings["num_leaves"],
                         min_child_samples=settings["min_child_samples"],
                         reg_lambda=settings["reg_lambda"], subsample=0.8, subsample_freq=1,
                         colsample_bytree=0.8, max_bin=255, random_state=0, n_jobs=1,
                         verbose=-1)


def _rows(table: pd.DataFrame, target: str, horizon: int, start, end) -> pd.Series:
    label = table[f"y__{target}__h{horizon}"]
    target_time = table["time"] + pd.Timedelta(hours=horizon)
    last = table[f"{target}_last"]
    return label.notna() & last.notna() & (target_time >= start) & (target_time < end)


def fit_predict(table: pd.DataFrame, inputs: Sequence[str], target: str, horizon: int,
                fit: tuple, validation: tuple, test: tuple, max_rows: int | None = 300_000,
                search_rows: int | None = 60_000, log=print) -> tuple[pd.DataFrame, dict]:
    """Choose the settings on the validation period, refit on fit + validation, forecast the
    test period's origins once. Returns the forecasts (location_id, origin, value) and a report.
    """
    import lightgbm

    warnings.filterwarnings("ignore", category=lightgbm.basic.LGBMDeprecationWarning)
    columns = _inputs_for(inputs, horizon)
    label = f"y__{target}__h{horizon}"
    last = f"{target}_last"
    rng = np.random.default_rng(0)

    def sample(mask: pd.Series, limit: int | None) -> np.ndarray:
        positions = np.flatnonzero(mask.to_numpy())
        if limit is not None and len(positions) > limit:
            positions = np.sort(rng.choice(positions, limit, replace=False))
        return positions

    # the search fits on a seeded sample (as the project's own search does), the refit on more
    fit_rows = sample(_rows(table, target, horizon, *fit), search_rows)
    valid_rows = np.flatnonzero(_rows(table, target, horizon, *validation).to_numpy())
    X_fit, X_val = table.iloc[fit_rows][columns], table.iloc[valid_rows][columns]
    y_fit, y_val = table[label].to_numpy()[fit_rows], table[label].to_numpy()[valid_rows]
    l_fit, l_val = table[last].to_numpy()[fit_rows], table[last].to_numpy()[valid_rows]
    tried, best = [], None
    started = time.perf_counter()
    for form in FORMS:
        for reg in REGULARISATION:
            model = _regressor(reg, MAX_TREES)
            model.fit(X_fit, _to_model(form, y_fit, l_fit),
                      eval_set=[(X_val, _to_model(form, y_val, l_val))], eval_metric="l1",
                      callbacks=[lightgbm.early_stopping(EARLY_STOP, verbose=False)])
            trees = int(model.best_iteration_ or MAX_TREES)
            error = float(np.mean(np.abs(
                _from_model(form, model.predict(X_val, num_iteration=trees), l_val) - y_val)))
            tried.append({"form": form, **reg, "trees": trees, "validation_mae": round(error, 4)})
            if best is None or error < best[0]:
                best = (error, form, reg, trees)
    _, form, reg, trees = best
    both = sample(_rows(table, target, horizon, fit[0], validation[1]), max_rows)
    # a few more trees for the larger refit (the validation period is added to the fit)
    final = _regressor(reg, max(10, int(round(trees * 1.1))))
    final.fit(table.iloc[both][columns],
              _to_model(form, table[label].to_numpy()[both], table[last].to_numpy()[both]))
    test_mask = (table["time"] + pd.Timedelta(hours=horizon) >= test[0]) & \
        (table["time"] + pd.Timedelta(hours=horizon) < test[1])
    part = table.loc[test_mask]
    value = _from_model(form, final.predict(part[columns]), part[last].to_numpy())
    value = np.where(np.isnan(part[last].to_numpy()), np.nan, value)
    report = {"target": target, "horizon": horizon, "chosen": {"form": form, **reg,
                                                                "trees": trees},
              "tried": tried, "fit_rows": int(len(fit_rows)), "refit_rows": int(len(both)),
              "seconds": round(time.perf_counter() - started, 1)}
    log(f"reference {target} h={horizon}: {report['chosen']} "
        f"(validation MAE {best[0]:.3f}, {report['seconds']} s)")
    forecasts = pd.DataFrame({"location_id": part["location_id"].to_numpy(),
                              "origin": part["time"].to_numpy(), "target": target,
                              "horizon": horizon, "reference": value,
                              "observed": part[label].to_numpy(),
                              "persistence": part[f"{target}_lag0"].to_numpy(),
                              "seasonal_naive": part[f"s__{target}__h{horizon}"].to_numpy()})
    return forecasts, report
