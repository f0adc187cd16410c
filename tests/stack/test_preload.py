"""stack/preload.py: the processes Airflow forks tasks from import the tasks' libraries once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.settings import Ports
from stack import airflow_celery, airflow_local, preload
from tests.conftest import REPO

# what a task imports beyond the process it was forked from, as top-level package names
TASK_IMPORTS = """
import importlib, json, pkgutil, sys
sys.path.insert(0, {stack!r})
import preload
preload.preload(preload.third_party_imports())
before = {{name.split(".")[0] for name in sys.modules}}
import pipeline.steps, pipeline.ingestion, pipeline.forecaster
for module in pkgutil.iter_modules(pipeline.steps.__path__):
    importlib.import_module("pipeline.steps." + module.name)
new = {{name.split(".")[0] for name in sys.modules}} - before - {{"pipeline"}}
print(json.dumps(sorted(n for n in new if n not in sys.stdlib_module_names
                        and not n.startswith("_"))))
"""


def test_the_preloaded_libraries_are_the_projects_third_party_imports():
    names = preload.third_party_imports()
    tops = {name.split(".")[0] for name in names}
    assert {"numpy", "pandas", "pyarrow", "sklearn", "pandera"} <= tops
    assert not tops & set(sys.stdlib_module_names)
    assert "pipeline" not in tops  # the project's code is read from disk by each task


@pytest.mark.process
def test_a_task_forked_after_the_preload_imports_no_library_of_its_own():
    """Every step module imported on top of the preload brings no new third-party package:
    what the scan of module-level imports found covers what the steps need."""
    code = TASK_IMPORTS.format(stack=str(REPO / "stack"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, cwd=REPO).stdout
    assert json.loads(out.splitlines()[-1]) == []


def test_the_processes_tasks_fork_from_run_airflow_preloaded():
    scheduler = airflow_local.commands(Ports())["airflow-scheduler"]
    assert scheduler[:2] == [sys.executable, str(REPO / "stack" / "preload.py")]
    assert scheduler[2:] == ["scheduler", "--skip-serve-logs"]
    for cmd, _ in airflow_celery.worker_commands(Ports()).values():
        assert cmd[:2] == scheduler[:2]
    # the others fork no task: plain airflow
    for name in ("airflow-api-server", "airflow-dag-processor", "airflow-triggerer"):
        assert airflow_local.commands(Ports())[name][0] == airflow_local.airflow_bin()


@pytest.mark.process
def test_preload_runs_the_airflow_command_it_is_given(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "stack" / "preload.py"), "version"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    import airflow

    assert done.stdout.strip().splitlines()[-1] == airflow.__version__
