"""The hourly schedule's catch-up: every location continues where it stopped, no hole left."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from pipeline.context import Context
from pipeline.errors import IngestError, PipelineError
from pipeline.ingestion import Ingestion
from pipeline.io.storage import newest_observation, read_raw
from pipeline.settings import Settings
from tests.conftest import make_project
from tests.replay_server import ReplayServer, open_meteo_handler, truth

AQ, FORECAST, ARCHIVE = "/v1/air-quality", "/v1/forecast", "/v1/archive"
PREVIOUS = "/previous-runs/v1/forecast"


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def stored_hours(ctx: Context, location: str) -> pd.DatetimeIndex:
    frame = read_raw(ctx.paths.raw_dir, ctx.params.source.kind, [location])
    return pd.DatetimeIndex(frame["time"])


def assert_no_hole(hours: pd.DatetimeIndex, start: pd.Timestamp, end: pd.Timestamp) -> None:
    expected = pd.date_range(start, end, freq="h", inclusive="left", tz="UTC")
    missing = expected.difference(hours)
    assert missing.empty, f"{len(missing)} hour(s) missing, first {missing[:3].tolist()}"


@pytest.fixture
def history(tmp_path) -> Context:
    """Two locations stored up to 2025-01-03 (what `make run` leaves, in small)."""
    root = make_project(tmp_path / "project", {
        "source": {"kind": "synthetic", "start": "2025-01-01", "end": "2025-01-03",
                   "synthetic": {"gap_rate": 0.0, "spike_rate": 0.0}},
    })
    ctx = Context.load(root, settings=Settings())
    Ingestion(ctx).window()
    return ctx


def test_the_first_scheduled_run_fills_the_whole_gap_since_the_history(history):
    """`make run` stored until 2025-01-03; the schedule starts ten days later, for one hour."""
    end = ts("2025-01-13T10:00")
    report = Ingestion(history).catch_up(end, interval_start=end - pd.Timedelta(hours=1))
    assert report.start == ts("2025-01-03T00:00")
    assert report.chunks_fetched >= 1
    for location in ("berlin", "delhi"):
        assert_no_hole(stored_hours(history, location), ts("2025-01-01"), end)
        newest = newest_observation(history.paths.raw_dir, "synthetic", location)
        assert newest == end - pd.Timedelta(hours=1)
    # the next hourly run fetches exactly its own hour
    again = Ingestion(history).catch_up(end + pd.Timedelta(hours=1), interval_start=end)
    assert (again.start, again.end) == (end, end + pd.Timedelta(hours=1))
    assert again.rows_valid == 2


def test_a_long_gap_is_closed_oldest_first_over_successive_runs(history, caplog):
    end = ts("2025-01-08T00:00")
    first = Ingestion(history).catch_up(end, max_days=2)
    assert (first.start, first.end) == (ts("2025-01-03"), ts("2025-01-05"))
    assert any("follow in the next runs" in note for note in first.notes)
    assert "limited to 2 day(s) per run" in caplog.text
    assert_no_hole(stored_hours(history, "berlin"), ts("2025-01-01"), ts("2025-01-05"))
    Ingestion(history).catch_up(end, max_days=2)
    last = Ingestion(history).catch_up(end, max_days=2)
    assert last.end == end
    assert not last.notes
    assert_no_hole(stored_hours(history, "delhi"), ts("2025-01-01"), end)


def test_a_location_the_provider_has_no_data_for_does_not_hold_the_schedule_back(tmp_path):
    """Delhi's station goes silent (the provider answers with nulls); Berlin keeps flowing."""
    silent_from = ts("2025-01-02").timestamp()

    def values(variable, latitude, unix_s):
        if abs(latitude - 28.6139) < 1e-3 and unix_s >= silent_from:
            return None
        return truth(variable, latitude, unix_s)

    with ReplayServer() as server:
        for path in (AQ, FORECAST, ARCHIVE, PREVIOUS):
            server.route(path, open_meteo_handler(values))
        root = make_project(tmp_path / "project", {"source": {
            "kind": "open_meteo", "start": "2025-01-01", "end": "2025-01-02",
            "open_meteo": {"backoff_s": 0.01, "max_retries": 0, "requests_per_second": 100},
        }})
        settings = Settings(open_meteo_air_quality_url=server.url(AQ),
                            open_meteo_forecast_url=server.url(FORECAST),
                            open_meteo_archive_url=server.url(ARCHIVE),
                            open_meteo_previous_runs_url=server.url(PREVIOUS),
                            http_timeout_s=5.0)
        ctx = Context.load(root, settings=settings)
        Ingestion(ctx).window()
        # Delhi fails the run (its station said nothing), Berlin is stored
        with pytest.raises(IngestError, match="delhi: .*every value .* is null: no data"):
            Ingestion(ctx).catch_up(ts("2025-01-04"))
        cursor = json.loads((ctx.paths.ingest_state_dir / "catchup_open_meteo.json").read_text())
        assert cursor["through"] == {"berlin": "2025-01-04T00:00:00+00:00",
                                     "delhi": "2025-01-04T00:00:00+00:00"}
        # the next run starts after the answered window, not back where Delhi went silent
        server.requests.clear()
        with pytest.raises(IngestError, match="delhi"):
            Ingestion(ctx).catch_up(ts("2025-01-05"))
        assert {r.query["start_date"] for r in server.requests} == {"2025-01-04"}
        assert_no_hole(stored_hours(ctx, "berlin"), ts("2025-01-01"), ts("2025-01-05"))


def test_a_damaged_cursor_names_the_file_and_the_way_out(history):
    path = history.paths.ingest_state_dir / "catchup_synthetic.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"through": {"berlin": ')
    with pytest.raises(PipelineError, match=r"catch-up cursor .*catchup_synthetic.json is not "
                                            r"valid JSON.*delete it"):
        Ingestion(history).catch_up(ts("2025-01-04"))


def test_a_backfill_of_a_past_hour_fetches_that_hour_only(history):
    """An Airflow backfill of an old interval re-ingests that interval, not the whole store."""
    Ingestion(history).catch_up(ts("2025-01-05"))
    report = Ingestion(history).catch_up(ts("2025-01-02T06:00"),
                                         interval_start=ts("2025-01-02T05:00"))
    assert (report.start, report.end) == (ts("2025-01-02T05:00"), ts("2025-01-02T06:00"))
    assert not report.changed  # the same rows again: nothing new stored


def test_a_run_still_catching_up_is_behind_not_silent(history):
    """The quality gate fails a silent location, not one the bounded catch-up has yet to reach."""
    from pipeline.ingestion import check_run

    end = ts("2025-01-08T00:00")
    report = Ingestion(history).catch_up(end, max_days=2)
    assert sorted(report.catching_up) == ["berlin", "delhi"]
    result = check_run(history, [report.to_json()], end - pd.Timedelta(hours=1), end,
                       max_silent_hours=6, max_quarantine_share=0.5)
    assert result["catching_up"] == ["berlin", "delhi"]
    # caught up, then nothing for half a day: silent, a failure again
    done = Ingestion(history).catch_up(end, max_days=10)
    assert done.catching_up == []
    later = end + pd.Timedelta(hours=13)
    with pytest.raises(IngestError, match=r"no stored observation for \['berlin', 'delhi'\]"):
        check_run(history, [done.to_json()], later - pd.Timedelta(hours=1), later,
                  max_silent_hours=6, max_quarantine_share=0.5)


# ------------------------------------------------------------------ chunks and worker processes


def test_chunks_end_at_month_starts_so_each_partition_is_written_once():
    from pipeline.io.sources.base import month_chunks

    assert month_chunks(ts("2025-01-15T05:00"), ts("2025-03-10"), 31) == [
        (ts("2025-01-15T05:00"), ts("2025-02-01")), (ts("2025-02-01"), ts("2025-03-01")),
        (ts("2025-03-01"), ts("2025-03-10"))]
    # shorter than a month: never across a month start
    assert month_chunks(ts("2025-01-25"), ts("2025-02-12"), 7) == [
        (ts("2025-01-25"), ts("2025-02-01")), (ts("2025-02-01"), ts("2025-02-08")),
        (ts("2025-02-08"), ts("2025-02-12"))]
    # longer than a month: whole months, as few requests as before
    assert month_chunks(ts("2024-03-01"), ts("2024-11-01"), 366) == [
        (ts("2024-03-01"), ts("2024-11-01"))]
    assert month_chunks(ts("2023-03-05"), ts("2025-11-01"), 366) == [
        (ts("2023-03-05"), ts("2024-03-01")), (ts("2024-03-01"), ts("2025-03-01")),
        (ts("2025-03-01"), ts("2025-11-01"))]


def _many_places(n: int) -> list[dict]:
    zones = ["Europe/Berlin", "Asia/Kolkata", "America/New_York", "UTC"]
    return [{"id": f"site_{i:02d}", "name": f"Site {i}", "latitude": -30.0 + 5.0 * i,
             "longitude": -150.0 + 19.0 * i, "timezone": zones[i % len(zones)]}
            for i in range(n)]


def _store(root) -> dict:
    data = root / "data"
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*.parquet"))}


@pytest.mark.process
def test_worker_processes_store_exactly_what_one_process_stores(tmp_path, caplog):
    """The synthetic source spread over two processes: the same partitions byte for byte, the
    same quarantine files and the same figures (gaps and spikes on, across a month start)."""
    params = {"locations": _many_places(16),
              "source": {"kind": "synthetic", "start": "2025-01-30", "end": "2025-02-02",
                         "synthetic": {"gap_rate": 0.05, "spike_rate": 0.05}}}
    reports, stores = {}, {}
    for processes in (1, 2):
        root = make_project(tmp_path / f"p{processes}", params)
        ctx = Context.load(root, settings=Settings(processes=processes))
        caplog.clear()
        with caplog.at_level("INFO", logger="pipeline.ingestion"):
            reports[processes] = Ingestion(ctx).window()
        used = "2 worker processes" in caplog.text
        assert used == (processes == 2)
        stores[processes] = _store(root)
    assert stores[2] == stores[1]
    assert any(name.startswith("quarantine/") for name in stores[1])  # the spikes were refused
    one, two = reports[1], reports[2]
    # the same figures (freshness is measured against the clock, a moment apart)
    assert dataclasses.replace(two.quality, freshness_lag_s={}) == dataclasses.replace(
        one.quality, freshness_lag_s={})
    assert two.quality.freshness_lag_s.keys() == one.quality.freshness_lag_s.keys()
    assert (two.rows_valid, two.rows_quarantined, two.forecast_rows) == (
        one.rows_valid, one.rows_quarantined, one.forecast_rows)
    assert (two.write.rows_new, len(two.write.written)) == (one.write.rows_new,
                                                            len(one.write.written))


def test_a_live_provider_is_never_spread_over_processes(tmp_path, caplog):
    """Rate limits hold per process unless shared in Redis: live sources keep one process."""
    params = {"locations": _many_places(16),
              "source": {"kind": "open_meteo", "start": "2025-01-31", "end": "2025-02-02"}}
    with ReplayServer() as server:
        for path in (AQ, FORECAST, ARCHIVE, PREVIOUS):
            server.route(path, open_meteo_handler())
        settings = Settings(processes=4, open_meteo_air_quality_url=server.url(AQ),
                            open_meteo_forecast_url=server.url(FORECAST),
                            open_meteo_archive_url=server.url(ARCHIVE),
                            open_meteo_previous_runs_url=server.url(PREVIOUS))
        ctx = Context.load(make_project(tmp_path / "p", params), settings=settings)
        with caplog.at_level("INFO", logger="pipeline.ingestion"):
            report = Ingestion(ctx).window()
    assert "worker processes" not in caplog.text
    # and its window is not cut at the month start: every request counts against its quota
    assert report.chunks_fetched == 1


def _ingest_in(root: str, queue) -> None:
    try:
        ctx = Context.load(root, settings=Settings(processes=2))
        queue.put(("ok", Ingestion(ctx).window().rows_valid))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(exc)))


@pytest.mark.process
def test_ingestion_in_a_daemonic_task_process_runs_inline(tmp_path):
    """A Celery task process is daemonic and may not start workers: the synthetic ingestion
    of many locations runs in it, inline, and stores everything."""
    import multiprocessing

    params = {"locations": _many_places(16),
              "source": {"kind": "synthetic", "start": "2025-01-30", "end": "2025-02-02"}}
    root = make_project(tmp_path / "p", params)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_ingest_in, args=(str(root), queue), daemon=True)
    child.start()
    status, value = queue.get(timeout=120)
    child.join(timeout=30)
    assert status == "ok", value
    assert value > 0
    assert len(read_raw(root / "data" / "raw", "synthetic")) == value
