"""No train/serve skew: the online feature row equals the batch feature row for the same hour,
and the online forecast row equals the batch forecast row, field by field.

The batch row comes from the preprocess step's path (``features_from_raw`` over all stored
history) and the batch forecast path (``pipeline/forecaster.py`` with the scikit-learn
Pipelines, as ``predict`` runs it); the online row is what ``POST /v1/forecasts`` builds and
answers (the compiled trees) when the server's history ends the hour before and the request
carries that hour's observations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.context import Context
from pipeline.core.features import hourly_grids, window
from pipeline.forecaster import (
    ITEM_COLUMNS,
    Champion,
    InputLimits,
    Inputs,
    forecast,
    observation_ages,
)
from pipeline.inputs import features_from_raw, load_forecasts, load_validated_raw
from pipeline.io.registry import Registry
from pipeline.settings import ServingSettings, Settings
from serving.app import create_app
from serving.schemas import BatchForecastResponse, ForecastItem, OnDemandForecastResponse

EXACT = ("target", "horizon", "target_time", "aqi", "aqi_category", "hours_since_observation")


@pytest.fixture(scope="module")
def app_and_batch(served_project):
    ctx = Context.load(served_project.root, settings=Settings())
    app = create_app(ctx, ServingSettings(), start=False)
    state = app.extensions["aq_serving"]
    state.refresh()
    valid = load_validated_raw(ctx).valid
    champion = Champion.of(Registry(ctx.paths).load_champion())
    batch = features_from_raw(ctx, valid, champion.location_codes, with_labels=False,
                              spec=champion.spec)
    return app, state, valid, batch, load_forecasts(ctx), champion


def assert_same_items(online: list[dict], batch: list[dict]) -> None:
    """Field by field: the model's value, and everything derived from it, within 1e-9 (the
    compiled trees against scikit-learn); what is not derived from it, exactly."""
    assert [(i["target"], i["horizon"]) for i in online] == \
        [(i["target"], i["horizon"]) for i in batch]
    for got, expected in zip(online, batch, strict=True):
        assert set(got) == set(expected) == set(ITEM_COLUMNS)
        for field in ITEM_COLUMNS:
            if field in EXACT:
                assert got[field] == expected[field], (field, got, expected)
            else:
                assert expected[field] is not None, field  # every number is known here
                assert got[field] == pytest.approx(expected[field], rel=1e-9, abs=1e-9), \
                    (field, got, expected)


@pytest.mark.parametrize(("location", "hours_back"), [("berlin", 0), ("delhi", 0),
                                                      ("berlin", 5), ("delhi", 30)])
def test_online_row_and_forecast_equal_the_batch_ones_for_the_same_hour(app_and_batch, location,
                                                                         hours_back):
    app, state, valid, batch, runs, champion = app_and_batch
    stored = state.history[location]
    hour = int(stored.hours[-1]) - hours_back
    issue = pd.Timestamp(hour * 3600, unit="s", tz="UTC")
    # the server knows everything up to the hour before; the request brings the hour itself
    saved = dict(state.history)
    full = hourly_grids(valid[valid["location_id"] == location], runs)[0]  # with forecasts
    state.history = {**saved, location: window(full, hour - state.spec.warmup_hours, hour - 1)}
    observed = valid[(valid["location_id"] == location) & (valid["time"] == issue)]
    assert len(observed) == 1
    fields = {k: float(v) for k, v in observed.drop(columns=["location_id", "time"]).iloc[0]
              .items() if not np.isnan(v)}
    seen = []
    model = state.model
    original = model.predict
    model.predict = lambda rows: seen.append(np.array(rows, copy=True)) or original(rows)
    try:
        reply = app.test_client().post("/v1/forecasts", json={
            "location_id": location,
            "observations": [{"time": issue.isoformat(), **fields}]})
    finally:
        model.predict = original
        state.history = saved
    assert reply.status_code == 200, reply.get_json()
    body = OnDemandForecastResponse.model_validate(reply.get_json())
    assert body.issue_time == issue.to_pydatetime()
    row = batch[(batch["location_id"] == location) & (batch["time"] == issue)]
    expected = row[list(model.features)].to_numpy(dtype=np.float64)[0]
    np.testing.assert_array_equal(seen[0][0], expected)  # bit for bit, NaNs where batch has them
    # the target-hour weather forecasts are among the inputs, and known
    forecast_inputs = [i for i, name in enumerate(model.features) if name.startswith("fc_")]
    assert forecast_inputs
    assert not np.isnan(seen[0][0][forecast_inputs]).any()
    # the forecast rows: the batch path (scikit-learn) on the batch row of that hour
    known = valid[(valid["location_id"] == location) & (valid["time"] <= issue)]
    made = forecast(champion, Inputs.from_frame(champion, row, observation_ages(
        known, row, champion.targets)), limits=InputLimits.of(state.ctx.params.forecast))
    assert not made.withheld
    assert_same_items(reply.get_json()["forecasts"], made.items())
    assert body.completeness.features_present == pytest.approx(made.completeness[0], abs=1e-6)


@pytest.mark.parametrize("location", ["berlin", "delhi"])
def test_the_online_answer_carries_what_the_batch_row_carries(app_and_batch, location):
    """POST without observations (the newest stored hour) against GET, whose rows the predict
    step wrote to predictions/latest.parquet: the same items, field by field."""
    app, state, *_ = app_and_batch
    client = app.test_client()
    got = client.get(f"/v1/forecasts/{location}")
    posted = client.post("/v1/forecasts", json={"location_id": location})
    assert got.status_code == 200, got.get_json()
    assert posted.status_code == 200, posted.get_json()
    batch = BatchForecastResponse.model_validate(got.get_json())
    online = OnDemandForecastResponse.model_validate(posted.get_json())
    assert batch.issue_time == online.issue_time
    assert batch.model_version == online.model_version
    assert batch.input_completeness == pytest.approx(online.completeness.features_present,
                                                     abs=1e-6)
    for item in batch.forecasts + online.forecasts:
        assert isinstance(item, ForecastItem)
        assert item.lower <= item.value <= item.upper
        assert item.p_reach_moderate >= item.p_reach_unhealthy >= item.p_reach_hazardous
    assert_same_items(posted.get_json()["forecasts"], got.get_json()["forecasts"])
