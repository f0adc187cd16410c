"""A small process manager for local services (monitoring stack, Airflow).

Each service runs in its own session and process group (``setsid``), logs to
``<state>/logs/<name>.log`` and is recorded in ``<state>/<name>.pid`` (a JSON
record with pid, pgid, the process start time and the command). ``stop`` kills
the service's process group and session (TERM, then KILL after a timeout), so
children of a service die with it, even those in process groups of their own;
only services whose leader still matches the recorded start time are touched:
a recycled pid is never killed. ``stop_all`` stops
exactly the services whose pid files this manager wrote.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PID_FORMAT = "aq-service/1"  # marks pid files this manager wrote


class ServiceError(RuntimeError):
    """A service did not start, died early, or did not answer in time."""


@dataclass(frozen=True)
class ServiceRecord:
    name: str
    pid: int
    pgid: int
    start_ticks: int  # /proc/<pid>/stat field 22: guards against pid reuse
    cmd: tuple[str, ...]
    log_path: str
    started_at: float

    def to_json(self) -> str:
        return json.dumps({"format": PID_FORMAT, **self.__dict__, "cmd": list(self.cmd)})

    @classmethod
    def from_file(cls, path: Path) -> ServiceRecord | None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("format") != PID_FORMAT:
            return None
        try:
            return cls(
                name=str(raw["name"]), pid=int(raw["pid"]), pgid=int(raw["pgid"]),
                start_ticks=int(raw["start_ticks"]), cmd=tuple(raw["cmd"]),
                log_path=str(raw["log_path"]), started_at=float(raw["started_at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, pgrp, session, start_ticks) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def _group_members(pgid: int, not_before_ticks: int = 0) -> list[int]:
    """Live (non-zombie) processes of a service, started no earlier than its leader.

    A service leads its own session (setsid), so this is its process group plus
    any process group a child made inside the session (e.g. Airflow task runners).
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if (stat and pgid in (stat[1], stat[2]) and stat[0] != "Z"
                and stat[3] >= not_before_ticks):
            members.append(int(entry.name))
    return members


class ServiceManager:
    """Start, watch and stop named services; state lives in ``state_dir``."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.logs_dir = self.state_dir / "logs"
        self._children: dict[str, subprocess.Popen] = {}  # reaped so they never linger as zombies

    def pid_file(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def record(self, name: str) -> ServiceRecord | None:
        return ServiceRecord.from_file(self.pid_file(name))

    def _reap(self, name: str) -> None:
        child = self._children.get(name)
        if child is not None:
            child.poll()

    def _alive(self, rec: ServiceRecord) -> bool:
        self._reap(rec.name)
        stat = _proc_stat(rec.pid)
        return bool(stat and stat[0] != "Z" and stat[3] == rec.start_ticks)

    def is_running(self, name: str) -> bool:
        rec = self.record(name)
        return rec is not None and self._alive(rec)

    def start(self, name: str, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | str | None = None) -> ServiceRecord:
        """Start ``cmd`` in a new session; an already running service is left alone."""
        rec = self.record(name)
        if rec is not None and self._alive(rec):
            log.info("service %s already running (pid %d)", name, rec.pid)
            return rec
        if rec is not None:  # stale record: kill stragglers of its group before reusing the name
            self.stop(name)
        self.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.logs_dir, 0o700)
        log_path = self.log_file(name)
        # 0600: a service may print a secret (a generated password, a key in an error)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.chmod(log_path, 0o600)  # logs of earlier versions were 0644
        with os.fdopen(fd, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {list(cmd)}\n".encode())
            out.flush()
            child = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None, cwd=cwd,
                start_new_session=True,  # setsid(): own session and process group
            )
        self._children[name] = child
        stat = _proc_stat(child.pid)
        rec = ServiceRecord(
            name=name, pid=child.pid, pgid=child.pid, start_ticks=stat[3] if stat else 0,
            cmd=tuple(cmd), log_path=str(log_path), started_at=time.time(),
        )
        tmp = self.pid_file(name).with_suffix(".pid.tmp")
        tmp.write_text(rec.to_json())
        tmp.replace(self.pid_file(name))
        log.info("started %s (pid %d): %s", name, child.pid, " ".join(cmd))
        return rec

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for_http(self, url: str, timeout: float = 30.0, name: str | None = None) -> None:
        """Poll ``url`` until it answers 2xx; fail fast if service ``name`` has died."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (local URL)
                    if 200 <= resp.status < 300:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (OSError, urllib.error.URLError) as exc:
                last = exc
            if name is not None and not self.is_running(name):
                raise ServiceError(
                    f"service {name} exited before {url} answered; log {self.log_file(name)}:\n"
                    f"{self.log_tail(name)}"
                )
            if time.monotonic() >= deadline:
                tail = f"; log:\n{self.log_tail(name)}" if name else ""
                raise ServiceError(f"{url} did not answer within {timeout:.0f}s ({last}){tail}")
            time.sleep(0.2)

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        """Stop a service's process group; True if something was running. Removes its pid file."""
        rec = self.record(name)
        if rec is None:
            return False
        self._reap(name)
        members = _group_members(rec.pgid, rec.start_ticks)
        leader_stat = _proc_stat(rec.pid)
        if leader_stat and leader_stat[3] != rec.start_ticks:
            members = []  # the pid was recycled by an unrelated process: not ours
        was_running = bool(members)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if not members:
                break
            for pid in members:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while members and time.monotonic() < deadline:
                time.sleep(0.1)
                self._reap(name)
                members = _group_members(rec.pgid, rec.start_ticks)
            if members and sig == signal.SIGTERM:
                log.warning("service %s ignored SIGTERM for %.0fs: killing", name, wait)
        if members:
            raise ServiceError(f"could not stop service {name}: pids {members} still alive")
        child = self._children.pop(name, None)
        if child is not None:
            child.poll()  # reap our own dead child; never block on a process we did not stop
        self.pid_file(name).unlink(missing_ok=True)
        if was_running:
            log.info("stopped %s (pgid %d)", name, rec.pgid)
        return was_running

    def names(self) -> list[str]:
        """Services with a pid file this manager wrote (running or not)."""
        if not self.state_dir.is_dir():
            return []
        return sorted(
            p.stem for p in self.state_dir.glob("*.pid") if ServiceRecord.from_file(p) is not None
        )

    def status(self) -> dict[str, dict]:
        out = {}
        for name in self.names():
            rec = self.record(name)
            if rec is None:
                continue
            out[name] = {"running": self._alive(rec), "pid": rec.pid, "log": rec.log_path,
                         "cmd": " ".join(rec.cmd)}
        return out

    def stop_all(self, timeout: float = 10.0) -> list[str]:
        """Stop every service this manager recorded, in reverse start order."""
        recs = [r for r in (self.record(n) for n in self.names()) if r is not None]
        stopped = []
        for rec in sorted(recs, key=lambda r: r.started_at, reverse=True):
            if self.stop(rec.name, timeout=timeout):
                stopped.append(rec.name)
        return stopped
