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


def relay_warnings(context: Mapping[str, Any] | None = None) -> None:
    """Before each task: Python warnings go to its log at WARNING, once per distinct message."""
    from pipeline.pywarnings import relay_warnings_once

    relay_warnings_once()


# ---- a worker on another host (docs/airflow.md, "Workers on other hosts"): each task runs
# in a workspace of its own, the home project mirrored into it before, what the task wrote
# sent back after it succeeded (or ended skipped); on the home host both hooks do nothing
_MIRROR: dict[str, Any] = {}


def mirror_in(context: Mapping[str, Any]) -> None:
    """Before a task on a worker host: claim a workspace, mirror the home project into it."""
    from pipeline.settings import CelerySettings, HostsSettings

    hosts = HostsSettings.from_env()
    if not hosts.worker_host:
        return
    from pipeline.io.mirror import Mirror, Workspace

    workspace = Workspace.claim(project_dir(), CelerySettings.from_env().concurrency)
    os.environ["AQ_PROJECT_DIR"] = str(workspace.root)  # this task's process and its children
    mirror = Mirror(hosts.home_url, hosts.state_password.get_secret_value(), workspace.root)
    _MIRROR.update(mirror=mirror, before=mirror.pull(), workspace=workspace)


def mirror_out(context: Mapping[str, Any], result: Any = None) -> None:
    """After a task on a worker host succeeded or skipped: send back what it wrote."""
    mirror = _MIRROR.pop("mirror", None)
    if mirror is not None:
        mirror.push(_MIRROR.pop("before"))


def default_args(**overrides: Any) -> dict[str, Any]:
    """Owner, retries with exponential backoff, a timeout, the failure callback, and the
    warnings relay before each task, the mirror hooks of a worker on another host."""
    knobs = settings()
    args: dict[str, Any] = {
        "owner": OWNER,
        "retries": knobs.task_retries,
        "retry_delay": timedelta(seconds=knobs.task_retry_delay_s),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(minutes=30),
        "on_failure_callback": push_task_failure,
        "on_execute_callback": relay_warnings,
        "pre_execute": mirror_in,
        "post_execute": mirror_out,
        "on_skipped_callback": mirror_out,
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
    records the data the outputs were built from, as ``dvc repro`` would. ``predict``
    pins the champion in its plan: every batch and the finalisation use that version, so
    a promotion during the run changes nothing in it (the next run takes the new one).
    Returns the plan's output and the last task.
    """

    pinned = stage == "predict"  # one model from the first batch to the finalisation

    @task(task_id=f"plan_{stage}_batches", execution_timeout=timedelta(minutes=5),
          doc_md="the configured locations in batches of `AQ_BATCH_LOCATIONS`"
          + ("; pins the champion the whole run forecasts with" if pinned else ""))
    def plan_batches() -> list[dict]:
        model = None
        if pinned:
            from pipeline.context import Context
            from pipeline.io.registry import Registry
            from pipeline.steps.forecasting import clear_pending

            ctx = Context.load(project_dir())
            clear_pending(ctx)
            model = Registry(ctx.paths).champion_version()
            log.info("this run forecasts with %s (the champion now), whatever is promoted "
                     "before it ends", model)
        return [{"locations": batch, "model": model} for batch in location_batches()]

    @task(task_id=f"{stage}_batch", map_index_template="{{ batch }}",
          execution_timeout=timeout,
          doc_md=f"`python -m pipeline {stage} --locations <batch>`")
    def run_batch(locations: str, model: str | None) -> dict:
        context = get_current_context()
        context["batch"] = locations  # type: ignore[typeddict-unknown-key]
        return run_step(stage, locations=locations, **({"model": model} if pinned else {}))

    @task(task_id=stage, pool=DVC_POOL, execution_timeout=timeout,
          doc_md=f"`python -m pipeline {stage} --finalize`, then `dvc commit --force {stage}`")
    def combine(_done: list[dict], planned: list[dict]) -> None:
        from pipeline.errors import CatchingUpError
        from pipeline.io.storage import dvc_read_lock
        from pipeline.paths import ProjectPaths

        model = planned[0]["model"] if planned else None
        options = {"model": model} if pinned else {}
        while True:
            # preprocess: the training snapshot is taken only while no catch-up is under way;
            # one that began after the batches writes first (the lock is released meanwhile)
            # and the finalisation rebuilds what it changed. The task's timeout bounds it.
            try:
                with dvc_read_lock(ProjectPaths(project_dir()).raw_dir):
                    if stage != "preprocess" or not (pending := catch_ups_in_progress()):
                        run_step(stage, finalize_only=True, **options)
                        record_stage(stage, model)
                        return
            except CatchingUpError:  # one registered between the check and the step's own
                pending = catch_ups_in_progress()
            from pipeline.io.catchup import describe

            log.warning("an ingestion is catching the store up (%s): waiting for it before "
                        "taking the training snapshot", describe(pending))
            wait_for_settled_store(timeout.total_seconds())

    plan = plan_batches()
    return plan, combine(run_batch.expand_kwargs(plan), plan)


def record_stage(stage: str, model: str | None) -> None:
    """``dvc commit --force <stage>``, unless the outputs were made with a champion that is no
    longer the one ``dvc.lock`` would record (promoted during the run): then the stage stays
    changed, so the next run or ``dvc repro`` forecasts with the new champion."""
    if model is not None:
        from pipeline.io.registry import Registry
        from pipeline.paths import ProjectPaths

        now = Registry(ProjectPaths(project_dir())).champion_version()
        if now != model:
            log.warning("the champion became %s while this run forecast with %s: forecasts "
                        "published, dvc.lock left as it was (the next run forecasts with %s)",
                        now, model, now)
            return
    run_dvc("commit", "--force", stage)


SETTLE_POLL_S = 15.0


def catch_ups_in_progress() -> list:
    """The locations an ingestion is catching up right now (``pipeline.io.catchup``)."""
    from pipeline.config import load_params
    from pipeline.io.catchup import CatchUpLog
    from pipeline.paths import ProjectPaths

    paths = ProjectPaths(project_dir())
    return CatchUpLog(paths.ingest_state_dir, load_params(paths.params).source.kind
                      ).in_progress()


def wait_for_settled_store(timeout_s: float) -> None:
    """Poll until no catch-up is under way; raise after ``timeout_s``."""
    from pipeline.errors import CatchingUpError
    from pipeline.io.catchup import describe

    deadline = time.monotonic() + timeout_s
    while pending := catch_ups_in_progress():
        if time.monotonic() > deadline:
            raise CatchingUpError(f"still catching up after {timeout_s:.0f} s: "
                                  f"{describe(pending)}")
        time.sleep(SETTLE_POLL_S)


STALE_SLOT = timedelta(hours=1)  # a nightly run started later than this missed its slot
SETTLE_WAIT = timedelta(minutes=100)  # how long a retrain waits for the store to settle


def settle_decision(*, scheduled: bool, slot: datetime, started: datetime, now: datetime,
                    pending: list, behind: dict[str, datetime]) -> tuple[bool, str]:
    """(train now?, why not): the rule a retrain waits by (docs/airflow.md).

    - while an ingestion is catching the store up (``pending``), wait;
    - a scheduled run that started more than :data:`STALE_SLOT` after its slot (the DAG was
      paused or the scheduler down then, as at ``make run``'s hand-over) also waits until
      the store is caught up to the hour it started (``behind``: the locations stored, or
      answered, up to an earlier hour);
    - after :data:`SETTLE_WAIT` of waiting the run gives up: the reason is the skip's.
    """
    from pipeline.io.catchup import describe

    waiting = []
    if pending:
        waiting.append(f"an ingestion is catching up {describe(pending)}")
    if scheduled and started - slot > STALE_SLOT and behind:
        shown = ", ".join(f"{loc} to {hour:%Y-%m-%dT%H:%M}Z"
                          for loc, hour in sorted(behind.items())[:5])
        waiting.append(f"this nightly slot ({slot:%Y-%m-%dT%H:%M}Z) started "
                       f"{(started - slot).total_seconds() / 3600:.1f} h late and the store "
                       f"is not caught up to {started:%Y-%m-%dT%H:00}Z: {shown}"
                       + (f" and {len(behind) - 5} more" if len(behind) > 5 else ""))
    if not waiting:
        return True, ""
    reason = "; ".join(waiting)
    if now - started > SETTLE_WAIT:
        return False, (f"not retrained: after {SETTLE_WAIT.total_seconds() // 60:.0f} min "
                       f"{reason}; the next run trains on the caught-up store")
    return False, reason


def stored_behind(hour: datetime, slack: timedelta) -> dict[str, datetime]:
    """Locations whose store (or catch-up cursor: a silent station) ends before
    ``hour - slack``, with where they end."""
    import pandas as pd

    from pipeline.config import load_params
    from pipeline.ingestion import CatchUpCursor
    from pipeline.io.storage import newest_observation
    from pipeline.paths import ProjectPaths

    paths = ProjectPaths(project_dir())
    params = load_params(paths.params)
    source = params.source.kind
    through = CatchUpCursor(paths.ingest_state_dir / f"catchup_{source}.json").read()
    wanted = pd.Timestamp(hour) - slack
    behind = {}
    for loc in params.location_ids:
        newest = newest_observation(paths.raw_dir, source, loc)
        points = [t for t in (None if newest is None else newest + pd.Timedelta(hours=1),
                              through.get(loc)) if t is not None]
        reached = max(points) if points else None
        if reached is None or reached < wanted:
            behind[loc] = (reached or pd.Timestamp(params.source.start, tz="UTC")
                           ).to_pydatetime()
    return behind


def stage_task(stage: str, timeout: timedelta = timedelta(minutes=30)):
    """An Airflow task running one DVC stage (in the ``dvc`` pool)."""

    @task(task_id=stage, pool=DVC_POOL, execution_timeout=timeout,
          doc_md=f"`dvc repro --single-item {stage}` (runs `python -m pipeline {stage}`)")
    def run_stage() -> None:
        repro_stage(stage)

    return run_stage()
