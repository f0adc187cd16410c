"""A provider's rate limit shared through Redis: one budget for every process, not one each.

A real ``redis-server`` (started by the scale-out profile's own code) and the
replay server; the processes are real processes, as Celery's task processes are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.io.sources.base import SourceStats
from pipeline.io.sources.http import (
    HttpClient,
    RateLimitUnavailable,
    RetryPolicy,
    SharedRateLimiter,
)
from pipeline.settings import Ports, Settings
from stack import airflow_celery
from stack.supervisor import Supervisor
from tests.conftest import REPO, free_port
from tests.replay_server import ReplayServer, Reply, refusing_url

pytestmark = pytest.mark.service

PASSWORD = "test-password-0123456789"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server not installed: run `make setup`")
    state = tmp_path_factory.mktemp("redis-state")
    supervisor = Supervisor(state)
    ports = Ports(redis=free_port())
    airflow_celery.start_redis(supervisor, airflow_celery.Layout(state), ports, PASSWORD, 30)
    yield f"redis://:{PASSWORD}@127.0.0.1:{ports.redis}/1"
    supervisor.stop_all()


@pytest.fixture
def server():
    with ReplayServer() as srv:
        srv.route("/api", lambda seen: Reply(200, {"ok": True}))
        yield srv


REQUESTER = textwrap.dedent("""
    import sys
    from pipeline.io.sources.base import SourceStats
    from pipeline.io.sources.http import HttpClient, RetryPolicy
    url, rate, count, shared = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    client = HttpClient("quota_test", timeout_s=5, retry=RetryPolicy(max_retries=0),
                        requests_per_second=rate, shared_limit_url=shared or None)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    for _ in range(count):
        client.get_json(url, {}, SourceStats())
""")


def requests_from_two_processes(server, rate: float, count: int, shared: str) -> list[float]:
    """Start times (server clock) of ``count`` requests from each of two processes at once."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", REQUESTER, server.url("/api"), str(rate),
                               str(count), shared], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    try:
        for proc in procs:  # both imported and connected: start them together
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return sorted(r.at for r in server.requests_to("/api"))


def busiest_window(starts: list[float], window: float) -> int:
    return max(sum(1 for t in starts[i:] if t < start + window) for i, start in enumerate(starts))


def test_two_processes_share_one_budget_per_provider(server, redis_url):
    """5 requests/s for both together; without the shared limit each process has its own 5/s."""
    rate, count = 5.0, 10
    shared = requests_from_two_processes(server, rate, count, redis_url)
    assert len(shared) == 2 * count
    # each start its own slot, whoever sent it; 0.3 s for a process woken late on a busy machine
    assert shared[-1] - shared[0] >= (2 * count - 1) / rate - 0.3
    assert busiest_window(shared, 1.0) <= rate * 1.3 + 1

    server.requests.clear()
    apart = requests_from_two_processes(server, rate, count, "")
    assert busiest_window(apart, 1.0) > rate * 1.3 + 1  # what the shared limit prevents


def test_an_unreachable_limiter_sends_nothing_and_hides_its_password(server):
    with refusing_url() as url:
        limiter_url = url.replace("http://", f"redis://:{PASSWORD}@") + "1"
        client = HttpClient("quota_test", timeout_s=2, retry=RetryPolicy(max_retries=0),
                            requests_per_second=5, shared_limit_url=limiter_url)
        with pytest.raises(RateLimitUnavailable) as info:
            client.get_json(server.url("/api"), {}, SourceStats())
    message = str(info.value)
    assert "shared rate limit at redis://:***@127.0.0.1:" in message
    assert "no request sent" in message
    assert PASSWORD not in message
    assert info.value.retryable
    assert server.requests == []


def test_a_slot_further_away_than_max_wait_is_refused_without_reserving(redis_url):
    sleeps: list[float] = []
    limiter = SharedRateLimiter(redis_url, "slow_provider", rate=1.0, max_wait_s=1.5,
                                sleep=sleeps.append)
    limiter._redis.delete(limiter.key)
    assert limiter.acquire() == 0  # now
    assert limiter.acquire() == pytest.approx(1.0, abs=0.05)  # sleeping is faked: 1 s ahead
    with pytest.raises(RateLimitUnavailable, match="no free slot within 1.5 s"):
        limiter.acquire()  # 2 s ahead
    time.sleep(0.6)
    assert limiter.acquire() == pytest.approx(1.4, abs=0.1)  # the refusal reserved nothing
    assert len(sleeps) == 2


def test_the_environment_routes_live_sources_to_the_shared_limit(redis_url, monkeypatch):
    from pipeline.config import OpenMeteoSource as OpenMeteoConfig
    from pipeline.config import OpenWeatherMapSource as OwmConfig
    from pipeline.io.sources.open_meteo import OpenMeteoSource
    from pipeline.io.sources.openweathermap import OpenWeatherMapSource

    settings = Settings.from_env({"AQ_RATE_LIMIT_REDIS_URL": redis_url})
    assert PASSWORD not in repr(settings)
    open_meteo = OpenMeteoSource(OpenMeteoConfig(requests_per_second=3), settings)
    assert isinstance(open_meteo.client._limiter, SharedRateLimiter)
    assert open_meteo.client._limiter.key == "aq:rate:open_meteo"
    owm = OpenWeatherMapSource(OwmConfig(), settings)
    assert isinstance(owm.client._limiter, SharedRateLimiter)
    assert isinstance(owm.weather.client._limiter, SharedRateLimiter)
    unset = OpenMeteoSource(OpenMeteoConfig(requests_per_second=3), Settings.from_env({}))
    assert not isinstance(unset.client._limiter, SharedRateLimiter)
