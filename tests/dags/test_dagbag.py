"""DagBag integrity: the DAGs parse, with the tasks, edges, schedules and defaults users rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.airflow

DAGS = REPO / "dags"
DAG_FILES = ("aq_ingest.py", "aq_retrain.py", "aq_predict.py", "aq_backtest.py")
EDGES = {
    "aq_ingest": {
        ("plan_batches", "ingest"), ("ingest", "ingest_quality"),
        ("ingest_quality", "data_version"),
    },
    "aq_retrain": {
        ("settled_store", "plan_preprocess_batches"),
        ("plan_preprocess_batches", "preprocess_batch"), ("preprocess_batch", "preprocess"),
        ("plan_preprocess_batches", "preprocess"),
        ("preprocess", "train"), ("train", "evaluate"), ("evaluate", "promote"),
    },
    "aq_predict": {
        ("champion_ready", "plan_predict_batches"), ("plan_predict_batches", "predict_batch"),
        # the plan pins the champion the batches and the finalisation use
        ("plan_predict_batches", "predict"),
        ("predict_batch", "predict"), ("predict", "score"), ("score", "drift"),
    },
    "aq_backtest": set(),
}
SINGLE_TASK = {"aq_backtest": "backtest"}
DVC_TASKS = {
    "aq_ingest": {"data_version"},
    "aq_retrain": {"preprocess", "train", "evaluate", "promote"},
    "aq_predict": {"predict", "score", "drift"},
    "aq_backtest": set(),  # reads data and models, runs no DVC command
}


def parse(env: dict[str, str] | None = None) -> dict:
    """Parse dags/ in a fresh interpreter (env is read at parse time) and describe every DAG."""
    code = f"""
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path=Path({str(DAGS)!r}),
                   known_pools={{"default_pool", "dvc"}})
out = {{"errors": {{k: str(v) for k, v in bag.import_errors.items()}}, "dags": {{}}}}
for dag in bag.dags.values():
    out["dags"][dag.dag_id] = {{
        "file": Path(dag.fileloc).name,
        "timetable": type(dag.timetable).__name__,
        "summary": getattr(dag.timetable, "expression", None),
        "asset": [a.name for a in dag.timetable.asset_condition.objects]
                 if getattr(dag.timetable, "asset_condition", None) is not None else None,
        "tags": sorted(dag.tags), "doc_md": dag.doc_md or "", "owner": dag.owner,
        "max_active_runs": dag.max_active_runs, "catchup": dag.catchup,
        "params": {{k: {{**dag.params.get_param(k).schema,
                        "description": dag.params.get_param(k).description}}
                   for k in dag.params}},
        "tasks": {{t.task_id: {{
            "downstream": sorted(t.downstream_task_ids), "pool": t.pool, "retries": t.retries,
            "backoff": t.retry_exponential_backoff, "delay": t.retry_delay.total_seconds(),
            "max_delay": t.max_retry_delay.total_seconds() if t.max_retry_delay else None,
            "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
            "callbacks": [c.__name__ for c in (t.on_failure_callback or [])]
                         if isinstance(t.on_failure_callback, list)
                         else [getattr(t.on_failure_callback, "__name__", None)],
            "on_execute": [getattr(c, "__name__", None) for c in (
                t.on_execute_callback if isinstance(t.on_execute_callback, list)
                else [t.on_execute_callback])],
            "outlets": [getattr(o, "name", None) for o in t.outlets],
            "mapped": getattr(t, "is_mapped", False),
        }} for t in dag.tasks}},
    }}
print("@@" + json.dumps(out))
"""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.rsplit("@@", 1)[1])


@pytest.fixture(scope="module")
def bag() -> dict:
    return parse({"AQ_TASK_RETRIES": "", "AQ_RETRAIN_SCHEDULE": ""})


def test_no_import_errors_and_one_dag_per_file(bag):
    assert bag["errors"] == {}
    assert {d: info["file"] for d, info in bag["dags"].items()} == {
        "aq_ingest": "aq_ingest.py", "aq_retrain": "aq_retrain.py", "aq_predict": "aq_predict.py",
        "aq_backtest": "aq_backtest.py",
    }


@pytest.mark.parametrize("dag_id", sorted(EDGES))
def test_tasks_and_edges(bag, dag_id):
    tasks = bag["dags"][dag_id]["tasks"]
    edges = {(t, d) for t, info in tasks.items() for d in info["downstream"]}
    assert edges == EDGES[dag_id]
    assert set(tasks) == ({t for edge in EDGES[dag_id] for t in edge}
                          or {SINGLE_TASK[dag_id]})


def test_ingestion_is_mapped_over_location_batches_and_emits_the_asset(bag):
    tasks = bag["dags"]["aq_ingest"]["tasks"]
    assert tasks["ingest"]["mapped"] is True
    assert [t for t, info in tasks.items() if info["outlets"]] == ["data_version"]
    assert tasks["data_version"]["outlets"] == ["aq_raw_data"]


@pytest.mark.parametrize(("dag_id", "stage"), [("aq_retrain", "preprocess"),
                                               ("aq_predict", "predict")])
def test_preprocess_and_predict_are_mapped_over_location_batches(bag, dag_id, stage):
    """The batches run anywhere (default pool); only the task recording the stage is DVC's."""
    tasks = bag["dags"][dag_id]["tasks"]
    assert tasks[f"{stage}_batch"]["mapped"] is True
    assert tasks[f"{stage}_batch"]["pool"] == "default_pool"
    assert tasks[stage]["mapped"] is False
    assert tasks[stage]["pool"] == "dvc"


def test_schedules(bag):
    ingest, retrain, predict = (bag["dags"][d] for d in ("aq_ingest", "aq_retrain", "aq_predict"))
    # hourly with a real one-hour data interval (a trigger timetable would give an empty one)
    assert ingest["timetable"] == "CronDataIntervalTimetable"
    assert ingest["summary"] == "0 * * * *"
    assert retrain["summary"] == "0 2 * * *"
    assert retrain["max_active_runs"] == 1
    assert predict["timetable"] == "AssetTriggeredTimetable"
    assert predict["asset"] == ["aq_raw_data"]
    assert not any(d["catchup"] for d in bag["dags"].values())


def test_backtest_is_triggered_by_hand_with_the_window_in_the_form(bag):
    dag = bag["dags"]["aq_backtest"]
    assert dag["timetable"] == "NullTimetable"
    assert dag["max_active_runs"] == 1
    assert set(dag["params"]) == {"start", "end", "model", "refit_every_days"}
    assert dag["params"]["start"]["format"] == "date"
    assert dag["params"]["refit_every_days"]["minimum"] == 0
    assert all(p.get("title") and p.get("description") for p in dag["params"].values())


def test_retrain_schedule_and_retries_come_from_the_environment():
    bag = parse({"AQ_RETRAIN_SCHEDULE": "30 3 * * 1", "AQ_TASK_RETRIES": "0"})
    assert bag["dags"]["aq_retrain"]["summary"] == "30 3 * * 1"
    assert {t["retries"] for d in bag["dags"].values() for t in d["tasks"].values()} == {0}


def test_a_bad_environment_value_is_named(monkeypatch):
    import aq_common

    monkeypatch.setenv("AQ_TASK_RETRIES", "many")
    with pytest.raises(ValueError, match="AQ_TASK_RETRIES='many' is not a whole number"):
        aq_common.default_args()
    monkeypatch.setenv("AQ_INGEST_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="AQ_INGEST_BATCH_SIZE='0' must be >= 1"):
        aq_common.ingest_batch_size()


@pytest.mark.parametrize("dag_id", sorted(EDGES))
def test_docs_tags_owner_retries_timeouts_and_failure_callback(bag, dag_id):
    dag = bag["dags"][dag_id]
    assert "###" in dag["doc_md"]
    assert len(dag["doc_md"]) > 300
    assert "aq" in dag["tags"]
    assert len(dag["tags"]) >= 2
    assert dag["owner"] == "aq-forecast"
    for task_id, task in dag["tasks"].items():
        assert task["retries"] == 2, task_id
        assert task["backoff"] == 2.0, task_id
        assert task["delay"] == 60, task_id
        assert task["max_delay"] == timedelta(minutes=30).total_seconds(), task_id
        assert 0 < (task["timeout"] or 0) <= timedelta(hours=2).total_seconds(), task_id
        assert task["callbacks"] == ["push_task_failure"], task_id
        # Python warnings reach the task log once each, at WARNING (pipeline/pywarnings.py)
        assert task["on_execute"] == ["relay_warnings"], task_id


@pytest.mark.parametrize("dag_id", sorted(DVC_TASKS))
def test_every_dvc_task_is_in_the_one_slot_pool(bag, dag_id):
    tasks = bag["dags"][dag_id]["tasks"]
    assert {t for t, info in tasks.items() if info["pool"] == "dvc"} == DVC_TASKS[dag_id]


def test_dag_files_import_fast_and_without_heavy_modules():
    """Parse cost beyond Airflow's own import: well under a second each, no pandas/sklearn/DVC,
    nothing of the project but its settings.

    Each file is timed with ``aq_common`` not yet imported, as in a DAG processor's fresh fork.
    """
    code = f"""
import importlib.util, json, sys, time
import airflow.sdk, airflow.sdk.definitions.timetables.interval  # Airflow's own import time
sys.path.insert(0, {str(DAGS)!r})
out = {{}}
for name in {list(DAG_FILES)!r}:
    sys.modules.pop("aq_common", None)
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location(name[:-3], {str(DAGS)!r} + "/" + name)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    out[name] = time.perf_counter() - started
heavy = [m for m in ("pandas", "numpy", "sklearn", "pyarrow", "dvc") if m in sys.modules]
# the project's settings only (pipeline/settings.py: pydantic-settings, which Airflow imports)
heavy += sorted(m for m in sys.modules
                if m.split(".")[0] == "pipeline" and m not in ("pipeline", "pipeline.settings"))
print("@@" + json.dumps({{"seconds": out, "heavy": heavy}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "AQ_TASK_RETRIES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.rsplit("@@", 1)[1])
    assert set(result["seconds"]) == set(DAG_FILES)
    slow = {name: s for name, s in result["seconds"].items() if s >= 0.5}
    assert not slow, f"DAG files slower than 0.5 s to import: {slow}"
    assert result["heavy"] == [], f"DAG files import {result['heavy']} at parse time"
