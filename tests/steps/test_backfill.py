"""Backfill: provider-sized chunks in order, resumable from its state file, same store path."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.context import Context
from pipeline.errors import IngestError, PipelineError
from pipeline.ingestion import Ingestion
from pipeline.io.storage import raw_files, read_raw
from pipeline.settings import Settings
from pipeline.steps import backfill
from tests.conftest import make_project
from tests.replay_server import ReplayServer, Reply, open_meteo_handler

AQ, FORECAST, ARCHIVE = "/v1/air-quality", "/v1/forecast", "/v1/archive"
PREVIOUS = "/previous-runs/v1/forecast"
DELHI_LAT = "28.6139"


@pytest.fixture
def server():
    with ReplayServer() as srv:
        for path in (AQ, FORECAST, ARCHIVE, PREVIOUS):
            srv.route(path, open_meteo_handler())
        yield srv


def context(tmp_path, server, **open_meteo) -> Context:
    root = make_project(tmp_path / "project", {"source": {
        "kind": "open_meteo", "start": "2025-01-01", "end": "2025-01-11",
        "open_meteo": {"backoff_s": 0.01, "max_retries": 1, "requests_per_second": 100,
                       **open_meteo},
    }})
    settings = Settings(open_meteo_air_quality_url=server.url(AQ),
                        open_meteo_forecast_url=server.url(FORECAST),
                        open_meteo_archive_url=server.url(ARCHIVE),
                        open_meteo_previous_runs_url=server.url(PREVIOUS), http_timeout_s=2.0)
    return Context.load(root, settings=settings)


def dates(server, path):
    return [(r.query["start_date"], r.query["end_date"], r.query["latitude"])
            for r in server.requests_to(path)]


def test_backfill_runs_chunks_in_order_and_a_rerun_fetches_nothing(tmp_path, server, capsys):
    ctx = context(tmp_path, server)
    report = backfill.run(ctx, chunk_days=4, progress=True)

    assert report.ok
    assert (report.chunks_total, report.chunks_fetched, report.chunks_skipped) == (3, 3, 0)
    assert [d[:2] for d in dates(server, AQ)] == [
        ("2025-01-01", "2025-01-04"), ("2025-01-05", "2025-01-08"), ("2025-01-09", "2025-01-10")]
    stored = read_raw(ctx.paths.raw_dir, "open_meteo")
    assert stored.groupby("location_id").size().to_dict() == {"berlin": 240, "delhi": 240}
    assert not stored.duplicated(["location_id", "time"]).any()
    state = json.loads(report.state_path.read_text())
    assert report.state_path.parent == ctx.paths.ingest_state_dir
    assert [c["done"] for c in state["chunks"].values()] == [["berlin", "delhi"]] * 3
    assert "backfill open_meteo" in capsys.readouterr().err  # the progress bar

    files = {p: p.read_bytes() for p in raw_files(ctx.paths.raw_dir, "open_meteo")}
    requests_before = len(server.requests)
    again = backfill.run(ctx, chunk_days=4, progress=False)
    assert (again.chunks_fetched, again.chunks_skipped) == (0, 3)
    assert len(server.requests) == requests_before
    assert {p: p.read_bytes() for p in raw_files(ctx.paths.raw_dir, "open_meteo")} == files


def test_a_failed_chunk_is_reported_and_a_rerun_redoes_only_it(tmp_path, server):
    ctx = context(tmp_path, server, locations_per_request=1)
    good = open_meteo_handler()

    def flaky(seen):
        if seen.query["start_date"] == "2025-01-05" and seen.query["latitude"] == DELHI_LAT:
            return Reply(503, {"error": True, "reason": "upstream unavailable"})
        return good(seen)

    server.route(AQ, flaky)
    with pytest.raises(IngestError) as err:
        backfill.run(ctx, chunk_days=4, progress=False)
    text = str(err.value)
    assert "1 of 3 chunk(s) have failed locations" in text
    assert "20250105T00_20250109T00 delhi: open_meteo_air_quality: giving up after 2" in text
    assert "HTTP 503: upstream unavailable" in text
    assert "Run the same command again" in text
    stored = read_raw(ctx.paths.raw_dir, "open_meteo")
    assert stored.groupby("location_id").size().to_dict() == {"berlin": 240, "delhi": 144}
    state = json.loads(Ingestion(ctx).state_path(pd.Timestamp("2025-01-01", tz="UTC"),
                                           pd.Timestamp("2025-01-11", tz="UTC"), 4).read_text())
    middle = state["chunks"]["20250105T00_20250109T00"]
    assert middle["done"] == ["berlin"]
    assert "upstream unavailable" in middle["failed"]["delhi"]

    server.route(AQ, good)
    server.requests.clear()
    report = backfill.run(ctx, chunk_days=4, progress=False)
    assert report.ok
    assert (report.chunks_fetched, report.chunks_skipped) == (1, 2)
    assert dates(server, AQ) == [("2025-01-05", "2025-01-08", DELHI_LAT)]
    assert dates(server, ARCHIVE) == [("2025-01-05", "2025-01-08", DELHI_LAT)]
    stored = read_raw(ctx.paths.raw_dir, "open_meteo")
    assert stored.groupby("location_id").size().to_dict() == {"berlin": 240, "delhi": 240}


def test_chunks_never_exceed_the_provider_limit(tmp_path, server, caplog):
    ctx = context(tmp_path, server, max_days_per_request=3)
    report = backfill.run(ctx, chunk_days=30, progress=False)
    assert report.chunk_days == 3
    assert report.chunks_total == 4
    assert "exceeds the provider limit of 3 days" in caplog.text
    assert [d[:2] for d in dates(server, AQ)][-1] == ("2025-01-10", "2025-01-10")


def test_a_state_file_of_another_plan_or_corrupt_is_refused(tmp_path, server):
    ctx = context(tmp_path, server)
    path = Ingestion(ctx).state_path(pd.Timestamp("2025-01-01", tz="UTC"),
                               pd.Timestamp("2025-01-11", tz="UTC"), 5)
    path.parent.mkdir(parents=True)
    path.write_text('{"source": "open_meteo", "chunks": {')
    with pytest.raises(PipelineError, match="not valid JSON .* delete it"):
        backfill.run(ctx, chunk_days=5, progress=False)
    path.write_text(json.dumps({"source": "csv", "start": "x", "end": "y", "chunk_days": 5,
                                "chunks": {}}))
    with pytest.raises(PipelineError, match="belongs to another plan"):
        backfill.run(ctx, chunk_days=5, progress=False)
    assert server.requests == []


def test_cli_backfill(tmp_path, server, monkeypatch):
    ctx = context(tmp_path, server)
    monkeypatch.setenv("AQ_PROJECT_DIR", str(ctx.paths.root))
    monkeypatch.setenv("AQ_OPEN_METEO_AIR_QUALITY_URL", server.url(AQ))
    monkeypatch.setenv("AQ_OPEN_METEO_ARCHIVE_URL", server.url(ARCHIVE))
    monkeypatch.setenv("AQ_OPEN_METEO_PREVIOUS_RUNS_URL", server.url(PREVIOUS))
    monkeypatch.setenv("AQ_OPEN_METEO_FORECAST_URL", server.url(FORECAST))
    monkeypatch.delenv("AQ_PUSHGATEWAY_URL", raising=False)
    argv = ["backfill", "--start", "2025-01-01", "--end", "2025-01-05", "--chunk-days", "2",
            "--locations", "delhi"]
    assert main(argv) == 0
    stored = read_raw(ctx.paths.raw_dir, "open_meteo")
    assert stored.groupby("location_id").size().to_dict() == {"delhi": 96}
    assert len(server.requests_to(AQ)) == 2
