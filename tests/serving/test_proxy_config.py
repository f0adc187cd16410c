"""The nginx config of the serving app's front door: rendered from the settings, valid for nginx."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.settings import ServingSettings
from serving import proxy
from stack.supervisor import session_members
from tests.conftest import REPO, free_port


def config(tmp_path: Path, **env: str) -> proxy.ProxyConfig:
    return proxy.ProxyConfig.for_serving("127.0.0.1", free_port(), tmp_path / "app.sock",
                                         tmp_path / "proxy", ServingSettings.from_env(env))


def directive(text: str, name: str) -> list[str]:
    return re.findall(rf"^[ \t]*{name}[ \t]+([^;{{\n]+);", text, flags=re.MULTILINE)


@pytest.mark.process
def test_the_rendered_config_passes_nginx_t(tmp_path):
    cfg = config(tmp_path)
    proxy.write(cfg)
    check = subprocess.run(proxy.check_command(cfg), capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_loopback_only_and_every_file_under_the_prefix(tmp_path):
    cfg = config(tmp_path)
    text = proxy.render(cfg)
    assert directive(text, "listen") == [f"127.0.0.1:{cfg.listen_port}"]
    assert directive(text, "daemon") == ["off"]
    assert directive(text, "server") == [f"unix:{tmp_path / 'app.sock'} fail_timeout=0"]
    paths = [Path(p) for p in re.findall(r"(/[\w./-]+)", text) if p.startswith(str(tmp_path))]
    assert paths  # pid, temp paths, access log
    for name in ("pid", "client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path",
                 "uwsgi_temp_path", "scgi_temp_path"):
        (value,) = directive(text, name)
        assert Path(value).is_relative_to(cfg.prefix), name
    (access,) = directive(text, "access_log")
    assert access.split()[:2] == [str(cfg.prefix / "access.log"), "aq_json"]
    assert "/var/" not in text
    assert "/etc/" not in text


def test_deadlines_and_limits_come_from_the_serving_settings(tmp_path):
    text = proxy.render(config(tmp_path, AQ_SERVING_CLIENT_TIMEOUT_S="3",
                               AQ_SERVING_MAX_BODY_BYTES="1000", AQ_SERVING_CONN_PER_CLIENT="4",
                               AQ_SERVING_TIMEOUT_S="20"))
    assert directive(text, "client_header_timeout") == ["3s"]
    assert directive(text, "client_body_timeout") == ["3s"]
    assert directive(text, "client_max_body_size") == ["1000"]
    assert directive(text, "limit_conn") == ["per_client 4"]
    assert directive(text, "proxy_read_timeout") == ["20s"]
    assert directive(text, "proxy_request_buffering") == ["on"]
    assert directive(text, "proxy_buffering") == ["on"]
    assert "the body is larger than 1000 bytes" in text
    defaults = proxy.render(config(tmp_path))
    assert directive(defaults, "client_header_timeout") == ["5s"]
    settings = ServingSettings()
    assert directive(defaults, "client_max_body_size") == [str(settings.max_body_bytes)]
    assert directive(defaults, "limit_conn") == [f"per_client {settings.conn_per_client}"]


def test_bad_settings_are_refused_naming_the_variable():
    with pytest.raises(ValueError, match="AQ_SERVING_CONN_PER_CLIENT"):
        ServingSettings.from_env({"AQ_SERVING_CONN_PER_CLIENT": "many"})
    with pytest.raises(ValueError, match="AQ_SERVING_CLIENT_TIMEOUT_S"):
        ServingSettings.from_env({"AQ_SERVING_CLIENT_TIMEOUT_S": "0"})


def test_every_refusal_is_a_problem_document_once_nginx_fills_the_path(tmp_path):
    cfg = config(tmp_path)
    text = proxy.render(cfg)
    problems = cfg.problems()
    assert {p.code for p in problems} >= {400, 408, 413, 429, 502, 504}
    for problem in problems:
        assert f"error_page {problem.code} @problem_{problem.code};" in text
        body = json.loads(problem.json_template().replace("$problem_instance", "/v1/forecasts"))
        assert set(body) == {"type", "title", "status", "detail", "instance"}
        assert body["status"] == problem.status
        assert f"return {problem.status} '{problem.json_template()}';" in text


def test_a_socket_path_the_kernel_cannot_bind_is_refused(tmp_path):
    long = tmp_path / ("d" * 120) / "app.sock"
    cfg = proxy.ProxyConfig.for_serving("127.0.0.1", 8000, long, tmp_path / "proxy")
    with pytest.raises(proxy.ProxyError, match="unix socket takes"):
        proxy.render(cfg)


@pytest.mark.process
def test_the_cli_renders_for_the_environments_port(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "AQ_SERVING_PORT": str(port)}
    done = subprocess.run([sys.executable, "-m", "serving.proxy", "render", "--socket",
                           str(tmp_path / "app.sock"), "--prefix", str(tmp_path / "proxy")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "proxy" / "nginx.conf").read_text()
    assert directive(text, "listen") == [f"127.0.0.1:{port}"]


def access_line(uri: str, status: int, upstream: str) -> str:
    api = "v1" if uri.startswith("/v1/") else "other"
    origin = "app" if upstream else "proxy"
    return json.dumps({"time": "2026-01-01T00:00:00+00:00", "remote_addr": "127.0.0.1",
                       "method": "POST", "uri": uri, "status": status, "request_time": 0.004,
                       "request_length": 120, "bytes_sent": 300, "upstream_status": upstream,
                       "upstream_response_time": "0.004" if upstream else "",
                       "connection": 7, "api": api, "origin": origin},
                      separators=(",", ":"))


@pytest.mark.service
def test_mtail_counts_the_access_log_by_api_origin_and_status(tmp_path):
    log = tmp_path / "access.log"
    lines = [access_line("/v1/forecasts", 200, "200")] * 3 + [
        access_line("/v1/forecasts", 413, ""),
        access_line("/healthz", 200, "200"),
        access_line("/v1/forecasts", 502, ""),
        # a path cannot forge the fields the counter reads: nginx escapes its quotes
        access_line('/v1/x","status":500,"api":"other","origin":"app"}', 404, "404"),
    ]
    log.write_text("\n".join(lines) + "\n")
    cfg = config(tmp_path)
    cmd = proxy.metrics_command(cfg, "127.0.0.1", free_port())
    cmd[cmd.index("--logs") + 1] = str(log)
    done = subprocess.run([*cmd, "--one_shot", "--one_shot_format", "prometheus"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    counts = {tuple(re.findall(r'(\w+)="([^"]*)"', m.group(1))): float(m.group(2))
              for m in re.finditer(r"^aq_serving_proxy_responses_total\{([^}]*)\} (\S+)$",
                                   done.stdout, flags=re.MULTILINE)}
    def key(api: str, origin: str, status: str) -> tuple:
        return ("api", api), ("origin", origin), ("status", status)

    assert counts == {key("v1", "app", "200"): 3, key("v1", "proxy", "413"): 1,
                      key("other", "app", "200"): 1, key("v1", "proxy", "502"): 1,
                      key("v1", "app", "404"): 1}
    assert "prog=" not in done.stdout


@pytest.mark.service
@pytest.mark.skipif(os.geteuid() != 0, reason="not root: every proxy test already runs nginx as "
                                                 "an ordinary user")
def test_nginx_runs_as_an_ordinary_user():
    """As root (CI) the launcher keeps nginx's workers root; a user's `make run` has no root:
    nginx starts as `nobody` in a directory of its own and answers its own problem."""
    import dataclasses
    import pwd
    import shutil
    import tempfile
    import time
    import urllib.error
    import urllib.request

    nobody = pwd.getpwnam("nobody")
    home = Path(tempfile.mkdtemp(prefix="aq-proxy-nobody-", dir="/tmp"))
    try:
        cfg = dataclasses.replace(config(home), user=None)
        proxy.write(cfg)
        for path in (home, *home.rglob("*")):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        nginx = subprocess.Popen(["runuser", "-u", "nobody", "--", *proxy.command(cfg)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{cfg.listen_port}/healthz",
                                           timeout=2)
                except urllib.error.HTTPError as exc:
                    reply = exc  # no gunicorn behind it: nginx's own 502
                    break
                except OSError:
                    assert time.monotonic() < deadline, "nginx did not answer as nobody"
                    time.sleep(0.2)
            assert reply.code == 502
            assert reply.headers["Content-Type"] == "application/problem+json"
            assert json.load(reply)["status"] == 502
            session = [pid for pid in session_members(nginx.pid, 0)
                       if Path(f"/proc/{pid}/comm").read_text().strip() == "nginx"]
            assert len(session) == 2  # master and worker (runuser waits above them, as root)
            assert {Path(f"/proc/{pid}").stat().st_uid for pid in session} == {nobody.pw_uid}
        finally:
            os.killpg(nginx.pid, 15)
            nginx.wait(timeout=15)
    finally:
        shutil.rmtree(home, ignore_errors=True)
