"""Slow, lying, oversized and vanishing clients against nginx + gunicorn as `make run` starts them.

Every client here is a real socket on loopback. The "normal" client connects from 127.0.0.2 (any
127/8 address is loopback), the hostile ones from 127.0.0.1, so nginx's per-address limit
(``limit_conn``) treats them as different clients, as it would real ones. Bounded: at most 33
hostile sockets, a few seconds per case.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from pipeline.settings import ServingSettings
from stack import serving_local
from tests.monitoring import wait_until
from tests.serving.test_gunicorn import sample

pytestmark = [pytest.mark.stack, pytest.mark.service]

PROBLEM = "application/problem+json"
NORMAL_SOURCE = "127.0.0.2"
SETTINGS = ServingSettings()  # the defaults `make run` uses
BODY = json.dumps({"location_id": "berlin"}).encode()
HEADER_TRICKLE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"a" * 4000
BODY_TRICKLE_HEAD = (b"POST /v1/forecasts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n")


class Tricklers:
    """``count`` sockets sending one byte a second each; one cut by the server reconnects."""

    def __init__(self, port: int, count: int, kind: str, interval: float = 1.0) -> None:
        self.port, self.count, self.kind, self.interval = port, count, kind, interval
        self.reconnects = 0
        self.bytes_sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._socks: list[tuple[socket.socket, int]] = []

    def _open(self) -> tuple[socket.socket, int]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.settimeout(1)
        if self.kind == "body":
            sock.sendall(BODY_TRICKLE_HEAD)  # complete headers; the body never completes
        return sock, 0

    def _payload(self, position: int) -> bytes:
        if self.kind == "header":
            return HEADER_TRICKLE[position % len(HEADER_TRICKLE):][:1] or b"a"
        return b" "  # JSON whitespace: the body stays valid as far as it goes

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for i, (sock, position) in enumerate(self._socks):
                try:
                    sock.send(self._payload(position))
                    self._socks[i] = (sock, position + 1)
                    self.bytes_sent += 1
                except OSError:  # cut by the server (408, reset): a real attacker comes back
                    sock.close()
                    self._socks[i] = self._open()
                    self.reconnects += 1

    def __enter__(self) -> Tricklers:
        self._socks = [self._open() for _ in range(self.count)]
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock, _ in self._socks:
            sock.close()


def timed_requests(port: int, n: int, seconds: float = 0.0) -> list[float]:
    """On-demand forecasts on one keep-alive connection from 127.0.0.2, at least ``n`` and for
    at least ``seconds``; every one must be 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(NORMAL_SOURCE, 0))
    latencies: list[float] = []
    until = time.monotonic() + seconds
    try:
        while len(latencies) < n or time.monotonic() < until:
            start = time.perf_counter()
            conn.request("POST", "/v1/forecasts", body=BODY,
                         headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            latencies.append(time.perf_counter() - start)
            assert reply.status == 200
    finally:
        conn.close()
    return latencies


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def post_count(server) -> float:
    return sample(server.metrics(), "flask_http_request_duration_seconds_count",
                  endpoint="v1_forecasts_post", method="POST", status="200")


def proxy_log(server) -> list[dict]:
    """nginx's access log, one JSON object per line (flushed within a second)."""
    path = serving_local.proxy_config(server.project.paths, server.ports).access_log
    # lines end at b"\n" only: nginx escapes ASCII controls, but a path's other bytes pass as
    # sent (U+2028, U+0085 that str.splitlines splits at, bytes that are not UTF-8: the fuzz
    # tests send them); a last line still being written is left out
    return [json.loads(line.decode("utf-8", "replace"))
            for line in path.read_bytes().split(b"\n")[:-1] if line]


# each measurement lasts past the header deadline: header tricklers are cut and come back in it
WINDOW_S = SETTINGS.client_timeout_s + 2
ATTEMPTS = 3  # the machine is shared: a window of others' load is measured again, at most twice


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["header", "body"])
@pytest.mark.parametrize("count", [2, 8, 32])
def test_slow_clients_do_not_slow_a_normal_client(server, kind, count):
    """Clients trickling one byte a second wait in nginx: the workers keep answering.

    A normal client's p99 with the tricklers is compared with its p99 over equal windows just
    before and just after, without them: the larger of the two is the baseline, so a burst of
    other processes' load that starts or ends during the measurement (the suite runs beside)
    is on both sides, while a slowdown the tricklers caused would be in the loaded window only.
    Without nginx its requests would wait for the tricklers (seconds, see the last test); with
    it, only the machine's own noise remains, so a spoiled triple is measured again
    (``ATTEMPTS``); every request must be 200, and the app must count exactly them.
    """
    timed_requests(server.ports.serving, 20)  # both workers warm
    before = post_count(server)
    unloaded = timed_requests(server.ports.serving, 200, seconds=WINDOW_S)
    normal = len(unloaded)
    pairs = []
    for _ in range(ATTEMPTS):
        with Tricklers(server.ports.serving, count, kind) as tricklers:
            time.sleep(2.5)  # every trickler is in: headers (or body) half sent
            loaded = timed_requests(server.ports.serving, 200, seconds=WINDOW_S)
            sent = tricklers.bytes_sent
        after = timed_requests(server.ports.serving, 200, seconds=WINDOW_S)
        normal += len(loaded) + len(after)
        baseline = max(p99(unloaded), p99(after))
        pairs.append((baseline, p99(loaded)))
        print(f"{count} slow {kind} clients: p99 {p99(loaded) * 1000:.1f} ms over "
              f"{len(loaded)} requests (without them {p99(unloaded) * 1000:.1f} ms before, "
              f"{p99(after) * 1000:.1f} ms after), {tricklers.reconnects} reconnects")
        assert sent >= 2 * count  # they really trickled during the measurement
        if kind == "header":
            assert tricklers.reconnects >= count  # cut at the header deadline, and back
        else:
            assert tricklers.reconnects == 0  # a body that keeps coming is waited for, in nginx
        if p99(loaded) <= 2 * baseline:
            break
        unloaded = after  # the next triple's window before
    assert any(loaded <= 2 * baseline for baseline, loaded in pairs), (
        f"p99 with {count} slow {kind} clients vs without (ms): "
        + ", ".join(f"{1000 * b:.1f} vs {1000 * a:.1f}" for a, b in pairs))
    # the app counted exactly the normal requests: no trickler ever reached a worker
    assert post_count(server) == before + normal


def test_slow_headers_are_cut_at_the_header_deadline(server):
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.ports.serving), timeout=15) as sock:
        closed_after = None
        for byte in HEADER_TRICKLE[:30]:
            try:
                sock.send(bytes([byte]))
                sock.settimeout(1)
                if sock.recv(1024) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - start
                break
    assert closed_after is not None
    assert SETTINGS.client_timeout_s - 0.5 <= closed_after <= SETTINGS.client_timeout_s + 3


def test_a_lying_content_length_is_cut_within_seconds_and_never_reaches_a_worker(server):
    before = post_count(server)
    with socket.create_connection(("127.0.0.1", server.ports.serving), timeout=15) as sock:
        # declares 1000 bytes, sends 20, then waits as if the rest were on its way
        sock.sendall(b"POST /v1/forecasts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                     b'{"location_id": "be')
        start = time.monotonic()
        # meanwhile the API answers others as usual
        assert len(timed_requests(server.ports.serving, 20)) == 20
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:  # reset_timedout_connection: the socket is freed at once
            answer = b""
        waited = time.monotonic() - start
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    assert waited <= SETTINGS.client_timeout_s + 3
    assert post_count(server) == before + 20
    time.sleep(1.5)  # the access log is flushed every second
    assert any(e["status"] == 408 and e["method"] == "POST" and e["upstream_status"] == ""
               for e in proxy_log(server))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_20_mb_body_gets_a_413_problem_the_client_can_read(server, chunked):
    size = 20 * 1024 * 1024
    payload = b'{"location_id": "berlin", "pad": "' + b"x" * size + b'"}'
    chunks = [payload[i:i + (1 << 20)] for i in range(0, len(payload), 1 << 20)]
    data = iter(chunks) if chunked else payload
    before = post_count(server)
    start = time.monotonic()
    reply = requests.post(f"{server.url}/v1/forecasts", data=data, timeout=30,
                          headers={"Content-Type": "application/json"})  # no BrokenPipeError
    assert time.monotonic() - start < 10
    assert reply.status_code == 413
    assert reply.headers["Content-Type"] == PROBLEM
    problem = reply.json()
    assert problem == {"type": "about:blank", "title": "Request Entity Too Large", "status": 413,
                       "detail": f"the body is larger than {SETTINGS.max_body_bytes} bytes "
                                 "(AQ_SERVING_MAX_BODY_BYTES)",
                       "instance": "/v1/forecasts"}
    assert post_count(server) == before
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_connections_per_client_are_bounded_and_others_are_served(server):
    """The limit counts requests in progress per address: one more gets a readable 429."""
    limit = SETTINGS.conn_per_client
    with Tricklers(server.ports.serving, limit, "body", interval=0.5):
        time.sleep(1)  # all of them are reading their body
        reply = requests.post(f"{server.url}/v1/forecasts", data=BODY, timeout=10,
                              headers={"Content-Type": "application/json"})
        other = timed_requests(server.ports.serving, 5)  # another address is served
    assert reply.status_code == 429
    assert reply.headers["Content-Type"] == PROBLEM
    assert reply.headers["Retry-After"] == "1"
    assert reply.json()["status"] == 429
    assert str(limit) in reply.json()["detail"]
    assert len(other) == 5
    assert requests.post(f"{server.url}/v1/forecasts", data=BODY, timeout=10,
                         headers={"Content-Type": "application/json"}).status_code == 200


def booted_workers(server) -> int:
    return len(re.findall(r"Booting worker with pid", server.log()))


@contextmanager
def raw(port: int) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def test_a_client_that_vanishes_mid_response_leaves_the_workers_fine(server):
    boots, logged = booted_workers(server), len(server.log())
    for _ in range(10):
        with raw(server.ports.serving) as sock:
            sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(200).startswith(b"HTTP/1.1 200")  # the answer has begun
            # then the client is gone, unread bytes and all: close with a reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert len(timed_requests(server.ports.serving, 10)) == 10
    assert requests.get(f"{server.url}/openapi.json", timeout=5).status_code == 200
    assert booted_workers(server) == boots  # no worker died or was restarted
    assert "Traceback" not in server.log()[logged:]


def test_the_access_log_is_json_with_the_proxys_own_answers(server):
    requests.get(f"{server.url}/healthz", timeout=5)
    requests.post(f"{server.url}/v1/forecasts", data=b"x" * 70_000, timeout=10,
                  headers={"Content-Type": "application/json"})
    time.sleep(1.5)
    entries = proxy_log(server)
    assert all(set(e) >= {"time", "remote_addr", "method", "uri", "status", "request_time",
                          "upstream_status"} for e in entries)
    answered = [e for e in entries if e["uri"] == "/healthz"]
    assert answered[-1]["status"] == 200
    assert answered[-1]["upstream_status"] == "200"
    refused = [e for e in entries if e["status"] == 413]
    assert refused[-1]["upstream_status"] == ""  # nginx answered alone


def proxy_counts(server) -> dict[tuple[str, str, str], float]:
    """``aq_serving_proxy_responses_total`` by (api, origin, status), from mtail."""
    url = f"{server.ports.url('serving_proxy_metrics')}/metrics"
    text = requests.get(url, timeout=5).text
    return {(labels["api"], labels["origin"], labels["status"]): float(value)
            for labels, value in (
                (dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))), m.group(2))
                for m in re.finditer(r"^aq_serving_proxy_responses_total\{([^}]*)\} (\S+)$",
                                     text, flags=re.MULTILINE))}


def test_every_answer_of_the_front_door_is_counted_for_prometheus(server):
    """What the app never sees (nginx's refusals) is counted too, by origin and status."""
    time.sleep(1.5)  # earlier requests' log lines are flushed and counted
    before = proxy_counts(server)
    for _ in range(3):
        assert requests.post(f"{server.url}/v1/forecasts", data=BODY, timeout=10,
                             headers={"Content-Type": "application/json"}).status_code == 200
    assert requests.get(f"{server.url}/v1/nothing-here", timeout=10).status_code == 404
    assert requests.post(f"{server.url}/v1/forecasts", data=b"x" * 70_000, timeout=10,
                         headers={"Content-Type": "application/json"}).status_code == 413
    expected = {("v1", "app", "200"): 3, ("v1", "app", "404"): 1, ("v1", "proxy", "413"): 1}

    def delta() -> dict:
        after = proxy_counts(server)
        return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}

    wait_until(lambda: delta() == expected, timeout=10, what=f"mtail to count {expected}")


def test_without_the_proxy_two_slow_clients_block_gunicorn(server):
    """The failure this arrangement prevents: straight at gunicorn, two tricklers hold both
    workers and a normal request waits (here: past 2 s)."""
    path = str(serving_local.socket_path(server.project.paths))
    slow = []
    try:
        for _ in range(SETTINGS.workers):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            sock.sendall(BODY_TRICKLE_HEAD)
            slow.append(sock)
        time.sleep(0.5)
        normal = socket.socket(socket.AF_UNIX)
        normal.connect(path)
        normal.settimeout(2)
        normal.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        with pytest.raises(TimeoutError):
            normal.recv(100)
        normal.close()
    finally:
        for sock in slow:
            sock.close()  # the workers see the body end early and go back to work
    deadline = time.monotonic() + 10
    while requests.get(f"{server.url}/healthz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
