"""A Celery worker on another host: ``python -m stack worker start|stop``.

Run on a host that shares nothing with the home host (the one running ``make run-celery``
with ``AQ_BIND_ADDRESSES``) but the network, in a checkout of the same commit with its own
venv (``make setup``). It writes this host's ``.airflow/airflow.cfg`` (the home host's
PostgreSQL as the Celery result backend, its Redis as the broker, its gateway for the
execution API) and starts one Celery worker under this host's own supervisord
(``.stack/``). Each task then runs in a workspace of its own, the home project mirrored
into it before and what the task wrote sent back after (:mod:`pipeline.io.mirror`).

Everything comes from the environment (:mod:`pipeline.settings`): ``AQ_HOME_URL`` (the home
host's gateway), ``AQ_POSTGRES_PORT`` / ``AQ_REDIS_PORT`` (the home host's), the
passwords ``AQ_POSTGRES_PASSWORD``, ``AQ_REDIS_PASSWORD``, ``AQ_STATE_PASSWORD`` (``python -m
stack password ...`` on the home host prints them), ``AQ_CELERY_WORKER`` (this worker's name,
default ``worker-<host>``) and ``AQ_CELERY_CONCURRENCY``.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from pipeline.paths import ProjectPaths
from pipeline.settings import CelerySettings, HostsSettings, Ports, StackSettings
from stack import airflow_celery, airflow_local
from stack.supervisor import Program, ServiceError, Supervisor

PREFIX = "airflow-celery-"


def _require(name: str, value: str) -> str:
    if not value:
        raise ServiceError(f"a worker host needs {name} (docs/airflow.md, "
                           "\"Workers on other hosts\")")
    return value


def worker_name() -> str:
    return CelerySettings.from_env().worker.strip() or f"worker-{socket.gethostname()}"


def program(paths: ProjectPaths, ports: Ports) -> Program:
    """This host's airflow.cfg, and the worker as a program (its secrets in its 0600 file)."""
    hosts = HostsSettings.from_env()
    stack = StackSettings.from_env()
    home_url = _require("AQ_HOME_URL", hosts.home_url)
    db_password = _require("AQ_POSTGRES_PASSWORD", stack.postgres_password.get_secret_value())
    redis_password = _require("AQ_REDIS_PASSWORD", stack.redis_password.get_secret_value())
    state_password = _require("AQ_STATE_PASSWORD", hosts.state_password.get_secret_value())
    home = ports.model_copy(update={"host": urlsplit(home_url).hostname})
    scale = airflow_celery.Scale(1, CelerySettings.from_env().concurrency)
    overrides = airflow_celery.airflow_overrides(home, db_password, redis_password, scale)
    overrides["core"]["execution_api_server_url"] = f"{home_url}/execution/"
    airflow_local.write_config(paths, home, overrides)
    name = worker_name()
    env = airflow_local.part_env(paths, ports, {
        "AQ_PUSHGATEWAY_URL": home_url,  # the gateway passes /metrics/ to the Pushgateway
        "AQ_HOME_URL": home_url,
        "AQ_STATE_PASSWORD": state_password,
        airflow_celery.RATE_LIMIT_ENV: airflow_celery.task_env(home, redis_password)[
            airflow_celery.RATE_LIMIT_ENV],
        airflow_celery.WORKER_ENV: name,
        "AQ_CELERY_CONCURRENCY": str(scale.concurrency),
    })
    command = [*airflow_local.airflow_preloaded(), "celery", "worker", "--celery-hostname",
               f"{name}@%h", "--concurrency", str(scale.concurrency), "--skip-serve-logs",
               "--without-mingle", "--without-gossip"]
    return Program(PREFIX + name, command, env=env, directory=paths.root,
                   priority=airflow_celery.PRIORITY["workers"],
                   stopwaitsecs=airflow_local.STOP_WAIT_S)


def start(paths: ProjectPaths, timeout: float = 180.0) -> dict[str, str]:
    ports = Ports.from_env()
    worker = program(paths, ports)
    supervisor = Supervisor(paths.stack_dir)
    supervisor.start(worker)
    try:
        airflow_celery.wait_for_workers(supervisor, [worker.name], timeout)
    except Exception:
        supervisor.stop(worker.name)
        raise
    return {"celery worker": worker.name.removeprefix(PREFIX),
            "home host": HostsSettings.from_env().home_url}


def stop(paths: ProjectPaths) -> list[str]:
    supervisor = Supervisor(paths.stack_dir)
    return supervisor.stop_all()
