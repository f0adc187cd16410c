"""supervisord runs the local stack: one daemon per state directory, one program per service.

Layout (all under the state directory, ``.stack/`` for ``make run``)::

    supervisor/supervisord.conf     the daemon's config (0600), includes programs/*.conf
    supervisor/programs/NAME.conf   one [program:NAME] per service (0600: it may carry a
                                    password in its environment)
    supervisor/supervisor.sock      the control socket (unix, mode 0700, in a 0700 directory;
                                    a path too long for a socket moves to /tmp/aq-supervisor-*)
    logs/NAME.log                   each program's stdout+stderr, 0600, rotated at 10 MB
                                    (3 backups); logs/supervisord.log the daemon's own

A :class:`Program` is added to the running daemon (written, ``reloadConfig``,
``addProcessGroup``) and started explicitly (``autostart=false``), so the launcher decides
the order and waits for each to be ready; supervisord restarts a long-running program
that dies later (``autorestart``) and stops every program, in reverse ``priority``, when
the stack stops. The daemon lives while it supervises something: removing the last
program shuts it down. Nothing listens on TCP: ``supervisorctl -c
.stack/supervisor/supervisord.conf status`` (``make status``) talks over the socket.

supervisord stops a program's process group (``stopasgroup``); a child that left it for a
group of its own (an Airflow task runner does) is still in the daemon's session, so after
shutting the daemon down the launcher ends what is left of that session, and only that:
processes started after the daemon, in the session it recorded (pid and start time).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

log = logging.getLogger(__name__)

LOG_MAXBYTES = "10MB"  # each program's log rotates at this size ...
LOG_BACKUPS = 3  # ... keeping this many old files
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; supervisord binds "<path>.<pid>" first
RPC_TIMEOUT_S = 30.0
FAILED_STATES = ("FATAL", "EXITED", "STOPPED", "BACKOFF", "UNKNOWN")
# settings that make an Airflow instance this project's (airflow.cfg holds them): inherited
# AIRFLOW__<SECTION>__<KEY> values for these would point the programs at another instance
AIRFLOW_PINNED = frozenset({
    ("core", "dags_folder"), ("core", "fernet_key"), ("core", "executor"),
    ("database", "sql_alchemy_conn"), ("api", "host"), ("api", "port"), ("api", "base_url"),
    ("api_auth", "jwt_secret"), ("core", "simple_auth_manager_passwords_file"),
    ("core", "execution_api_server_url"), ("logging", "base_log_folder"),
    ("celery", "broker_url"), ("celery", "result_backend"), ("core", "hostname_callable"),
})
REPO = Path(__file__).resolve().parents[1]  # the checkout: stack/ and the project's code


class ServiceError(RuntimeError):
    """A program did not start, died early, or did not answer in time."""


@dataclass(frozen=True)
class Program:
    """One supervised service: what supervisord needs to run, restart and stop it.

    ``priority``: start order (ascending) and stop order (descending) of the stack.
    ``autorestart``: supervisord restarts it whenever it exits after a good start (the
    long-running services); ``startsecs``: how long it must stay up to count as started.
    ``user``: run as this user (supervisord switches when it runs as root: PostgreSQL).
    """

    name: str
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    directory: Path | None = None
    priority: int = 500
    autorestart: bool = True
    startsecs: int = 1
    startretries: int = 3
    stopsignal: str = "TERM"
    stopwaitsecs: int = 10
    user: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", self.name):
            raise ValueError(f"program name {self.name!r}: letters, digits, _ . - only")
        if not self.command:
            raise ValueError(f"program {self.name}: empty command")

    def section(self, log_file: Path) -> str:
        """Its ``[program:NAME]`` section."""
        lines = [
            f"[program:{self.name}]",
            "command=" + " ".join(_quote_arg(str(a)) for a in self.command),
            f"priority={self.priority}",
            "autostart=false",  # the launcher starts programs in order, waiting for each
            f"autorestart={'true' if self.autorestart else 'false'}",
            f"startsecs={self.startsecs}",
            f"startretries={self.startretries}",
            f"stopsignal={self.stopsignal}",
            f"stopwaitsecs={self.stopwaitsecs}",
            "stopasgroup=true",  # the whole process group: gunicorn's and Celery's workers
            "killasgroup=true",
            "umask=022",  # what the program writes is as before; its log stays 0600
            "redirect_stderr=true",
            f"stdout_logfile={_escape(str(log_file))}",
            f"stdout_logfile_maxbytes={LOG_MAXBYTES}",
            f"stdout_logfile_backups={LOG_BACKUPS}",
        ]
        if self.directory is not None:
            lines.append(f"directory={_escape(str(self.directory))}")
        if self.user is not None:
            lines.append(f"user={self.user}")
        if self.env:
            lines.append("environment=" + ",".join(
                f"{_env_key(k)}={_quote_env(k, v)}" for k, v in self.env.items()))
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    """A config value: supervisord expands ``%(name)s``; one newline would end the value."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"a line break cannot go into supervisord's config: {value[:40]!r}")
    if re.search(r"\s[;#]", value):  # an inline comment in supervisord's ini parser
        raise ValueError(f"' ;' or ' #' cannot go into supervisord's config: {value[:40]!r}")
    return value.replace("%", "%%")


def _quote_arg(arg: str) -> str:
    """One argument of ``command=`` (split with shlex after ``%`` expansion)."""
    import shlex

    return _escape(shlex.quote(arg))


def _env_key(key: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise ValueError(f"environment variable name {key!r} is not a plain name")
    return key


def _quote_env(key: str, value: str) -> str:
    """A value of ``environment=``: supervisord reads it with a non-POSIX shlex and strips
    quotes at both ends, so a value is quoted with the quote it does not contain."""
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        raise ValueError(f"{key}: a value starting or ending with a quote cannot go into "
                         "supervisord's environment")
    quote = '"' if '"' not in value else "'"
    if quote in value:
        raise ValueError(f"{key}: a value with both kinds of quotes cannot go into "
                         "supervisord's environment")
    return _escape(f"{quote}{value}{quote}")


def settings_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The project's settings in the caller's environment (``AQ_*``, the provider key,
    ``AIRFLOW__*`` but the pinned ones): written into each program's section, so a program
    started into a daemon that already runs still sees the settings of the command that
    started it (the section is 0600)."""
    environ = launch_environment(os.environ if environ is None else environ)
    return {k: v for k, v in environ.items()
            if k.startswith(("AQ_", "AIRFLOW__")) or k == "OPENWEATHERMAP_API_KEY"}


def launch_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What every program inherits: the caller's environment, minus the ``AIRFLOW__*``
    values that would point the stack's Airflow at another instance (a test or shell may
    set them), ``AIRFLOW_CONFIG``, and with the checkout on ``PYTHONPATH`` (``python -m
    stack.webhook``, Airflow's ``hostname_callable``)."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items()
           if not (k.startswith("AIRFLOW__") and tuple(k.lower().split("__")[1:3])
                   in AIRFLOW_PINNED) and k != "AIRFLOW_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), environ.get("PYTHONPATH", "")) if p)
    return env


# ----------------------------------------------------------------------------- processes


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, atomically (configs
    and passwords the launcher renders)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, pgrp, session, start_ticks) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the name (field 2) may hold spaces
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def session_members(sid: int, not_before_ticks: int) -> list[int]:
    """Live processes of session ``sid`` started no earlier than ``not_before_ticks``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and stat[2] == sid and stat[0] != "Z" and stat[3] >= not_before_ticks:
                members.append(int(entry.name))
    return members


def end_processes(pids: Callable[[], list[int]], timeout: float) -> list[int]:
    """TERM, then KILL after ``timeout``, whatever ``pids()`` still lists; what was found."""
    found = pids()
    members = found
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in members:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while members and time.monotonic() < deadline:
            time.sleep(0.1)
            members = pids()
        if not members:
            break
    if members:
        raise ServiceError(f"could not end pids {members}")
    return found


# ----------------------------------------------------------------------------- XML-RPC


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket, every call bounded by a timeout."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path, self._timeout = path, timeout

    def make_connection(self, host):
        conn = _UnixConnection(self._path, self._timeout)
        self._connection = host, conn
        return conn


# ----------------------------------------------------------------------------- the launcher


class Supervisor:
    """The supervisord of one state directory: add, start, watch and stop programs."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.conf_dir = self.state_dir / "supervisor"
        self.programs_dir = self.conf_dir / "programs"
        self.config = self.conf_dir / "supervisord.conf"
        self.logs_dir = self.state_dir / "logs"
        self.record_file = self.conf_dir / "supervisord.json"
        self._log_offsets: dict[str, int] = {}

    # -- paths

    @property
    def socket_path(self) -> Path:
        """``supervisor/supervisor.sock``, or a private /tmp directory when that path is too
        long for a unix socket (deep test directories)."""
        own = self.conf_dir / "supervisor.sock"
        if len(str(own)) <= MAX_SOCKET_PATH:
            return own
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:16]
        return Path(f"/tmp/aq-supervisor-{digest}/supervisor.sock")  # noqa: S108 (0700, ours)

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def program_file(self, name: str) -> Path:
        return self.programs_dir / f"{name}.conf"

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.log_file(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_since_start(self, name: str) -> str:
        """What the program logged since this object started it (all of it otherwise)."""
        try:
            with self.log_file(name).open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                offset = self._log_offsets.get(name, 0)
                handle.seek(offset if offset <= size else 0)  # rotated since: from the top
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    # -- the daemon

    def _rpc(self, timeout: float = RPC_TIMEOUT_S):
        proxy = xmlrpc.client.ServerProxy(
            "http://localhost", transport=_UnixTransport(str(self.socket_path), timeout))
        return proxy.supervisor

    def daemon_pid(self) -> int | None:
        """The pid of this directory's supervisord if it answers on its socket."""
        try:
            return int(self._rpc(timeout=5).getPID())
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            return None

    def running(self) -> bool:
        return self.daemon_pid() is not None

    def _write_private(self, path: Path, text: str) -> None:
        write_private(path, text)

    def _private_dir(self, path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
        if st.st_uid != os.geteuid():
            raise ServiceError(f"{path} belongs to uid {st.st_uid}, not to us: refusing to "
                               "put supervisord's socket there")
        os.chmod(path, 0o700)

    def _daemon_config(self) -> str:
        sock = self.socket_path
        return "\n".join([
            "; written by stack/supervisor.py; the programs are in programs/*.conf",
            "[unix_http_server]",
            f"file={_escape(str(sock))}",
            "chmod=0700",  # the only way in: no inet_http_server, nothing on TCP
            "",
            "[supervisord]",
            f"logfile={_escape(str(self.log_file('supervisord')))}",
            f"logfile_maxbytes={LOG_MAXBYTES}",
            f"logfile_backups={LOG_BACKUPS}",
            f"pidfile={_escape(str(self.conf_dir / 'supervisord.pid'))}",
            f"directory={_escape(str(self.state_dir))}",
            "umask=077",  # the logs it opens are 0600: a program may print a secret
            "identifier=aq-stack",
            *(["user=root"] if os.geteuid() == 0 else []),  # as root on purpose: says so
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{_escape(str(sock))}",
            "",
            "[include]",
            "files = programs/*.conf",
            "",
        ])

    def _ensure_daemon(self, timeout: float = 30.0) -> int:
        pid = self.daemon_pid()
        if pid is not None:
            return pid
        self.sweep()  # what a daemon that died (SIGKILL, OOM) left behind
        self._private_dir(self.conf_dir)
        self._private_dir(self.programs_dir)
        self._private_dir(self.socket_path.parent)
        self._private_dir(self.logs_dir)
        # supervisord opens its own log before it sets its umask: made private here first
        os.close(os.open(self.log_file("supervisord"), os.O_WRONLY | os.O_CREAT, 0o600))
        for old in self.logs_dir.glob("*.log*"):  # logs of earlier versions were 0644
            os.chmod(old, 0o600)
        self._write_private(self.config, self._daemon_config())
        supervisord = Path(sys.executable).parent / "supervisord"
        if not supervisord.exists():
            raise ServiceError(f"{supervisord} not found: run `make setup` (the 'stack' extra)")
        proc = subprocess.run([str(supervisord), "-c", str(self.config)],
                              env=launch_environment(), cwd=self.state_dir,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            raise ServiceError(f"supervisord did not start ({proc.returncode}):\n"
                               f"{(proc.stdout + proc.stderr)[-2000:]}")
        deadline = time.monotonic() + timeout
        while (pid := self.daemon_pid()) is None:
            if time.monotonic() > deadline:
                raise ServiceError(f"supervisord did not answer on {self.socket_path} within "
                                   f"{timeout:.0f}s; log:\n{self.log_tail('supervisord')}")
            time.sleep(0.1)
        stat = proc_stat(pid)
        self._write_private(self.record_file, json.dumps(
            {"pid": pid, "start_ticks": stat[3] if stat else 0}))
        log.info("supervisord started (pid %d, %s)", pid, self.config)
        return pid

    @contextmanager
    def _locked(self, timeout: float = 120.0) -> Iterator[None]:
        """One launcher at a time changes this directory's daemon (bounded wait)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".supervisor.lock", "a") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ServiceError(f"another launcher holds {handle.name} for more "
                                           f"than {timeout:.0f}s") from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- programs

    def info(self, name: str) -> dict | None:
        """supervisord's view of a program (state, pid, ...), or None if it has none."""
        try:
            return self._rpc().getProcessInfo(name)
        except xmlrpc.client.Fault:
            return None
        except (OSError, http.client.HTTPException):
            return None

    def definition(self, name: str) -> str | None:
        """The ``[program:NAME]`` section the program was added with, or None."""
        try:
            return self.program_file(name).read_text()
        except OSError:
            return None

    def names(self) -> list[str]:
        """The programs added to this directory's daemon (running or not)."""
        if not self.programs_dir.is_dir():
            return []
        return sorted(p.stem for p in self.programs_dir.glob("*.conf"))

    def is_running(self, name: str) -> bool:
        found = self.info(name)
        return found is not None and found["statename"] in ("RUNNING", "STARTING")

    def pid(self, name: str) -> int | None:
        found = self.info(name)
        return int(found["pid"]) if found and found["pid"] else None

    def status(self) -> dict[str, dict]:
        """name -> {state, running, pid, log, description} of every added program."""
        try:
            infos = {i["name"]: i for i in self._rpc().getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            infos = {}
        out = {}
        for name in self.names():
            found = infos.get(name, {})
            state = found.get("statename", "STOPPED")
            out[name] = {"state": state, "running": state in ("RUNNING", "STARTING"),
                         "pid": found.get("pid") or None, "log": str(self.log_file(name)),
                         "description": found.get("description", "")}
        return out

    def start(self, program: Program) -> bool:
        """Add ``program`` and start it unless it runs; True if it was started now.

        A running program is left alone, even if its definition changed (stop it first).
        """
        with self._locked():
            self._ensure_daemon()
            rpc = self._rpc()
            if self.is_running(program.name):
                log.info("program %s already running (pid %s)", program.name,
                         self.pid(program.name))
                return False
            if (self.info(program.name) or {}).get("statename") == "BACKOFF":
                rpc.stopProcess(program.name, True)  # retrying a failed start: start anew
            path = self.log_file(program.name)
            program = replace(program, env={**settings_environment(), **program.env})
            self._write_private(self.program_file(program.name), program.section(path))
            added, changed, _removed = rpc.reloadConfig()[0]
            if program.name in changed:
                rpc.removeProcessGroup(program.name)  # stopped: replace its definition
                added.append(program.name)
            if program.name in added:
                rpc.addProcessGroup(program.name)
            if path.exists():
                os.chmod(path, 0o600)
            self._log_offsets[program.name] = path.stat().st_size if path.exists() else 0
            try:
                rpc.startProcess(program.name, False)
            except xmlrpc.client.Fault as fault:
                if "ALREADY_STARTED" not in fault.faultString:
                    raise ServiceError(f"{program.name} did not start: {fault.faultString}; "
                                       f"log {path}:\n{self.log_tail(program.name)}") from None
            log.info("started %s: %s", program.name, " ".join(map(str, program.command)))
            return True

    def _failed(self, name: str) -> str | None:
        """Why the program is not up (it exited, gave up, was never added), or None."""
        found = self.info(name)
        if found is None:
            return "it is not supervised (never added, or supervisord is gone)"
        if found["statename"] in FAILED_STATES:
            return f"{found['statename']}: {found.get('description') or found.get('spawnerr')}"
        return None

    def wait_until(self, name: str, probe: Callable[[], bool], timeout: float,
                   what: str) -> None:
        """Poll ``probe`` until true and supervisord counts the program started (up for
        ``startsecs``: ``status`` then says RUNNING); fail at once when it exits or gives up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if probe() and (self.info(name) or {}).get("statename") == "RUNNING":
                    return
            except Exception as exc:  # noqa: BLE001 - a probe's failure is "not yet"
                log.debug("%s not ready: %s", name, exc)
            failed = self._failed(name)
            if failed:
                raise ServiceError(f"{name} exited before {what} ({failed}); log "
                                   f"{self.log_file(name)}:\n{self.log_tail(name)}")
            if time.monotonic() >= deadline:
                raise ServiceError(f"{name}: no {what} within {timeout:.0f}s; log "
                                   f"{self.log_file(name)}:\n{self.log_tail(name)}")
            time.sleep(0.2)

    def wait_running(self, name: str, timeout: float = 30.0) -> None:
        """Until supervisord counts the program started (up for ``startsecs``)."""
        self.wait_until(name, lambda: True, timeout, "its start")

    def wait_for_http(self, url: str, timeout: float = 30.0, name: str | None = None) -> None:
        """Poll ``url`` until it answers 2xx; fail fast if program ``name`` exits."""
        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (local URL)
                    return 200 <= resp.status < 300
            except (OSError, urllib.error.URLError):
                return False

        if name is None:
            deadline = time.monotonic() + timeout
            while not answers():
                if time.monotonic() > deadline:
                    raise ServiceError(f"{url} did not answer within {timeout:.0f}s")
                time.sleep(0.2)
            return
        self.wait_until(name, answers, timeout, f"{url} answered")

    def stop(self, name: str, timeout: float | None = None) -> bool:
        """Stop and remove one program; True if it was running. The last one out shuts
        the daemon down."""
        with self._locked():
            was_running = False
            if self.running():
                rpc = self._rpc(timeout=(timeout or 60) + 30)
                found = self.info(name)
                if found is not None:
                    was_running = found["statename"] in ("RUNNING", "STARTING", "BACKOFF")
                    if found["statename"] not in ("STOPPED", "EXITED", "FATAL", "UNKNOWN"):
                        try:
                            rpc.stopProcess(name, True)
                        except xmlrpc.client.Fault as fault:
                            if "NOT_RUNNING" not in fault.faultString:
                                raise
                    rpc.removeProcessGroup(name)
            self.program_file(name).unlink(missing_ok=True)
            if was_running:
                log.info("stopped %s", name)
            last = not self.names()
        if last:
            self.stop_all()
        return was_running

    def stop_budget(self) -> float:
        """How long supervisord may take to stop everything: one program after the other,
        each its stop wait before the KILL, and a margin."""
        waits = re.findall(r"^stopwaitsecs=(\d+)$", "\n".join(
            self.definition(n) or "" for n in self.names()), flags=re.MULTILINE)
        return 30.0 + sum(int(w) + 1 for w in waits)

    def stop_all(self, timeout: float | None = None) -> list[str]:
        """Shut the daemon down (every program, in reverse priority), end what is left of its
        session, forget the programs; the names of the programs that were running."""
        timeout = self.stop_budget() if timeout is None else timeout
        with self._locked():
            was_running = [n for n, s in self.status().items() if s["running"]]
            pid = self.daemon_pid()
            if pid is not None:
                self._rpc().shutdown()
                deadline = time.monotonic() + timeout
                while proc_stat(pid) is not None and proc_stat(pid)[0] != "Z":
                    if time.monotonic() > deadline:
                        raise ServiceError(f"supervisord (pid {pid}) did not stop within "
                                           f"{timeout:.0f}s; log:\n{self.log_tail('supervisord')}")
                    time.sleep(0.1)
                log.info("supervisord stopped (%s)", ", ".join(was_running) or "nothing ran")
            self.sweep()
            for path in self.programs_dir.glob("*.conf") if self.programs_dir.is_dir() else ():
                path.unlink()
            if self.socket_path.parent != self.conf_dir:  # the /tmp fallback: leave no litter
                with contextlib.suppress(OSError):
                    if not self.record_file.exists():  # no daemon (sweep saw it gone): a
                        self.socket_path.unlink(missing_ok=True)  # killed one's socket file
                    self.socket_path.parent.rmdir()
            return was_running

    def sweep(self, timeout: float = 10.0, exiting: float = 2.0) -> list[int]:
        """End the processes left in the recorded daemon's session (none if the record is
        stale: its pid now belongs to another process). Called when the daemon does not
        answer: one killed a moment ago is still exiting (state R for some ms, then a zombie),
        so it gets ``exiting`` seconds to finish before it counts as still running."""
        try:
            record = json.loads(self.record_file.read_text())
            pid, ticks = int(record["pid"]), int(record["start_ticks"])
        except (OSError, ValueError, KeyError, TypeError):
            return []
        deadline = time.monotonic() + exiting
        while ((leader := proc_stat(pid)) is not None and leader[0] != "Z"
               and leader[3] == ticks and time.monotonic() < deadline):
            time.sleep(0.05)
        if leader is not None and leader[0] != "Z" and leader[3] != ticks:
            log.warning("supervisord record %s names pid %d, now another process: left alone",
                        self.record_file, pid)
            self.record_file.unlink(missing_ok=True)
            return []
        if leader is not None and leader[0] != "Z":
            return []  # the daemon still runs: it stops its programs itself
        left = end_processes(lambda: session_members(pid, ticks), timeout)
        if left:
            log.warning("ended %d process(es) left in supervisord's session: %s", len(left),
                        left)
        self.record_file.unlink(missing_ok=True)
        return left
