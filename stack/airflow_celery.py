"""The scale-out profile: Airflow on PostgreSQL + CeleryExecutor, Celery workers, on 127.0.0.1.

``AQ_AIRFLOW_PROFILE=celery make run`` (or ``python -m stack start`` with
that variable) starts, next to the monitoring stack and under the same supervisord
(:mod:`stack.supervisor`, logs in ``.stack/logs/``):

- PostgreSQL (Debian's binaries) with its cluster in ``.stack/postgres/data``,
  listening on ``127.0.0.1:$AQ_POSTGRES_PORT``; its unix socket sits in the data
  directory (mode 0700), the only place the superuser may log in without a
  password. PostgreSQL refuses to run as root: then supervisord runs it as the
  ``postgres`` user (the Debian package creates it), which must be able to enter the
  project.
  Airflow logs in over TCP as ``airflow`` with a SCRAM password;
- Redis on ``127.0.0.1:$AQ_REDIS_PORT`` with a password (config ``.stack/redis/
  redis.conf``, 0600): database 0 is Celery's broker, database 1 holds the
  providers' shared rate limits (:class:`pipeline.io.sources.http.SharedRateLimiter`);
- the four Airflow parts of :mod:`stack.airflow_local`, with the
  CeleryExecutor, and the Celery workers ``worker1`` .. ``workerN`` (no log
  server: the API server reads the task logs from the shared ``.airflow/logs``).
  A task instance's ``hostname`` names its worker (``worker1@<host>``). How many
  workers, and task processes each: ``AQ_CELERY_WORKERS`` and
  ``AQ_CELERY_CONCURRENCY`` (default 2 and 2, :class:`pipeline.settings.CelerySettings`).

The passwords are generated once into ``.stack/secrets/`` (0600 files in a 0700
directory) and reach Airflow only through ``.airflow/airflow.cfg`` (0600) and
the environment of its processes (their 0600 supervisord program files), never a
command line. ``AQ_POSTGRES_PASSWORD``
and ``AQ_REDIS_PASSWORD`` replace the files where the database and broker are
not started here (docker-compose's ``celery`` profile).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.paths import ProjectPaths
from pipeline.settings import CelerySettings, HostsSettings, Ports, SettingsError, StackSettings
from stack import airflow_local
from stack.supervisor import Program, Supervisor, write_private

log = logging.getLogger(__name__)

PROFILE_ENV = "AQ_AIRFLOW_PROFILE"
PROFILES = ("local", "celery")  # local: SQLite + LocalExecutor (make run's default)
WORKER_ENV = "AQ_CELERY_WORKER"  # the worker's name, for worker_hostname()
WORKER_SERVICE_PREFIX = "airflow-celery-"  # + the worker's name: its service name
LOCAL_PARALLELISM = 4  # the local profile's [core] parallelism (airflow_local.settings)
DB_NAME = DB_USER = "airflow"
SUPERUSER = "postgres"
BROKER_DB, RATE_LIMIT_DB = 0, 1  # Redis databases
POSTGRES, REDIS = "postgres", "redis"  # program names
# supervisord priorities: start order, reverse stop order (the Airflow parts are 300-330)
PRIORITY = {POSTGRES: 200, REDIS: 210, "workers": 340}
PASSWORD_ENV = {POSTGRES: "AQ_POSTGRES_PASSWORD", REDIS: "AQ_REDIS_PASSWORD"}
RATE_LIMIT_ENV = "AQ_RATE_LIMIT_REDIS_URL"  # read by pipeline/settings.py
MAX_SOCKET_PATH = 107  # sun_path


class ScaleOutError(airflow_local.AirflowError):
    """The scale-out profile cannot start: a binary, user, directory or service is missing."""


def profile(env: Mapping[str, str] | None = None) -> str:
    """``AQ_AIRFLOW_PROFILE``: ``local`` (default) or ``celery``."""
    return StackSettings.from_env(env).airflow_profile


@dataclass(frozen=True)
class Scale:
    """How many Celery workers the profile starts on this host, and task processes each."""

    workers: int = 2
    concurrency: int = 2

    def __post_init__(self) -> None:
        if self.workers < 1 or self.concurrency < 1:
            raise ValueError(f"a Celery scale needs at least one worker and one task process "
                             f"each, not {self.workers} x {self.concurrency}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Scale:
        """``AQ_CELERY_WORKERS`` x ``AQ_CELERY_CONCURRENCY`` (read by pipeline/settings.py)."""
        settings = CelerySettings.from_env(env)
        return cls(settings.workers, settings.concurrency)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"worker{i}" for i in range(1, self.workers + 1))

    @property
    def slots(self) -> int:
        """Tasks the workers run at once."""
        return self.workers * self.concurrency


WORKERS = Scale().names  # the default workers ("worker1", "worker2")
WORKER_CONCURRENCY = Scale().concurrency  # the default task processes per worker


def service_name(worker: str) -> str:
    return f"{WORKER_SERVICE_PREFIX}{worker}"


def worker_hostname() -> str:
    """``[core] hostname_callable``: ``<worker>@<fqdn>`` in a worker, the fqdn elsewhere.

    Two workers on one machine share its name; this keeps them apart in the
    task instances' ``hostname`` (UI, REST API).
    """
    host = socket.getfqdn()
    worker = CelerySettings.from_env().worker.strip()
    return f"{worker}@{host}" if worker else host


# ------------------------------------------------------------------ layout and secrets


@dataclass(frozen=True)
class Layout:
    """Where the profile keeps its state (all under ``.stack/``)."""

    state: Path

    @property
    def secrets_dir(self) -> Path:
        return self.state / "secrets"

    @property
    def postgres_dir(self) -> Path:
        return self.state / "postgres"

    @property
    def postgres_data(self) -> Path:
        return self.postgres_dir / "data"

    @property
    def redis_dir(self) -> Path:
        return self.state / "redis"

    @property
    def redis_config(self) -> Path:
        return self.redis_dir / "redis.conf"

    def secret_file(self, service: str) -> Path:
        return self.secrets_dir / f"{service}.password"


def password(layout: Layout, service: str, env: Mapping[str, str] | None = None) -> str:
    """The service's password: ``AQ_<SERVICE>_PASSWORD``, else the generated file (made once)."""
    try:
        settings = StackSettings.from_env(env)
    except SettingsError as exc:
        raise ScaleOutError(str(exc)) from None
    given = getattr(settings, f"{service}_password").get_secret_value()
    if given:
        return given
    path = layout.secret_file(service)
    if path.is_file():
        value = path.read_text().strip()
        if value:
            return value
    layout.secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.secrets_dir, 0o700)
    value = secrets.token_urlsafe(32)
    write_private(path, value + "\n")
    return value


def connection_urls(ports: Ports, db_password: str, redis_password: str) -> dict[str, str]:
    """Airflow's database, Celery's broker and result backend, the shared rate limits."""
    db = f"{DB_USER}:{db_password}@{ports.host}:{ports.postgres}/{DB_NAME}"
    redis = f":{redis_password}@{ports.host}:{ports.redis}"
    return {
        "sql_alchemy_conn": f"postgresql+psycopg2://{db}",
        "result_backend": f"db+postgresql+psycopg2://{db}",
        "broker_url": f"redis://{redis}/{BROKER_DB}",
        "rate_limit_url": f"redis://{redis}/{RATE_LIMIT_DB}",
    }


def airflow_overrides(ports: Ports, db_password: str, redis_password: str,
                      scale: Scale | None = None) -> dict[str, dict[str, str]]:
    """What the profile changes in ``.airflow/airflow.cfg`` (``scale``: the default 2 x 2)."""
    scale = scale or Scale()
    urls = connection_urls(ports, db_password, redis_password)
    return {
        "core": {
            "executor": "CeleryExecutor",
            "hostname_callable": f"{__name__}.worker_hostname",
            # the scheduler queues at most this many tasks at once: every worker slot, at least
            # the local profile's
            "parallelism": str(max(LOCAL_PARALLELISM, scale.slots)),
        },
        "database": {"sql_alchemy_conn": urls["sql_alchemy_conn"]},
        "celery": {
            "broker_url": urls["broker_url"],
            "result_backend": urls["result_backend"],
            "worker_concurrency": str(scale.concurrency),
            "worker_prefetch_multiplier": "1",  # a busy worker leaves new tasks to the idle one
        },
    }


def task_env(ports: Ports, redis_password: str) -> dict[str, str]:
    """What every part (and so every task) gets: the shared rate limits' Redis."""
    return {RATE_LIMIT_ENV: connection_urls(ports, "-", redis_password)["rate_limit_url"]}


# ------------------------------------------------------------------ PostgreSQL


def postgres_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for bin_dir in reversed(versions):
        if (bin_dir / name).is_file():
            return str(bin_dir / name)
    raise ScaleOutError(f"PostgreSQL's {name} not found: run `make setup` (scripts/setup.sh "
                        "installs the Debian package postgresql)")


def db_os_user() -> pwd.struct_passwd:
    """The OS user PostgreSQL runs as: ourselves, or ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ScaleOutError("PostgreSQL refuses to run as root and there is no user "
                            f"{SUPERUSER!r} to run it as: install the Debian package postgresql "
                            "(`make setup`) or start the profile as another user") from None


def _as_user(user: pwd.struct_passwd, cmd: list[str]) -> list[str]:
    if user.pw_uid == os.geteuid():
        return cmd
    setpriv = shutil.which("setpriv")
    if not setpriv:
        raise ScaleOutError("setpriv (util-linux) not found: needed to run PostgreSQL as "
                            f"{user.pw_name!r} while running as root")
    return [setpriv, f"--reuid={user.pw_name}", f"--regid={user.pw_gid}", "--init-groups",
            "--", *cmd]


def _can_enter(path: Path, user: pwd.struct_passwd) -> bool:
    st = path.stat()
    if user.pw_uid == 0:
        return True
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in os.getgrouplist(user.pw_name, user.pw_gid):
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _check_reachable(directory: Path, user: pwd.struct_passwd) -> None:
    for parent in reversed(directory.parents):
        if not _can_enter(parent, user):
            mode = stat.S_IMODE(parent.stat().st_mode)
            raise ScaleOutError(
                f"PostgreSQL runs as user {user.pw_name!r} (it refuses root), which cannot enter "
                f"{parent} (mode {mode:04o}) on the way to {directory}: put the project where "
                "that user can reach it, or start the profile as a non-root user")


def init_postgres(layout: Layout, timeout: float = 180.0) -> bool:
    """``initdb`` the cluster once; True if it was created now."""
    data = layout.postgres_data
    if (data / "PG_VERSION").is_file():
        return False
    user = db_os_user()
    layout.postgres_dir.mkdir(parents=True, exist_ok=True)
    _check_reachable(layout.postgres_dir, user)
    os.chown(layout.postgres_dir, user.pw_uid, user.pw_gid)
    os.chmod(layout.postgres_dir, 0o700)
    if data.exists():  # a half-made cluster of an interrupted initdb
        shutil.rmtree(data)
    cmd = _as_user(user, [
        postgres_bin("initdb"), "-D", str(data), "-U", SUPERUSER, "-E", "UTF8", "--no-locale",
        "--auth-local=trust",  # the socket lives in the 0700 data directory: its owner only
        "--auth-host=scram-sha-256", "--no-instructions",
    ])
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=layout.postgres_dir)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise ScaleOutError(f"initdb of {data} failed ({proc.returncode}):\n{tail}")
    log.info("created the PostgreSQL cluster %s (runs as %s)", data, user.pw_name)
    return True


def listen_addresses(ports: Ports, hosts: HostsSettings | None = None) -> list[str]:
    """127.0.0.1, and the addresses workers on other hosts reach (``AQ_BIND_ADDRESSES``)."""
    hosts = hosts or HostsSettings.from_env()
    return [ports.host, *(a for a in hosts.addresses() if a != ports.host)]


HBA_BEGIN = "# aq-forecast: workers on other hosts (stack/airflow_celery.py, on every start)"
HBA_END = "# aq-forecast: end"


def write_peer_access(layout: Layout, hosts: HostsSettings | None = None) -> None:
    """pg_hba.conf: the ``airflow`` role from ``AQ_PEER_NETWORKS`` with its SCRAM password
    (only that role and database; the block is rewritten on every start)."""
    hosts = hosts or HostsSettings.from_env()
    path = layout.postgres_data / "pg_hba.conf"
    lines = path.read_text().splitlines()
    if HBA_BEGIN in lines:
        lines = lines[:lines.index(HBA_BEGIN)] + lines[lines.index(HBA_END) + 1:]
    if hosts.networks():
        lines += [HBA_BEGIN, *(f"host {DB_NAME} {DB_USER} {net} scram-sha-256"
                               for net in hosts.networks()), HBA_END]
    st = path.stat()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)


def postgres_command(layout: Layout, ports: Ports) -> list[str]:
    socket_dir = str(layout.postgres_data)
    if len(socket_dir) + len(f"/.s.PGSQL.{ports.postgres}") > MAX_SOCKET_PATH:
        raise ScaleOutError(f"the project path is too long for PostgreSQL's socket in "
                            f"{socket_dir} (at most {MAX_SOCKET_PATH} characters)")
    return [
        postgres_bin("postgres"), "-D", str(layout.postgres_data),
        "-c", f"listen_addresses={','.join(listen_addresses(ports))}",
        "-c", f"port={ports.postgres}",
        "-c", f"unix_socket_directories={socket_dir}", "-c", "unix_socket_permissions=0700",
        "-c", "max_connections=100",
    ]


def postgres_program(layout: Layout, ports: Ports) -> Program:
    """PostgreSQL as a program: SIGINT is its fast shutdown (end sessions, checkpoint);
    supervisord runs it as the ``postgres`` user when we are root (it refuses root)."""
    user = db_os_user()
    return Program(POSTGRES, postgres_command(layout, ports), directory=layout.postgres_dir,
                   priority=PRIORITY[POSTGRES], stopsignal="INT", stopwaitsecs=30,
                   user=None if user.pw_uid == os.geteuid() else user.pw_name)


def _superuser_connection(layout: Layout, ports: Ports, timeout: float = 5.0):
    import psycopg2

    return psycopg2.connect(host=str(layout.postgres_data), port=ports.postgres, user=SUPERUSER,
                            dbname="postgres", connect_timeout=max(1, int(timeout)))


def postgres_answers(layout: Layout, ports: Ports) -> bool:
    import psycopg2

    try:
        _superuser_connection(layout, ports, timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def bootstrap_database(layout: Layout, ports: Ports, db_password: str) -> None:
    """The ``airflow`` role (SCRAM verifier made here: the password never reaches the server,
    its logs or a statement) and the ``airflow`` database it owns. Idempotent."""
    from psycopg2 import sql
    from psycopg2.extensions import encrypt_password

    conn = _superuser_connection(layout, ports)
    try:
        conn.autocommit = True
        verifier = encrypt_password(db_password, DB_USER, conn, "scram-sha-256")  # in libpq
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_USER,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} WITH LOGIN PASSWORD {}").format(
                sql.Identifier(DB_USER), sql.Literal(verifier)))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if not cur.fetchone():
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DB_NAME), sql.Identifier(DB_USER)))
    finally:
        conn.close()


def start_postgres(supervisor: Supervisor, layout: Layout, ports: Ports, db_password: str,
                   timeout: float) -> bool:
    """Cluster, server and the Airflow database; True if the server was started now."""
    started = False
    if not supervisor.is_running(POSTGRES):
        _refuse_taken_port(ports, "postgres")
        init_postgres(layout)
        write_peer_access(layout)
        started = supervisor.start(postgres_program(layout, ports))
    try:
        supervisor.wait_until(POSTGRES, lambda: postgres_answers(layout, ports), timeout,
                              "PostgreSQL accepted connections")
        bootstrap_database(layout, ports, db_password)
    except Exception:
        if started:
            supervisor.stop(POSTGRES)
        raise
    return started


# ------------------------------------------------------------------ Redis


def redis_bin() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ScaleOutError("redis-server not found: run `make setup` (scripts/setup.sh "
                            "installs the Debian package redis-server)")
    return found


def write_redis_config(layout: Layout, ports: Ports, redis_password: str) -> Path:
    """``.stack/redis/redis.conf`` (0600: it holds the password)."""
    layout.redis_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# written by stack/airflow_celery.py on every start; edit that",
        f"bind {' '.join(listen_addresses(ports))}",
        f"port {ports.redis}",
        "protected-mode yes",
        f"requirepass {redis_password}",
        f"dir {layout.redis_dir}",
        "appendonly yes",  # queued tasks survive a restart
        'save ""',
        "maxmemory 256mb",
        "maxmemory-policy noeviction",  # a broker must refuse, never drop, messages
        'logfile ""',
    ]
    write_private(layout.redis_config, "\n".join(lines) + "\n")
    return layout.redis_config


def redis_client(ports: Ports, redis_password: str, db: int = BROKER_DB):
    import redis

    return redis.Redis(host=ports.host, port=ports.redis, password=redis_password, db=db,
                       socket_timeout=5, socket_connect_timeout=2)


def redis_program(layout: Layout, ports: Ports, redis_password: str) -> Program:
    config = write_redis_config(layout, ports, redis_password)  # the password stays in it
    return Program(REDIS, [redis_bin(), str(config)], directory=layout.redis_dir,
                   priority=PRIORITY[REDIS])


def start_redis(supervisor: Supervisor, layout: Layout, ports: Ports, redis_password: str,
                timeout: float) -> bool:
    import redis

    started = False
    if not supervisor.is_running(REDIS):
        _refuse_taken_port(ports, "redis")
        started = supervisor.start(redis_program(layout, ports, redis_password))
    client = redis_client(ports, redis_password)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        supervisor.wait_until(REDIS, answers, timeout, "Redis answered")
    except Exception:
        if started:
            supervisor.stop(REDIS)
        raise
    return started


def _refuse_taken_port(ports: Ports, name: str) -> None:
    from stack.monitoring import port_in_use

    port = getattr(ports, name)
    if port_in_use(ports.host, port):
        raise ScaleOutError(f"{name}: port {ports.host}:{port} is taken by another process; "
                            f"stop it or choose another port with {Ports.env_var(name)}=...")


# ------------------------------------------------------------------ Airflow


def worker_commands(ports: Ports, scale: Scale | None = None
                    ) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Program name -> (command, own environment) of each Celery worker.

    ``scale``: how many workers and task processes each (default: the environment's,
    :meth:`Scale.from_env`).
    """
    scale = scale or Scale.from_env()
    airflow = airflow_local.airflow_preloaded()
    return {
        service_name(worker): (
            [*airflow, "celery", "worker", "--celery-hostname", f"{worker}@%h",
             "--concurrency", str(scale.concurrency),
             "--skip-serve-logs",  # its log server would bind 0.0.0.0; logs are shared files
             "--without-mingle", "--without-gossip"],
            {WORKER_ENV: worker},
        )
        for worker in scale.names
    }


def worker_programs(paths: ProjectPaths, ports: Ports, scale: Scale,
                    extra_env: Mapping[str, str]) -> list[Program]:
    """The workers as programs: a warm shutdown (TERM) lets running tasks end for 20 s."""
    base = airflow_local.part_env(paths, ports, extra_env)
    return [Program(name, cmd, env={**base, **own}, directory=paths.root,
                    priority=PRIORITY["workers"] + i, stopwaitsecs=airflow_local.STOP_WAIT_S)
            for i, (name, (cmd, own)) in enumerate(worker_commands(ports, scale).items())]


def worker_services(supervisor: Supervisor) -> list[str]:
    """Every Celery worker program of the stack, whatever scale started them."""
    return [name for name in supervisor.names() if name.startswith(WORKER_SERVICE_PREFIX)]


def check_workers(supervisor: Supervisor, workers: list[Program]) -> None:
    """Refuse to start over running workers of another scale (count or concurrency)."""
    wanted = {p.name: p for p in workers}
    for name in worker_services(supervisor):
        if not supervisor.is_running(name):
            continue
        running = _command_line(supervisor.definition(name) or "")
        program = wanted.get(name)
        if program is None or running != _command_line(
                program.section(supervisor.log_file(name))):
            raise ScaleOutError(
                f"{name} is running with another scale; stop the profile first (`make stop`), "
                f"then start it with the new AQ_CELERY_WORKERS / AQ_CELERY_CONCURRENCY")


def _command_line(section: str) -> str:
    return next((line for line in section.splitlines() if line.startswith("command=")), "")


def wait_for_workers(supervisor: Supervisor, names: list[str], timeout: float) -> None:
    """Until each worker's log says, since this start, that it is ready (connected to the
    broker, consuming): a restarted worker's earlier "ready." does not count."""
    for name in names:
        supervisor.wait_until(
            name, lambda n=name: re.search(r"@\S+ ready\.", supervisor.log_since_start(n)),
            timeout, "Celery's 'ready.'")


def running_profile(paths: ProjectPaths) -> str | None:
    """The profile the running Airflow parts were started with (their airflow.cfg), or None."""
    supervisor = Supervisor(paths.stack_dir)
    if not any(supervisor.is_running(n) for n in airflow_local.SERVICES):
        return None
    try:
        executor = airflow_local._config(paths).get("core", "executor", fallback="")
    except airflow_local.AirflowError:
        return None
    return "celery" if executor == "CeleryExecutor" else "local"


def check_profile(paths: ProjectPaths, wanted: str) -> None:
    """Refuse to start one profile over the running parts of the other."""
    running = running_profile(paths)
    if running is not None and running != wanted:
        raise ScaleOutError(f"Airflow is running with the {running!r} profile; stop it first "
                            f"(`make stop`), then start with {PROFILE_ENV}={wanted}")


def prepare(paths: ProjectPaths, ports: Ports, *, keep_airflow_env: bool = False
            ) -> dict[str, str]:
    """airflow.cfg for the profile, migrated database, ``dvc`` pool (database must be up)."""
    layout = Layout(paths.stack_dir)
    db_password, redis_password = password(layout, POSTGRES), password(layout, REDIS)
    return airflow_local.prepare(
        paths, ports, keep_airflow_env=keep_airflow_env,
        overrides=airflow_overrides(ports, db_password, redis_password, Scale.from_env()),
        extra_env=task_env(ports, redis_password))


def start(paths: ProjectPaths, ports: Ports, timeout: float = 180.0,
          scale: Scale | None = None) -> dict[str, str]:
    """PostgreSQL, Redis, the Airflow parts and the Celery workers; what to print.

    ``scale``: how many workers and task processes each (default: ``AQ_CELERY_WORKERS`` x
    ``AQ_CELERY_CONCURRENCY``, 2 x 2).
    """
    scale = scale or Scale.from_env()
    check_profile(paths, "celery")
    layout = Layout(paths.stack_dir)
    supervisor = Supervisor(paths.stack_dir)
    db_password, redis_password = password(layout, POSTGRES), password(layout, REDIS)
    extra_env = task_env(ports, redis_password)
    workers = worker_programs(paths, ports, scale, extra_env)
    check_workers(supervisor, workers)
    started: list[str] = []
    try:
        if start_postgres(supervisor, layout, ports, db_password, timeout):
            started.append(POSTGRES)
        if start_redis(supervisor, layout, ports, redis_password, timeout):
            started.append(REDIS)
        info = airflow_local.start(
            paths, ports, timeout,
            overrides=airflow_overrides(ports, db_password, redis_password, scale),
            extra_env=extra_env, extra_programs=workers)
        wait_for_workers(supervisor, [w.name for w in workers], timeout)
        hosts = HostsSettings.from_env()
        if hosts.addresses():  # workers on other hosts: their door to this one
            from stack import gateway

            info.update(gateway.start(paths, ports, hosts, timeout))
    except Exception:
        Supervisor(paths.stack_dir).stop("gateway")
        for name in reversed(worker_services(supervisor)):
            supervisor.stop(name)
        if started:
            airflow_local.stop(paths)
            for name in reversed(started):
                supervisor.stop(name)
        raise
    return {
        **info,
        "airflow profile": "celery: PostgreSQL + CeleryExecutor, workers "
                           + ", ".join(scale.names)
                           + f" ({scale.concurrency} task processes each)",
        "airflow database": f"postgresql://{DB_USER}@{ports.address('postgres')}/{DB_NAME} "
                            f"(password in {layout.secret_file(POSTGRES)})",
        "celery broker": f"redis://{ports.address('redis')}/{BROKER_DB} "
                         f"(password in {layout.secret_file(REDIS)})",
    }


def stop(paths: ProjectPaths) -> list[str]:
    """Stop whichever profile runs: every worker (whatever scale started them), the Airflow
    parts, then Redis and PostgreSQL (fast shutdown: its stop signal is SIGINT)."""
    supervisor = Supervisor(paths.stack_dir)
    stopped = [name for name in ("gateway",) if supervisor.stop(name)]
    stopped += [name for name in reversed(worker_services(supervisor))
                if supervisor.stop(name)]
    stopped += airflow_local.stop(paths)
    stopped += [name for name in (REDIS, POSTGRES) if supervisor.stop(name)]
    return stopped
