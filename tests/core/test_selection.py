"""The per-horizon settings search (pipeline/core/selection.py) with several real fits.

On the frozen project's feature table (2 locations, 2 months; tests/fixtures/frozen): the
search tries up to ``max_fits`` distinct candidates, one dimension at a time from the best so
far, keeps the one with the lowest MAE on the validation window, takes the iteration count of
its best staged prediction, never learns from the window it scores on, and refits the choice on
every training label.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.core.features import label_column
from pipeline.core.models import eligible_rows, fit_one, staged_predictions
from pipeline.core.scoring import mae
from pipeline.core.selection import SearchSpace, fit_horizon, validation_window
from pipeline.io.feature_store import FeatureStore
from pipeline.paths import ProjectPaths
from tests.fixtures.make_frozen import FROZEN, MANIFEST

pytestmark = pytest.mark.train

TARGET, HORIZON = "pm2_5", 6
BASE = {"loss": "squared_error", "form": "log_change", "max_iter": 30, "learning_rate": 0.2,
        "max_leaf_nodes": 15, "min_samples_leaf": 20, "random_state": 0}
SPACE = SearchSpace(losses=("squared_error", "absolute_error"),
                    forms=("log_change", "log_level", "change"),
                    regularisation=({"max_leaf_nodes": 4}, {"l2_regularization": 5.0}),
                    max_fits=6, validation_days=7)
SCORES = ("validation_mae", "best_iter")


@pytest.fixture(scope="module")
def table():
    """(frame, features, label cutoff, validation start) as the train step gives them."""
    paths = ProjectPaths(FROZEN)
    champion = json.loads((FROZEN / MANIFEST).read_text())["champion"]
    meta = json.loads((paths.registry_dir / champion / "metadata.json").read_text())
    frame = FeatureStore(paths.features).read().sort_values(["time", "location_id"])
    frame = frame.reset_index(drop=True)
    cutoff = pd.Timestamp(meta["train_end"])
    start = validation_window(cutoff, frame["time"].min(), SPACE.validation_days)
    return frame, meta["features"], cutoff, start


@pytest.fixture(scope="module")
def searched(table):
    frame, features, cutoff, start = table
    return fit_horizon(frame, features, TARGET, HORIZON, BASE, SPACE, cutoff, start)


def settings_of(candidate: dict) -> dict:
    return {k: v for k, v in candidate.items() if k not in SCORES}


def test_the_search_spends_its_budget_on_distinct_candidates(searched):
    tried = searched.report["tried"]
    assert len(tried) == SPACE.max_fits
    assert len({json.dumps(settings_of(t), sort_keys=True) for t in tried}) == len(tried)
    assert settings_of(tried[0]) == BASE  # the base settings are the first candidate


def test_each_dimension_starts_from_the_best_so_far_in_order(searched):
    """Greedy: a candidate is the best earlier candidate with one option of one dimension."""
    tried = searched.report["tried"]
    options = [[{"loss": x} for x in SPACE.losses], [{"form": x} for x in SPACE.forms],
               [dict(x) for x in SPACE.regularisation]]
    best, dimension = tried[0], 0
    for candidate in tried[1:]:
        changed = {k: v for k, v in settings_of(candidate).items()
                   if settings_of(best).get(k) != v}
        found = [d for d, opts in enumerate(options) if any(
            all(candidate.get(k) == v for k, v in o.items()) and set(changed) <= set(o)
            for o in opts)]
        assert found, f"{candidate} is not {best} with one option"
        assert max(found) >= dimension, "the dimensions are searched in order"
        dimension = max(found)
        if candidate["validation_mae"] < best["validation_mae"]:
            best = candidate
    assert settings_of(best) | {"max_iter": best["best_iter"]} == searched.settings


def test_the_choice_is_the_lowest_validation_mae_with_its_best_iteration(searched):
    tried = searched.report["tried"]
    best = min(tried, key=lambda t: t["validation_mae"])
    assert searched.report["validation"]["mae"] == pytest.approx(best["validation_mae"],
                                                                 abs=1e-4)
    assert searched.settings["max_iter"] == best["best_iter"]
    assert 10 <= best["best_iter"] <= BASE["max_iter"]
    # the search had a real choice: the candidates do not all score the same
    assert len({t["validation_mae"] for t in tried}) > 1


def test_the_validation_mae_is_of_a_model_that_never_saw_the_window(searched, table):
    """Refit the chosen candidate on labels before the window, score its staged prediction
    at the chosen iteration on the window: the search's own figure."""
    frame, features, cutoff, start = table
    chosen = searched.settings
    model = fit_one(frame, features, TARGET, HORIZON, {**chosen, "max_iter": BASE["max_iter"]},
                    start)
    valid = (frame["time"] >= start) & eligible_rows(frame, TARGET, HORIZON, cutoff)
    part = frame.loc[valid]
    staged = list(staged_predictions(model, part))
    observed = part[label_column(TARGET, HORIZON)].to_numpy(dtype=float)
    assert mae(observed, staged[chosen["max_iter"] - 1]) == pytest.approx(
        searched.report["validation"]["mae"], abs=1e-4)
    assert searched.report["validation"]["rows"] == int(valid.sum()) > 100


def test_the_chosen_settings_are_refit_on_every_training_label(searched, table):
    frame, features, cutoff, _ = table
    model = searched.model
    assert model[-1].estimator_.n_iter_ == searched.settings["max_iter"]
    eligible = eligible_rows(frame, TARGET, HORIZON, cutoff)
    refit = fit_one(frame, features, TARGET, HORIZON, searched.settings, cutoff)
    np.testing.assert_array_equal(model.predict(frame.loc[eligible]),
                                  refit.predict(frame.loc[eligible]))
    assert searched.calibration is not None  # the interval calibrated on the window's errors


def test_a_smaller_budget_stops_the_search_and_one_fit_is_no_search(table):
    frame, features, cutoff, start = table
    three = fit_horizon(frame, features, TARGET, HORIZON, BASE,
                        SearchSpace(**{**SPACE.__dict__, "max_fits": 3}), cutoff, start)
    first, second, third = three.report["tried"]
    assert settings_of(second) == {**BASE, "loss": "absolute_error"}
    best = min((first, second), key=lambda t: t["validation_mae"])
    assert settings_of(third) == {**settings_of(best), "form": "log_level"}
    one = fit_horizon(frame, features, TARGET, HORIZON, BASE,
                      SearchSpace(**{**SPACE.__dict__, "max_fits": 1}), cutoff, start)
    assert len(one.report["tried"]) == 1
    assert one.settings == BASE  # the base settings as given, iterations included
