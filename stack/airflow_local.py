"""A local Airflow for ``make run``: SQLite + LocalExecutor, every part on 127.0.0.1.

``airflow standalone`` would bind its log servers on 0.0.0.0, so the parts are
started one by one as supervisord programs (:mod:`stack.supervisor`): the API
server (UI + REST API + the execution API tasks talk to) on ``127.0.0.1``, the
scheduler and triggerer with ``--skip-serve-logs`` (task logs are local files
the API server reads), and the DAG processor. Their configuration is one file,
``.airflow/airflow.cfg`` (mode 0600), written on every start from the project's
paths and ports, so ``AIRFLOW_HOME=.airflow airflow ...`` reaches the same
instance; its JWT secret and Fernet key are generated once and kept.
Environment variables ``AIRFLOW__<SECTION>__<KEY>`` still override the file
(e.g. ``AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True``), except the ones that
define the instance: home, database, DAG folder, host, port and secrets.
"""

from __future__ import annotations

import base64
import configparser
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports, Settings
from stack.supervisor import AIRFLOW_PINNED, REPO, Program, Supervisor, launch_environment

log = logging.getLogger(__name__)

ADMIN_USER = "admin"
# aq_backtest has no schedule: unpaused, it runs only when triggered (a paused DAG queues the run)
DAG_IDS = ("aq_ingest", "aq_retrain", "aq_predict", "aq_backtest")
DVC_POOL = ("dvc", 1, "DVC takes a repository-wide lock: one DVC task at a time")
# start order; stop goes in reverse (their supervisord priorities)
SERVICES = ("airflow-api-server", "airflow-dag-processor", "airflow-scheduler",
            "airflow-triggerer")
PRIORITY = 300  # + 10 per part: after PostgreSQL and Redis, before the workers and serving
STOP_WAIT_S = 20  # a part's graceful stop (the scheduler ends its tasks), then KILL
# settings that make the instance this project's; inherited AIRFLOW__* values are dropped
PINNED = AIRFLOW_PINNED
Overrides = Mapping[str, Mapping[str, str]]  # section -> key -> value, on top of settings()


class AirflowError(RuntimeError):
    """The local Airflow could not be set up or did not come up."""


def airflow_bin() -> str:
    candidate = Path(sys.executable).parent / "airflow"
    if not candidate.exists():
        raise AirflowError(
            f"{candidate} not found: install the airflow extra (`make setup` does)"
        )
    return str(candidate)


PRELOAD = Path(__file__).with_name("preload.py")


def airflow_preloaded() -> list[str]:
    """``airflow`` with the tasks' libraries already imported (stack/preload.py): the command
    of the processes Airflow forks tasks from (the scheduler's LocalExecutor, a Celery
    worker), so a task does not pay their imports again."""
    airflow_bin()  # the same check: the airflow extra is installed
    return [sys.executable, str(PRELOAD)]


def dags_folder(paths: ProjectPaths) -> Path:
    """``dags/`` of the project, else of the checkout this code lives in."""
    own = paths.root / "dags"
    return own if own.is_dir() else REPO / "dags"


def password_file(paths: ProjectPaths) -> Path:
    return paths.airflow_home / "simple_auth_manager_passwords.json.generated"


def ensure_password_file(paths: ProjectPaths) -> Path:
    """The admin password file, created by us (0600) before Airflow starts.

    Left to itself the simple auth manager writes the file with the umask's
    mode (0644) and prints the new password into the api-server log. A file
    that already names the admin is read and its mode tightened; Airflow then
    neither generates nor prints a password.
    """
    path = password_file(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        current = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        current = None
    if not isinstance(current, dict) or not current.get(ADMIN_USER):
        passwords = {**(current if isinstance(current, dict) else {}),
                     ADMIN_USER: secrets.token_urlsafe(18)}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(passwords) + "\n")
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return path


def _kept_secrets(cfg_path: Path) -> tuple[str, str]:
    """The JWT secret and Fernet key of an earlier start, or new ones."""
    jwt_secret = fernet_key = ""
    if cfg_path.is_file():
        old = configparser.ConfigParser(interpolation=None)
        old.read(cfg_path)
        jwt_secret = old.get("api_auth", "jwt_secret", fallback="")
        fernet_key = old.get("core", "fernet_key", fallback="")
    jwt_secret = jwt_secret or secrets.token_hex(64)  # 64 random bytes
    fernet_key = fernet_key or base64.urlsafe_b64encode(os.urandom(32)).decode()
    return jwt_secret, fernet_key


def settings(paths: ProjectPaths, ports: Ports, overrides: Overrides | None = None
             ) -> dict[str, dict[str, str]]:
    """Every airflow.cfg value this project sets, by section (secrets included).

    ``overrides`` replace or add values (the scale-out profile's executor,
    database and broker).
    """
    home = paths.airflow_home
    base_url = ports.url("airflow")
    jwt_secret, fernet_key = _kept_secrets(home / "airflow.cfg")
    values = {
        "core": {
            "dags_folder": str(dags_folder(paths)),
            "load_examples": "False",
            "executor": "LocalExecutor",
            "parallelism": "4",  # two cores: a few tasks at a time
            # paused until `make run` has built the first model (then `unpause`): a scheduled
            # run would otherwise race the first ingestion and `dvc repro` of make run
            "dags_are_paused_at_creation": "True",
            "fernet_key": fernet_key,
            "simple_auth_manager_users": f"{ADMIN_USER}:admin",
            "simple_auth_manager_passwords_file": str(password_file(paths)),
            "execution_api_server_url": f"{base_url}/execution/",
        },
        "database": {"sql_alchemy_conn": f"sqlite:///{home / 'airflow.db'}"},
        "api": {"host": ports.host, "port": str(ports.airflow), "base_url": base_url,
                "workers": "1", "expose_config": "False"},
        "api_auth": {"jwt_secret": jwt_secret},
        # task logs private: a task may print what it read from the environment
        "logging": {"base_log_folder": str(home / "logs"),
                    "file_task_handler_new_file_permissions": "0o600",
                    "file_task_handler_new_folder_permissions": "0o700"},
        "scheduler": {"enable_health_check": "False"},
        "dag_processor": {"refresh_interval": "60"},
        "triggerer": {"capacity": "50"},
    }
    for section, extra in (overrides or {}).items():
        values.setdefault(section, {}).update(extra)
    return values


def write_config(paths: ProjectPaths, ports: Ports, overrides: Overrides | None = None) -> Path:
    """Write ``.airflow/airflow.cfg`` (0600: it holds the JWT secret, Fernet key, DB password)."""
    home = paths.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    parser = configparser.ConfigParser(interpolation=None)
    for section, values in settings(paths, ports, overrides).items():
        parser[section] = values
    target = home / "airflow.cfg"
    tmp = target.with_suffix(".cfg.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# written by stack/airflow_local.py on every start; edit that\n")
        parser.write(handle)
    os.replace(tmp, target)
    return target


def tracking_uri(paths: ProjectPaths, ports: Ports) -> str:
    """Where the tasks' steps log MLflow runs: the configured server, else the local one when
    ``make run`` started it, else off (pipeline/io/tracking.py)."""
    from pipeline.settings import TrackingSettings
    from stack import mlflow_local

    configured = TrackingSettings.from_env().uri
    if configured:
        return configured
    if Supervisor(paths.stack_dir).is_running(mlflow_local.NAME):
        return ports.url("mlflow")
    return "off"


def part_env(paths: ProjectPaths, ports: Ports,
             extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What every Airflow part (and the tasks it runs) gets on top of what it inherits."""
    return {
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AQ_PROJECT_DIR": str(paths.root),
        "AQ_PUSHGATEWAY_URL": Settings.from_env().pushgateway_url or ports.url("pushgateway"),
        "AQ_MLFLOW_TRACKING_URI": tracking_uri(paths, ports),
        "DVC_NO_ANALYTICS": "1",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        **ports.env(),
        **(extra or {}),
    }


def service_env(paths: ProjectPaths, ports: Ports, *, keep_airflow_env: bool = False,
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of an Airflow command run for the instance (``db migrate``),
    as a supervised part sees it.

    Inherited ``AIRFLOW__*`` values for the pinned settings are dropped (a shell
    or test may point them at another instance) unless ``keep_airflow_env``:
    docker-compose sets them on purpose, e.g. to move to PostgreSQL.
    """
    env = dict(os.environ) if keep_airflow_env else launch_environment()
    env.pop("AIRFLOW_CONFIG", None)
    env.update(part_env(paths, ports, extra))
    return env


def _airflow_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> None:
    proc = subprocess.run([airflow_bin(), *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise AirflowError(f"`airflow {' '.join(args)}` failed ({proc.returncode}):\n{tail}")


def prepare(paths: ProjectPaths, ports: Ports, *, keep_airflow_env: bool = False,
            overrides: Overrides | None = None, extra_env: Mapping[str, str] | None = None
            ) -> dict[str, str]:
    """Config, password file, database schema and the one-slot ``dvc`` pool; the service env."""
    write_config(paths, ports, overrides)
    ensure_password_file(paths)
    env = service_env(paths, ports, keep_airflow_env=keep_airflow_env, extra=extra_env)
    _airflow_cli(["db", "migrate"], env, paths.root)
    name, slots, description = DVC_POOL
    _airflow_cli(["pools", "set", name, str(slots), description], env, paths.root)
    return env


def commands(ports: Ports) -> dict[str, list[str]]:
    airflow = airflow_bin()
    return {
        "airflow-api-server": [airflow, "api-server", "--host", ports.host,
                               "--port", str(ports.airflow), "--workers", "1"],
        "airflow-dag-processor": [airflow, "dag-processor"],
        "airflow-scheduler": [*airflow_preloaded(), "scheduler", "--skip-serve-logs"],
        "airflow-triggerer": [airflow, "triggerer", "--skip-serve-logs"],
    }


def admin_password(paths: ProjectPaths, timeout: float = 30.0) -> str:
    """The admin password the simple auth manager generated on first start."""
    deadline = time.monotonic() + timeout
    path = password_file(paths)
    while True:
        try:
            return json.loads(path.read_text())[ADMIN_USER]
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise AirflowError(f"no admin password in {path} after {timeout:.0f}s") from None
            time.sleep(0.2)


def programs(paths: ProjectPaths, ports: Ports, extra_env: Mapping[str, str] | None = None,
             ) -> list[Program]:
    """The four parts as supervised programs, restarted when they die."""
    env = part_env(paths, ports, extra_env)
    return [Program(name, cmd, env=env, directory=paths.root, priority=PRIORITY + 10 * i,
                    stopwaitsecs=STOP_WAIT_S)
            for i, (name, cmd) in enumerate(commands(ports).items())]


def start(paths: ProjectPaths, ports: Ports, timeout: float = 120.0, *,
          overrides: Overrides | None = None, extra_env: Mapping[str, str] | None = None,
          extra_programs: list[Program] | None = None) -> dict[str, str]:
    """Start the parts that are not running; return what to print (URL, admin login).

    The scale-out profile (:mod:`stack.airflow_celery`) passes its config
    ``overrides``, environment for every part and its ``extra_programs`` (the
    Celery workers), started last.
    """
    supervisor = Supervisor(paths.stack_dir)
    prepare(paths, ports, overrides=overrides, extra_env=extra_env)
    started: list[str] = []
    parts = [*programs(paths, ports, extra_env), *(extra_programs or [])]
    try:
        for program in parts:
            if supervisor.start(program):
                started.append(program.name)
            if program.name == "airflow-api-server":
                supervisor.wait_for_http(f"{ports.url('airflow')}/api/v2/monitor/health",
                                         timeout=timeout, name=program.name)
        for program in parts:  # the others have no port: up for supervisord's startsecs
            supervisor.wait_running(program.name, timeout=timeout)
        password = admin_password(paths)
    except Exception:
        for name in reversed(started):
            supervisor.stop(name)
        raise
    return {
        "airflow UI": ports.url("airflow"),
        "airflow user": ADMIN_USER,
        "airflow password": password,  # for callers (tests); `make run` prints the file only
        "airflow password file": str(password_file(paths)),
        "airflow metrics": f"{ports.url('airflow')}/admin/metrics/",
        "AIRFLOW_HOME": str(paths.airflow_home),
    }


def _config(paths: ProjectPaths) -> configparser.ConfigParser:
    cfg_path = paths.airflow_home / "airflow.cfg"
    if not cfg_path.is_file():
        raise AirflowError(f"no {cfg_path}: start the local Airflow first (`make run`)")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(cfg_path)
    return parser


def api_token(paths: ProjectPaths) -> tuple[str, str]:
    """(base URL, JWT) of the running local Airflow, logged in as the admin."""
    import requests

    base_url = _config(paths).get("api", "base_url")
    reply = requests.post(f"{base_url}/auth/token", timeout=30,
                          json={"username": ADMIN_USER, "password": admin_password(paths)})
    if not reply.ok:
        raise AirflowError(f"login to {base_url} failed: HTTP {reply.status_code}")
    return base_url, reply.json()["access_token"]


def set_paused(paths: ProjectPaths, paused: bool, dag_ids=DAG_IDS,
               timeout: float = 120.0) -> list[str]:
    """Pause or unpause the project's DAGs through the REST API, once they are parsed."""
    import requests

    base_url, token = api_token(paths)
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout
    for dag_id in dag_ids:
        url = f"{base_url}/api/v2/dags/{dag_id}"
        while True:
            reply = requests.patch(url, json={"is_paused": paused}, headers=headers, timeout=30)
            if reply.ok:
                break
            if reply.status_code != 404 or time.monotonic() > deadline:
                raise AirflowError(f"PATCH {url} failed: HTTP {reply.status_code} {reply.text}")
            time.sleep(1)  # not parsed yet by the DAG processor
    return list(dag_ids)


def stop(paths: ProjectPaths) -> list[str]:
    """Stop every Airflow part this project started, and the tasks they were running.

    Each part is stopped with its process group (supervisord's ``stopasgroup``); a task
    runner in a group of its own goes when the last program leaves and the daemon's
    session is swept (:meth:`stack.supervisor.Supervisor.stop_all`).
    """
    supervisor = Supervisor(paths.stack_dir)
    return [name for name in reversed(SERVICES) if supervisor.stop(name)]
