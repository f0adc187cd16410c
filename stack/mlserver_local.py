"""MLServer for ``make run``: the champion over the V2 inference protocol, from
``.venv-mlserver``, a supervisord program.

``mlserver start deploy/mlserver`` loads ``serving.v2.ChampionRuntime`` (the project is
installed in that venv, without Airflow), on 127.0.0.1: REST on ``AQ_MLSERVER_PORT`` (8090),
gRPC on ``AQ_MLSERVER_GRPC_PORT`` (8091, MLServer always starts it), Prometheus metrics on
``AQ_MLSERVER_METRICS_PORT`` (8092). MLServer's settings come from
``deploy/mlserver/settings.json`` and these ``MLSERVER_*`` variables; its working directory
(metrics and environments folders) is ``.stack/mlserver/``. Like the Flask app it starts
before the first champion and becomes ready (``/v2/models/aq-forecast/ready``) once one exists.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack.supervisor import REPO, Program, ServiceError, Supervisor

NAME = "mlserver"
MODEL = "aq-forecast"  # deploy/mlserver/aq-forecast/model-settings.json
PRIORITY = 420  # like serving: stopped before what writes the data it reads
VENV = REPO / ".venv-mlserver"  # scripts/setup.sh makes it from requirements-mlserver.lock
CONFIG = REPO / "deploy" / "mlserver"
PORTS = ("mlserver", "mlserver_grpc", "mlserver_metrics")


def state_dir(paths: ProjectPaths) -> Path:
    return paths.stack_dir / "mlserver"


def mlserver_bin() -> str:
    candidate = VENV / "bin" / "mlserver"
    if not candidate.exists():
        raise ServiceError(f"{candidate} not found: run `make setup` (it makes .venv-mlserver "
                           "from requirements-mlserver.lock)")
    return str(candidate)


def command() -> list[str]:
    return [mlserver_bin(), "start", str(CONFIG)]


def service_env(paths: ProjectPaths, ports: Ports) -> dict[str, str]:
    """What MLServer gets on top of what every program inherits."""
    return {
        **ports.env(),
        "AQ_PROJECT_DIR": str(paths.root),
        "MLSERVER_HOST": ports.host,
        "MLSERVER_HTTP_PORT": str(ports.mlserver),
        "MLSERVER_GRPC_PORT": str(ports.mlserver_grpc),
        "MLSERVER_METRICS_PORT": str(ports.mlserver_metrics),
        "MLSERVER_METRICS_DIR": str(state_dir(paths) / "metrics"),
        "OMP_NUM_THREADS": "1",  # as under gunicorn: the sklearn fallback must not spin
    }


def program(paths: ProjectPaths, ports: Ports) -> Program:
    return Program(NAME, command(), env=service_env(paths, ports), directory=state_dir(paths),
                   priority=PRIORITY, stopwaitsecs=20)


def urls(ports: Ports) -> dict[str, str]:
    base = ports.url("mlserver")
    return {"AQ_MLSERVER_URL": base, "V2 inference": f"{base}/v2/models/{MODEL}/infer"}


def start(paths: ProjectPaths, ports: Ports, timeout: float = 120.0) -> dict[str, str]:
    """Start MLServer unless it runs; wait until it is live (ready needs a champion)."""
    from stack.monitoring import port_in_use

    supervisor = Supervisor(paths.stack_dir)
    if not supervisor.is_running(NAME):
        for name in PORTS:
            if port_in_use(ports.host, getattr(ports, name)):
                raise ServiceError(f"mlserver: port {ports.address(name)} is taken by another "
                                   f"process; choose another with {Ports.env_var(name)}=...")
    (state_dir(paths) / "metrics").mkdir(parents=True, exist_ok=True)
    started = supervisor.start(program(paths, ports))
    try:
        supervisor.wait_for_http(f"{ports.url('mlserver')}/v2/health/live", timeout=timeout,
                                 name=NAME)
    except Exception:
        if started:
            supervisor.stop(NAME)
        raise
    return urls(ports)


def stop(paths: ProjectPaths) -> bool:
    return Supervisor(paths.stack_dir).stop(NAME)


def wait_ready(base_url: str, timeout: float, paths: ProjectPaths | None = None) -> None:
    """Poll ``/v2/models/aq-forecast/ready`` until 200 (a verified champion is served); with
    the stack's ``paths``, fail at once (with its log) if MLServer exits meanwhile."""
    last = ["no answer"]

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{base_url}/v2/models/{MODEL}/ready",  # noqa: S310
                                        timeout=5) as resp:
                return resp.status == 200
        except urllib.error.HTTPError as exc:
            last[0] = f"HTTP {exc.code}"
        except OSError as exc:
            last[0] = str(exc)
        return False

    if paths is not None:
        Supervisor(paths.stack_dir).wait_until(NAME, ready, timeout,
                                               f"model {MODEL} ready (a champion?)")
        return
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() >= deadline:
            raise ServiceError(f"MLServer at {base_url}: model {MODEL} not ready after "
                               f"{timeout:.0f}s ({last[0]}); is there a champion?")
        time.sleep(0.5)


def curl_example(base_url: str, location_id: str) -> str:
    body = json.dumps({"inputs": [{"name": "location_id", "shape": [1], "datatype": "BYTES",
                                   "data": [location_id]}]})
    return (f"curl -s -X POST {base_url}/v2/models/{MODEL}/infer "
            f"-H 'Content-Type: application/json' -d '{body}'")
