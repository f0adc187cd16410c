"""The one config of local service ports: defaults, overridable by ``AQ_<NAME>_PORT``.

Every local service binds ``127.0.0.1`` only. The defaults are the upstream
ones, so the committed Prometheus/Alertmanager configs (and docker-compose with
``network_mode: host``) work unchanged; tests pass free ports instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Ports:
    prometheus: int = 9090
    pushgateway: int = 9091
    alertmanager: int = 9093
    webhook: int = 9095  # local Alertmanager webhook receiver (pipeline/ops/webhook.py)
    node_exporter: int = 9100
    airflow: int = 8080  # Airflow api-server
    serving: int = 8000  # the forecast serving app
    postgres: int = 5432  # Airflow's metadata database in the scale-out profile (airflow_celery)
    redis: int = 6379  # Celery broker and shared rate limits in the scale-out profile
    mlflow: int = 5000  # the MLflow tracking server (pipeline/ops/mlflow_local.py)
    mlserver: int = 8090  # MLServer's V2 REST API (pipeline/ops/mlserver_local.py)
    mlserver_grpc: int = 8091  # its V2 gRPC API (MLServer always starts it)
    mlserver_metrics: int = 8092  # its Prometheus /metrics
    host: str = HOST

    @staticmethod
    def env_var(name: str) -> str:
        return f"AQ_{name.upper()}_PORT"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ports:
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for f in fields(cls):
            if f.name == "host":
                continue
            key = cls.env_var(f.name)
            raw = env.get(key)
            if raw in (None, ""):
                continue
            try:
                port = int(raw)
            except ValueError as exc:
                raise ValueError(f"environment variable {key}={raw!r} is not a port") from exc
            if not 0 < port < 65536:
                raise ValueError(f"environment variable {key}={raw!r} is not in 1..65535")
            values[f.name] = port
        return replace(cls(), **values)

    def names(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "host"]

    def address(self, name: str) -> str:
        return f"{self.host}:{getattr(self, name)}"

    def url(self, name: str) -> str:
        return f"http://{self.address(name)}"

    def env(self) -> dict[str, str]:
        """``AQ_<NAME>_PORT`` for every port: what a child process needs to see the same ports."""
        return {self.env_var(n): str(getattr(self, n)) for n in self.names()}
