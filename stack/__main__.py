"""``python -m stack COMMAND``: the local services of ``make run``, run by supervisord.

``start`` brings up the monitoring stack (Pushgateway, Prometheus, Alertmanager, node
exporter, the alert webhook receiver), the MLflow tracking server, the serving app
(gunicorn behind nginx), MLServer (the V2 inference endpoint), then Airflow of the
profile ``AQ_AIRFLOW_PROFILE`` names: ``local`` (default: SQLite + LocalExecutor) or
``celery`` (PostgreSQL + Redis + CeleryExecutor with its workers, two by default). Each is a
supervisord program (:mod:`stack.supervisor`): restarted when it dies, its log in
``.stack/logs/`` rotated by size. ``start`` is idempotent (running programs are left alone)
and refuses to start one profile over the other; it writes ``.stack/env`` (``export``
lines: AQ_PUSHGATEWAY_URL, the AQ_*_PORT values, ...) for ``make run`` to source, and
prints the URLs. ``stop`` shuts supervisord down: exactly what ``start`` started.
``status`` is ``supervisorctl status``; ``supervisorctl`` passes any other supervisorctl
command (``tail -f serving``, ``restart prometheus``).

Airflow helpers: ``prepare`` (airflow.cfg, database, pool: docker-compose's airflow-init),
``unpause`` / ``pause`` (the DAGs, once ``make run`` has built the first model),
``ready`` (wait for the forecast API, print a ``curl``), ``password postgres|redis|state``.

On another host, ``worker start|stop`` runs one Celery worker for the home host's deployment
(:mod:`stack.worker_host`, docs/airflow.md "Workers on other hosts").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports, SettingsError
from stack import (
    airflow_celery,
    airflow_local,
    mlflow_local,
    mlserver_local,
    monitoring,
    serving_local,
)
from stack.ports import record_ports, resolve_ports
from stack.supervisor import (
    ServiceError,
    Supervisor,
    end_processes,
    proc_stat,
    session_members,
)

log = logging.getLogger("stack")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def airflow_part(paths: ProjectPaths) -> Callable[[ProjectPaths, Ports], dict]:
    """The Airflow of the configured profile (refused over the other's running parts)."""
    wanted = airflow_celery.profile()
    airflow_celery.check_profile(paths, wanted)
    return airflow_celery.start if wanted == "celery" else airflow_local.start


def write_env(paths: ProjectPaths, info: dict[str, str]) -> None:
    """``.stack/env``: shell ``export`` lines for every env-like key of ``info``."""
    lines = ["# written by `python -m stack start`; source it to use the local stack"]
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in info.items() if ENV_NAME.match(k)]
    target = paths.stack_dir / "env"
    tmp = target.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(target)


def parts(paths: ProjectPaths, with_airflow: bool = True, with_serving: bool = True,
          with_mlflow: bool = True, with_mlserver: bool = True,
          ) -> list[Callable[[ProjectPaths, Ports], dict]]:
    """What ``start`` brings up, in order: each ``part(paths, ports)`` starts its programs
    (``Supervisor(paths.stack_dir).start(program)``), waits until they answer and returns
    what to print and export. A new service (a proxy, a model server) is one more part."""
    chosen: list[Callable[[ProjectPaths, Ports], dict]] = [monitoring.start]
    if with_mlflow:  # before Airflow: its tasks log to it (airflow_local.tracking_uri)
        chosen.append(mlflow_local.start)
    if with_serving:
        chosen.append(serving_local.start)
    if with_mlserver:
        chosen.append(mlserver_local.start)
    if with_airflow:
        chosen.append(airflow_part(paths))
    return chosen


LEGACY_FORMAT = "aq-service/1"  # the pid files of the process manager supervisord replaced


def legacy_services(paths: ProjectPaths) -> dict[str, tuple[int, int]]:
    """Services an earlier version started itself (``.stack/<name>.pid``) that still run:
    name -> (pid, start ticks). Each led its own session."""
    found = {}
    for pid_file in sorted(paths.stack_dir.glob("*.pid")) if paths.stack_dir.is_dir() else ():
        try:
            record = json.loads(pid_file.read_text())
            if not (isinstance(record, dict) and record.get("format") == LEGACY_FORMAT):
                continue
            pid, ticks = int(record["pid"]), int(record["start_ticks"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        stat = proc_stat(pid)
        if stat is not None and stat[0] != "Z" and stat[3] == ticks:
            found[pid_file.stem] = (pid, ticks)
    return found


def stop_legacy(paths: ProjectPaths) -> list[str]:
    """End the sessions of an earlier version's services (``make stop`` after an upgrade), and
    forget their pid files; a pid file whose pid now belongs to another process is not acted on."""
    running = legacy_services(paths)
    for name, (pid, ticks) in running.items():
        end_processes(lambda p=pid, t=ticks: session_members(p, t), timeout=20.0)
        log.info("stopped %s (started by an earlier version of the launcher)", name)
    for pid_file in paths.stack_dir.glob("*.pid") if paths.stack_dir.is_dir() else ():
        try:
            if json.loads(pid_file.read_text()).get("format") == LEGACY_FORMAT:
                pid_file.unlink()
        except (OSError, ValueError, AttributeError):
            continue
    return list(running)


def start(paths: ProjectPaths, with_airflow: bool = True, with_serving: bool = True,
          with_mlflow: bool = True, with_mlserver: bool = True) -> dict[str, str]:
    paths.stack_dir.mkdir(parents=True, exist_ok=True)
    if legacy := legacy_services(paths):
        raise ServiceError(f"services started by an earlier version still run ({', '.join(legacy)}"
                           "): `make stop` ends them, then `make run`")
    # refuses a profile over the other first
    chosen = parts(paths, with_airflow, with_serving, with_mlflow, with_mlserver)
    ports = resolve_ports(paths)
    record_ports(paths, ports)
    info: dict[str, str] = dict(ports.env())
    for part in chosen:
        info.update({str(k): str(v) for k, v in (part(paths, ports) or {}).items()})
    write_env(paths, info)
    return info


def stop(paths: ProjectPaths) -> list[str]:
    """supervisord stops every program, in reverse priority (serving first, the monitoring
    stack last), then itself; what is left of its session goes too."""
    stopped = Supervisor(paths.stack_dir).stop_all() + stop_legacy(paths)
    (paths.stack_dir / "env").unlink(missing_ok=True)  # its URLs point at nothing now
    return stopped


def status(paths: ProjectPaths) -> int:
    """``supervisorctl status`` of the stack (exit status 3 when something is not running)."""
    return supervisorctl(paths, ["status"])


def supervisorctl(paths: ProjectPaths, args: list[str]) -> int:
    supervisor = Supervisor(paths.stack_dir)
    if not supervisor.running():
        print(f"the local stack is not running ({paths.stack_dir}): `make run` starts it")
        return 3
    binary = os.path.join(os.path.dirname(sys.executable), "supervisorctl")
    sys.stdout.flush()
    os.execv(binary, [binary, "-c", str(supervisor.config), *args])
    return 1  # not reached


def describe(info: dict[str, str], paths: ProjectPaths) -> list[str]:
    """What a person opens: pages that exist in the Debian builds, no secret on the screen."""
    lines = ["local services (127.0.0.1 only, run by supervisord); `make status`, `make stop`:"]
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
    lines.append(f"  service logs                 {paths.stack_dir / 'logs'}/<program>.log")
    lines.append(f"  every URL as env vars        source {paths.stack_dir / 'env'}")
    return lines


def mlserver_ready(paths: ProjectPaths, timeout: float) -> int:
    """When MLServer runs: wait until it serves the champion, print a V2 ``curl``."""
    if not Supervisor(paths.stack_dir).is_running(mlserver_local.NAME):
        return 0
    from pipeline.config import load_params

    base = resolve_ports(paths).url("mlserver")
    mlserver_local.wait_ready(base, timeout, paths)
    print(f"V2 inference (MLServer): {base}/v2/models/{mlserver_local.MODEL} "
          "(the same forecasts as /v1)")
    print(f"  {mlserver_local.curl_example(base, load_params(paths.params).location_ids[0])}")
    return 0


def prepare(paths: ProjectPaths) -> str:
    """airflow.cfg, database, pool for the configured profile; the containers' AIRFLOW__*
    settings win (docker-compose's airflow-init)."""
    celery = airflow_celery.profile() == "celery"
    (airflow_celery.prepare if celery else airflow_local.prepare)(
        paths, Ports.from_env(), keep_airflow_env=True)
    return (f"prepared {paths.airflow_home} (config, database, pool "
            f"{airflow_local.DVC_POOL[0]!r}{', CeleryExecutor' if celery else ''})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start what is not running, print the URLs")
    begin.add_argument("--no-airflow", action="store_true", help="without Airflow")
    begin.add_argument("--no-serving", action="store_true", help="without the serving app")
    begin.add_argument("--no-mlflow", action="store_true",
                       help="without the MLflow tracking server")
    begin.add_argument("--no-mlserver", action="store_true",
                       help="without MLServer (the V2 inference endpoint)")
    commands.add_parser("stop", help="stop everything start started")
    commands.add_parser("status", help="supervisorctl status")
    ctl = commands.add_parser("supervisorctl", help="any supervisorctl command")
    ctl.add_argument("args", nargs=argparse.REMAINDER)
    commands.add_parser("prepare", help="Airflow's config, database and pool (compose)")
    commands.add_parser("unpause", help="hand the DAGs to the schedule")
    commands.add_parser("pause", help="stop new DAG runs")
    ready = commands.add_parser("ready", help="wait for the forecast API (and MLServer when it "
                                "runs), print curls")
    ready.add_argument("--timeout", type=float, default=90.0)
    secret = commands.add_parser("password", help="print a generated password (psql, redis)")
    secret.add_argument("service", choices=[airflow_celery.POSTGRES, airflow_celery.REDIS,
                                            "state"])
    remote = commands.add_parser("worker", help="a Celery worker on another host")
    remote.add_argument("action", choices=["start", "stop"])
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths.discover()
    try:
        if args.command == "start":
            info = start(paths, with_airflow=not args.no_airflow,
                         with_serving=not args.no_serving, with_mlflow=not args.no_mlflow,
                         with_mlserver=not args.no_mlserver)
            print("\n".join(describe(info, paths)))
        elif args.command == "stop":
            stopped = stop(paths)
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        elif args.command == "status":
            return status(paths)
        elif args.command == "supervisorctl":
            return supervisorctl(paths, args.args)
        elif args.command == "prepare":
            print(prepare(paths))
        elif args.command in ("unpause", "pause"):
            dag_ids = airflow_local.set_paused(paths, paused=args.command == "pause")
            print(f"{args.command}d: {', '.join(dag_ids)}")
        elif args.command == "ready":
            code = serving_local.main(["ready", "--timeout", str(args.timeout)])
            return code or mlserver_ready(paths, args.timeout)
        elif args.command == "password" and args.service == "state":
            from stack import gateway

            print(gateway.state_password(paths))
        elif args.command == "password":
            print(airflow_celery.password(airflow_celery.Layout(paths.stack_dir),
                                          args.service))
        elif args.command == "worker":
            from stack import worker_host

            if args.action == "start":
                print("\n".join(f"{k}: {v}" for k, v in worker_host.start(paths).items()))
            else:
                stopped = worker_host.stop(paths)
                print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    except (airflow_local.AirflowError, ServiceError, monitoring.StackError,
            SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
