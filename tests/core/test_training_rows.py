"""model.max_train_rows: big training sets are fitted on a seeded sample, never past the holdout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import ConfigError, ModelConfig, parse_params
from pipeline.core.features import label_column
from pipeline.core.models import Split, fit_models, training_rows
from tests.conftest import REPO


def hourly_frame(hours: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    time = pd.date_range("2025-01-01", periods=hours, freq="h", tz="UTC")
    level = 20 + 5 * rng.standard_normal(hours).cumsum() / np.sqrt(hours)
    frame = pd.DataFrame({"location_id": "a", "time": time, "pm2_5": level.clip(1)})
    frame["pm2_5_log"] = np.log1p(frame["pm2_5"])
    frame["x"] = rng.standard_normal(hours)
    frame[label_column("pm2_5", 1)] = frame["pm2_5"].shift(-1)
    return frame


def test_no_cap_or_few_rows_keeps_every_eligible_row():
    eligible = pd.Series([True, False, True, True, False])
    assert training_rows(eligible, None, 0).tolist() == [0, 2, 3]
    assert training_rows(eligible, 3, 0).tolist() == [0, 2, 3]


def test_cap_gives_a_seeded_sample_of_eligible_rows_in_time_order():
    eligible = pd.Series(np.arange(10_000) % 3 != 0)
    rows = training_rows(eligible, 1000, seed=7)
    assert len(rows) == 1000
    assert len(set(rows.tolist())) == 1000
    assert eligible.to_numpy()[rows].all()
    assert (np.diff(rows) > 0).all()
    assert rows.tolist() == training_rows(eligible, 1000, seed=7).tolist()
    assert rows.tolist() != training_rows(eligible, 1000, seed=8).tolist()
    # spread over the whole period, not the first or last rows only
    assert rows.min() < 1000
    assert rows.max() > 9000


@pytest.mark.train
def test_capped_models_train_only_on_rows_before_the_holdout(monkeypatch):
    frame = hourly_frame(3000)
    split = Split(frame["time"].iloc[2500])
    seen = {}

    def spy(self, X, y):
        seen["times"] = frame.loc[X.index, "time"]
        seen["rows"] = len(X)
        return original(self, X, y)

    from pipeline.core import models

    original = models.LogResidualRegressor.fit
    monkeypatch.setattr(models.LogResidualRegressor, "fit", spy)
    config = ModelConfig(max_iter=5, max_train_rows=1000)
    fitted = fit_models(frame, ["pm2_5_log", "x"], ["pm2_5"], [1], config.base_settings(), split,
                        max_rows=config.max_train_rows, seed=config.random_state)
    assert set(fitted) == {("pm2_5", 1)}
    assert seen["rows"] == 1000
    assert (seen["times"] + pd.Timedelta(hours=1) < split.holdout_start).all()


def test_max_train_rows_is_validated():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["max_train_rows"] = 10
    with pytest.raises(ConfigError, match="model.max_train_rows"):
        parse_params(raw)
    raw["model"]["max_train_rows"] = None
    assert parse_params(raw).model.max_train_rows is None


@pytest.mark.train
@pytest.mark.parametrize(("locations", "categorical"), [(255, True), (500, False)])
def test_more_locations_than_boosting_takes_categories_still_train(locations, categorical):
    """HistGradientBoosting takes at most 255 categories: up to that the location code is a
    category, above it (500 places) an ordinary number, and the model trains either way."""
    from pipeline.core.models import fit_one

    frame = hourly_frame(6 * locations)
    frame["location_code"] = np.arange(len(frame)) % locations
    model = fit_one(frame, ["pm2_5_log", "x", "location_code"], "pm2_5", 1,
                    {**ModelConfig(max_iter=5).base_settings(), "form": "log_change"},
                    frame["time"].max(), None, 0)
    boosting = model.named_steps["model"].estimator_
    flags = boosting.is_categorical_  # None: no categorical input
    assert (flags is not None and bool(flags[2])) is categorical
    assert np.isfinite(model.predict(frame)).all()
