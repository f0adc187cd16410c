"""``python -m pipeline.ops start|stop|status``: the local services of ``make run``.

``start`` brings up the monitoring stack (Pushgateway, Prometheus, Alertmanager,
node exporter, the alert webhook receiver), the serving app (gunicorn,
``pipeline/ops/serving_local.py``), then Airflow of the profile
``AQ_AIRFLOW_PROFILE`` names: ``local`` (default: SQLite + LocalExecutor,
``pipeline/ops/airflow_local.py``) or ``celery`` (PostgreSQL + CeleryExecutor
with Celery workers, two by default, ``pipeline/ops/airflow_celery.py``); it is
idempotent (running services are left alone) and refuses to start one profile over the other. It
writes ``.stack/env`` (``export`` lines: AQ_PUSHGATEWAY_URL, the AQ_*_PORT
values, ...) for ``make run`` to source, and prints the URLs.
``stop`` stops exactly what ``start`` started (the pid files in ``.stack/``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import shlex
import sys
from types import ModuleType

from pipeline.ops.ports import Ports
from pipeline.ops.services import ServiceManager
from pipeline.paths import ProjectPaths

log = logging.getLogger("pipeline.ops")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _ops_module(name: str) -> ModuleType | None:
    """``pipeline.ops.<name>`` if that module exists."""
    try:
        return importlib.import_module(f"pipeline.ops.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"pipeline.ops.{name}":
            raise
        return None


def _airflow(paths: ProjectPaths) -> ModuleType | None:
    """The module starting the Airflow of the configured profile (AQ_AIRFLOW_PROFILE)."""
    local, celery = _ops_module("airflow_local"), _ops_module("airflow_celery")
    if local is None:
        return None
    if celery is not None:
        celery.check_profile(paths, celery.profile())  # not one profile over the other
        if celery.profile() == "celery":
            return celery
    return local


def ports_file(paths: ProjectPaths):
    return paths.stack_dir / "ports.json"


def resolve_ports(paths: ProjectPaths) -> Ports:
    """The ports of the running stack if there is one, else the configured ones."""
    configured = Ports.from_env()
    recorded = ports_file(paths)
    if recorded.is_file() and any(
        s["running"] for s in ServiceManager(paths.stack_dir).status().values()
    ):
        running = Ports(**json.loads(recorded.read_text()))
        if running != configured:
            log.warning("services already running on their recorded ports (%s): using those",
                        recorded)
        return running
    return configured


def write_env(paths: ProjectPaths, info: dict[str, str]) -> None:
    """``.stack/env``: shell ``export`` lines for every env-like key of ``info``."""
    lines = ["# written by `python -m pipeline.ops start`; source it to use the local stack"]
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in info.items() if ENV_NAME.match(k)]
    target = paths.stack_dir / "env"
    tmp = target.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(target)


def start(paths: ProjectPaths, with_airflow: bool = True, with_serving: bool = True,
          with_mlflow: bool = True, with_mlserver: bool = True,
          ) -> dict[str, str]:
    from pipeline.ops import mlflow_local, mlserver_local, serving_local, stack

    paths.stack_dir.mkdir(parents=True, exist_ok=True)
    ports = resolve_ports(paths)
    ports_file(paths).write_text(ports.model_dump_json())
    info: dict[str, str] = dict(ports.env())
    info.update(stack.start(paths, ports))
    if with_mlflow:  # before Airflow: its tasks log to it (airflow_local.tracking_uri)
        info.update(mlflow_local.start(paths, ports))
    if with_serving:
        info.update(serving_local.start(paths, ports))
    if with_mlserver:
        info.update(mlserver_local.start(paths, ports))
    airflow = _airflow(paths) if with_airflow else None
    if airflow is not None:
        info.update({str(k): str(v) for k, v in (airflow.start(paths, ports) or {}).items()})
    write_env(paths, info)
    return info


def stop(paths: ProjectPaths) -> list[str]:
    from pipeline.ops import mlserver_local, serving_local

    # the scale-out profile's stop covers both profiles' parts
    airflow = _ops_module("airflow_celery") or _ops_module("airflow_local")
    failure: Exception | None = None
    stopped: list[str] = []
    for name, module in (("the serving app", serving_local), ("MLServer", mlserver_local)):
        try:
            module.stop(paths)  # first: they read the data the others write
        except Exception as exc:
            log.error("stopping %s failed: %s", name, exc)
            failure = failure or exc
    if airflow is not None:
        try:
            stopped += airflow.stop(paths)
        except Exception as exc:  # still stop the monitoring stack, then report it
            log.error("stopping Airflow failed: %s", exc)
            failure = failure or exc
    # whatever is left (the monitoring stack and anything airflow.stop missed): only our pid files
    stopped += ServiceManager(paths.stack_dir).stop_all()
    (paths.stack_dir / "env").unlink(missing_ok=True)  # its URLs point at nothing now
    if failure is not None:
        raise failure
    return stopped


def describe(info: dict[str, str], paths: ProjectPaths) -> list[str]:
    """What a person opens: pages that exist in the Debian builds, no secret on the screen."""
    lines = ["local services (127.0.0.1 only); `make stop` stops them:"]
    prometheus = info.get("AQ_PROMETHEUS_URL")
    if prometheus:  # Debian's Prometheus has only the classic UI: /alerts, /targets are 404
        lines.append(f"  Prometheus alerts            {prometheus}/classic/alerts")
        lines.append(f"  Prometheus targets           {prometheus}/classic/targets")
        lines.append(f"  Prometheus queries           {prometheus}/classic/graph")
    if info.get("AQ_ALERTMANAGER_URL"):  # Debian's Alertmanager has no web UI: API and amtool
        lines.append(f"  Alertmanager (API, no UI)    amtool --alertmanager.url="
                     f"{info['AQ_ALERTMANAGER_URL']} alert query")
    if info.get("AQ_ALERTS_LOG"):
        lines.append(f"  notified alerts              tail -f {info['AQ_ALERTS_LOG']}")
    if info.get("AQ_RUNBOOK_URL"):
        lines.append(f"  runbook (alerts link here)   {info['AQ_RUNBOOK_URL']}")
    if info.get("AQ_PUSHGATEWAY_URL"):
        lines.append(f"  Pushgateway                  {info['AQ_PUSHGATEWAY_URL']}")
    if info.get("AQ_SERVING_URL"):
        lines.append(f"  forecast API                 {info['AQ_SERVING_URL']}/docs")
    if info.get("V2 inference"):
        lines.append(f"  V2 inference (MLServer)      {info['V2 inference']}")
    if info.get("mlflow UI"):
        lines.append(f"  MLflow runs                  {info['mlflow UI']} (experiment "
                     "aq-forecast, 'Model training')")
        lines.append(f"  MLflow model registry        {info['mlflow UI']}/#/models/aq-forecast "
                     "(aliases champion, candidate)")
    if info.get("airflow UI"):
        lines.append(f"  Airflow UI                   {info['airflow UI']}")
        password_file = info.get("airflow password file", "the Airflow password file")
        lines.append(f"  Airflow login                {info.get('airflow user', 'admin')}, "
                     f"password: cat {password_file}")
    for key, label in (("airflow profile", "Airflow profile"),  # the celery profile's parts
                       ("airflow database", "Airflow database"),
                       ("celery broker", "Celery broker")):
        if info.get(key):
            lines.append(f"  {label:<28} {info[key]}")
    lines.append(f"  every URL as env vars        source {paths.stack_dir / 'env'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--no-airflow", action="store_true",
                        help="start: without Airflow")
    parser.add_argument("--no-serving", action="store_true",
                        help="start: without the serving app")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="start: without the MLflow tracking server")
    parser.add_argument("--no-mlserver", action="store_true",
                        help="start: without MLServer (the V2 inference endpoint)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths.discover()
    if args.command == "start":
        info = start(paths, with_airflow=not args.no_airflow, with_serving=not args.no_serving,
                     with_mlflow=not args.no_mlflow, with_mlserver=not args.no_mlserver)
        print("\n".join(describe(info, paths)))
    elif args.command == "stop":
        stopped = stop(paths)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    else:
        status = ServiceManager(paths.stack_dir).status()
        if not status:
            print("no local services recorded in", paths.stack_dir)
        for name, s in status.items():
            state = "running" if s["running"] else "stopped"
            print(f"  {name:<16} {state:<8} pid {s['pid']:<8} log {s['log']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
