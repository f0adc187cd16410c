"""docker-compose.yml as YAML (no Docker here): same configs, ports and commands as locally."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from serving import proxy
from stack import airflow_celery, airflow_local, serving_local
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PORTS = Ports()  # the committed configs use the default ports
AIRFLOW_PARTS = ("airflow-api-server", "airflow-dag-processor", "airflow-scheduler",
                 "airflow-triggerer")
WORKERS = ("airflow-worker-1", "airflow-worker-2")
SCALE_OUT = ("postgres", "redis", *WORKERS)  # compose profile `celery`


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(("./", "/")):
            mounts.append((source, target))
    return mounts


def test_the_whole_stack_is_there():
    assert {
        "pushgateway", "prometheus", "alertmanager", "alert-webhook", "node-exporter", "grafana",
        "airflow-init", *AIRFLOW_PARTS, "serving", "serving-proxy",
        "serving-proxy-metrics", *SCALE_OUT,
    } <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_host_network_and_loopback_only(name):
    """Host networking keeps the configs' 127.0.0.1 addresses valid; nothing binds beyond it."""
    service = SERVICES[name]
    assert service["network_mode"] == "host"
    assert "ports" not in service  # published ports would bypass the loopback binding
    text = yaml.safe_dump(service)
    assert "0.0.0.0" not in text
    for address in re.findall(
            r"(?:listen-address=|listen_addresses=|--bind[ ,\n-]*|--host[ ,\n-]*)(\S+)", text):
        if address:  # or a unix socket in the project (gunicorn behind nginx)
            assert address.startswith(("127.0.0.1", "unix:/opt/aq/.stack/")), (name, address)


def test_mounted_config_files_are_the_repositorys_own():
    """The same files the local stack reads, mounted read-only where they are config."""
    mounts = {name: dict(bind_mounts(s)) for name, s in SERVICES.items()}
    assert mounts["prometheus"]["./prometheus"] == "/etc/prometheus"
    assert mounts["alertmanager"]["./prometheus/alertmanager.yml"] == (
        "/etc/alertmanager/alertmanager.yml")
    assert mounts["grafana"]["./grafana/provisioning"] == "/etc/grafana/provisioning"
    # grafana's dashboard provider reads the path the dashboards are mounted at
    provider = yaml.safe_load((REPO / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    assert mounts["grafana"]["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    for name, service in SERVICES.items():
        for source, _target in bind_mounts(service):
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_configs_point_at_the_compose_services():
    prometheus = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]}
    flags = " ".join(str(a) for s in SERVICES.values() for a in s.get("command", []))
    for port_name in ("pushgateway", "prometheus", "alertmanager", "node_exporter"):
        assert PORTS.address(port_name) in targets, port_name
        assert f"listen-address={PORTS.address(port_name)}" in flags, port_name
    assert PORTS.address("serving") in targets
    assert SERVICES["serving-proxy"]["environment"]["AQ_SERVING_PORT"] == str(PORTS.serving)
    assert SERVICES["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    datasource = yaml.safe_load(
        (REPO / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == PORTS.url("prometheus")
    alertmanager = yaml.safe_load((REPO / "prometheus/alertmanager.yml").read_text())
    hooks = {h["url"] for r in alertmanager["receivers"] for h in r.get("webhook_configs", [])}
    assert hooks
    assert all(h.startswith(PORTS.url("webhook")) for h in hooks)
    assert ["--port", str(PORTS.webhook)] == SERVICES["alert-webhook"]["command"][3:5]


def compose_form(command: list[str]) -> list[str]:
    """A local command line as the compose file writes it: the program by name, files of the
    checkout relative to it (the working directory /opt/aq is the checkout)."""
    def arg(value: str) -> str:
        path = Path(value)
        return path.relative_to(REPO).as_posix() if path.is_absolute() and path.is_relative_to(
            REPO) else value

    return [Path(command[0]).name, *(arg(a) for a in command[1:])]


def test_airflow_parts_run_the_local_commands_on_one_prepared_config():
    """Same command lines as stack/airflow_local.py, after its `prepare` succeeded."""
    local = airflow_local.commands(PORTS)
    for part in AIRFLOW_PARTS:
        command = SERVICES[part]["command"]
        assert command == compose_form(local[part]), part
        assert SERVICES[part]["depends_on"]["airflow-init"]["condition"] == (
            "service_completed_successfully")
        assert SERVICES[part]["environment"]["AIRFLOW_HOME"] == "/opt/aq/.airflow"
        assert SERVICES[part]["environment"]["AQ_PROJECT_DIR"] == "/opt/aq"
    assert SERVICES["airflow-init"]["command"] == ["python", "-m", "stack", "prepare"]
    assert SERVICES["airflow-init"]["restart"] == "no"
    pushgateway = SERVICES["airflow-scheduler"]["environment"]["AQ_PUSHGATEWAY_URL"]
    assert pushgateway == PORTS.url("pushgateway")


def test_serving_is_gunicorn_on_its_socket_behind_the_local_nginx_command():
    """The same command lines as stack/serving_local.py for a project at /opt/aq."""
    paths = ProjectPaths(Path("/opt/aq"))
    proxy_cmd = SERVICES["serving-proxy"]["command"]
    assert proxy_cmd[0] == "python"
    assert proxy_cmd[1:] == serving_local.proxy_command(paths)[1:]
    local = serving_local.command(paths)
    compose = SERVICES["serving"]["command"]
    assert Path(compose[0]).name == Path(local[0]).name == "gunicorn"
    assert compose[compose.index("-c") + 1] == "serving/gunicorn_conf.py"
    assert Path(local[local.index("-c") + 1]).relative_to(REPO).as_posix() == (
        "serving/gunicorn_conf.py")
    assert compose[compose.index("--bind") + 1] == local[local.index("--bind") + 1] == (
        "unix:/opt/aq/.stack/serving/app.sock")
    assert compose[-1] == local[-1] == "serving.wsgi:app"
    assert SERVICES["serving-proxy"]["depends_on"] == ["serving"]
    config = serving_local.proxy_config(paths, PORTS)
    mtail = SERVICES["serving-proxy-metrics"]["command"]
    local_mtail = proxy.metrics_command(config, PORTS.host, PORTS.serving_proxy_metrics)
    assert mtail[0] == Path(local_mtail[0]).name == "mtail"
    assert mtail[mtail.index("--progs") + 1] == "serving/mtail"
    assert Path(local_mtail[local_mtail.index("--progs") + 1]) == REPO / "serving" / "mtail"
    local_mtail[local_mtail.index("--progs") + 1] = "serving/mtail"  # relative to /opt/aq
    assert mtail[1:] == local_mtail[1:]


def test_prepare_is_a_cli_command():
    from stack.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--help"])
    assert exit_info.value.code == 0


def test_images_match_the_debian_binaries_the_local_stack_runs():
    images = {name: s.get("image") for name, s in SERVICES.items()}
    assert images["prometheus"] == "prom/prometheus:v2.42.0"
    assert images["pushgateway"] == "prom/pushgateway:v1.5.1"
    assert images["alertmanager"] == "prom/alertmanager:v0.25.0"
    assert images["node-exporter"] == "prom/node-exporter:v1.5.0"
    assert all(":" in image and not image.endswith(":latest") for image in images.values())


def test_the_project_image_builds_from_files_in_the_repository():
    dockerfile = (REPO / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    # the tested versions from the lock file, hash-checked, then the project without resolving
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "--no-deps -e ." in dockerfile


def test_secrets_are_never_in_the_file():
    text = (REPO / "docker-compose.yml").read_text()
    assert "${GRAFANA_ADMIN_PASSWORD:?" in text  # required from the environment, no default
    assert not re.search(r"(?i)(jwt_secret|fernet_key|password)\s*[:=]\s*['\"]?\w{8,}", text)


def test_the_celery_profile_is_the_local_scale_out_profile():
    """`--profile celery`: PostgreSQL, Redis and two workers as stack/airflow_celery.py."""
    for name in SCALE_OUT:
        assert SERVICES[name]["profiles"] == ["celery"], name
    local = airflow_celery.worker_commands(PORTS)
    assert len(local) == len(WORKERS)
    urls = airflow_celery.connection_urls(PORTS, "${AQ_POSTGRES_PASSWORD:-}",
                                          "${AQ_REDIS_PASSWORD:-}")
    for name, (cmd, own_env) in zip(WORKERS, local.values(), strict=True):
        service = SERVICES[name]
        command = service["command"]
        assert command == compose_form(cmd), name
        env = service["environment"]
        assert env["AQ_CELERY_WORKER"] == own_env["AQ_CELERY_WORKER"]
        assert env["AQ_RATE_LIMIT_REDIS_URL"] == urls["rate_limit_url"]  # one quota for both
        assert env["AQ_PROJECT_DIR"] == "/opt/aq"
        assert env["AIRFLOW_HOME"] == "/opt/aq/.airflow"
        assert service["depends_on"]["airflow-init"]["condition"] == (
            "service_completed_successfully")
    postgres, redis = SERVICES["postgres"], SERVICES["redis"]
    assert postgres["command"] == ["postgres", "-c", f"listen_addresses={PORTS.host}",
                                   "-c", f"port={PORTS.postgres}"]
    assert postgres["environment"]["POSTGRES_USER"] == airflow_celery.DB_USER
    assert postgres["environment"]["POSTGRES_DB"] == airflow_celery.DB_NAME
    redis_command = " ".join(redis["command"])
    assert f"--bind {PORTS.host} --port {PORTS.redis}" in redis_command
    assert "--requirepass" not in redis_command  # on stdin, not in the process list
    # airflow-init writes the profile's airflow.cfg once both answer
    init = SERVICES["airflow-init"]
    assert init["environment"]["AQ_AIRFLOW_PROFILE"] == "${AQ_AIRFLOW_PROFILE:-local}"
    for service in ("postgres", "redis"):
        assert init["depends_on"][service] == {"condition": "service_healthy",
                                               "required": False}  # absent without the profile
        assert "healthcheck" in SERVICES[service]
    for variable in ("AQ_POSTGRES_PASSWORD", "AQ_REDIS_PASSWORD"):
        assert init["environment"][variable] == f"${{{variable}:-}}"
    assert {"postgres-data", "redis-data"} <= set(COMPOSE["volumes"])
