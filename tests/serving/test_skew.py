"""No train/serve skew: the online feature row equals the batch feature row for the same hour.

The batch row comes from the preprocess step's path (``features_from_raw`` over all stored
history); the online row is what ``POST /v1/forecasts`` feeds the model when the server's
history ends the hour before and the request carries that hour's observations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.context import Context
from pipeline.core.features import hourly_grids, window
from pipeline.settings import ServingSettings, Settings
from pipeline.steps.common import features_from_raw, load_forecasts, load_validated_raw
from serving.app import create_app


@pytest.fixture(scope="module")
def app_and_batch(served_project):
    ctx = Context.load(served_project.root, settings=Settings())
    app = create_app(ctx, ServingSettings(), start=False)
    state = app.extensions["aq_serving"]
    state.refresh()
    valid = load_validated_raw(ctx).valid
    batch = features_from_raw(ctx, valid, state.model.metadata["location_codes"],
                              with_labels=False)
    return app, state, valid, batch.set_index(["location_id", "time"]), load_forecasts(ctx)


@pytest.mark.parametrize(("location", "hours_back"), [("berlin", 0), ("delhi", 0),
                                                      ("berlin", 5), ("delhi", 30)])
def test_online_row_equals_batch_row_for_the_same_hour(app_and_batch, location, hours_back):
    app, state, valid, batch, runs = app_and_batch
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
    assert reply.get_json()["issue_time"] == issue.isoformat()
    expected = batch.loc[(location, issue), model.features].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(seen[0], expected)  # bit for bit, NaNs where the batch has them
    # the target-hour weather forecasts are among the inputs, and known
    forecast = [i for i, name in enumerate(model.features) if name.startswith("fc_")]
    assert forecast
    assert not np.isnan(seen[0][forecast]).any()
