"""The local monitoring stack without Docker: Debian binaries on 127.0.0.1.

Pushgateway, Prometheus, Alertmanager, node exporter and the alert webhook receiver, each a
supervisord program (:mod:`stack.supervisor`) with its state under ``.stack/``. The
committed configs in ``prometheus/`` are rendered into ``.stack/`` with the addresses of
:class:`~pipeline.settings.Ports` (equal to the committed ones on the default ports);
``fast=True`` (tests) also shortens scrape, evaluation and notification intervals.
"""

from __future__ import annotations

import copy
import logging
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports, StackSettings
from stack import runbook
from stack.supervisor import REPO, Program, Supervisor

log = logging.getLogger(__name__)

# Prometheus scrape job -> the Ports field it scrapes (the committed prometheus.yml's jobs)
SCRAPE_JOBS = {
    "pushgateway": "pushgateway",
    "prometheus": "prometheus",
    "alertmanager": "alertmanager",
    "node": "node_exporter",
    "serving": "serving",
    "serving_proxy": "serving_proxy_metrics",  # mtail over nginx's access log (serving_local)
    "airflow": "airflow",  # airflow-exporter on the Airflow API server (stack/airflow_local)
}
# program name -> (Ports field, readiness path, priority: start order, reverse stop order)
SERVICES = {
    "webhook": ("webhook", "/healthz", 100),
    "alertmanager": ("alertmanager", "/-/ready", 110),
    "pushgateway": ("pushgateway", "/-/ready", 120),
    "node_exporter": ("node_exporter", "/metrics", 130),
    "prometheus": ("prometheus", "/-/ready", 140),
}
BINARIES = {
    "prometheus": "prometheus",
    "pushgateway": "prometheus-pushgateway",
    "alertmanager": "prometheus-alertmanager",
    "node_exporter": "prometheus-node-exporter",
}
FAST_INTERVALS = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
FAST_ROUTE = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m"}


class StackError(RuntimeError):
    """The stack cannot start: a binary or config is missing, or a service did not come up."""


def config_dir(paths: ProjectPaths) -> Path:
    """``prometheus/`` of the project, else of the checkout this code lives in."""
    for candidate in (paths.root / "prometheus", REPO / "prometheus"):
        if (candidate / "prometheus.yml").is_file():
            return candidate
    raise StackError(f"no prometheus/prometheus.yml in {paths.root} or {REPO}")


@dataclass(frozen=True)
class StackLayout:
    """Where the stack keeps its runtime state (all under ``.stack/``)."""

    state: Path

    @property
    def prometheus_dir(self) -> Path:
        return self.state / "prometheus"

    @property
    def prometheus_config(self) -> Path:
        return self.prometheus_dir / "prometheus.yml"

    @property
    def prometheus_data(self) -> Path:
        return self.prometheus_dir / "data"

    @property
    def alertmanager_dir(self) -> Path:
        return self.state / "alertmanager"

    @property
    def alertmanager_config(self) -> Path:
        return self.alertmanager_dir / "alertmanager.yml"

    @property
    def pushgateway_persistence(self) -> Path:
        return self.state / "pushgateway" / "metrics.store"

    @property
    def alerts_log(self) -> Path:
        return self.state / "alerts.jsonl"


def _with_address(url: str, address: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=address))


def render_prometheus(source: dict, ports: Ports, fast: bool = False) -> dict:
    """The committed prometheus.yml with every address taken from ``ports``."""
    cfg = copy.deepcopy(source)
    for job in cfg.get("scrape_configs", []):
        name = job["job_name"]
        if name not in SCRAPE_JOBS:
            raise StackError(f"scrape job {name!r} has no port in stack/monitoring.py")
        for static in job.get("static_configs", []):
            static["targets"] = [ports.address(SCRAPE_JOBS[name]) for _ in static["targets"]]
        if fast:
            job.pop("scrape_interval", None)
            job.pop("scrape_timeout", None)
    for am in cfg.get("alerting", {}).get("alertmanagers", []):
        for static in am.get("static_configs", []):
            static["targets"] = [ports.address("alertmanager") for _ in static["targets"]]
    if fast:
        cfg.setdefault("global", {}).update(FAST_INTERVALS)
    return cfg


def render_alertmanager(source: dict, ports: Ports, fast: bool = False) -> dict:
    """The committed alertmanager.yml with the webhook receiver on ``ports.webhook``."""
    cfg = copy.deepcopy(source)
    for receiver in cfg.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = _with_address(hook["url"], ports.address("webhook"))
    if fast:
        todo = [cfg["route"]]
        while todo:
            route = todo.pop()
            for key, value in FAST_ROUTE.items():
                if key in route or route is cfg["route"]:
                    route[key] = value
            todo.extend(route.get("routes", []))
    return cfg


def write_configs(paths: ProjectPaths, ports: Ports, fast: bool = False,
                  configs: Path | None = None) -> StackLayout:
    configs = configs or config_dir(paths)
    layout = StackLayout(paths.stack_dir)
    layout.prometheus_dir.mkdir(parents=True, exist_ok=True)
    layout.alertmanager_dir.mkdir(parents=True, exist_ok=True)
    layout.pushgateway_persistence.parent.mkdir(parents=True, exist_ok=True)
    prom = render_prometheus(yaml.safe_load((configs / "prometheus.yml").read_text()), ports, fast)
    _write_yaml(layout.prometheus_config, prom)
    render_rules(configs / "rules", layout.prometheus_dir / "rules", runbook_base(ports))
    am = render_alertmanager(
        yaml.safe_load((configs / "alertmanager.yml").read_text()), ports, fast
    )
    _write_yaml(layout.alertmanager_config, am)
    return layout


def runbook_base(ports: Ports) -> str:
    """Where alerts' runbook links point: ``AQ_RUNBOOK_BASE_URL``, else the runbook page the
    local webhook receiver serves."""
    configured = StackSettings.from_env().runbook_base_url
    return configured.strip().rstrip("/") or ports.runbook_base()


def render_rules(source: Path, target: Path, base: str) -> None:
    """Copy the rule files with every runbook link on ``base`` (the committed files carry
    :data:`stack.runbook.DEFAULT_BASE`, right for the default ports)."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path in sorted(source.glob("*.yml")):
        text = path.read_text().replace(runbook.DEFAULT_BASE + "#", base + "#")
        (target / path.name).write_text(text)


def _write_yaml(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    header = "# rendered by stack/monitoring.py from prometheus/; edit those, not this copy\n"
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)


def binary(name: str) -> str:
    found = shutil.which(BINARIES[name])
    if not found:
        raise StackError(
            f"{BINARIES[name]} not found: run `make setup` (scripts/setup.sh installs the "
            "Debian packages prometheus, prometheus-pushgateway, prometheus-alertmanager, "
            "prometheus-node-exporter)"
        )
    return found


def commands(layout: StackLayout, ports: Ports, fast: bool = False) -> dict[str, list[str]]:
    """The command line of every service, bound to 127.0.0.1."""
    return {
        "webhook": [sys.executable, "-m", "stack.webhook", "--port", str(ports.webhook),
                    "--out", str(layout.alerts_log), "--runbook", str(runbook.RUNBOOK)],
        "alertmanager": [
            binary("alertmanager"),
            f"--config.file={layout.alertmanager_config}",
            f"--storage.path={layout.alertmanager_dir / 'data'}",
            f"--web.listen-address={ports.address('alertmanager')}",
            "--cluster.listen-address=",  # no gossip port on 0.0.0.0
        ],
        "pushgateway": [
            binary("pushgateway"),
            f"--web.listen-address={ports.address('pushgateway')}",
            f"--persistence.file={layout.pushgateway_persistence}",
            "--persistence.interval=1m",
        ],
        "node_exporter": [
            binary("node_exporter"),
            f"--web.listen-address={ports.address('node_exporter')}",
        ],
        "prometheus": [
            binary("prometheus"),
            f"--config.file={layout.prometheus_config}",
            f"--storage.tsdb.path={layout.prometheus_data}",
            f"--web.listen-address={ports.address('prometheus')}",
            "--storage.tsdb.retention.time=15d",
            *(["--rules.alert.resend-delay=1s"] if fast else []),
        ],
    }


def urls(ports: Ports) -> dict[str, str]:
    """What ``make run`` prints and exports (.stack/env)."""
    return {
        "AQ_PUSHGATEWAY_URL": ports.url("pushgateway"),
        "AQ_PROMETHEUS_URL": ports.url("prometheus"),
        "AQ_ALERTMANAGER_URL": ports.url("alertmanager"),
        "AQ_NODE_EXPORTER_URL": ports.url("node_exporter"),
        "AQ_ALERT_WEBHOOK_URL": ports.url("webhook"),
        "AQ_RUNBOOK_URL": runbook_base(ports),
    }


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def programs(layout: StackLayout, ports: Ports, fast: bool = False) -> list[Program]:
    """Every monitoring service as a supervised program (restarted when it dies)."""
    return [Program(name, cmd, directory=layout.state, priority=SERVICES[name][2])
            for name, cmd in commands(layout, ports, fast).items()]


def start(paths: ProjectPaths, ports: Ports, *, fast: bool = False,
          configs: Path | None = None, timeout: float = 60.0) -> dict[str, str]:
    """Start every monitoring service that is not already running; wait until each answers."""
    layout = write_configs(paths, ports, fast=fast, configs=configs)
    supervisor = Supervisor(paths.stack_dir)
    started = []
    try:
        for program in programs(layout, ports, fast):
            port_name, ready_path, _priority = SERVICES[program.name]
            if not supervisor.is_running(program.name):
                port = getattr(ports, port_name)
                if port_in_use(ports.host, port):  # else we would wait on someone else's server
                    raise StackError(
                        f"{program.name}: port {ports.host}:{port} is taken by another process; "
                        f"stop it or choose another port with {Ports.env_var(port_name)}=..."
                    )
                supervisor.start(program)
                started.append(program.name)
            supervisor.wait_for_http(ports.url(port_name) + ready_path, timeout=timeout,
                                     name=program.name)
    except Exception:
        for name in reversed(started):  # leave nothing half-started behind
            supervisor.stop(name)
        raise
    info = urls(ports)
    info["AQ_ALERTS_LOG"] = str(layout.alerts_log)
    return info
