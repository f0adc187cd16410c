"""Helpers for tests against the real monitoring binaries (free ports, 127.0.0.1, cleaned up)."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import monitoring
from stack.supervisor import REPO, Program, Supervisor
from tests.conftest import free_port

T = TypeVar("T")


def free_ports() -> Ports:
    """A Ports with a distinct free port for every service."""
    chosen: set[int] = set()
    values = {}
    for name in Ports().names():
        port = free_port()
        while port in chosen:
            port = free_port()
        chosen.add(port)
        values[name] = port
    return Ports(**values)


def wait_until(probe: Callable[[], T], timeout: float, interval: float = 0.5,
               what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
        time.sleep(interval)


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (local URL)
        return json.load(resp)


def prom_query(prometheus_url: str, expr: str) -> list[dict]:
    """Instant query; raises on a PromQL error."""
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = http_json(url)
    if body.get("status") != "success":
        raise AssertionError(f"query {expr!r} failed: {body}")
    return body["data"]["result"]


def gateway_samples(pushgateway_url: str, job: str | None = None) -> list:
    """Every sample the Pushgateway exposes (optionally of one pushed job)."""
    with urllib.request.urlopen(f"{pushgateway_url}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    return [s for s in samples if job is None or s.labels.get("job") == job]


def gateway_value(pushgateway_url: str, name: str, **labels: str) -> float | None:
    for sample in gateway_samples(pushgateway_url):
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


@contextmanager
def running_pushgateway(state_dir: Path) -> Iterator[tuple[Supervisor, str]]:
    """Only the Pushgateway binary, on a free port, supervised; stopped afterwards."""
    supervisor = Supervisor(state_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # no persistence: Debian's build otherwise loads and saves /var/lib/prometheus/
    # pushgateway.data, shared by every gateway on the machine (tests would see each other's)
    try:
        supervisor.start(Program("pushgateway", [monitoring.binary("pushgateway"),
                                                 f"--web.listen-address=127.0.0.1:{port}",
                                                 "--persistence.file="]))
        supervisor.wait_for_http(f"{url}/-/ready", timeout=30, name="pushgateway")
        yield supervisor, url
    finally:
        supervisor.stop_all()


@dataclass
class RunningStack:
    paths: ProjectPaths
    ports: Ports
    info: dict[str, str]
    supervisor: Supervisor

    @property
    def prometheus(self) -> str:
        return self.ports.url("prometheus")

    @property
    def pushgateway(self) -> str:
        return self.ports.url("pushgateway")

    @property
    def alerts_log(self) -> Path:
        return Path(self.info["AQ_ALERTS_LOG"])


@contextmanager
def running_stack(root: Path, fast: bool = True) -> Iterator[RunningStack]:
    """The whole local monitoring stack on free ports under ``root/.stack``; stopped after."""
    paths = ProjectPaths(root)
    ports = free_ports()
    supervisor = Supervisor(paths.stack_dir)
    try:
        info = monitoring.start(paths, ports, fast=fast, configs=REPO / "prometheus")
        yield RunningStack(paths, ports, info, supervisor)
    finally:
        supervisor.stop_all()
