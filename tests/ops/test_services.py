"""The process manager: own process group, pid files, stop kills children, never a recycled pid."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from pipeline.ops.services import ServiceError, ServiceManager, _group_members
from tests.conftest import free_port

pytestmark = pytest.mark.process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# a parent that spawns a child and ignores SIGTERM: stop must escalate and take the child too
STUBBORN = [
    sys.executable, "-c",
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)",
]


def test_start_records_group_and_stop_leaves_nothing(tmp_path):
    mgr = ServiceManager(tmp_path / ".stack")
    rec = mgr.start("sleeper", SLEEPER)
    assert rec.pgid == rec.pid == os.getpgid(rec.pid)
    assert os.getsid(rec.pid) == rec.pid  # its own session, not ours
    assert json.loads(mgr.pid_file("sleeper").read_text())["pgid"] == rec.pgid
    assert mgr.is_running("sleeper")
    assert mgr.status()["sleeper"]["running"] is True
    assert mgr.stop("sleeper") is True
    assert not mgr.is_running("sleeper")
    assert not mgr.pid_file("sleeper").exists()
    assert _group_members(rec.pgid) == []


def test_start_is_idempotent(tmp_path):
    mgr = ServiceManager(tmp_path / ".stack")
    first = mgr.start("sleeper", SLEEPER)
    try:
        assert mgr.start("sleeper", SLEEPER).pid == first.pid
    finally:
        mgr.stop_all()


def test_stop_escalates_to_kill_and_takes_children(tmp_path):
    mgr = ServiceManager(tmp_path / ".stack")
    rec = mgr.start("stubborn", STUBBORN)
    deadline = time.monotonic() + 10
    while len(_group_members(rec.pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_group_members(rec.pgid)) == 2
    started = time.monotonic()
    assert mgr.stop("stubborn", timeout=1.0)
    assert time.monotonic() - started < 8
    assert _group_members(rec.pgid) == []


# a child that moves into a process group of its own (as Airflow's task runners do)
REGROUPING = [
    sys.executable, "-c",
    "import os, subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
    "preexec_fn=os.setpgrp); time.sleep(60)",
]


def test_stop_takes_children_in_their_own_process_group(tmp_path):
    mgr = ServiceManager(tmp_path / ".stack")
    rec = mgr.start("regrouping", REGROUPING)
    deadline = time.monotonic() + 10
    while len(_group_members(rec.pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = _group_members(rec.pgid)
    assert len(members) == 2
    assert any(os.getpgid(pid) != rec.pgid for pid in members)
    mgr.stop("regrouping", timeout=5)
    assert _group_members(rec.pgid) == []


def test_stop_all_stops_only_recorded_services(tmp_path):
    mgr = ServiceManager(tmp_path / ".stack")
    mgr.start("a", SLEEPER)
    mgr.start("b", SLEEPER)
    (tmp_path / ".stack" / "foreign.pid").write_text(str(os.getpid()))  # not ours: untouched
    assert sorted(mgr.stop_all()) == ["a", "b"]
    assert mgr.status() == {}
    assert (tmp_path / ".stack" / "foreign.pid").exists()


def test_recycled_pid_is_never_killed(tmp_path):
    mgr = ServiceManager(tmp_path / ".stack")
    rec = mgr.start("sleeper", SLEEPER)
    forged = json.loads(mgr.pid_file("sleeper").read_text())
    forged["start_ticks"] += 1  # as if the pid now belonged to another process
    mgr.pid_file("sleeper").write_text(json.dumps(forged))
    try:
        assert not mgr.is_running("sleeper")
        assert mgr.stop("sleeper") is False
        assert os.getpgid(rec.pid) == rec.pid  # still alive
    finally:
        os.killpg(rec.pgid, 9)


def test_wait_for_http_fails_fast_when_service_dies(tmp_path):
    mgr = ServiceManager(tmp_path / ".stack")
    mgr.start("dies", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"])
    started = time.monotonic()
    with pytest.raises(ServiceError, match="boom"):
        mgr.wait_for_http(f"http://127.0.0.1:{free_port()}/", timeout=20, name="dies")
    assert time.monotonic() - started < 10
    mgr.stop_all()


def test_wait_for_http_answers_when_server_is_up(tmp_path):
    mgr = ServiceManager(tmp_path / ".stack")
    port = free_port()
    mgr.start("http", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
              cwd=tmp_path)
    try:
        mgr.wait_for_http(f"http://127.0.0.1:{port}/", timeout=20, name="http")
    finally:
        mgr.stop_all()
    assert "start:" in mgr.log_tail("http")


def test_service_logs_are_private(tmp_path):
    """A service may print a secret (Airflow prints generated passwords): logs are 0600."""
    manager = ServiceManager(tmp_path / "state")
    (tmp_path / "state" / "logs").mkdir(parents=True)
    old = manager.log_file("quiet")
    old.write_text("an earlier run\n")
    old.chmod(0o644)
    manager.start("quiet", [sys.executable, "-c", "print('hello')"])
    try:
        assert old.stat().st_mode & 0o777 == 0o600
        assert manager.logs_dir.stat().st_mode & 0o777 == 0o700
    finally:
        manager.stop("quiet")
