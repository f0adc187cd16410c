"""The shared HTTP client against a real local server: retries, deadlines, rate limit, secrets."""

from __future__ import annotations

import logging
import random
import time
from email.utils import formatdate

import pytest

from pipeline.io.sources.base import SourceStats
from pipeline.io.sources.http import (
    HttpClient,
    ProviderRejected,
    RateLimiter,
    ResponseFormatError,
    ResponseTooLarge,
    RetriesExhausted,
    RetryPolicy,
    redact,
    retry_after_seconds,
)
from tests.replay_server import ReplayServer, Reply, deep_json, refusing_url

KEY = "k3y-abcdef0123456789-secret"


@pytest.fixture
def server():
    with ReplayServer() as srv:
        yield srv


def client(*, retries=3, backoff=0.01, timeout=2.0, rps=1000.0, secrets=(), sleep=time.sleep,
           max_retry_after=30.0, provider="test_provider", max_bytes=1 << 20, total_s=60.0):
    return HttpClient(
        provider,
        timeout_s=timeout,
        retry=RetryPolicy(max_retries=retries, backoff_s=backoff, max_backoff_s=1.0,
                          max_retry_after_s=max_retry_after),
        requests_per_second=rps,
        secrets=secrets,
        sleep=sleep,
        rng=random.Random(0),
        limiter=RateLimiter(rps),
        max_bytes=max_bytes,
        total_s=total_s,
    )


def test_429_with_retry_after_is_waited_out_then_succeeds(server):
    server.script("/api", Reply(429, {"error": True, "reason": "Minutely API request limit "
                                      "exceeded. Please try again in one minute."},
                                headers={"Retry-After": "1"}),
                  Reply(200, {"value": 42}))
    stats = SourceStats()
    assert client().get_json(server.url("/api"), {}, stats) == {"value": 42}
    first, second = server.requests_to("/api")
    # the backoff is 0.01 s: only honouring Retry-After explains a 1 s gap
    assert second.at - first.at >= 0.95
    assert stats.responses == {("test_provider", "429"): 1, ("test_provider", "200"): 1}
    assert stats.requests == {"test_provider": 2}
    assert len(stats.latency_s["test_provider"]) == 2


def test_500_then_success(server):
    server.script("/api", Reply(500, "Internal Server Error"), Reply(200, [1, 2]))
    stats = SourceStats()
    assert client().get_json(server.url("/api"), {}, stats) == [1, 2]
    assert stats.responses[("test_provider", "500")] == 1


def test_5xx_every_time_gives_up_after_the_retries_with_the_reason(server):
    server.script("/api", *[Reply(503, {"reason": "backend overloaded"})] * 3)
    stats = SourceStats()
    with pytest.raises(RetriesExhausted, match=r"3 attempt\(s\): HTTP 503: backend overloaded"):
        client(retries=2).get_json(server.url("/api"), {}, stats)
    assert len(server.requests_to("/api")) == 3


def test_timeout_is_retried_and_bounded(server):
    server.script("/slow", Reply(200, {"late": True}, delay_s=1.0),
                  Reply(200, {"late": True}, delay_s=1.0))
    stats = SourceStats()
    started = time.monotonic()
    with pytest.raises(RetriesExhausted, match=r"within 0.5 s \(timeout\)"):
        client(retries=1, timeout=0.5).get_json(server.url("/slow"), {}, stats)
    assert time.monotonic() - started < 2.5
    assert stats.responses == {("test_provider", "timeout"): 2}


def test_timeout_then_success(server):
    server.script("/slow", Reply(200, {}, delay_s=1.0), Reply(200, {"ok": 1}))
    stats = SourceStats()
    assert client(timeout=0.5).get_json(server.url("/slow"), {}, stats) == {"ok": 1}
    assert stats.responses == {("test_provider", "timeout"): 1, ("test_provider", "200"): 1}


def test_4xx_is_not_retried_and_quotes_the_provider(server):
    reason = ("Cannot initialize WeatherVariable from invalid String value tempeture_2m for "
              "key hourly")
    server.script("/api", Reply(400, {"error": True, "reason": reason}))
    with pytest.raises(ProviderRejected, match="HTTP 400: Cannot initialize WeatherVariable") as e:
        client().get_json(server.url("/api"), {}, SourceStats())
    assert e.value.status == 400
    assert not e.value.is_auth
    assert len(server.requests_to("/api")) == 1


def test_bad_key_401_is_not_retried_and_never_shows_the_key(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.script("/air", Reply(401, {"cod": 401, "message": "Invalid API key. Please see "
                                      "https://openweathermap.org/faq#error401 for more info."}))
    with pytest.raises(ProviderRejected) as e:
        client(secrets=[KEY]).get_json(server.url("/air"), {"appid": KEY}, SourceStats())
    assert e.value.is_auth
    assert "Invalid API key" in str(e.value)
    assert KEY not in str(e.value)
    assert KEY not in repr(e.value)
    assert server.requests_to("/air")[0].query["appid"] == KEY  # it was really sent
    # urllib3 logs the request line, query string included, at DEBUG: it must be redacted
    assert "/air?appid=***" in caplog.text
    assert KEY not in caplog.text


def test_a_reason_echoing_the_key_is_redacted(server):
    server.script("/air", Reply(403, {"message": f"key {KEY} is blocked"}))
    with pytest.raises(ProviderRejected, match=r"key \*\*\* is blocked") as e:
        client(secrets=[KEY]).get_json(server.url("/air"), {"appid": KEY}, SourceStats())
    assert KEY not in str(e.value)


def test_connection_refused_is_retried_and_the_error_hides_the_key():
    stats = SourceStats()
    with refusing_url("/air") as url, pytest.raises(RetriesExhausted,
                                                    match="connection error") as e:
        client(retries=2, secrets=[KEY]).get_json(url, {"appid": KEY}, stats)
    assert KEY not in str(e.value)
    assert e.value.__suppress_context__ or e.value.__context__ is None
    assert stats.responses == {("test_provider", "connection_error"): 3}


def test_non_json_body_is_a_clear_error(server):
    server.script("/api", Reply(200, "<html><body>502 Bad Gateway</body></html>"))
    with pytest.raises(ResponseFormatError, match=r"body is not JSON .*text/plain.*<html>"):
        client().get_json(server.url("/api"), {}, SourceStats())


def test_truncated_json_is_a_clear_error(server):
    server.script("/api", Reply(200, b'{"hourly": {"time": [1, 2'))
    with pytest.raises(ResponseFormatError, match="not JSON"):
        client().get_json(server.url("/api"), {}, SourceStats())


def test_retry_after_beyond_the_limit_fails_at_once(server):
    server.script("/api", Reply(429, {"reason": "Daily API request limit exceeded"},
                                headers={"Retry-After": "3600"}))
    waits: list[float] = []
    with pytest.raises(RetriesExhausted, match="retry after 3600 s, more than the 30 s"):
        client(sleep=waits.append).get_json(server.url("/api"), {}, SourceStats())
    assert waits == []
    assert len(server.requests_to("/api")) == 1


def test_backoff_grows_exponentially_with_jitter_and_yields_to_retry_after(server):
    date = formatdate(time.time() + 3, usegmt=True)
    server.script("/api", Reply(500), Reply(502), Reply(429, headers={"Retry-After": date}),
                  Reply(503), Reply(200, {}))
    waits: list[float] = []
    client(retries=4, backoff=0.1, sleep=waits.append).get_json(server.url("/api"), {},
                                                                 SourceStats())
    assert len(waits) == 4
    assert 0.05 <= waits[0] <= 0.1  # base 0.1: half fixed, half jitter
    assert 0.1 <= waits[1] <= 0.2
    assert 1.0 <= waits[2] <= 3.01  # the HTTP-date Retry-After, not the 0.2-0.4 backoff
    assert 0.4 <= waits[3] <= 0.8


def test_retry_after_parsing():
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds(" 0 ") == 0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    now = 1_700_000_000
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now=now) == 0


def test_rate_limiter_spaces_requests(server):
    server.script("/api", *[Reply(200, {})] * 6)
    http = client(rps=5.0)
    started = time.monotonic()
    for _ in range(6):
        http.get_json(server.url("/api"), {}, SourceStats())
    elapsed = time.monotonic() - started
    # 5 slots of 200 ms after the first request: the client's own clock cannot run short of
    # them, however loaded the machine (an unlimited client took 0.22 s for all six here)
    assert elapsed >= 1.0 - 1e-3
    # and the server saw them spread: its clock sees each request when its thread runs, so
    # on a loaded machine the first can be seen late (0.237 s measured at load 15) and one
    # gap can shrink to nothing after a late one (0.0014 s): judged over the whole series
    starts = [r.at for r in server.requests_to("/api")]
    assert len(starts) == 6
    assert starts[-1] - starts[0] >= 0.7


def test_rate_limiter_slots_with_a_fake_clock():
    clock = [100.0]
    waits: list[float] = []

    def sleep(s):
        waits.append(s)
        clock[0] += s

    limiter = RateLimiter(4.0, clock=lambda: clock[0], sleep=sleep)
    for _ in range(4):
        limiter.acquire()
    assert waits == pytest.approx([0.25, 0.25, 0.25])


def test_redact_replaces_every_occurrence():
    assert redact(f"a {KEY} b {KEY}", extra=[KEY]) == "a *** b ***"
    assert redact("nothing secret", extra=[""]) == "nothing secret"


# ------------------------------------------------------------------ hostile servers


def test_a_trickled_body_is_cut_at_the_deadline(server):
    """One byte every 0.1 s of a 300-byte body: 30 s if only each socket read were timed."""
    body = b'{"pad": "' + b"x" * 280 + b'"}'
    server.script("/api", *[Reply(200, body, trickle_s=0.1)] * 2)
    stats = SourceStats()
    started = time.monotonic()
    with pytest.raises(RetriesExhausted, match=r"2 attempt\(s\).*within 1 s \(timeout\)"):
        client(retries=1, timeout=1.0).get_json(server.url("/api"), {}, stats)
    assert time.monotonic() - started < 3.0
    assert stats.responses == {("test_provider", "timeout"): 2}


def test_trickled_headers_are_cut_at_the_deadline(server):
    server.script("/api", Reply(200, {"ok": 1}, trickle_headers_s=0.1))
    started = time.monotonic()
    with pytest.raises(RetriesExhausted, match="timeout"):
        client(retries=0, timeout=1.0).get_json(server.url("/api"), {}, SourceStats())
    assert time.monotonic() - started < 2.0


def test_an_endless_body_stops_at_the_size_limit_without_retrying(server):
    server.script("/api", Reply(200, b"[1," * 1000, endless=True))
    stats = SourceStats()
    started = time.monotonic()
    with pytest.raises(ResponseTooLarge, match=r"more than 1048576 bytes.*AQ_HTTP_MAX_BYTES"):
        client(timeout=30.0).get_json(server.url("/api"), {}, stats)
    assert time.monotonic() - started < 5.0
    assert len(server.requests_to("/api")) == 1
    assert stats.responses == {("test_provider", "too_large"): 1}


def test_a_declared_length_above_the_limit_is_refused_before_reading(server):
    server.script("/api", Reply(200, b"[" + b"0," * 600_000 + b"0]"))
    with pytest.raises(ResponseTooLarge, match=r"Content-Length 1200003"):
        client().get_json(server.url("/api"), {}, SourceStats())


def test_deeply_nested_json_is_a_format_error_not_a_crash(server):
    server.script("/api", Reply(200, deep_json()))
    with pytest.raises(ResponseFormatError, match="nested too deeply"):
        client().get_json(server.url("/api"), {}, SourceStats())


def test_retries_stop_at_the_total_budget(server):
    server.script("/slow", *[Reply(200, {}, delay_s=2.0)] * 5)
    started = time.monotonic()
    with pytest.raises(RetriesExhausted, match=r"2.5 s budget.*AQ_HTTP_TOTAL_S"):
        client(retries=4, timeout=1.0, total_s=2.5).get_json(server.url("/slow"), {},
                                                            SourceStats())
    assert time.monotonic() - started < 3.5
    assert len(server.requests_to("/slow")) == 3  # 1 s + 1 s + the 0.5 s left


def test_the_connection_pool_still_works_after_a_cut_attempt(server):
    server.script("/api", Reply(200, {"late": 1}, trickle_s=0.5), Reply(200, {"ok": 2}))
    assert client(retries=1, timeout=0.5).get_json(server.url("/api"), {},
                                                   SourceStats()) == {"ok": 2}
