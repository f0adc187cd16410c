"""nginx in front of gunicorn: the config of the serving app's public address.

gunicorn's sync workers answer one request at a time, so they must sit behind a buffering
proxy (gunicorn's deploy docs): nginx reads every request whole (headers within
``client_timeout_s``, the body with at most ``client_timeout_s`` between two reads, at most
``max_body_bytes``) before a worker sees it, and takes every answer whole so a slow reader
holds no worker. gunicorn listens on a unix socket only nginx reaches (``.stack/serving/``,
mode 0700). nginx's own refusals (408, 413, 429, 502, 504 ...) are RFC 9457 problems like
the app's, and every request is one JSON line in ``access.log``.

:func:`render` fills ``serving/nginx.conf.j2``; :func:`command` is the command line the
launcher runs (``daemon off``: the master stays in the foreground). ``python -m serving.proxy
run --socket S --prefix DIR`` renders the config for the environment's port and settings, then
becomes nginx (exec, same pid): the one command line of the launcher, docker-compose and the
Kubernetes pod (``--host 0.0.0.0`` there).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2

from pipeline.settings import ServingSettings

TEMPLATE = Path(__file__).with_name("nginx.conf.j2")
MTAIL_PROGRAMS = Path(__file__).with_name("mtail")  # nginx.mtail: the access log -> counters
BINARY = "nginx"
# sockaddr_un.sun_path holds 108 bytes with the terminating NUL
MAX_SOCKET_PATH = 107


class ProxyError(RuntimeError):
    """The proxy cannot be configured or started (no nginx, a socket path too long)."""


@dataclass(frozen=True)
class Problem:
    """One refusal nginx answers itself: ``error_page code`` -> ``status`` with a problem."""

    code: int
    status: int
    title: str
    detail: str
    retry_after_s: int | None = None

    def json_template(self) -> str:
        """The problem document with ``$problem_instance`` (nginx fills in the path)."""
        body = {"type": "about:blank", "title": self.title, "status": self.status,
                "detail": self.detail, "instance": "__INSTANCE__"}
        text = json.dumps(body, separators=(",", ":"))
        if "'" in text or "$" in text:
            raise ProxyError(f"problem {self.code}: quotes or '$' cannot go into nginx's string")
        return text.replace("__INSTANCE__", "$problem_instance")


@dataclass(frozen=True)
class ProxyConfig:
    """What the rendered nginx config depends on; paths are absolute."""

    listen_host: str
    listen_port: int
    upstream_socket: Path
    prefix: Path  # nginx's state: config, pid, temp files, access log
    max_body_bytes: int = ServingSettings.model_fields["max_body_bytes"].default
    client_timeout_s: int = 5
    conn_per_client: int = 32
    upstream_timeout_s: int = 60
    upstream_connect_timeout_s: int = 5
    send_timeout_s: int = 10
    keepalive_timeout_s: int = 15
    lingering_time_s: int = 10
    worker_connections: int = 1024
    user: str | None = None  # set when the launcher runs as root (nginx would switch to nobody)

    @classmethod
    def for_serving(cls, host: str, port: int, socket: Path, prefix: Path,
                    settings: ServingSettings | None = None) -> ProxyConfig:
        """The proxy of the serving app with the environment's settings (``AQ_SERVING_*``)."""
        settings = settings or ServingSettings.from_env()
        user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
        return cls(listen_host=host, listen_port=port, upstream_socket=Path(socket).absolute(),
                   prefix=Path(prefix).absolute(), max_body_bytes=settings.max_body_bytes,
                   client_timeout_s=_whole_seconds(settings.client_timeout_s),
                   conn_per_client=settings.conn_per_client,
                   upstream_timeout_s=_whole_seconds(settings.timeout_s), user=user)

    @property
    def config_path(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    @property
    def pid_path(self) -> Path:
        return self.prefix / "nginx.pid"

    def problems(self) -> list[Problem]:
        return [
            Problem(400, 400, "Bad Request", "the request is not valid HTTP/1.1"),
            Problem(494, 400, "Bad Request", "a request header line is too long"),
            Problem(408, 408, "Request Timeout",
                    f"the request did not arrive within {self.client_timeout_s} s"),
            Problem(413, 413, "Request Entity Too Large",
                    f"the body is larger than {self.max_body_bytes} bytes "
                    "(AQ_SERVING_MAX_BODY_BYTES)"),
            Problem(414, 414, "Request-URI Too Long", "the request line is too long"),
            Problem(429, 429, "Too Many Requests",
                    f"more than {self.conn_per_client} requests at once from one address "
                    "(AQ_SERVING_CONN_PER_CLIENT); retry when one has been answered", 1),
            Problem(500, 500, "Internal Server Error",
                    "the proxy failed to answer; the error is logged"),
            Problem(502, 502, "Bad Gateway",
                    "the forecast service is not answering (starting or restarting); "
                    "retry shortly", 5),
            Problem(503, 503, "Service Unavailable",
                    "the forecast service is unavailable; retry shortly", 5),
            Problem(504, 504, "Gateway Timeout",
                    f"the forecast service did not answer within {self.upstream_timeout_s} s", 5),
        ]


def _whole_seconds(value: float) -> int:
    return max(int(round(value)), 1)


def render(config: ProxyConfig) -> str:
    """The nginx config text; refuses a socket path the kernel cannot bind."""
    socket = str(config.upstream_socket)
    if len(socket.encode()) > MAX_SOCKET_PATH:
        raise ProxyError(f"gunicorn's socket path {socket} is {len(socket.encode())} bytes, more "
                         f"than a unix socket takes ({MAX_SOCKET_PATH}): use a shorter project "
                         "path (AQ_PROJECT_DIR)")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    template = env.from_string(TEMPLATE.read_text())
    problems = [{"code": p.code, "status": p.status, "retry_after_s": p.retry_after_s,
                 "json_template": p.json_template()} for p in config.problems()]
    values = {name: getattr(config, name) for name in config.__dataclass_fields__}
    return template.render(**values, access_log=config.access_log, problems=problems)


def write(config: ProxyConfig) -> Path:
    """Render into ``prefix/nginx.conf`` and create the directories nginx writes to."""
    text = render(config)
    for directory in (config.prefix, config.prefix / "temp"):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = config.config_path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(config.config_path)
    return config.config_path


def binary() -> str:
    found = shutil.which(BINARY) or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)
    if not found:
        raise ProxyError("nginx not found: run `make setup` (scripts/setup.sh installs Debian's "
                         "nginx package)")
    return found


def command(config: ProxyConfig) -> list[str]:
    """nginx in the foreground on the rendered config, its error log on stderr."""
    return [binary(), "-p", f"{config.prefix}/", "-c", str(config.config_path), "-e", "stderr"]


def metrics_command(config: ProxyConfig, host: str, port: int) -> list[str]:
    """mtail counting nginx's access log into ``aq_serving_proxy_responses_total`` on
    ``host:port`` (Prometheus job ``serving_proxy``)."""
    found = shutil.which("mtail")
    if not found:
        raise ProxyError("mtail not found: run `make setup` (scripts/setup.sh installs Debian's "
                         "mtail package)")
    return [found, "--progs", str(MTAIL_PROGRAMS), "--logs", str(config.access_log),
            "--address", host, "--port", str(port), "--emit_prog_label=false",
            "--logtostderr"]


def check_command(config: ProxyConfig) -> list[str]:
    """``nginx -t``: parse the rendered config and open its files, serve nothing."""
    return [*command(config), "-t", "-q"]


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.proxy {render,run} --socket S --prefix DIR [--port P] [--host H]``:
    write the config (render), and then become nginx on it (run)."""
    from pipeline.settings import Ports

    parser = argparse.ArgumentParser(prog="python -m serving.proxy", description=main.__doc__)
    parser.add_argument("command", choices=["render", "run"])
    parser.add_argument("--socket", type=Path, required=True, help="gunicorn's unix socket")
    parser.add_argument("--prefix", type=Path, required=True, help="nginx's state directory")
    parser.add_argument("--port", type=int, default=None,
                        help="public port (default AQ_SERVING_PORT, else 8000)")
    parser.add_argument("--host", default=None,
                        help="address to listen on (default 127.0.0.1; a Kubernetes pod: "
                             "0.0.0.0, its Service reaches the pod's address, deploy/k8s/)")
    args = parser.parse_args(argv)
    ports = Ports.from_env()
    try:
        config = ProxyConfig.for_serving(args.host or ports.host, args.port or ports.serving,
                                         args.socket, args.prefix)
        path = write(config)
        cmd = command(config) if args.command == "run" else None
    except (ProxyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if cmd is None:
        print(path)
        return 0
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # nginx takes this pid: the supervisor's signals reach it


if __name__ == "__main__":
    sys.exit(main())
