"""The scale-out profile's configuration: one switch, private secrets, clear refusals.

Running it (PostgreSQL, Redis, Airflow, two workers) is ``tests/dags/test_airflow_celery.py``.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import airflow_celery, airflow_local
from stack.__main__ import main as stack_cli
from stack.supervisor import Program, ServiceError, Supervisor

pytestmark = pytest.mark.airflow


def test_the_profile_is_one_setting_local_by_default():
    assert airflow_celery.profile({}) == "local"
    assert airflow_celery.profile({"AQ_AIRFLOW_PROFILE": " celery "}) == "celery"
    with pytest.raises(ValueError, match="AQ_AIRFLOW_PROFILE='celry' is not one of local, celery"):
        airflow_celery.profile({"AQ_AIRFLOW_PROFILE": "celry"})


def test_passwords_are_generated_once_into_private_files(tmp_path):
    layout = airflow_celery.Layout(tmp_path / ".stack")
    first = airflow_celery.password(layout, "postgres", env={})
    assert len(first) >= 32
    assert airflow_celery.password(layout, "postgres", env={}) == first  # kept
    assert airflow_celery.password(layout, "redis", env={}) != first
    assert layout.secret_file("postgres").stat().st_mode & 0o777 == 0o600
    assert layout.secrets_dir.stat().st_mode & 0o777 == 0o700
    given = "from-the-environment-0123"
    assert airflow_celery.password(layout, "redis", env={"AQ_REDIS_PASSWORD": given}) == given
    with pytest.raises(airflow_celery.ScaleOutError, match="AQ_POSTGRES_PASSWORD must be"):
        airflow_celery.password(layout, "postgres", env={"AQ_POSTGRES_PASSWORD": "p@ss word"})


def test_the_config_moves_airflow_to_postgres_and_celery_keeping_secrets_private(tmp_path):
    paths = ProjectPaths(tmp_path)
    ports = Ports(postgres=15432, redis=16379)
    overrides = airflow_celery.airflow_overrides(ports, "dbpass-0123456789", "rpass-0123456789")
    airflow_local.write_config(paths, ports, overrides)
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(paths.airflow_home / "airflow.cfg")
    assert (paths.airflow_home / "airflow.cfg").stat().st_mode & 0o777 == 0o600
    assert cfg.get("core", "executor") == "CeleryExecutor"
    assert cfg.get("database", "sql_alchemy_conn") == (
        "postgresql+psycopg2://airflow:dbpass-0123456789@127.0.0.1:15432/airflow")
    assert cfg.get("celery", "broker_url") == "redis://:rpass-0123456789@127.0.0.1:16379/0"
    assert cfg.get("celery", "result_backend") == (
        "db+postgresql+psycopg2://airflow:dbpass-0123456789@127.0.0.1:15432/airflow")
    assert cfg.get("core", "hostname_callable") == "stack.airflow_celery.worker_hostname"
    assert cfg.get("core", "dags_are_paused_at_creation") == "True"  # the rest as locally
    assert airflow_celery.task_env(ports, "rpass-0123456789") == {
        "AQ_RATE_LIMIT_REDIS_URL": "redis://:rpass-0123456789@127.0.0.1:16379/1"}
    # a shell's AIRFLOW__ values cannot move the broker or result backend elsewhere
    env = airflow_local.service_env(paths, ports)
    assert not any(k.startswith("AIRFLOW__CELERY__") for k in env)


def test_a_shells_broker_setting_does_not_leak_into_the_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", "redis://elsewhere:6379/0")
    monkeypatch.setenv("AIRFLOW__CELERY__WORKER_CONCURRENCY", "8")  # not pinned: still works
    env = airflow_local.service_env(ProjectPaths(tmp_path), Ports())
    assert "AIRFLOW__CELERY__BROKER_URL" not in env
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "8"


def test_workers_are_named_and_bind_nothing():
    commands = airflow_celery.worker_commands(Ports())
    assert list(commands) == ["airflow-celery-worker1", "airflow-celery-worker2"]
    for worker, (cmd, env) in zip(airflow_celery.WORKERS, commands.values(), strict=True):
        assert cmd[:2] == airflow_local.airflow_preloaded()  # tasks fork with the libraries in
        assert cmd[2:6] == ["celery", "worker", "--celery-hostname", f"{worker}@%h"]
        assert "--skip-serve-logs" in cmd  # the log server would listen on 0.0.0.0
        assert env == {"AQ_CELERY_WORKER": worker}


def test_worker_count_and_concurrency_come_from_the_environment():
    """AQ_CELERY_WORKERS x AQ_CELERY_CONCURRENCY: the workers started, their --concurrency,
    airflow.cfg's worker_concurrency, and a parallelism that lets every slot work."""
    default = airflow_celery.Scale.from_env({})
    assert default == airflow_celery.Scale(workers=2, concurrency=2)  # make run-celery as before
    assert default.names == airflow_celery.WORKERS == ("worker1", "worker2")

    scale = airflow_celery.Scale.from_env({"AQ_CELERY_WORKERS": "3",
                                           "AQ_CELERY_CONCURRENCY": "1"})
    commands = airflow_celery.worker_commands(Ports(), scale)
    assert list(commands) == ["airflow-celery-worker1", "airflow-celery-worker2",
                              "airflow-celery-worker3"]
    for cmd, env in commands.values():
        assert cmd[cmd.index("--concurrency") + 1] == "1"
        assert env["AQ_CELERY_WORKER"] == cmd[cmd.index("--celery-hostname") + 1].split("@")[0]
    one = airflow_celery.worker_commands(Ports(), airflow_celery.Scale(1, 2))
    assert list(one) == ["airflow-celery-worker1"]

    def cfg(scale):
        return airflow_celery.airflow_overrides(Ports(), "d" * 16, "r" * 16, scale)

    assert cfg(scale)["celery"]["worker_concurrency"] == "1"
    assert cfg(scale)["core"]["parallelism"] == "4"  # the local profile's, at least
    assert cfg(airflow_celery.Scale(3, 2))["core"]["parallelism"] == "6"
    assert cfg(None)["celery"]["worker_concurrency"] == "2"


def test_worker_commands_follow_the_environment_by_default(monkeypatch):
    monkeypatch.setenv("AQ_CELERY_WORKERS", "1")
    monkeypatch.setenv("AQ_CELERY_CONCURRENCY", "3")
    commands = airflow_celery.worker_commands(Ports())
    assert list(commands) == ["airflow-celery-worker1"]
    cmd = commands["airflow-celery-worker1"][0]
    assert cmd[cmd.index("--concurrency") + 1] == "3"


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("AQ_CELERY_WORKERS", "two", "is not a whole number"),
    ("AQ_CELERY_WORKERS", "0", "must be positive"),
    ("AQ_CELERY_CONCURRENCY", "-1", "must be positive"),
])
def test_a_bad_scale_is_named(name, value, problem):
    with pytest.raises(ValueError, match=f"{name}='{value}' {problem}"):
        airflow_celery.Scale.from_env({name: value})


def test_stop_ends_every_worker_whatever_scale_started_them(tmp_path):
    """Started with three workers, stopped with the default setting: the third goes too."""
    paths = ProjectPaths(tmp_path)
    supervisor = Supervisor(paths.stack_dir)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    for name in ("worker1", "worker2", "worker3"):
        supervisor.start(Program(airflow_celery.service_name(name), sleeper))
    try:
        stopped = airflow_celery.stop(paths)
    finally:
        supervisor.stop_all()
    assert sorted(stopped) == ["airflow-celery-worker1", "airflow-celery-worker2",
                               "airflow-celery-worker3"]
    assert supervisor.names() == []
    assert not supervisor.running()


def test_workers_of_another_scale_are_not_started_over(tmp_path):
    """A worker running with another --concurrency (or beyond the count): stop first."""
    paths = ProjectPaths(tmp_path)
    supervisor = Supervisor(paths.stack_dir)
    cmd, _ = airflow_celery.worker_commands(Ports(), airflow_celery.Scale(2, 2))[
        "airflow-celery-worker2"]
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)", *cmd[1:]]
    supervisor.start(Program("airflow-celery-worker2", sleeper))
    try:
        for scale in (airflow_celery.Scale(1, 2), airflow_celery.Scale(2, 1)):
            with pytest.raises(airflow_celery.ScaleOutError,
                               match="airflow-celery-worker2 is running with another scale.*"
                                     "make stop"):
                airflow_celery.start(paths, Ports(), scale=scale)
        assert supervisor.names() == ["airflow-celery-worker2"]  # nothing else was started
    finally:
        supervisor.stop_all()


def test_a_restarted_worker_is_not_ready_on_its_previous_starts_word(tmp_path):
    """The log is appended to: "ready." of an earlier start must not count (stop, then start
    again with another scale: tasks would be sent before the new workers consume)."""
    supervisor = Supervisor(tmp_path)
    name = airflow_celery.service_name("worker1")
    supervisor.logs_dir.mkdir(parents=True)
    supervisor.log_file(name).write_text(
        "--- ***** ----- \n"  # an earlier start's banner and word
        "[2026-11-30 10:00:09,000: INFO/MainProcess] worker1@host ready.\n")
    supervisor.start(Program(name, [sys.executable, "-c", "import time; time.sleep(60)"]))
    try:
        with pytest.raises(ServiceError,
                           match="airflow-celery-worker1: no Celery's 'ready.' within 1s"):
            airflow_celery.wait_for_workers(supervisor, [name], timeout=1)
        with supervisor.log_file(name).open("a") as log:
            log.write("--- ***** ----- \n[2026-11-30 11:00:05,000: INFO/MainProcess] "
                      "worker1@host ready.\n")
        airflow_celery.wait_for_workers(supervisor, [name], timeout=5)
    finally:
        supervisor.stop(name)


def test_a_task_instance_names_its_worker(monkeypatch):
    monkeypatch.delenv("AQ_CELERY_WORKER", raising=False)
    assert airflow_celery.worker_hostname() == socket.getfqdn()
    monkeypatch.setenv("AQ_CELERY_WORKER", "worker2")
    assert airflow_celery.worker_hostname() == f"worker2@{socket.getfqdn()}"


def test_postgres_commands_carry_no_secret_and_listen_on_loopback():
    # a short path: PostgreSQL's socket path is limited to 107 characters, and pytest's tmp_path
    # under xdist (…/popen-gw1/test_postgres_commands_carry_n0/…) is longer than that
    top = Path(tempfile.mkdtemp(prefix="aq-pg-"))
    try:
        _check_postgres_command(airflow_celery.Layout(top / ".stack"))
    finally:
        shutil.rmtree(top)


def _check_postgres_command(layout):
    cmd = airflow_celery.postgres_command(layout, Ports(postgres=15432))
    assert "listen_addresses=127.0.0.1" in cmd
    assert "port=15432" in cmd
    assert f"unix_socket_directories={layout.postgres_data}" in cmd
    assert not any("password" in part.lower() for part in cmd)
    program = airflow_celery.postgres_program(layout, Ports(postgres=15432))
    assert program.stopsignal == "INT"  # PostgreSQL's fast shutdown
    if os.geteuid() == 0:  # PostgreSQL refuses root: supervisord runs it as the postgres user
        assert program.user == "postgres"
        assert "user=postgres" in program.section(layout.state / "logs" / "postgres.log")
    else:
        assert program.user is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to another user")
def test_a_project_the_postgres_user_cannot_enter_is_a_clear_error():
    private = Path(tempfile.mkdtemp(prefix="aq-private-"))  # 0700, like pytest's tmp_path
    try:
        layout = airflow_celery.Layout(private / "project" / ".stack")
        with pytest.raises(airflow_celery.ScaleOutError,
                           match=f"user 'postgres' .* cannot enter {private} \\(mode 0700\\)"):
            airflow_celery.init_postgres(layout)
        assert not layout.postgres_data.exists()
    finally:
        shutil.rmtree(private)
    assert pwd.getpwnam("postgres")  # the Debian package's user exists


def test_a_taken_port_is_named(tmp_path):
    supervisor = Supervisor(tmp_path / "state")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        ports = Ports(redis=sock.getsockname()[1])
        with pytest.raises(airflow_celery.ScaleOutError,
                           match=f"redis: port 127.0.0.1:{ports.redis} is taken.*AQ_REDIS_PORT"):
            airflow_celery.start_redis(supervisor, airflow_celery.Layout(tmp_path / "state"),
                                       ports, "x" * 20, 5)
    assert supervisor.names() == []
    assert not supervisor.running()


def test_one_profile_is_not_started_over_the_other(tmp_path):
    """Parts running with the local profile's airflow.cfg: the celery profile refuses to start."""
    paths = ProjectPaths(tmp_path)
    airflow_local.write_config(paths, Ports())  # LocalExecutor
    supervisor = Supervisor(paths.stack_dir)
    supervisor.start(Program("airflow-scheduler",
                             [sys.executable, "-c", "import time; time.sleep(60)"]))
    try:
        assert airflow_celery.running_profile(paths) == "local"
        airflow_celery.check_profile(paths, "local")
        with pytest.raises(airflow_celery.ScaleOutError,
                           match="running with the 'local' profile; stop it first"):
            airflow_celery.start(paths, Ports())
    finally:
        supervisor.stop("airflow-scheduler")
    assert airflow_celery.running_profile(paths) is None


def test_prepare_cli_follows_the_profile_switch(tmp_path, monkeypatch, capsys):
    """docker-compose's airflow-init: AQ_AIRFLOW_PROFILE=celery needs the database passwords."""
    monkeypatch.setenv("AQ_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("AQ_AIRFLOW_PROFILE", "celery")
    monkeypatch.setenv("AQ_POSTGRES_PASSWORD", "short")
    assert stack_cli(["prepare"]) == 1
    assert "AQ_POSTGRES_PASSWORD must be at least 16 characters" in capsys.readouterr().err
    monkeypatch.setenv("AQ_AIRFLOW_PROFILE", "kubernetes")
    assert stack_cli(["prepare"]) == 1
    assert "AQ_AIRFLOW_PROFILE='kubernetes' is not one of" in capsys.readouterr().err
