"""supervisord runs the stack: own process groups, stop takes children, never a stranger's pid,
a dying service is restarted, logs are private and bounded, the control socket is private.

Every test runs a real supervisord (the venv's, the 'stack' extra) in its own directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stack.supervisor import (
    Program,
    ServiceError,
    Supervisor,
    launch_environment,
    proc_stat,
    session_members,
)
from tests.conftest import free_port

pytestmark = pytest.mark.stack  # every test runs a real supervisord and its programs
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# a parent that spawns a child and ignores SIGTERM: stop must escalate and take the child too
STUBBORN = [
    sys.executable, "-c",
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)",
]
# a child that moves into a process group of its own (as Airflow's task runners do)
REGROUPING = [
    sys.executable, "-c",
    "import os, subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
    "preexec_fn=os.setpgrp); time.sleep(60)",
]


def group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and stat[1] == pgid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def wait_for(probe, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


@pytest.fixture
def sv(tmp_path):
    supervisor = Supervisor(tmp_path / ".stack")
    yield supervisor
    supervisor.stop_all()


def test_start_runs_a_program_in_its_own_group_and_stop_leaves_nothing(sv):
    assert sv.start(Program("sleeper", SLEEPER))
    sv.wait_running("sleeper")
    pid = sv.pid("sleeper")
    daemon = sv.daemon_pid()
    assert os.getpgid(pid) == pid  # its own process group ...
    assert os.getsid(pid) == daemon == os.getsid(daemon)  # ... in supervisord's session
    assert os.getsid(pid) != os.getsid(0)  # not ours: a Ctrl-C in the shell does not reach it
    assert sv.is_running("sleeper")
    assert sv.status()["sleeper"]["running"] is True
    assert sv.names() == ["sleeper"]
    assert sv.stop("sleeper") is True
    assert not sv.is_running("sleeper")
    assert sv.names() == []
    assert group_members(pid) == []
    assert not sv.running()  # the last program out shut the daemon down
    assert proc_stat(daemon) is None or proc_stat(daemon)[0] == "Z"  # gone (or not yet reaped)


def test_start_is_idempotent(sv):
    assert sv.start(Program("sleeper", SLEEPER)) is True
    sv.wait_running("sleeper")
    first = sv.pid("sleeper")
    assert sv.start(Program("sleeper", SLEEPER)) is False  # running: left alone
    assert sv.pid("sleeper") == first
    assert Supervisor(sv.state_dir).pid("sleeper") == first  # another launcher sees it too


def test_stop_escalates_to_kill_and_takes_children(sv):
    sv.start(Program("stubborn", STUBBORN, stopwaitsecs=1))
    sv.wait_running("stubborn")
    pgid = sv.pid("stubborn")
    wait_for(lambda: len(group_members(pgid)) == 2)
    started = time.monotonic()
    assert sv.stop("stubborn")
    assert time.monotonic() - started < 8
    assert group_members(pgid) == []


def test_stop_takes_children_in_their_own_process_group(sv):
    sv.start(Program("regrouping", REGROUPING))
    sv.wait_running("regrouping")
    pid = sv.pid("regrouping")
    child = wait_for(lambda: children_of(pid))[0]
    assert os.getpgid(child) != pid
    daemon = sv.daemon_pid()
    sv.stop("regrouping")  # the last program: supervisord goes, then what is left of its session
    assert proc_stat(child) is None or proc_stat(child)[0] == "Z"
    assert session_members(daemon, 0) == []


def test_stop_all_stops_only_what_it_started(sv, tmp_path):
    sv.start(Program("a", SLEEPER))
    sv.start(Program("b", SLEEPER, priority=600))
    sv.wait_running("b")
    # an unrelated process, even one named in a pid file in the state directory, is untouched
    bystander = subprocess.Popen(SLEEPER, start_new_session=True)
    (sv.state_dir / "foreign.pid").write_text(str(bystander.pid))
    try:
        assert sorted(sv.stop_all()) == ["a", "b"]
        assert sv.status() == {}
        assert bystander.poll() is None
        assert (sv.state_dir / "foreign.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()
    assert sv.stop_all() == []  # nothing left: a no-op


def test_a_stale_record_never_kills_a_recycled_pid(sv):
    """supervisord died and its pid now belongs to someone else: nothing of theirs is killed."""
    bystander = subprocess.Popen(SLEEPER, start_new_session=True)  # leads its own session
    try:
        sv.state_dir.joinpath("supervisor").mkdir(parents=True)
        ticks = proc_stat(bystander.pid)[3]
        # as if our supervisord had had this pid, started at another time
        sv.record_file.write_text(json.dumps({"pid": bystander.pid, "start_ticks": ticks - 1}))
        assert not sv.running()
        assert sv.stop_all() == []
        assert bystander.poll() is None  # still alive
        assert not sv.record_file.exists()  # the stale record is forgotten
    finally:
        bystander.kill()
        bystander.wait()


def test_what_a_killed_supervisord_left_is_ended_by_the_next_stop(sv):
    """supervisord SIGKILLed (OOM): its programs live on; stop still ends exactly them."""
    sv.start(Program("sleeper", SLEEPER))
    sv.wait_running("sleeper")
    orphan, daemon = sv.pid("sleeper"), sv.daemon_pid()
    os.kill(daemon, signal.SIGKILL)
    # bounded, with room for a loaded machine (3 xdist workers on 2 cores overran 10 s once)
    wait_for(lambda: not sv.running(), timeout=30)
    assert proc_stat(orphan)[0] != "Z"
    bystander = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        sv.stop_all()
        wait_for(lambda: proc_stat(orphan) is None or proc_stat(orphan)[0] == "Z", timeout=30)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_service_that_dies_at_start_fails_fast_with_its_log(sv):
    sv.start(Program("dies", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]))
    started = time.monotonic()
    with pytest.raises(ServiceError, match="boom"):
        sv.wait_for_http(f"http://127.0.0.1:{free_port()}/", timeout=20, name="dies")
    assert time.monotonic() - started < 10


def test_a_service_that_dies_later_is_restarted(sv):
    """The restart policy: a long-running service killed after a good start comes back."""
    sv.start(Program("sleeper", SLEEPER))
    sv.wait_running("sleeper")
    first = sv.pid("sleeper")
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: sv.info("sleeper")["statename"] == "RUNNING"
                      and sv.pid("sleeper") != first and sv.pid("sleeper"), timeout=15)
    assert second != first
    assert "exited: sleeper (terminated by SIGKILL" in sv.log_tail("supervisord", 50)


def test_wait_for_http_answers_when_server_is_up(sv, tmp_path):
    port = free_port()
    sv.start(Program("http", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                              str(port)], directory=tmp_path))
    sv.wait_for_http(f"http://127.0.0.1:{port}/", timeout=20, name="http")
    assert "GET / HTTP" in wait_for(lambda: sv.log_tail("http"))  # stderr is in its log


def test_environment_and_arguments_arrive_as_given(sv, tmp_path):
    """Values with %, spaces, commas and quotes pass supervisord's config unchanged."""
    out = tmp_path / "seen.json"
    value = "a%b c,d'e"
    script = ("import json, os, sys; json.dump([os.environ['AQ_X'], os.environ['PYTHONPATH'], "
              f"sys.argv[1:]], open({str(out)!r}, 'w')); import time; time.sleep(60)")
    sv.start(Program("env", [sys.executable, "-c", script, "50%", "two words"],
                     env={"AQ_X": value}))
    seen = json.loads(wait_for(lambda: out.exists() and out.read_text()))
    assert seen[0] == value
    assert seen[2] == ["50%", "two words"]
    assert str(Path(__file__).resolve().parents[2]) in seen[1].split(os.pathsep)


def test_what_supervisord_cannot_carry_is_refused_before_it_is_written():
    with pytest.raises(ValueError, match="line break"):
        Program("bad", [sys.executable, "-c", "a\nb"]).section(Path("/tmp/x.log"))
    with pytest.raises(ValueError, match="both kinds of quotes"):
        Program("bad", SLEEPER, env={"X": "a'b\"c"}).section(Path("/tmp/x.log"))
    with pytest.raises(ValueError, match="letters, digits"):
        Program("bad:name", SLEEPER)


def test_launch_environment_drops_settings_pointing_at_another_airflow():
    env = launch_environment({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////elsewhere",
                              "AIRFLOW__CELERY__WORKER_CONCURRENCY": "8",
                              "AIRFLOW_CONFIG": "/elsewhere.cfg", "HOME": "/root"})
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env
    assert "AIRFLOW_CONFIG" not in env
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "8"  # not pinned: still works
    assert env["HOME"] == "/root"


def test_service_logs_are_private_and_rotate(sv):
    """A service may print a secret (Airflow prints generated passwords): logs are 0600, in a
    0700 directory, and bounded: rotated at the size limit, a few backups kept."""
    (sv.logs_dir).mkdir(parents=True)
    old = sv.log_file("chatty")
    old.write_text("an earlier run\n")
    old.chmod(0o644)
    chatty = [sys.executable, "-c",
              "import sys, time; [(sys.stdout.write('x' * 1048575 + chr(10)), sys.stdout.flush())"
              " for _ in range(12)]; time.sleep(60)"]
    sv.start(Program("chatty", chatty))
    try:
        wait_for(lambda: len(list(sv.logs_dir.glob("chatty.log.*"))) >= 1, timeout=30)
        assert old.stat().st_mode & 0o777 == 0o600
        assert sv.logs_dir.stat().st_mode & 0o777 == 0o700
        for path in sv.logs_dir.iterdir():
            assert path.stat().st_mode & 0o077 == 0, path
            assert path.stat().st_size <= 10 * 1024 * 1024 + 1024 * 1024, path
        assert len(list(sv.logs_dir.glob("chatty.log.*"))) <= 3
    finally:
        sv.stop("chatty")


def test_the_control_socket_is_private_and_nothing_listens_on_tcp(sv):
    sv.start(Program("sleeper", SLEEPER))
    sv.wait_running("sleeper")
    sock = sv.socket_path
    assert sock.is_socket()
    assert sock.stat().st_mode & 0o077 == 0
    assert sock.parent.stat().st_mode & 0o777 == 0o700
    assert sv.config.stat().st_mode & 0o077 == 0
    assert sv.program_file("sleeper").stat().st_mode & 0o077 == 0
    daemon = sv.daemon_pid()
    inodes = {str(fd.readlink())[8:-1] for fd in Path(f"/proc/{daemon}/fd").iterdir()
              if str(fd.readlink()).startswith("socket:[")}
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                listening.append(cols[1])
    assert listening == []
    status = subprocess.run([str(Path(sys.executable).parent / "supervisorctl"), "-c",
                             str(sv.config), "status"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert "sleeper" in status.stdout
    assert "RUNNING" in status.stdout


def test_a_long_state_path_gets_a_short_private_socket(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / ".stack"
    supervisor = Supervisor(deep)
    assert len(str(supervisor.socket_path)) <= 100
    assert supervisor.socket_path == Supervisor(deep).socket_path  # found again by stop
    try:
        supervisor.start(Program("sleeper", SLEEPER))
        assert supervisor.socket_path.parent.stat().st_mode & 0o777 == 0o700
        assert supervisor.is_running("sleeper")
    finally:
        supervisor.stop_all()
    assert not supervisor.socket_path.parent.exists()  # no litter in /tmp


@pytest.mark.parametrize("attempt", range(3))
def test_a_stop_right_after_the_daemon_was_killed_ends_its_programs_and_its_socket(
        tmp_path, attempt):
    """supervisord SIGKILLed, stop at once: the daemon is still exiting (state R for some
    ms), which used to count as "still running", so its programs lived on and its socket file
    kept the private /tmp directory (one /tmp/aq-supervisor-* left per killed daemon)."""
    deep = tmp_path / ("d" * 60) / ("e" * 60) / ".stack"
    supervisor = Supervisor(deep)
    try:
        supervisor.start(Program("sleeper", SLEEPER))
        supervisor.wait_running("sleeper")
        orphan = supervisor.pid("sleeper")
        os.kill(supervisor.daemon_pid(), signal.SIGKILL)
        wait_for(lambda: supervisor.daemon_pid() is None, timeout=30)
        assert supervisor.socket_path.exists()  # what the killed daemon left
    finally:
        supervisor.stop_all()
    wait_for(lambda: proc_stat(orphan) is None or proc_stat(orphan)[0] == "Z", timeout=15)
    assert not supervisor.socket_path.parent.exists()


def test_services_of_the_earlier_launcher_are_ended_by_stop_and_block_start(tmp_path):
    """An upgrade while the old process manager's services run: start refuses, stop ends them
    (their sessions: they led one each) and never a pid that now belongs to someone else."""
    from pipeline.paths import ProjectPaths
    from stack.__main__ import start, stop

    paths = ProjectPaths(tmp_path)
    paths.stack_dir.mkdir()
    old = subprocess.Popen(REGROUPING, start_new_session=True)
    bystander = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        child = wait_for(lambda: children_of(old.pid))[0]
        for name, proc, ticks_shift in (("prometheus", old, 0), ("pushgateway", bystander, 1)):
            (paths.stack_dir / f"{name}.pid").write_text(json.dumps({
                "format": "aq-service/1", "name": name, "pid": proc.pid, "pgid": proc.pid,
                "start_ticks": proc_stat(proc.pid)[3] + ticks_shift, "cmd": [],
                "log_path": "", "started_at": 0}))
        with pytest.raises(ServiceError, match=r"earlier version still run \(prometheus\)"):
            start(paths)
        assert stop(paths) == ["prometheus"]
        old.wait(timeout=10)
        assert proc_stat(child) is None or proc_stat(child)[0] == "Z"  # its session went too
        assert bystander.poll() is None  # the stale record's pid: someone else's now
        assert list(paths.stack_dir.glob("*.pid")) == []
    finally:
        for proc in (old, bystander):
            proc.kill()
            proc.wait()


def test_a_program_started_into_a_running_daemon_gets_the_callers_settings(sv, tmp_path,
                                                                            monkeypatch):
    """supervisord's own environment is the first caller's; the project's settings (AQ_*) of
    the command that starts a program still reach that program."""
    monkeypatch.delenv("AQ_TEST_KNOB", raising=False)
    sv.start(Program("first", SLEEPER))
    sv.wait_running("first")
    out = tmp_path / "seen.txt"
    monkeypatch.setenv("AQ_TEST_KNOB", "from-the-second-command")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "sqlite:////elsewhere.db")
    target = str(out)
    script = (f"import os; open({target!r}, 'w').write(os.environ.get('AQ_TEST_KNOB', '-') + "
              "' ' + os.environ.get('AIRFLOW__DATABASE__SQL_ALCHEMY_CONN', '-')); "
              "import time; time.sleep(60)")
    sv.start(Program("second", [sys.executable, "-c", script]))
    assert wait_for(lambda: out.exists() and out.read_text()) == "from-the-second-command -"
    assert sv.program_file("second").stat().st_mode & 0o077 == 0  # settings may be secrets
