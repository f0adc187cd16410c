"""Is the schedule running? DAG runs and task instances by state (airflow-exporter),
what waits, step durations, links into the Airflow UI."""

from __future__ import annotations

from grafana_foundation_sdk.models import units

from grafana.board import OUTCOME, UP, Board, Query, link, thresholds, value_map
from grafana.parts import (
    FAILED_STEPS,
    alert_links,
    bar_options,
    board,
    by_name,
    organize,
    query_variable,
    series_options,
    series_style,
    stat_options,
    table_options,
)

AIRFLOW_STATES = value_map(("success", "success", "green"), ("failed", "failed", "red"),
                           ("running", "running", "blue"), ("queued", "queued", "yellow"))


def build() -> Board:
    b = board("aq-airflow", "Air quality: Airflow",
              "Is the schedule running? DAG runs and task instances by state (airflow-exporter "
              "reads Airflow's database on each scrape), what waits, how long steps take, and "
              "links into the Airflow UI.",
              query_variable("dag_id", "DAG", "airflow_dag_status"),
              annotations=(FAILED_STEPS,))
    dag = 'dag_id=~"$dag_id"'
    b.row("DAG runs")
    b.add("table", "Last run of each DAG",
          [Query(f"max by (dag_id, status, paused) (airflow_dag_last_status{{{dag}}} == 1)",
                 instant=True, table=True)], w=12,
          transformations=[organize({"dag_id": "DAG", "status": "last run"},
                                    ("Time", "Value"))],
          overrides=[by_name("last run", ("mappings", AIRFLOW_STATES),
                             ("custom.cellOptions", {"type": "color-background"})),
                     by_name("DAG", ("links", [link(
                         "Open ${__data.fields.DAG} in Airflow",
                         "${airflow_url}/dags/${__data.fields.DAG}", blank=True)]))],
          options=table_options("DAG"),
          description="State of each DAG's most recently updated run, and whether the DAG is "
                      "paused; a DAG opens in the Airflow UI.")
    b.add("bargauge", "Runs kept by state",
          [Query(f"sum by (status) (airflow_dag_status{{{dag}}})", "{{status}}", instant=True)],
          w=6, options=bar_options(), overrides=[
              by_name("failed", ("color", {"mode": "fixed", "fixedColor": "red"})),
              by_name("success", ("color", {"mode": "fixed", "fixedColor": "green"}))],
          color={"mode": "fixed", "fixedColor": "blue"},
          description="DAG runs Airflow keeps, by state.")
    b.add("stat", "Failed runs kept",
          [Query(f'sum(airflow_dag_status{{{dag},status="failed"}}) or vector(0)', "failed")],
          w=6, thresholds=thresholds("green", (1, "red")), options=stat_options("value"),
          links=[link("DAG runs in Airflow", "${airflow_url}/dag_runs", blank=True)],
          description="Failed DAG runs among those kept; each failed pipeline task also pushes "
                      "aq_step_success 0 (PipelineStepFailing).")
    b.add("timeseries", "Longest running run",
          [Query(f"airflow_dag_run_duration{{{dag}}}", "{{dag_id}}", empty_ok="always")], w=12,
          unit=units.Seconds, custom=series_style(), options=series_options(),
          hint="No DAG run is running now.",
          description="How long each DAG's longest running run has been running (a stuck run "
                      "keeps growing).")
    b.add("timeseries", "Queued and scheduled task instances",
          [Query(f'sum by (dag_id) (airflow_task_status{{{dag},status=~"queued|scheduled"}})',
                 "{{dag_id}}", empty_ok="always")], w=12, custom=series_style(),
          options=series_options(), hint="Nothing waits: no task instance is queued or "
                                         "scheduled.",
          description="Task instances waiting for a slot (the one-slot dvc pool serialises "
                      "DVC work, so retraining and ingestion queue behind each other).")

    b.row("Tasks")
    b.add("table", "Task instances by state",
          [Query(f"sum by (dag_id, task_id, status) (airflow_task_status{{{dag}}})",
                 instant=True, table=True)], w=12, h=10,
          transformations=[organize({"dag_id": "DAG", "task_id": "task", "Value": "instances"},
                                    ("Time",))],
          overrides=[by_name("status", ("mappings", AIRFLOW_STATES),
                             ("custom.cellOptions", {"type": "color-text"})),
                     by_name("task", ("links", [link(
                         "Open ${__data.fields.task} in Airflow",
                         "${airflow_url}/dags/${__data.fields.DAG}/tasks/${__data.fields.task}",
                         blank=True)]))],
          options=table_options("DAG"),
          description="Task instances Airflow keeps per task and state; a task opens in the "
                      "Airflow UI.")
    b.add("bargauge", "Failed task instances",
          [Query(f'sum by (dag_id, task_id) (airflow_task_status{{{dag},'
                 'status=~"failed|upstream_failed"})', "{{dag_id}} {{task_id}}",
                 instant=True, empty_ok="always")], w=6, h=10,
          thresholds=thresholds("red"), options=bar_options(),
          hint="No task instance failed.",
          data_links=[link("Open the task in Airflow",
                           "${airflow_url}/dags/${__field.labels.dag_id}/tasks/"
                           "${__field.labels.task_id}", blank=True)],
          description="Failed (or upstream-failed) task instances per task.")
    b.add("timeseries", "Running task instances",
          [Query(f'sum by (dag_id) (airflow_task_status{{{dag},status="running"}})',
                 "{{dag_id}}", empty_ok="always")], w=6, h=10, custom=series_style(),
          options=series_options(), hint="No task instance is running.",
          description="Task instances running now.")

    b.row("Pipeline steps the tasks run")
    b.add("stat", "Step outcome (last run)", [Query("aq_step_success", "{{step}}")], w=12,
          mappings=OUTCOME, thresholds=thresholds("red", (1, "green")), options=stat_options(),
          alert="PipelineStepFailing", links=alert_links("PipelineStepFailing"),
          description="Pushed by each step (and by a DAG's failure callback, under the task "
                      "id) when it ends.")
    b.add("timeseries", "Step duration", [Query("aq_step_duration_seconds", "{{step}}")], w=12,
          unit=units.Seconds, custom=series_style(), options=series_options(),
          description="Wall time of each step's last run: airflow-exporter has no task "
                      "durations, the steps report their own.")

    b.row("Airflow API server")
    b.add("stat", "Airflow scraped", [Query('up{job="airflow"}', "airflow")], w=6,
          mappings=UP, thresholds=thresholds("red", (1, "green")),
          options=stat_options("value"), alert="TargetDown", links=alert_links("TargetDown"),
          description="Prometheus scrapes /admin/metrics/ on the API server every 30 s.")
    b.add("timeseries", "Metrics scrape duration",
          [Query('scrape_duration_seconds{job="airflow"}', "scrape")], w=9,
          unit=units.Seconds, custom=series_style(), options=series_options(),
          description="airflow-exporter queries the metadata database on each scrape: slow "
                      "scrapes mean a loaded database.")
    b.add("timeseries", "API server memory",
          [Query('process_resident_memory_bytes{job="airflow"}', "resident")], w=9,
          unit=units.BytesIEC, custom=series_style(), options=series_options(),
          description="Resident memory of the API server process that serves the metrics.")
    return b
