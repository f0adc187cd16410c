"""The serving app for ``make run``: gunicorn on 127.0.0.1, a supervisord program.

``start`` empties the prometheus multiprocess directory (``.stack/serving/metrics``), then
runs ``gunicorn -c serving/gunicorn_conf.py serving.wsgi:app`` with the project's
environment (``AQ_PROJECT_DIR``, ``OMP_NUM_THREADS=1``, the ports) and waits for
``/healthz``; supervisord restarts it if it dies. The app itself becomes ready (``/readyz``)
once a champion exists: it reloads the champion, the batch forecasts and the history when
they change, so starting it before the first ``dvc repro`` is fine. ``python -m
stack.serving_local ready`` waits for readiness and prints the URL with a ready-to-paste
``curl``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack.supervisor import REPO, Program, ServiceError, Supervisor

NAME = "serving"
PRIORITY = 400  # started after the monitoring stack; stopped first (it reads what others write)


def metrics_dir(paths: ProjectPaths) -> Path:
    return paths.stack_dir / "serving" / "metrics"


def gunicorn_bin() -> str:
    candidate = Path(sys.executable).parent / "gunicorn"
    if not candidate.exists():
        raise ServiceError(f"{candidate} not found: install the serving extra (`make setup`)")
    return str(candidate)


def command(ports: Ports) -> list[str]:
    return [gunicorn_bin(), "-c", str(REPO / "serving" / "gunicorn_conf.py"),
            "--bind", ports.address("serving"), "serving.wsgi:app"]


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
    return Program(NAME, command(ports), env=service_env(paths, ports), directory=paths.root,
                   priority=PRIORITY, stopwaitsecs=30)


def urls(ports: Ports) -> dict[str, str]:
    base = ports.url("serving")
    return {"serving API": base, "serving docs": f"{base}/docs", "AQ_SERVING_URL": base}


def start(paths: ProjectPaths, ports: Ports, timeout: float = 60.0) -> dict[str, str]:
    """Start gunicorn unless it runs; wait until it answers ``/healthz``."""
    from stack.monitoring import port_in_use

    supervisor = Supervisor(paths.stack_dir)
    if not supervisor.is_running(NAME):
        if port_in_use(ports.host, ports.serving):
            raise ServiceError(f"serving: port {ports.address('serving')} is taken by another "
                               f"process; choose another with {Ports.env_var('serving')}=...")
        directory = metrics_dir(paths)
        shutil.rmtree(directory, ignore_errors=True)  # stale counts of an earlier run
        directory.mkdir(parents=True)
        supervisor.start(program(paths, ports))
    try:
        supervisor.wait_for_http(f"{ports.url('serving')}/healthz", timeout=timeout, name=NAME)
    except Exception:
        supervisor.stop(NAME)
        raise
    return urls(ports)


def stop(paths: ProjectPaths) -> bool:
    return Supervisor(paths.stack_dir).stop(NAME)


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
