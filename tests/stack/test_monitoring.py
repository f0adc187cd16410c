"""The local monitoring stack under supervisord: real binaries on free ports, 127.0.0.1 only,
stopped cleanly; ``python -m stack start|status|stop`` as ``make run|status|stop`` call it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.paths import ProjectPaths
from stack import monitoring
from stack.supervisor import Supervisor, proc_stat, session_members
from stack.webhook import iter_alerts
from tests.monitoring import free_ports, http_json, prom_query, running_stack, wait_until

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]
STACK_SERVICES = {"webhook", "alertmanager", "pushgateway", "node_exporter", "prometheus"}


def listening_sockets(pids: set[int]) -> list[tuple[str, str, int]]:
    """(protocol, local address, pid) of every listening TCP/UDP socket of ``pids``."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.fail("`ss` (iproute2) is needed to check what the stack listens on")
    found = []
    for proto, flag in (("tcp", "-ltnpH"), ("udp", "-lunpH")):
        out = subprocess.run([ss, flag], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            fields = line.split()
            local = fields[3]
            for pid in map(int, re.findall(r"pid=(\d+)", line)):
                if pid in pids:
                    found.append((proto, local, pid))
    return found


def daemon_record(supervisor: Supervisor) -> dict:
    """supervisord's pid and start time, as the launcher recorded them when it started it."""
    return json.loads(supervisor.record_file.read_text())


def service_pids(record: dict) -> set[int]:
    """Every process of the stack: supervisord's session (its programs and their children)."""
    return set(session_members(record["pid"], record["start_ticks"]))


def test_stack_binds_loopback_only_answers_and_stops_cleanly(tmp_path):
    with running_stack(tmp_path) as st:
        assert set(st.supervisor.names()) == STACK_SERVICES
        assert all(s["running"] for s in st.supervisor.status().values())
        record = daemon_record(st.supervisor)
        pids = service_pids(record)
        assert len(pids) > len(STACK_SERVICES)  # the programs and supervisord itself
        sockets = listening_sockets(pids)
        # every service listens, and only on 127.0.0.1 (no gossip port, no 0.0.0.0 / [::])
        assert {port for _, local, _ in sockets for port in [int(local.rsplit(":", 1)[1])]} \
            >= {getattr(st.ports, n) for n in
                ("prometheus", "pushgateway", "alertmanager", "node_exporter", "webhook")}
        wrong = [s for s in sockets if not s[1].startswith("127.0.0.1:")]
        assert wrong == []

        # Prometheus scrapes the stack's own targets and loaded the rules
        def targets_up():
            up = {r["metric"]["job"]: r["value"][1] for r in prom_query(st.prometheus, "up")}
            expected = {"pushgateway": "1", "prometheus": "1", "alertmanager": "1", "node": "1",
                        "serving": "0",  # no serving app in this test: reported down, not hidden
                        "serving_proxy": "0",  # nor its front door's mtail
                        "airflow": "0"}  # nor Airflow (tests/dags/ scrape it)
            return up if up == expected else None

        wait_until(targets_up, timeout=30, what="the stack's targets to be scraped")
        groups = http_json(f"{st.prometheus}/api/v1/rules")["data"]["groups"]
        assert {g["name"] for g in groups} >= {"aq_pipeline", "aq_pipeline_alerts",
                                               "aq_infra_alerts"}
        ams = http_json(f"{st.prometheus}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
        assert [a["url"].split("/api")[0] for a in ams] == [st.ports.url("alertmanager")]
    assert service_pids(record) == set()
    assert listening_sockets(pids) == []
    assert st.supervisor.names() == []


def test_an_alert_posted_to_alertmanager_reaches_the_webhook_receiver(tmp_path):
    """Alertmanager -> webhook path, routed by severity (the fast config groups within 1 s)."""
    import json
    import urllib.request

    with running_stack(tmp_path) as st:
        alert = [{"labels": {"alertname": "PipelineStepFailing", "severity": "critical",
                             "category": "pipeline", "step": "train", "job": "aq_test"},
                  "annotations": {"summary": "test"}}]
        req = urllib.request.Request(
            f"{st.ports.url('alertmanager')}/api/v2/alerts", data=json.dumps(alert).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=5).close()
        got = wait_until(lambda: list(iter_alerts(st.alerts_log)), timeout=30,
                         what="the webhook receiver to record the alert")
        path, received = got[0]
        assert path == "/critical"
        assert received["labels"]["step"] == "train"


def post_alerts(alertmanager_url: str, alerts: list[dict]) -> None:
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{alertmanager_url}/api/v2/alerts", data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=5).close()


@pytest.mark.parametrize(
    ("cause", "effect", "elsewhere"),
    [
        # a down Pushgateway explains every stale step
        ({"alertname": "PushgatewayDown", "severity": "critical", "job": "pushgateway"},
         {"alertname": "PipelineStepStale", "severity": "warning", "job": "aq_test",
          "step": "ingest"}, "suppressed"),
        # a down Airflow explains an ageing champion
        ({"alertname": "TargetDown", "severity": "warning", "job": "airflow"},
         {"alertname": "ChampionNotRefreshed", "severity": "warning", "job": "aq_test"},
         "suppressed"),
        # a serving app that cannot load the new champion keeps the old one: one alert
        ({"alertname": "ServingModelReloadFailing", "severity": "warning", "job": "serving"},
         {"alertname": "ServingModelOutdated", "severity": "warning", "job": "serving"},
         "suppressed"),
        # a failing step explains its own staleness, not another step's
        ({"alertname": "PipelineStepFailing", "severity": "critical", "job": "aq_test",
          "step": "train"},
         {"alertname": "PipelineStepStale", "severity": "warning", "job": "aq_test",
          "step": "train"}, "active"),
    ],
)
def test_a_cause_inhibits_the_alerts_it_causes(tmp_path, cause, effect, elsewhere):
    """Real Alertmanager: the effect is suppressed and never notified, the cause is."""
    other = {**effect, "step": "drift"}  # the same alert for another step
    with running_stack(tmp_path) as st:
        am = st.ports.url("alertmanager")
        post_alerts(am, [{"labels": cause}])
        wait_until(lambda: list(iter_alerts(st.alerts_log)), timeout=30,
                   what="the cause to be notified")
        post_alerts(am, [{"labels": effect}, {"labels": other}])

        def states():
            return {a["labels"].get("step"): a["status"]["state"]
                    for a in http_json(f"{am}/api/v2/alerts")
                    if a["labels"]["alertname"] == effect["alertname"]}

        wanted = {effect.get("step"): "suppressed", "drift": elsewhere}
        wait_until(lambda: states() == wanted, timeout=30, what=f"alert states {wanted}")
        time.sleep(3)  # several group intervals of the fast config
        notified = {(a["labels"]["alertname"], a["labels"].get("step"))
                    for _, a in iter_alerts(st.alerts_log)}
        assert (cause["alertname"], cause.get("step")) in notified
        assert (effect["alertname"], effect.get("step")) not in notified
        assert ((effect["alertname"], "drift") in notified) == (elsewhere == "active")


def run_ops(args: list[str], project: Path, ports_env: dict[str, str]):
    env = {**os.environ, **ports_env, "AQ_PROJECT_DIR": str(project),
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "stack", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_start_is_idempotent_writes_env_and_stop_stops_what_it_started(tmp_path):
    from tests.conftest import write_params

    project = tmp_path / "project"
    project.mkdir()
    write_params(project)  # the serving app reads the project's locations
    ports = free_ports()
    env = ports.env()
    supervisor = Supervisor(project / ".stack")
    try:
        first = run_ops(["start", "--no-airflow", "--no-mlflow", "--no-mlserver"], project, env)
        assert first.returncode == 0, first.stderr
        assert ports.url("prometheus") in first.stdout
        env_file = (project / ".stack" / "env").read_text()
        assert f"export AQ_PUSHGATEWAY_URL={ports.url('pushgateway')}\n" in env_file
        assert f"export AQ_PROMETHEUS_PORT={ports.prometheus}\n" in env_file
        assert ports.url("serving") in first.stdout
        pids = {n: supervisor.pid(n) for n in supervisor.names()}
        assert set(pids) == STACK_SERVICES | {"serving", "serving_proxy", "serving_proxy_metrics"}
        # serving binds loopback only, like the rest: nginx on the port, gunicorn on a unix
        # socket in a directory only this user enters
        socket_dir = project / ".stack" / "serving"
        assert (socket_dir / "app.sock").is_socket()
        assert socket_dir.stat().st_mode & 0o777 == 0o700
        every = service_pids(daemon_record(supervisor))
        assert {local for _, local, _ in listening_sockets(every)} == {
            f"127.0.0.1:{getattr(ports, p)}" for p in
            ("pushgateway", "prometheus", "alertmanager", "webhook", "node_exporter", "serving",
             "serving_proxy_metrics")}

        again = run_ops(["start", "--no-airflow", "--no-mlflow", "--no-mlserver"], project, env)
        assert again.returncode == 0, again.stderr
        assert {n: supervisor.pid(n) for n in supervisor.names()} == pids  # left alone
        assert ports.url("pushgateway") in again.stdout

        status = run_ops(["status"], project, env)  # = make status: supervisorctl status
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("RUNNING") == len(STACK_SERVICES) + 3
        daemon = supervisor.daemon_pid()

        # an unrelated process with a pid file not written by us is never touched
        bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                     start_new_session=True)
        (project / ".stack" / "bystander.pid").write_text(str(bystander.pid))
        stopped = run_ops(["stop"], project, env)
        assert stopped.returncode == 0, stopped.stderr
        assert bystander.poll() is None
        bystander.kill()
        bystander.wait()
        assert supervisor.names() == []
        assert not (project / ".stack" / "env").exists()
        assert proc_stat(daemon) is None or proc_stat(daemon)[0] == "Z"  # supervisord too
        assert session_members(daemon, 0) == []
        for pid in pids.values():  # gone, or a zombie (names like "gunicorn: master" have spaces)
            assert not Path(f"/proc/{pid}").exists() or \
                Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        nothing = run_ops(["stop"], project, env)
        assert "nothing was running" in nothing.stdout
        down = run_ops(["status"], project, env)
        assert down.returncode == 3
        assert "not running" in down.stdout
    finally:
        supervisor.stop_all()


def test_a_port_taken_by_someone_else_is_a_clear_error_and_nothing_is_left(tmp_path):
    import socket

    ports = free_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.prometheus))
        squatter.listen(1)
        paths = ProjectPaths(tmp_path)
        with pytest.raises(monitoring.StackError,
                           match=f"AQ_PROMETHEUS_PORT.*|{ports.prometheus}"):
            monitoring.start(paths, ports, fast=True, configs=REPO / "prometheus")
    supervisor = Supervisor(paths.stack_dir)
    assert supervisor.names() == []  # what it had started before the error is stopped again
    assert not supervisor.running()


def test_what_make_run_prints_exists_in_the_debian_builds_and_shows_no_secret(tmp_path):
    """Debian's Prometheus has only /classic/* pages and its Alertmanager no web UI at all;
    the Airflow password stays in its 0600 file, off the screen (and CI logs)."""
    from stack.__main__ import describe

    info = {"AQ_PROMETHEUS_URL": "http://127.0.0.1:9090",
            "AQ_ALERTMANAGER_URL": "http://127.0.0.1:9093",
            "AQ_RUNBOOK_URL": "http://127.0.0.1:9095/runbook",
            "airflow UI": "http://127.0.0.1:8080", "airflow user": "admin",
            "airflow password": "s3cret-Pa55", "airflow password file": "/p/.airflow/pw"}
    text = "\n".join(describe(info, ProjectPaths(tmp_path)))
    assert "http://127.0.0.1:9090/classic/alerts" in text
    assert "http://127.0.0.1:9090/classic/targets" in text
    assert "amtool --alertmanager.url=http://127.0.0.1:9093 alert query" in text
    assert "http://127.0.0.1:9093\n" not in text + "\n"  # no bare link to a page that is not there
    assert "cat /p/.airflow/pw" in text
    assert "s3cret-Pa55" not in text
