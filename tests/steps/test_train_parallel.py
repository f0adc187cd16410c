"""Train fits its models two at a time (threads, one OpenMP thread each): the same models as
one after the other (so the same on any number of cores), in the same order, and an error in
one fit is train's error."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from pipeline.steps.train import fit_models_at_once


def test_fits_run_at_once_and_come_back_in_key_order():
    running, most = [], [0]
    lock = threading.Lock()

    def fit(key):
        with lock:
            running.append(key)
            most[0] = max(most[0], len(running))
        time.sleep(0.2 if key == "a" else 0.05)
        with lock:
            running.remove(key)
        return key.upper()

    done = []
    fits = fit_models_at_once(["a", "b", "c", "d"], 2, lambda: done.append(1), fit)
    assert list(fits) == ["a", "b", "c", "d"]
    assert list(fits.values()) == ["A", "B", "C", "D"]
    assert most[0] == 2
    assert len(done) == 4
    assert list(fit_models_at_once(["a", "b"], 1, lambda: None, fit)) == ["a", "b"]


@pytest.mark.train
def test_the_models_are_those_fitted_one_after_the_other():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 8))
    targets = {h: X[:, 0] * h + np.sin(X[:, 1] * h) + rng.normal(0, 0.1, 3000)
               for h in (1, 6, 12, 24)}

    def fit(horizon):
        model = HistGradientBoostingRegressor(max_iter=30, random_state=0)
        return model.fit(X, targets[horizon]).predict(X)

    alone = fit_models_at_once(list(targets), 1, lambda: None, fit)
    together = fit_models_at_once(list(targets), 2, lambda: None, fit)
    for horizon in targets:
        np.testing.assert_array_equal(alone[horizon], together[horizon])


def test_an_error_in_one_fit_is_raised():
    def fit(key):
        if key == "b":
            raise ValueError("only 3 training rows for pm2_5 h=6")
        return key

    with pytest.raises(ValueError, match="only 3 training rows"):
        fit_models_at_once(["a", "b", "c"], 2, lambda: None, fit)
