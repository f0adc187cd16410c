"""The ingest step end to end on live sources, with the local replay server as the internet.

For every fault a provider can throw: which rows are written, which error is
raised, and that data already on disk is unchanged where the call failed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr

from pipeline.__main__ import main
from pipeline.context import Context
from pipeline.errors import IngestError
from pipeline.ingestion import push_quality
from pipeline.io.metrics import StepRun
from pipeline.io.storage import raw_files, read_forecasts, read_raw
from pipeline.schema import VALUE_COLUMNS
from pipeline.settings import Settings
from pipeline.steps import ingest
from tests.conftest import make_project
from tests.replay_server import (
    ReplayServer,
    Reply,
    open_meteo_handler,
    open_meteo_location,
    owm_handler,
    truth,
)

AQ, FORECAST, ARCHIVE = "/v1/air-quality", "/v1/forecast", "/v1/archive"
PREVIOUS = "/previous-runs/v1/forecast"
OWM = "/data/2.5/air_pollution"
KEY = "owm-test-key-9b1e44d2c7"
START, END = "2025-01-01", "2025-01-03"  # old enough for the archive API
BERLIN_LAT, DELHI_LAT = 52.52, 28.6139


POLLUTANTS = {"pm2_5", "pm10", "nitrogen_dioxide", "ozone", "sulphur_dioxide", "carbon_monoxide"}


def scaled(var, lat, unix_s):
    """A second version of the provider's pollution data: any overwrite would show."""
    factor = 1.5 if var in POLLUTANTS else 1.0
    return round(truth(var, lat, unix_s) * factor, 3)


@pytest.fixture
def server():
    with ReplayServer() as srv:
        for path in (AQ, FORECAST, ARCHIVE, PREVIOUS):
            srv.route(path, open_meteo_handler())
        for path in (OWM, f"{OWM}/history", f"{OWM}/forecast"):
            srv.route(path, owm_handler(KEY))
        yield srv


def settings_for(srv: ReplayServer, key: str = KEY, timeout: float = 2.0) -> Settings:
    return Settings(
        open_meteo_air_quality_url=srv.url(AQ),
        open_meteo_forecast_url=srv.url(FORECAST),
        open_meteo_archive_url=srv.url(ARCHIVE),
        open_meteo_previous_runs_url=srv.url(PREVIOUS),
        openweathermap_url=srv.url(OWM),
        openweathermap_api_key=SecretStr(key),
        http_timeout_s=timeout,
    )


def live_project(tmp_path: Path, kind: str = "open_meteo", **open_meteo) -> Path:
    retry = {"backoff_s": 0.01, "max_retries": 2, "requests_per_second": 100}
    return make_project(tmp_path / "project", {"source": {
        "kind": kind, "start": START, "end": END,
        "open_meteo": {**retry, **open_meteo},
        "openweathermap": retry,
    }})


def snapshot(ctx: Context, source: str, location: str) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in raw_files(ctx.paths.raw_dir, source, [location])}


def involves_delhi(seen) -> bool:
    return str(DELHI_LAT) in seen.query.get("latitude", seen.query.get("lat", ""))


def test_ingest_writes_the_provider_rows_and_is_idempotent(tmp_path, server):
    ctx = Context.load(live_project(tmp_path), settings=settings_for(server))
    report = ingest.run(ctx)

    stored = read_raw(ctx.paths.raw_dir, "open_meteo")
    assert stored.groupby("location_id").size().to_dict() == {"berlin": 48, "delhi": 48}
    berlin = stored[stored["location_id"] == "berlin"]
    want = [truth("nitrogen_dioxide", BERLIN_LAT, int(t.timestamp())) for t in berlin["time"]]
    np.testing.assert_allclose(berlin["no2"], want)
    assert report.quality.rows_per_location == {"berlin": 48, "delhi": 48}
    assert report.quality.null_fraction == dict.fromkeys(VALUE_COLUMNS, 0.0)
    assert report.quality.freshness_lag_s["berlin"] > 0
    # and the weather forecasts for those hours (1 and 2 days ahead: previous-runs API)
    assert report.stats.responses == {("open_meteo_air_quality", "200"): 1,
                                      ("open_meteo_archive", "200"): 1,
                                      ("open_meteo_previous_runs", "200"): 2}
    forecasts = read_forecasts(ctx.paths.raw_dir, "open_meteo")
    assert forecasts.groupby("location_id").size().to_dict() == {"berlin": 96, "delhi": 96}
    assert report.forecast_rows == 192
    # the same window again: nothing rewritten (2 observation + 4 forecast partitions, the
    # forecasts of the first hours were issued in December)
    again = ingest.run(ctx)
    assert again.write.written == []
    assert len(again.write.unchanged) == len(report.write.written) == 6


def _fault(kind: str):
    """A reply that fails a request in the way ``kind`` names."""
    body = open_meteo_location(DELHI_LAT, 77.209, sorted(POLLUTANTS),
                               [1735689600 + 3600 * h for h in range(48)])
    if kind == "timeout":
        return Reply(200, body, delay_s=0.8), "timeout"
    if kind == "server_error":
        return Reply(500, "Internal Server Error"), "HTTP 500"
    if kind == "rate_limited":
        return Reply(429, {"error": True, "reason": "Minutely API request limit exceeded"},
                     headers={"Retry-After": "0"}), "HTTP 429: Minutely API request limit"
    if kind == "malformed_json":
        return Reply(200, b'{"latitude": 28.6, "hourly": {"time": [17356'), "not JSON"
    if kind == "lengths_differ":
        body["hourly"]["ozone"] = body["hourly"]["ozone"][:40]
        return Reply(200, body), "hourly.ozone has 40 values but hourly.time has 48"
    if kind == "unknown_unit":
        body["hourly_units"]["pm10"] = "mg/l"
        return Reply(200, body), "pm10: unknown unit 'mg/l'"
    if kind == "rejected":
        return Reply(400, {"error": True, "reason": "Latitude must be in range of -90 to 90°"}), \
            "HTTP 400: Latitude must be in range"
    if kind == "empty":
        body["hourly"] = {k: [] for k in body["hourly"]}
        return Reply(200, body), "returned no hours inside"
    raise AssertionError(kind)


FAULTS = ["timeout", "server_error", "rate_limited", "malformed_json", "lengths_differ",
          "unknown_unit", "rejected", "empty"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failing_location_keeps_its_stored_data_and_the_others_are_written(
        tmp_path, server, fault):
    root = live_project(tmp_path, locations_per_request=1)
    ctx = Context.load(root, settings=settings_for(server, timeout=0.4))
    ingest.run(ctx)  # good data on disk for both locations
    delhi_before = snapshot(ctx, "open_meteo", "delhi")
    berlin_before = snapshot(ctx, "open_meteo", "berlin")

    good = open_meteo_handler(scaled)
    reply, message = _fault(fault)
    server.route(AQ, lambda seen: reply if involves_delhi(seen) else good(seen))
    server.route(ARCHIVE, good)
    with pytest.raises(IngestError) as err:
        ingest.run(ctx)

    text = str(err.value)
    assert "1 of 2 location(s) failed" in text
    assert "delhi:" in text
    assert message in text
    assert "written: ['berlin']" in text
    assert snapshot(ctx, "open_meteo", "delhi") == delhi_before  # byte for byte
    after = snapshot(ctx, "open_meteo", "berlin")
    assert after.keys() == berlin_before.keys()
    assert after != berlin_before  # berlin took the new values
    berlin = read_raw(ctx.paths.raw_dir, "open_meteo", ["berlin"])
    want = [scaled("pm2_5", BERLIN_LAT, int(t.timestamp())) for t in berlin["time"]]
    np.testing.assert_allclose(berlin["pm2_5"], want)


def test_transient_429_and_500_are_retried_and_the_run_succeeds(tmp_path, server):
    server.script(AQ, Reply(429, {"error": True, "reason": "Too many requests"},
                            headers={"Retry-After": "1"}))
    server.script(ARCHIVE, Reply(502, "Bad Gateway"), Reply(500, "Internal Server Error"))
    ctx = Context.load(live_project(tmp_path), settings=settings_for(server))
    report = ingest.run(ctx)
    assert report.ok
    assert report.quality.rows_per_location == {"berlin": 48, "delhi": 48}
    aq = server.requests_to(AQ)
    assert aq[1].at - aq[0].at >= 0.95  # Retry-After honoured
    run = StepRun("ingest")
    push_quality(run, report.quality, report.stats)
    sample = run.registry.get_sample_value
    assert sample("aq_ingest_http_responses",
                  {"provider": "open_meteo_air_quality", "code": "429"}) == 1
    for code in ("502", "500", "200"):
        labels = {"provider": "open_meteo_archive", "code": code}
        assert sample("aq_ingest_http_responses", labels) == 1
    assert sample("aq_ingest_requests", {"provider": "open_meteo_archive"}) == 3
    assert sample("aq_ingest_request_latency_seconds", {"provider": "open_meteo_archive"}) > 0
    assert sample("aq_ingest_rows", {"location": "delhi"}) == 48
    assert sample("aq_ingest_location_success", {"location": "delhi"}) == 1
    assert sample("aq_ingest_null_fraction", {"variable": "pm2_5"}) == 0


def test_nulls_never_erase_stored_values(tmp_path, server):
    ctx = Context.load(live_project(tmp_path), settings=settings_for(server))
    ingest.run(ctx)
    before = read_raw(ctx.paths.raw_dir, "open_meteo")
    server.route(AQ, open_meteo_handler(lambda var, lat, t: None))  # the provider lost its data
    # an answer with every value null is no data: the locations fail (not "fresh"), disk unchanged
    with pytest.raises(IngestError, match="every value of .* is null: no data"):
        ingest.run(ctx)
    pd.testing.assert_frame_equal(read_raw(ctx.paths.raw_dir, "open_meteo"), before)


def test_openweathermap_bad_key_fails_all_keeps_data_and_hides_the_key(tmp_path, server, caplog):
    caplog.set_level(logging.DEBUG)
    root = live_project(tmp_path, kind="openweathermap")
    ctx = Context.load(root, settings=settings_for(server))
    ingest.run(ctx)
    before = {loc: snapshot(ctx, "openweathermap", loc) for loc in ("berlin", "delhi")}
    assert all(before.values())

    bad = Context.load(root, settings=settings_for(server, key="revoked-key-77aa01"))
    with pytest.raises(IngestError) as err:
        ingest.run(bad)
    assert "2 of 2 location(s) failed" in str(err.value)
    assert "HTTP 401: Invalid API key" in str(err.value)
    assert "revoked-key-77aa01" not in str(err.value)
    assert "revoked-key-77aa01" not in caplog.text
    assert KEY not in caplog.text
    assert {loc: snapshot(ctx, "openweathermap", loc) for loc in before} == before


def test_openweathermap_empty_list_keeps_data(tmp_path, server):
    root = live_project(tmp_path, kind="openweathermap")
    ctx = Context.load(root, settings=settings_for(server))
    ingest.run(ctx)
    delhi_before = snapshot(ctx, "openweathermap", "delhi")
    good = owm_handler(KEY)
    server.route(f"{OWM}/history", lambda seen: Reply(
        200, {"coord": {"lon": 77.209, "lat": DELHI_LAT}, "list": []}) if involves_delhi(seen)
        else good(seen))
    with pytest.raises(IngestError, match="delhi: openweathermap: empty 'list'"):
        ingest.run(ctx)
    assert snapshot(ctx, "openweathermap", "delhi") == delhi_before


def test_cli_exits_non_zero_when_a_location_failed(tmp_path, server, monkeypatch, capsys):
    root = live_project(tmp_path, locations_per_request=1)
    monkeypatch.setenv("AQ_PROJECT_DIR", str(root))
    monkeypatch.setenv("AQ_OPEN_METEO_AIR_QUALITY_URL", server.url(AQ))
    monkeypatch.setenv("AQ_OPEN_METEO_ARCHIVE_URL", server.url(ARCHIVE))
    monkeypatch.setenv("AQ_OPEN_METEO_PREVIOUS_RUNS_URL", server.url(PREVIOUS))
    monkeypatch.setenv("AQ_OPEN_METEO_FORECAST_URL", server.url(FORECAST))
    monkeypatch.delenv("AQ_PUSHGATEWAY_URL", raising=False)
    args = ["ingest", "--start", "2025-01-01", "--end", "2025-01-01T06:00"]
    assert main(args) == 0

    good = open_meteo_handler()
    server.route(AQ, lambda seen: Reply(503, {"error": True, "reason": "down for maintenance"})
                 if involves_delhi(seen) else good(seen))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "error: ingest: 1 of 2 location(s) failed" in err
    assert "HTTP 503: down for maintenance" in err


# ------------------------------------------------------------------ hostile providers, whole step


def cli_env(server: ReplayServer, project: Path, **extra: str) -> dict[str, str]:
    import os

    return {**os.environ, "AQ_PROJECT_DIR": str(project),
            "AQ_OPEN_METEO_AIR_QUALITY_URL": server.url(AQ),
            "AQ_OPEN_METEO_FORECAST_URL": server.url(FORECAST),
            "AQ_OPEN_METEO_ARCHIVE_URL": server.url(ARCHIVE),
            "AQ_OPEN_METEO_PREVIOUS_RUNS_URL": server.url(PREVIOUS),
            "AQ_OPENWEATHERMAP_URL": server.url(OWM), **extra}


RUN_AND_MEASURE = (  # VmHWM: the step's own peak (ru_maxrss keeps the pytest parent's size)
    "import sys; from pipeline.__main__ import main; rc = main(sys.argv[1:]); "
    "peak = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')); "
    "print('MAXRSS_KB', peak, file=sys.stderr); "
    "sys.exit(rc)")


@pytest.mark.process
def test_an_endless_body_fails_its_location_within_bounds_and_keeps_the_data(tmp_path, server):
    """The old client grew to 2.6 GB in 3.3 s on an endless body, then died of MemoryError."""
    import subprocess
    import sys
    import time

    project = live_project(tmp_path)
    ctx = Context.load(project, settings=settings_for(server))
    ingest.run(ctx)
    before = read_raw(ctx.paths.raw_dir, "open_meteo")
    good = open_meteo_handler()
    server.route(AQ, lambda seen: Reply(200, b"[1.5," * 4096, endless=True)
                 if involves_delhi(seen) else good(seen))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", RUN_AND_MEASURE, "ingest"], cwd=project, capture_output=True,
        text=True, timeout=120, check=False,
        env=cli_env(server, project, AQ_HTTP_TIMEOUT_S="10", AQ_HTTP_MAX_BYTES=str(8 << 20)))
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "delhi: open_meteo: response too large: more than 8388608 bytes" in proc.stderr
    assert elapsed < 60
    max_rss_mb = int(proc.stderr.split("MAXRSS_KB ")[1].split()[0]) / 1024
    assert max_rss_mb < 800, max_rss_mb
    pd.testing.assert_frame_equal(read_raw(ctx.paths.raw_dir, "open_meteo"), before)


@pytest.mark.process
def test_no_run_output_or_file_shows_the_key(tmp_path, server):
    """Grep everything an OpenWeatherMap run writes (stdout, stderr, every file) for the key."""
    import subprocess
    import sys

    key = "e5c0ffee-owm-key-0123456789abcdef"
    server.route(f"{OWM}/history", owm_handler(key))
    echo = f"/history?lat={BERLIN_LAT}&appid={key}"
    server.script(f"{OWM}/history",
                  Reply(200, {"coord": echo, "list": []}),  # parse error built outside HTTP
                  Reply(200, "x" * 90 + f"appid={key} unknown"),  # a snippet cut through it
                  Reply(500, {"message": f"upstream rejected appid={key}"}))
    project = live_project(tmp_path, kind="openweathermap")
    outputs = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "-v", "ingest"], cwd=project, capture_output=True,
            text=True, timeout=120, check=False,
            env=cli_env(server, project, OPENWEATHERMAP_API_KEY=key))
        outputs.append(proc.stdout + proc.stderr)
    assert "error: ingest:" in outputs[0]
    assert "appid=***" in " ".join(outputs)  # the echoes were there, and redacted
    assert [out for out in outputs if key in out or key[:12] in out] == []
    leaking = [p for p in project.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaking == []
