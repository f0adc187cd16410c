"""Warnings reach logs once per message at WARNING; loading a model inside Airflow warns nothing."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from pipeline import pywarnings


def test_a_warning_is_one_log_line_once_per_distinct_message(caplog, monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    pywarnings.relay_warnings_once()
    with caplog.at_level(logging.WARNING, logger=pywarnings.LOGGER), \
            warnings.catch_warnings():
        warnings.simplefilter("always")
        for _ in range(50):
            warnings.warn("the same thing again", UserWarning, stacklevel=1)
        warnings.warn("something else", FutureWarning, stacklevel=1)
    lines = [r.getMessage() for r in caplog.records if r.name == pywarnings.LOGGER]
    assert [line.split(" (")[0] for line in lines] == [
        "UserWarning: the same thing again", "FutureWarning: something else"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


LOAD_IN_AIRFLOW = """
import sys, warnings
import airflow.sdk, airflow.utils.timezone  # what a task process has loaded: Airflow's shims
{load}
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    {call}
print(len(caught))
"""


@pytest.mark.process  # two fresh interpreters, one with Airflow's task-process modules
def test_loading_a_model_in_an_airflow_process_raises_no_warning(tmp_path):
    """skops' import scans sys.modules for scipy's ufuncs; Airflow's deprecation shims warn on
    every lookup (~1,160 lines per task log). The registry imports skops without them."""
    import numpy as np
    import pandas as pd
    from sklearn.dummy import DummyRegressor

    from pipeline.io.registry import save_bundle

    model = DummyRegressor().fit(pd.DataFrame({"x": [0.0, 1.0]}), np.array([0.0, 1.0]))
    save_bundle(tmp_path / "b", {("pm2_5", 1): model}, {"features": ["x"]})
    ours = LOAD_IN_AIRFLOW.format(load="from pipeline.io.registry import load_bundle",
                                  call=f"load_bundle({str(tmp_path / 'b')!r})")
    plain = LOAD_IN_AIRFLOW.format(load="", call="import skops.io")
    counts = {}
    for name, code in (("registry", ours), ("plain skops", plain)):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=180, check=True)
        counts[name] = int(proc.stdout.strip().splitlines()[-1])
    assert counts["registry"] == 0
    assert counts["plain skops"] > 100  # what the registry avoids: the test can fail
