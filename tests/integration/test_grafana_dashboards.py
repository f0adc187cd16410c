"""Every Grafana panel's query runs against the live Prometheus of the observed pipeline run."""

from __future__ import annotations

import pytest

from tests.grafana_doc import queries

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.mark.parametrize(("dashboard", "panel", "expr"), queries(),
                         ids=[f"{d}:{p}:{i}" for i, (d, p, _) in enumerate(queries())])
def test_panel_query_returns_data(observed_run, dashboard, panel, expr):
    result = observed_run.query(expr)  # raises on a PromQL error
    assert result, f"{dashboard} / {panel}: {expr!r} returned no data"
