"""Airflow for the DAG tests: a throwaway AIRFLOW_HOME, set before Airflow is imported.

Airflow reads its configuration when first imported, so the environment is set
at the import of this conftest (before any test module imports ``airflow``).
The metadata database is migrated once per session; every test project is a
copy made by :func:`tests.conftest.make_project`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, make_project

VENV_BIN = Path(sys.executable).parent
AIRFLOW_TEST_HOME = Path(tempfile.mkdtemp(prefix="aq-airflow-tests-"))
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_TEST_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_TEST_HOME / 'airflow.db'}",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    "DVC_NO_ANALYTICS": "1",
    "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
})
if str(REPO / "dags") not in sys.path:
    sys.path.append(str(REPO / "dags"))  # DAG files import aq_common, as in Airflow

# a project small enough to train in seconds; the gate lets any sane candidate through
FAST_PARAMS = {
    "horizons": [1, 6],
    "model": {"max_iter": 30},
    "promotion": {"tolerance": 1.0, "min_skill": -1.0},
}


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(AIRFLOW_TEST_HOME, ignore_errors=True)


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The session's Airflow metadata DB, migrated, with the one-slot ``dvc`` pool."""
    airflow = str(VENV_BIN / "airflow")
    run([airflow, "db", "migrate"], cwd=AIRFLOW_TEST_HOME)
    run([airflow, "pools", "set", "dvc", "1", "DVC lock"], cwd=AIRFLOW_TEST_HOME)
    return AIRFLOW_TEST_HOME


def make_dvc_project(root: Path, overrides: dict | None = None) -> Path:
    """A project under git + DVC with a local directory remote named ``local``."""
    params = {**FAST_PARAMS, **(overrides or {})}
    make_project(root, params, with_dvc=True)
    remote = root.parent / f"{root.name}-dvc-remote"
    run(["dvc", "remote", "add", "-f", "-d", "local", str(remote)], cwd=root)
    return root


def seed_history(root: Path) -> None:
    """The test window of params.yaml, backfilled and versioned (what ``make run`` starts with)."""
    env = {**os.environ, "AQ_PROJECT_DIR": str(root)}
    env.pop("AQ_PUSHGATEWAY_URL", None)
    run([sys.executable, "-m", "pipeline", "backfill"], cwd=root, env=env)
    run(["dvc", "add", "-q", "data"], cwd=root, env=env)


class Pushgateway:
    """A real prometheus-pushgateway on a free loopback port."""

    def __init__(self, state_dir: Path) -> None:
        from stack.supervisor import Program, Supervisor

        binary = shutil.which("prometheus-pushgateway")
        if not binary:
            pytest.fail("prometheus-pushgateway not installed: run `make setup`")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.supervisor = Supervisor(state_dir)
        # no persistence: Debian's build otherwise shares /var/lib/prometheus/pushgateway.data
        # with every gateway on the machine, and a test would see another's metrics
        self.supervisor.start(Program("pushgateway", [
            binary, f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file="]))
        self.supervisor.wait_for_http(f"{self.url}/-/ready", timeout=30, name="pushgateway")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def value(self, name: str, **labels: str) -> float | None:
        """The pushed sample ``name{labels...}`` (job aq_pipeline), or None."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in {"job": "aq_pipeline", **labels}.items()
                ):
                    return sample.value
        return None

    def wipe(self) -> None:
        req = urllib.request.Request(f"{self.url}/api/v1/admin/wipe", method="PUT")
        urllib.request.urlopen(req, timeout=5).close()

    def stop(self) -> None:
        self.supervisor.stop_all()


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory, monkeypatch_module):
    gateway = Pushgateway(tmp_path_factory.mktemp("pushgateway"))
    monkeypatch_module.setenv("AQ_PUSHGATEWAY_URL", gateway.url)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
