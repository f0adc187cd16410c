"""The serving app for ``make run``: nginx on 127.0.0.1 in front of gunicorn on a unix socket.

Three services of the ServiceManager: ``serving`` runs ``gunicorn -c serving/gunicorn_conf.py
--bind unix:.stack/serving/app.sock serving.wsgi:app`` with the project's environment
(``AQ_PROJECT_DIR``, ``OMP_NUM_THREADS=1``, the ports) after emptying the prometheus
multiprocess directory (``.stack/serving/metrics``); ``serving_proxy`` runs nginx
(``serving/proxy.py``, config rendered into ``.stack/serving/proxy/``) on the public address
``AQ_SERVING_PORT``; ``serving_proxy_metrics`` runs mtail over nginx's JSON access log
(``aq_serving_proxy_responses_total`` on ``AQ_SERVING_PROXY_METRICS_PORT``). ``.stack/serving/``
is mode 0700: nothing but nginx (same user) reaches the socket. ``start`` waits for
``/healthz`` through nginx. The app itself becomes ready (``/readyz``) once a champion exists:
it reloads the champion, the batch forecasts and the history when they change, so starting it
before the first ``dvc repro`` is fine. ``python -m pipeline.ops.serving_local ready`` waits for
readiness and prints the URL with a ready-to-paste ``curl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.ops.ports import Ports
from pipeline.ops.services import ServiceError, ServiceManager
from pipeline.paths import PACKAGE_ROOT, ProjectPaths
from serving import proxy

NAME = "serving"  # gunicorn
PROXY = "serving_proxy"  # nginx on the public address
PROXY_METRICS = "serving_proxy_metrics"  # mtail: nginx's access log as Prometheus counters


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


def proxy_command(paths: ProjectPaths) -> list[str]:
    """Renders nginx's config for the environment's port and settings, then execs nginx."""
    return [sys.executable, "-m", "serving.proxy", "run", "--socket", str(socket_path(paths)),
            "--prefix", str(serving_dir(paths) / "proxy")]


def command(paths: ProjectPaths) -> list[str]:
    return [gunicorn_bin(), "-c", str(PACKAGE_ROOT / "serving" / "gunicorn_conf.py"),
            "--bind", f"unix:{socket_path(paths)}", "serving.wsgi:app"]


def service_env(paths: ProjectPaths, ports: Ports) -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", ""))
                                 if p)
    return {
        **os.environ,
        **ports.env(),
        "AQ_PROJECT_DIR": str(paths.root),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir(paths)),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": pythonpath,
    }


def urls(ports: Ports) -> dict[str, str]:
    base = ports.url("serving")
    return {"serving API": base, "serving docs": f"{base}/docs", "AQ_SERVING_URL": base}


def start(paths: ProjectPaths, ports: Ports, timeout: float = 60.0) -> dict[str, str]:
    """Start gunicorn and nginx unless they run; wait until ``/healthz`` answers through nginx."""
    from pipeline.ops.stack import port_in_use

    manager = ServiceManager(paths.stack_dir)
    try:
        config = proxy_config(paths, ports)
        proxy.render(config)  # before anything starts: a bad socket path or setting fails here
        proxy.binary()
        metrics_cmd = proxy.metrics_command(config, ports.host, ports.serving_proxy_metrics)
    except (proxy.ProxyError, ValueError) as exc:
        raise ServiceError(f"serving: {exc}") from exc
    started = []
    try:
        for name, port in ((PROXY, "serving"), (PROXY_METRICS, "serving_proxy_metrics")):
            if not manager.is_running(name) and port_in_use(ports.host, getattr(ports, port)):
                raise ServiceError(f"{name}: port {ports.address(port)} is taken by another "
                                   f"process; choose another with {Ports.env_var(port)}=...")
        serving_dir(paths).mkdir(parents=True, exist_ok=True)
        os.chmod(serving_dir(paths), 0o700)  # the socket is nginx's alone
        if not manager.is_running(NAME):
            directory = metrics_dir(paths)
            shutil.rmtree(directory, ignore_errors=True)  # stale counts of an earlier run
            directory.mkdir(parents=True)
            manager.start(NAME, command(paths), env=service_env(paths, ports), cwd=paths.root)
            started.append(NAME)
        if not manager.is_running(PROXY):
            manager.start(PROXY, proxy_command(paths), env=service_env(paths, ports),
                          cwd=paths.root)
            started.append(PROXY)
        wait_healthy(manager, f"{ports.url('serving')}/healthz", timeout)
        if not manager.is_running(PROXY_METRICS):  # after nginx: its access log exists
            manager.start(PROXY_METRICS, metrics_cmd, cwd=paths.root)
            started.append(PROXY_METRICS)
        manager.wait_for_http(f"{ports.url('serving_proxy_metrics')}/metrics", timeout=timeout,
                              name=PROXY_METRICS)
    except Exception:
        for name in reversed(started):  # leave nothing half-started behind
            manager.stop(name)
        raise
    return urls(ports)


def wait_healthy(manager: ServiceManager, url: str, timeout: float) -> None:
    """``/healthz`` 200 through nginx; fail fast with the log of whichever service died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (local URL)
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"  # 502 until gunicorn listens
        except OSError as exc:
            last = str(exc)
        for name in (NAME, PROXY):
            if not manager.is_running(name):
                raise ServiceError(f"service {name} exited before {url} answered; log "
                                   f"{manager.log_file(name)}:\n{manager.log_tail(name)}")
        if time.monotonic() >= deadline:
            raise ServiceError(f"{url} did not answer within {timeout:.0f}s ({last}); gunicorn's "
                               f"log:\n{manager.log_tail(NAME)}\nnginx's log:\n"
                               f"{manager.log_tail(PROXY)}")
        time.sleep(0.2)


def stop(paths: ProjectPaths) -> bool:
    """nginx first (no new requests), then gunicorn and mtail; True if any was running."""
    manager = ServiceManager(paths.stack_dir)
    stopped = [manager.stop(PROXY, timeout=10.0), manager.stop(NAME, timeout=20.0),
               manager.stop(PROXY_METRICS, timeout=10.0)]
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
    """``python -m pipeline.ops.serving_local ready [--timeout S]``: wait, print the URL."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.ops.serving_local",
                                     description=main.__doc__)
    parser.add_argument("command", choices=["ready"])
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    from pipeline.ops.__main__ import resolve_ports

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
