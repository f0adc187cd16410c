"""`python -m pipeline summary` says what is stored, what was refused and what the gate decided."""

from __future__ import annotations

import json

import pandas as pd

from pipeline.context import Context
from pipeline.io.catchup import CatchUpLog
from pipeline.io.storage import atomic_write_json
from pipeline.settings import Settings
from pipeline.steps import ingest, summary
from tests.conftest import write_params


def test_summary_shows_each_locations_data_gaps_quarantine_and_catch_up(project):
    write_params(project, {"source": {"kind": "synthetic", "start": "2025-01-01",
                                      "end": "2025-01-08",
                                      "synthetic": {"gap_rate": 0.0, "spike_rate": 0.0}}})
    ctx = Context.load(project, settings=Settings())
    ingest.run(ctx)
    # a station outage of 5 h in berlin's partition, and one refused delhi reading
    part = ctx.paths.raw_dir / "source=synthetic/location=berlin/month=2025-01.parquet"
    frame = pd.read_parquet(part)
    hole = (frame["time"] >= pd.Timestamp("2025-01-03T10:00", tz="UTC")) & (
        frame["time"] < pd.Timestamp("2025-01-03T15:00", tz="UTC"))
    frame[~hole].to_parquet(part)
    refused = ctx.paths.ingest_quarantine_dir / "source=synthetic" / "run.parquet"
    refused.parent.mkdir(parents=True)
    pd.DataFrame({"location_id": ["delhi"], "reason": ["pm2_5 above 1000"]}).to_parquet(refused)

    with CatchUpLog(ctx.paths.ingest_state_dir, "synthetic").attempt(
            {"delhi": pd.Timestamp("2026-12-07T09:00", tz="UTC")}):
        text = summary.run(ctx)

    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert rows["berlin"].split()[1:6] == ["2025-01-01", "00:00", "2025-01-07", "23:00", "5"]
    assert "5 h from 2025-01-03 10:00" in rows["berlin"]
    assert rows["berlin"].endswith("0  settled")
    assert rows["delhi"].split()[5] == "0"
    assert rows["delhi"].endswith("1  catching up to 2026-12-07 09:00")
    assert "champion: none yet" in text
    assert "settled" in summary.run(ctx).splitlines()[3]  # the catch-up ended


def test_summary_says_a_refused_promotion_and_why(project):
    ctx = Context.load(project, settings=Settings())
    atomic_write_json(ctx.paths.evaluation_report, {
        "version": "v2", "holdout_start": "2025-02-14T00:00:00+00:00",
        "scores": {"pm2_5": {"1": {"mae": 5.0, "persistence_mae": 6.0, "skill": 0.17,
                                   "aqi_category_accuracy": 0.9}}}})
    atomic_write_json(ctx.paths.promotion_report, {
        "candidate": "v2", "promoted": False, "champion": "v1", "decided_at":
        "2026-12-07T02:31:00+00:00", "refusals": [
            "holdout leaves out 1 location(s) the champion serves: delhi (data to None)"]})
    text = summary.run(ctx)
    assert "candidate v2 REFUSED by the promotion gate (2026-12-07T02:31)" in text
    assert "  refused: holdout leaves out 1 location(s) the champion serves: delhi" in text
    assert "data: nothing stored yet for source synthetic" in text
    assert json.loads(ctx.paths.promotion_report.read_text())["promoted"] is False
