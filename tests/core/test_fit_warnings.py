"""A fit cannot leave the process without warning filters (scikit-learn's threaded binning)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import warnings
import numpy as np, pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from pipeline.core.models import LogResidualRegressor

class RacingBinning(RegressorMixin, BaseEstimator):
    '''What two HistGradientBoosting binning threads can do: empty the live filter list.'''
    def fit(self, X, y):
        warnings.filters[:] = []
        return self
    def predict(self, X):
        return np.zeros(len(X))

frame = pd.DataFrame({"pm2_5_log": np.log1p(np.arange(1.0, 41.0)), "x": np.arange(40.0)})
select = ColumnTransformer([("f", "passthrough", ["pm2_5_log", "x"])], remainder="drop",
                           verbose_feature_names_out=False).set_output(transform="pandas")
model = Pipeline([("select", select), ("model", LogResidualRegressor(RacingBinning(),
                                                                      anchor="pm2_5_log"))])
model.fit(frame, np.arange(1.0, 41.0))
for _ in range(20):  # every later transform is a scikit-learn delayed call
    model.predict(frame)
print("filters", len(warnings.filters))
"""


@pytest.mark.process  # a fresh interpreter: its warning filters are what the test looks at
def test_after_a_fit_delayed_calls_do_not_warn():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "delayed" not in proc.stderr, proc.stderr[:2000]
    assert int(proc.stdout.split()[-1]) > 0
