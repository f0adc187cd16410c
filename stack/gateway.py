"""The home host's door for Celery workers on other hosts: nginx on the private addresses.

With ``AQ_BIND_ADDRESSES`` set (:class:`pipeline.settings.HostsSettings`), the scale-out
profile starts this nginx, listening on those addresses only (never 127.0.0.1, never every
address) and answering only the networks of ``AQ_PEER_NETWORKS``. It gives a worker host
what its tasks need from the home host, beside PostgreSQL and Redis:

- ``/execution/``: Airflow's execution API (the API server binds 127.0.0.1; the task's own
  token authenticates every call);
- ``/metrics/``: the Pushgateway, where the steps push;
- the project's shared state (``pipeline.io.mirror``): ``data/``, ``build/``, ``models/``,
  ``predictions/``, ``reports/`` (files: GET, PUT, DELETE; directories: JSON listings),
  ``dvc.lock``, ``data.dvc``, ``metrics.json``, and ``params.yaml`` read-only, behind the
  user ``worker`` and a password (``AQ_STATE_PASSWORD``, else generated into
  ``.stack/secrets/state.password``; nginx keeps only a salted hash, 0600);
- the DVC cache's objects a worker's DVC commands made (``.dvc/cache/files/md5/``): PUT
  and HEAD of content-addressed names only, never a read, a listing or a delete.

Nothing else of the project (``.stack/``, ``.airflow/``, code, dot files) is served.

nginx writes a PUT to a temporary file and renames it into place: a reader never sees half
a file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import re
import secrets
import shutil
from pathlib import Path

from pipeline.io.mirror import CACHE_OBJECTS, READ_ONLY, SHARED_DIRS, SHARED_FILES
from pipeline.paths import ProjectPaths
from pipeline.settings import HostsSettings, Ports, SettingsError
from stack.supervisor import Program, ServiceError, Supervisor, write_private

NAME = "gateway"
PRIORITY = 350  # after the Airflow parts it fronts; stopped before them
# a cache object's name (pipeline.io.mirror.cache_objects): sent home, never read from it
CACHE_OBJECT_URI = "^/" + re.escape(CACHE_OBJECTS) + r"/[0-9a-f]{2}/[0-9a-f]{30}(\.dir)?$"
MAX_BODY = "8g"  # the largest file a worker sends back (pipeline.io.mirror.MAX_FILE_BYTES)


def state_dir(paths: ProjectPaths) -> Path:
    return paths.stack_dir / NAME


def secret_file(paths: ProjectPaths) -> Path:
    return paths.stack_dir / "secrets" / "state.password"


def state_password(paths: ProjectPaths) -> str:
    """``AQ_STATE_PASSWORD``, else the generated one (made once, 0600)."""
    try:
        given = HostsSettings.from_env().state_password.get_secret_value()
    except SettingsError as exc:
        raise ServiceError(str(exc)) from None
    if given:
        return given
    path = secret_file(paths)
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    value = secrets.token_urlsafe(32)
    write_private(path, value + "\n")
    return value


def ssha(password: str) -> str:
    """nginx's ``{SSHA}`` form: base64(sha1(password + salt) + salt)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 (nginx's format)
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def render(paths: ProjectPaths, ports: Ports, addresses: list[str], networks: list[str],
           password: str) -> Path:
    """``.stack/gateway/nginx.conf`` (listening on ``addresses``, answering ``networks``) and
    its password file; the config's path."""
    if not addresses:
        raise ServiceError("gateway: AQ_BIND_ADDRESSES names no address for other hosts")
    if not networks:
        raise ServiceError("gateway: AQ_PEER_NETWORKS names no network the other hosts use")
    home = state_dir(paths)
    for sub in ("temp/body", "temp/proxy", "temp/fastcgi", "temp/uwsgi", "temp/scgi"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    write_private(home / "htpasswd", f"worker:{ssha(password)}\n")
    for top in SHARED_DIRS:  # nginx creates directories below these, not these
        (paths.root / top).mkdir(exist_ok=True)
    if (paths.root / ".dvc").is_dir():
        (paths.root / CACHE_OBJECTS).mkdir(parents=True, exist_ok=True)
    root = str(paths.root)
    user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
    # the launcher runs as root: nginx's workers write the project as its owner, not nobody
    user_line = f"user {user};" if user else ""
    listens = "\n".join(f"        listen {a if ':' not in a else f'[{a}]'}:{ports.gateway};"
                        for a in addresses)
    allows = "\n".join(f"        allow {n};" for n in networks)
    shared = "\n".join(f"        location /{top}/ {{ }}" for top in SHARED_DIRS)
    files = "\n".join(f"        location = /{name} {{ }}" for name in SHARED_FILES)
    read_only = "\n".join(
        f"        location = /{name} {{ limit_except GET {{ deny all; }} }}"
        for name in READ_ONLY)
    config = f"""# written by stack/gateway.py on every start; edit that
daemon off;
worker_processes 1;
{user_line}
pid {home}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {home}/temp/body;
    proxy_temp_path {home}/temp/proxy;
    fastcgi_temp_path {home}/temp/fastcgi;
    uwsgi_temp_path {home}/temp/uwsgi;
    scgi_temp_path {home}/temp/scgi;
    client_body_timeout 60s;
    send_timeout 60s;
    keepalive_timeout 30s;
    server {{
{listens}
{allows}
        deny all;
        root {root};
        client_max_body_size {MAX_BODY};
        auth_basic "aq project";
        auth_basic_user_file {home}/htpasswd;
        dav_methods PUT DELETE;
        create_full_put_path on;
        dav_access user:rw group:r all:r;
        autoindex on;
        autoindex_format json;
        location /execution/ {{
            auth_basic off;  # the task's token authenticates each call
            proxy_pass http://127.0.0.1:{ports.airflow};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_read_timeout 300s;
            client_max_body_size 64m;
        }}
        location /metrics/ {{
            auth_basic off;  # as the Pushgateway on 127.0.0.1: for the steps' pushes
            proxy_pass http://127.0.0.1:{ports.pushgateway};
            proxy_read_timeout 30s;
            client_max_body_size 16m;
        }}
        location ~ "{CACHE_OBJECT_URI}" {{  # before the next: DVC objects a worker made
            limit_except PUT HEAD {{ deny all; }}
        }}
        location ~ /\\. {{ return 404; }}  # locks, temporary files, DVC's state
{shared}
{files}
{read_only}
        location / {{ return 404; }}  # nothing else of the project
    }}
}}
"""
    path = home / "nginx.conf"
    write_private(path, config)
    return path


def program(paths: ProjectPaths, ports: Ports, addresses: list[str],
            networks: list[str]) -> Program:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise ServiceError("gateway: nginx not found: run `make setup`")
    config = render(paths, ports, addresses, networks, state_password(paths))
    return Program(NAME, [nginx, "-c", str(config), "-p", str(state_dir(paths)),
                          "-e", "stderr"], directory=paths.root, priority=PRIORITY,
                   stopsignal="QUIT", stopwaitsecs=20)


def start(paths: ProjectPaths, ports: Ports, hosts: HostsSettings,
          timeout: float = 60.0) -> dict[str, str]:
    """Start the gateway unless it runs; wait until it answers on its first address."""
    import requests

    supervisor = Supervisor(paths.stack_dir)
    supervisor.start(program(paths, ports, hosts.addresses(), hosts.networks()))
    address = hosts.addresses()[0]
    url = f"http://{address if ':' not in address else f'[{address}]'}:{ports.gateway}"

    def answers() -> bool:
        try:  # 401 from the project, or 403 where this host's own address is not a peer
            return requests.get(f"{url}/params.yaml", timeout=2).status_code in (200, 401, 403)
        except requests.RequestException:
            return False

    try:
        supervisor.wait_until(NAME, answers, timeout, "the gateway answered")
    except Exception:
        supervisor.stop(NAME)
        raise
    return {"gateway for other hosts": f"{url} (user worker, password in "
                                       f"{secret_file(paths)})"}
