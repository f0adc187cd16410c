"""What the three DAGs share: task defaults, the raw-data Asset, the DVC runner, callbacks.

Imported by the DAG files at parse time, so only the standard library, ``airflow.sdk``
and the project's settings are imported at module level; the project's code (pandas,
scikit-learn, DVC) is imported inside the functions tasks call. Environment knobs come from
:class:`pipeline.settings.DagSettings` (read once per parse, a bad value refused naming the
variable):

- ``AQ_PROJECT_DIR``: the project the tasks work on (``pipeline.paths``);
- ``AQ_RETRAIN_SCHEDULE``: cron of the nightly retraining (default ``0 2 * * *``);
- ``AQ_INGEST_BATCH_SIZE``: locations per mapped ingestion task (default 2);
- ``AQ_BATCH_LOCATIONS``: locations per mapped preprocess / predict task, and per batch a
  step holds in memory (default 25, :class:`pipeline.settings.Settings`);
- ``AQ_TASK_RETRIES`` / ``AQ_TASK_RETRY_DELAY_S``: retries of every task (default 2, 60 s,
  doubled each retry up to 30 min);
- ``AQ_DVC_REMOTE``: the DVC remote new data is pushed to (default ``local``);
- ``AQ_MAX_SILENT_HOURS`` / ``AQ_MAX_QUARANTINE_SHARE``: ``ingest_quality``'s bounds
  (default 6 h, 0.5).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, get_current_context, task

from pipeline.settings import DagSettings

log = logging.getLogger(__name__)

OWNER = "aq-forecast"
DVC_POOL = "dvc"  # one slot: DVC takes a repository-wide lock, two DVC commands at once fail
START_DATE = datetime(2025, 1, 1, tzinfo=UTC)
RAW_DATA = Asset(name="aq_raw_data", uri="aq://project/data", group="aq")
DEFAULT_RETRAIN_SCHEDULE = DagSettings().retrain_schedule


def settings() -> DagSettings:
    """The DAG knobs from the environment (``AQ_*``); a bad value names its variable."""
    return DagSettings.from_env()


def retrain_schedule() -> str:
    return settings().retrain_schedule.strip() or DEFAULT_RETRAIN_SCHEDULE


def ingest_batch_size() -> int:
    return settings().ingest_batch_size


def dvc_remote() -> str:
    return settings().dvc_remote.strip() or "local"


def project_dir() -> Path:
    from pipeline.paths import find_project_dir

    return find_project_dir()


def push_task_failure(context: Mapping[str, Any]) -> None:
    """Push ``aq_step_success=0`` for the failed task's step (its task id).

    The steps push their own failures; this catches what happens around them:
    a DVC lock or command error, a timeout, an import error, a killed task.
    """
    from pipeline.io.metrics import MetricsReporter, StepRun

    ti = context["ti"]
    run = StepRun(ti.task_id)
    run.set("aq_step_success", 0)
    run.set("aq_step_last_failure_timestamp_seconds", time.time())
    if not MetricsReporter().push(run):
        log.warning("failure of %s.%s not pushed to a Pushgateway", ti.dag_id, ti.task_id)


def default_args(**overrides: Any) -> dict[str, Any]:
    """Owner, retries with exponential backoff, a timeout and the failure callback."""
    knobs = settings()
    args: dict[str, Any] = {
        "owner": OWNER,
        "retries": knobs.task_retries,
        "retry_delay": timedelta(seconds=knobs.task_retry_delay_s),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(minutes=30),
        "on_failure_callback": push_task_failure,
    }
    args.update(overrides)
    return args


def run_interval(context: Mapping[str, Any]) -> tuple[datetime, datetime]:
    """The run's data interval; the last complete hour when the run has none."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None and end > start:
        return start, end
    dag_run = context.get("dag_run")
    anchor = getattr(dag_run, "run_after", None) or datetime.now(UTC)
    end = anchor.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return end - timedelta(hours=1), end


def child_env(project: Path) -> dict[str, str]:
    """Environment for DVC and the stage commands it runs.

    ``python`` in dvc.yaml must be this interpreter (the venv), whether or not
    the venv is activated; the project dir is pinned for the steps, and the steps
    log without their own timestamp (the task log adds one) and unbuffered, so
    each line reaches the task log as it happens.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["AQ_PROJECT_DIR"] = str(project)
    env["AQ_LOG_FORMAT"] = "plain"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class DvcError(RuntimeError):
    """A DVC command failed; the message carries the command and its output tail."""


# DVC's advice after repro/add is for people at a git checkout, not for a scheduled task
_DVC_ADVICE = re.compile(
    r"^\s*(To track the changes with git, run:|git add \S|To enable auto staging, run:|"
    r"dvc config core\.autostage|Use `dvc push` to send your updates)"
)
_STEP_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")
_DVC_LEVEL = re.compile(r"^(ERROR|WARNING): (.*)$")
_BUSY = "is busy, it is being blocked by"


def relay_line(line: str) -> None:
    """One line of DVC or step output into the task log, at its own level, once stamped."""
    line = line.rstrip("\n")
    if not line.strip() or _DVC_ADVICE.match(line):
        return
    if match := _STEP_LINE.match(line):
        level, name, message = match.groups()
        logging.getLogger(name).log(getattr(logging, level), "%s", message)
    elif match := _DVC_LEVEL.match(line):
        log.log(getattr(logging, match.group(1)), "dvc: %s", match.group(2))
    elif line.startswith("error: "):
        log.error("%s", line)
    else:
        log.info("%s", line)


def run_dvc(*args: str, project: Path | None = None, busy_wait_s: float = 600.0) -> str:
    """Run ``dvc <args>`` in the project, streaming its output; raise with the tail on failure.

    ``--wait-for-lock`` makes a DVC command started outside Airflow's ``dvc``
    pool (a person running ``dvc repro``) a wait, not a failure; a "busy" answer
    (an ingestion writing data/raw holds DVC's read/write lock) is retried for at
    most ``busy_wait_s``. The task's execution timeout bounds the whole wait.
    """
    project = project or project_dir()
    dvc = Path(sys.executable).parent / "dvc"
    cmd = [str(dvc) if dvc.exists() else "dvc", "--wait-for-lock", *args]
    started = time.monotonic()
    delay = 1.0
    while True:
        log.info("running in %s: %s", project, " ".join(cmd))
        output: list[str] = []
        with subprocess.Popen(
            cmd, cwd=project, env=child_env(project), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line)
                del output[:-200]  # the tail is what an error message needs
                relay_line(line)
            returncode = proc.wait()
        text = "".join(output)
        if returncode == 0:
            log.info("dvc %s done in %.1fs", args[0], time.monotonic() - started)
            return text
        if _BUSY in text and time.monotonic() - started + delay < busy_wait_s:
            log.warning("data/raw is being written (DVC says busy); retrying in %.0f s", delay)
            time.sleep(delay)
            delay = min(30.0, delay * 2)
            continue
        tail = "\n".join(line.rstrip() for line in output[-30:])
        raise DvcError(f"`dvc {' '.join(args)}` exited with {returncode} in {project}:\n{tail}")


def data_dvc_md5(project: Path, full: bool = False):
    """The md5 of data/ recorded in ``data.dvc`` (None if absent), or its whole ``outs`` entry."""
    import yaml

    path = Path(project) / "data.dvc"
    if not path.exists():
        return {} if full else None
    out = (yaml.safe_load(path.read_text()) or {}).get("outs", [{}])[0]
    return out if full else out.get("md5")


def repro_stage(stage: str) -> str:
    """``dvc repro --single-item <stage>``: run one stage of dvc.yaml so dvc.lock records it."""
    return run_dvc("repro", "--single-item", stage)


def location_batches() -> list[str]:
    """The configured locations in batches of ``AQ_BATCH_LOCATIONS``, each ``a,b,c``."""
    from pipeline.config import load_params
    from pipeline.io.feature_store import location_batches as batches
    from pipeline.paths import ProjectPaths
    from pipeline.settings import Settings

    ids = load_params(ProjectPaths(project_dir()).params).location_ids
    return [",".join(batch) for batch in batches(ids, Settings.from_env().batch_locations)]


def run_step(step: str, **options: Any) -> Any:
    """``python -m pipeline <step>`` in this task's process (``run(ctx, **options)``)."""
    import importlib

    from pipeline.context import Context

    module = importlib.import_module(f"pipeline.steps.{step}")
    return module.run(Context.load(project_dir()), **options)


def mapped_stage(stage: str, timeout: timedelta = timedelta(minutes=30)):
    """A DVC stage run as batches of locations (one mapped task each, on any worker), then
    one task in the ``dvc`` pool that combines them and records the stage in ``dvc.lock``.

    The combining task holds DVC's read lock on ``data/raw`` (ingestion waits) while it
    runs ``python -m pipeline <stage> --finalize`` (which rebuilds any location whose raw
    data changed after its batch read it) and ``dvc commit --force <stage>``: dvc.lock then
    records the data the outputs were built from, as ``dvc repro`` would. Returns the
    first and the last task.
    """

    @task(task_id=f"plan_{stage}_batches", execution_timeout=timedelta(minutes=5),
          doc_md="the configured locations in batches of `AQ_BATCH_LOCATIONS`")
    def plan_batches() -> list[str]:
        if stage == "predict":
            from pipeline.context import Context
            from pipeline.steps.forecasting import clear_pending

            clear_pending(Context.load(project_dir()))
        return location_batches()

    @task(task_id=f"{stage}_batch", map_index_template="{{ batch }}",
          execution_timeout=timeout,
          doc_md=f"`python -m pipeline {stage} --locations <batch>`")
    def run_batch(locations: str) -> dict:
        context = get_current_context()
        context["batch"] = locations  # type: ignore[typeddict-unknown-key]
        return run_step(stage, locations=locations)

    @task(task_id=stage, pool=DVC_POOL, execution_timeout=timeout,
          doc_md=f"`python -m pipeline {stage} --finalize`, then `dvc commit --force {stage}`")
    def combine(_done: list[dict]) -> None:
        from pipeline.io.storage import dvc_read_lock
        from pipeline.paths import ProjectPaths

        with dvc_read_lock(ProjectPaths(project_dir()).raw_dir):
            run_step(stage, finalize_only=True)
            run_dvc("commit", "--force", stage)

    plan = plan_batches()
    return plan, combine(run_batch.expand(locations=plan))


def stage_task(stage: str, timeout: timedelta = timedelta(minutes=30)):
    """An Airflow task running one DVC stage (in the ``dvc`` pool)."""

    @task(task_id=stage, pool=DVC_POOL, execution_timeout=timeout,
          doc_md=f"`dvc repro --single-item {stage}` (runs `python -m pipeline {stage}`)")
    def run_stage() -> None:
        repro_stage(stage)

    return run_stage()
