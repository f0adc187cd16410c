"""`make loadtest`: a bounded Locust run with the SLO gate, its result pushed for Prometheus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from stack import serving_local
from tests.conftest import REPO
from tests.monitoring import gateway_value, running_pushgateway

pytestmark = [pytest.mark.stack, pytest.mark.service, pytest.mark.process]


def loadtest(server, tmp_path, **env: str) -> subprocess.CompletedProcess:
    out = tmp_path / "result.json"
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    proc = subprocess.run([sys.executable, "-m", "serving.loadtest", "--url", server.url,
                           "--users", "4", "--run-time", "6", "--out", str(out)],
                          capture_output=True, text=True, timeout=180, env=environment)
    proc.result = json.loads(out.read_text()) if out.exists() else None
    return proc


def front_door_lines(server) -> int:
    log = serving_local.proxy_config(server.project.paths, server.ports).access_log
    return log.read_bytes().count(b"\n")  # a path may hold U+2028: no str.splitlines


def test_a_short_run_passes_the_gate_and_reaches_the_pushgateway(server, tmp_path):
    with running_pushgateway(tmp_path / "state") as (_, pushgateway):
        time.sleep(1.1)  # nginx flushes its access log every second
        before = front_door_lines(server)
        proc = loadtest(server, tmp_path, AQ_PUSHGATEWAY_URL=pushgateway)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SLO gate passed" in proc.stdout
        result = proc.result
        assert result["requests"] > 100
        assert result["failures"] == 0  # bad payloads got the 4xx they deserve
        assert gateway_value(pushgateway, "aq_loadtest_slo_passed", job="aq_loadtest") == 1
        assert gateway_value(pushgateway, "aq_loadtest_requests",
                             job="aq_loadtest") == result["requests"]
        # through the front door: nginx logged every request (and the users' setup calls)
        time.sleep(1.1)
        assert front_door_lines(server) - before >= result["requests"]


def test_the_gate_fails_the_run_when_the_slo_is_broken(server, tmp_path):
    proc = loadtest(server, tmp_path, AQ_SERVING_SLO_LATENCY_S="0.0001")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SLO gate FAILED: p99" in proc.stdout


def test_more_users_than_one_address_may_send_at_once_are_refused(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "serving.loadtest", "--users", "5"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO),
                               "AQ_SERVING_CONN_PER_CLIENT": "4"})
    assert proc.returncode == 2
    assert "--users 1..4" in proc.stderr
    assert "AQ_SERVING_CONN_PER_CLIENT" in proc.stderr


def test_only_loopback_is_a_target(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "serving.loadtest", "--url",
                           "http://192.0.2.1:8000"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert "loopback only" in proc.stderr
