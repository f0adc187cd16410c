"""The per-horizon search: the mean of the best candidates, kept only when it wins on the window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core.features import (
    FeatureSettings,
    FeatureSpec,
    build_features,
    feature_columns,
    label_column,
    location_codes,
)
from pipeline.core.models import MeanRegressor, fit_one
from pipeline.core.scoring import mae
from pipeline.core.selection import SearchSpace, fit_horizon, validation_window

pytestmark = pytest.mark.train

TZ = {"a": "UTC", "b": "Asia/Kolkata"}
BASE = {"loss": "squared_error", "form": "log_change", "max_iter": 20, "learning_rate": 0.1,
        "max_leaf_nodes": 15, "min_samples_leaf": 20, "l2_regularization": 0.0,
        "random_state": 0}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """Two locations, 80 days of an AR(1) series with a daily cycle (log space)."""
    rng = np.random.default_rng(3)
    hours = 24 * 80
    times = pd.date_range("2025-01-01", periods=hours, freq="h", tz="UTC")
    parts = []
    for loc, level in (("a", 2.5), ("b", 3.5)):
        noise = rng.normal(0, 0.25, hours)
        x = np.zeros(hours)
        for i in range(1, hours):
            x[i] = 0.9 * x[i - 1] + noise[i]
        cycle = 0.4 * np.sin(2 * np.pi * np.arange(hours) / 24)
        parts.append(pd.DataFrame({"location_id": loc, "time": times,
                                   "pm2_5": np.expm1(level + cycle + x),
                                   "temperature_2m": rng.normal(10, 5, hours)}))
    spec = FeatureSpec(("pm2_5",), (1, 6), FeatureSettings(weather=("temperature_2m",),
                                                            forecast_weather=()))
    return build_features(pd.concat(parts, ignore_index=True), spec, TZ, location_codes(TZ))


def search(table: pd.DataFrame, ensemble: int):
    features = [f for f in feature_columns(table) if table[f].notna().any()]
    cutoff = table["time"].max() - pd.Timedelta(days=10)
    vstart = validation_window(cutoff, table["time"].min(), 14)
    space = SearchSpace(losses=("squared_error", "absolute_error"), forms=("log_change",
                        "change"), regularisation=({"max_leaf_nodes": 7,
                                                    "min_samples_leaf": 200},),
                        max_fits=4, validation_days=14, ensemble=ensemble)
    return fit_horizon(table, features, "pm2_5", 6, BASE, space, cutoff, vstart), features


def test_the_mean_of_the_best_candidates_is_kept_only_when_it_wins_on_the_window(table):
    single, *_ = search(table, 1)
    fit, *_ = search(table, 3)
    tried = sorted(fit.report["tried"], key=lambda t: t["validation_mae"])
    assert "members" not in single.settings  # ensemble=1: the best candidate alone
    # on this series the mean of the three best candidates beats the best of them
    members = fit.settings["members"]
    assert [(m["loss"], m["form"], m["max_iter"]) for m in members] == \
        [(t["loss"], t["form"], t["best_iter"]) for t in tried[:3]]
    assert fit.report["validation"]["mae"] < tried[0]["validation_mae"]
    assert isinstance(fit.model, MeanRegressor)
    assert len(fit.model.members) == 3
    expected = np.mean([m.predict(table) for m in fit.model.members], axis=0)
    np.testing.assert_allclose(fit.model.predict(table), expected)
    # the calibration and the kept validation forecasts are those of what was chosen
    valid = fit.validation
    assert len(valid) == fit.report["validation"]["rows"]
    assert mae(valid["observed"], valid["predicted"]) == pytest.approx(
        fit.report["validation"]["mae"], abs=1e-4)


def test_settings_with_members_refit_as_a_mean_of_models(table):
    """What the backtest's refits and model_settings do with a chosen mean of models."""
    features = [f for f in feature_columns(table) if table[f].notna().any()]
    cutoff = table["time"].max() - pd.Timedelta(days=10)
    members = [{**BASE, "loss": "absolute_error"}, {**BASE, "form": "change", "max_iter": 5}]
    model = fit_one(table, features, "pm2_5", 1, {"members": members}, cutoff)
    assert isinstance(model, MeanRegressor)
    singles = [fit_one(table, features, "pm2_5", 1, m, cutoff) for m in members]
    rows = table[table[label_column("pm2_5", 1)].notna()].tail(100)
    np.testing.assert_allclose(model.predict(rows),
                               (singles[0].predict(rows) + singles[1].predict(rows)) / 2)
