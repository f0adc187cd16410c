"""The serving app for ``make run``: nginx on 127.0.0.1 in front of gunicorn on a unix socket.

Three supervisord programs: ``serving`` runs ``gunicorn -c serving/gunicorn_conf.py --bind
unix:.stack/serving/app.sock serving.wsgi:app`` with the project's environment
(``AQ_PROJECT_DIR``, ``OMP_NUM_THREADS=1``, the ports) after emptying the prometheus
multiprocess directory (``.stack/serving/metrics``); ``serving_proxy`` runs ``python -m
serving.proxy run``, which renders nginx's config into ``.stack/serving/proxy/`` and becomes
nginx on the public address ``AQ_SERVING_PORT``; ``serving_proxy_metrics`` runs mtail over
nginx's JSON access log (``aq_serving_proxy_responses_total`` on
``AQ_SERVING_PROXY_METRICS_PORT``). ``.stack/serving/`` is mode 0700: nothing but nginx (same
user) reaches the socket. ``start`` waits for ``/healthz`` through nginx; supervisord restarts
any of them that dies. The app itself becomes ready (``/readyz``)
once a champion exists: it reloads the champion, the batch forecasts and the history when
they change, so starting it before the first ``dvc repro`` is fine. ``python -m
stack.serving_local ready`` waits for readiness and prints the URL with a ready-to-paste
``curl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from serving import proxy
from stack.supervisor import REPO, Program, ServiceError, Supervisor

NAME = "serving"  # gunicorn
PROXY = "serving_proxy"  # nginx on the public address
PROXY_METRICS = "serving_proxy_metrics"  # mtail: nginx's access log as Prometheus counters
PRIORITY = 400  # started after the monitoring stack; stopped first (it reads what others write)
PROXY_PRIORITY = 410  # stopped before gunicorn: no request reaches a stopping worker
PROXY_METRICS_PRIORITY = 420


def serving_dir(paths: ProjectPaths) -> Path:
    return paths.stack_dir / "serving"


def metrics_dir(paths: ProjectPaths) -> Path:
    return serving_dir(paths) / "metrics"


def socket_path(paths: ProjectPaths) -> Path:
    """gunicorn's unix socket: only nginx connects to it."""
    return serving_dir(paths) / "app.sock"


def proxy_config(paths: ProjectPaths, ports: Ports) -> proxy.ProxyConfig:
    return proxy.ProxyConfig.for_serving(ports.host, ports.serving, socket_path(paths),
                                         serving_dir(paths) / "proxy")


def gunicorn_bin() -> str:
    candidate = Path(sys.executable).parent / "gunicorn"
    if not candidate.exists():
        raise ServiceError(f"{candidate} not found: install the serving extra (`make setup`)")
    return str(candidate)


def command(paths: ProjectPaths) -> list[str]:
    return [gunicorn_bin(), "-c", str(REPO / "serving" / "gunicorn_conf.py"),
            "--bind", f"unix:{socket_path(paths)}", "serving.wsgi:app"]


def proxy_command(paths: ProjectPaths) -> list[str]:
    """Renders nginx's config for the environment's port and settings, then execs nginx."""
    return [sys.executable, "-m", "serving.proxy", "run", "--socket", str(socket_path(paths)),
            "--prefix", str(serving_dir(paths) / "proxy")]


def service_env(paths: ProjectPaths, ports: Ports) -> dict[str, str]:
    """What gunicorn gets on top of what every program inherits (the checkout on PYTHONPATH)."""
    return {
        **ports.env(),
        "AQ_PROJECT_DIR": str(paths.root),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir(paths)),
        "OMP_NUM_THREADS": "1",
    }


def program(paths: ProjectPaths, ports: Ports) -> Program:
    # gunicorn's graceful_timeout is 20 s: give the workers that, then KILL the group
    return Program(NAME, command(paths), env=service_env(paths, ports), directory=paths.root,
                   priority=PRIORITY, stopwaitsecs=30)


def proxy_program(paths: ProjectPaths, ports: Ports) -> Program:
    # QUIT: nginx's graceful stop (answers in progress finish); after 20 s the group is killed
    return Program(PROXY, proxy_command(paths), env=ports.env(), directory=paths.root,
                   priority=PROXY_PRIORITY, stopsignal="QUIT", stopwaitsecs=20)


def proxy_metrics_program(paths: ProjectPaths, ports: Ports) -> Program:
    command = proxy.metrics_command(proxy_config(paths, ports), ports.host,
                                    ports.serving_proxy_metrics)
    return Program(PROXY_METRICS, command, directory=paths.root,
                   priority=PROXY_METRICS_PRIORITY)


def urls(ports: Ports) -> dict[str, str]:
    base = ports.url("serving")
    return {"serving API": base, "serving docs": f"{base}/docs", "AQ_SERVING_URL": base}


def start(paths: ProjectPaths, ports: Ports, timeout: float = 60.0) -> dict[str, str]:
    """Start gunicorn, nginx and mtail unless they run; wait until ``/healthz`` answers
    through nginx and mtail serves its metrics."""
    from stack.monitoring import port_in_use

    supervisor = Supervisor(paths.stack_dir)
    try:
        config = proxy_config(paths, ports)
        proxy.render(config)  # before anything starts: a bad socket path or setting fails here
        proxy.binary()
        programs = [program(paths, ports), proxy_program(paths, ports),
                    proxy_metrics_program(paths, ports)]
    except (proxy.ProxyError, ValueError) as exc:
        raise ServiceError(f"serving: {exc}") from exc
    for name, port in ((PROXY, "serving"), (PROXY_METRICS, "serving_proxy_metrics")):
        if not supervisor.is_running(name) and port_in_use(ports.host, getattr(ports, port)):
            raise ServiceError(f"{name}: port {ports.address(port)} is taken by another "
                               f"process; choose another with {Ports.env_var(port)}=...")
    serving_dir(paths).mkdir(parents=True, exist_ok=True)
    os.chmod(serving_dir(paths), 0o700)  # the socket is nginx's alone
    started = []
    try:
        gunicorn, nginx, mtail = programs
        if not supervisor.is_running(NAME):
            directory = metrics_dir(paths)
            shutil.rmtree(directory, ignore_errors=True)  # stale counts of an earlier run
            directory.mkdir(parents=True)
        if supervisor.start(gunicorn):
            started.append(NAME)
        supervisor.wait_until(NAME, lambda: accepts(socket_path(paths)), timeout,
                              f"a connection on {socket_path(paths)}")
        if supervisor.start(nginx):
            started.append(PROXY)
        supervisor.wait_for_http(f"{ports.url('serving')}/healthz", timeout=timeout, name=PROXY)
        if supervisor.start(mtail):  # after nginx: its access log exists
            started.append(PROXY_METRICS)
        supervisor.wait_for_http(f"{ports.url('serving_proxy_metrics')}/metrics",
                                 timeout=timeout, name=PROXY_METRICS)
    except Exception:
        for name in reversed(started):  # leave nothing half-started behind
            supervisor.stop(name)
        raise
    return urls(ports)


def accepts(path: Path) -> bool:
    """gunicorn listens on its socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        return sock.connect_ex(str(path)) == 0


def stop(paths: ProjectPaths) -> bool:
    """nginx first (no new requests), then gunicorn and mtail; True if any was running."""
    supervisor = Supervisor(paths.stack_dir)
    stopped = [supervisor.stop(name) for name in (PROXY, NAME, PROXY_METRICS)]
    return any(stopped)


def wait_ready(base_url: str, timeout: float) -> dict:
    """Poll ``/readyz`` until 200; returns its body, or raises with the last reason."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as resp:  # noqa: S310
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            try:
                last = json.load(exc).get("detail", f"HTTP {exc.code}")
            except ValueError:
                last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise ServiceError(f"serving at {base_url} not ready after {timeout:.0f}s: {last}")
        time.sleep(1)


def curl_examples(base_url: str, location_id: str) -> list[str]:
    body = json.dumps({"location_id": location_id})
    return [
        f"curl -s {base_url}/v1/forecasts/{location_id}",
        f"curl -s -X POST {base_url}/v1/forecasts -H 'Content-Type: application/json' "
        f"-d '{body}'",
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m stack.serving_local ready [--timeout S]``: wait, print the URL."""
    parser = argparse.ArgumentParser(prog="python -m stack.serving_local",
                                     description=main.__doc__)
    parser.add_argument("command", choices=["ready"])
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    from stack.ports import resolve_ports

    paths = ProjectPaths.discover()
    base = resolve_ports(paths).url("serving")
    try:
        ready = wait_ready(base, args.timeout)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from pipeline.config import load_params

    location = load_params(paths.params).location_ids[0]
    print(f"online forecasts: {base}  (model {ready['model_version']}; docs {base}/docs)")
    for line in curl_examples(base, location):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
