"""The local Airflow's config: one private file, stable secrets, the containers' overrides."""

from __future__ import annotations

import configparser
import os
import sqlite3
import subprocess
import sys

import pytest

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import airflow_local
from tests.conftest import REPO, make_project

pytestmark = pytest.mark.airflow


def read_cfg(paths: ProjectPaths) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(paths.airflow_home / "airflow.cfg")
    return cfg


def test_config_is_private_keeps_its_secrets_and_names_this_project(tmp_path):
    paths = ProjectPaths(make_project(tmp_path / "project"))
    airflow_local.write_config(paths, Ports(airflow=18080))
    first = read_cfg(paths)
    airflow_local.write_config(paths, Ports(airflow=18081))
    second = read_cfg(paths)

    assert (paths.airflow_home / "airflow.cfg").stat().st_mode & 0o777 == 0o600
    secret = second.get("api_auth", "jwt_secret")
    assert len(bytes.fromhex(secret)) == 64
    assert secret == first.get("api_auth", "jwt_secret")  # sessions survive a restart
    assert second.get("core", "fernet_key") == first.get("core", "fernet_key")
    assert second.get("api", "base_url") == "http://127.0.0.1:18081"
    assert second.get("api", "host") == "127.0.0.1"
    assert second.get("core", "executor") == "LocalExecutor"
    assert second.get("core", "load_examples") == "False"
    assert second.get("core", "dags_folder") == str(REPO / "dags")  # project has none: checkout's
    assert second.get("database", "sql_alchemy_conn") == (
        f"sqlite:///{paths.airflow_home / 'airflow.db'}")


def test_a_shells_airflow_settings_do_not_leak_into_the_local_instance(tmp_path, monkeypatch):
    paths = ProjectPaths(tmp_path)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:////elsewhere.db")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "2")
    env = airflow_local.service_env(paths, Ports(pushgateway=19091))
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env  # pinned: airflow.cfg decides
    assert env["AIRFLOW__CORE__PARALLELISM"] == "2"  # not pinned: an override still works
    assert env["AIRFLOW_HOME"] == str(paths.airflow_home)
    assert env["AQ_PROJECT_DIR"] == str(paths.root)
    kept = airflow_local.service_env(paths, Ports(), keep_airflow_env=True)
    assert kept["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "sqlite:////elsewhere.db"


def test_prepare_cli_migrates_the_containers_database_and_creates_the_pool(tmp_path):
    """What docker-compose's airflow-init runs: its AIRFLOW__* settings (e.g. PostgreSQL) win."""
    root = make_project(tmp_path / "project")
    other_db = tmp_path / "elsewhere.db"
    env = {**os.environ, "AQ_PROJECT_DIR": str(root),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{other_db}"}
    proc = subprocess.run([sys.executable, "-m", "stack", "prepare"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "prepared" in proc.stdout
    assert (root / ".airflow" / "airflow.cfg").is_file()
    assert not (root / ".airflow" / "airflow.db").exists()
    with sqlite3.connect(other_db) as db:
        pools = dict(db.execute("SELECT pool, slots FROM slot_pool").fetchall())
    assert pools["dvc"] == 1


def test_unpause_without_a_running_airflow_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AQ_PROJECT_DIR", str(tmp_path))
    from stack.__main__ import main

    assert main(["unpause"]) == 1
    assert "start the local Airflow first" in capsys.readouterr().err


def test_the_admin_password_file_is_ours_private_and_kept(tmp_path):
    """Airflow would write it 0644 and print the new password into the api-server log."""
    paths = ProjectPaths(tmp_path)
    path = airflow_local.ensure_password_file(paths)
    assert path.stat().st_mode & 0o777 == 0o600
    password = airflow_local.admin_password(paths, timeout=0)
    assert len(password) >= 16
    path.chmod(0o644)  # a file left by an earlier version
    assert airflow_local.ensure_password_file(paths) == path
    assert path.stat().st_mode & 0o777 == 0o600
    assert airflow_local.admin_password(paths, timeout=0) == password


def test_no_secret_on_any_command_line_we_start(tmp_path):
    paths = ProjectPaths(make_project(tmp_path / "project"))
    ports = Ports(airflow=18080)
    airflow_local.write_config(paths, ports)
    airflow_local.ensure_password_file(paths)
    secrets = [airflow_local.admin_password(paths, timeout=0),
               read_cfg(paths).get("api_auth", "jwt_secret"),
               read_cfg(paths).get("core", "fernet_key")]
    argv = " ".join(" ".join(cmd) for cmd in airflow_local.commands(ports).values())
    assert not [s for s in secrets if s in argv]
    cfg = read_cfg(paths)
    assert cfg.get("logging", "file_task_handler_new_file_permissions") == "0o600"
