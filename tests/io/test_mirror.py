"""A worker host's mirror of the home project, against the gateway's real nginx config.

The gateway is rendered by ``stack/gateway.py`` as on the home host, here listening on
127.0.0.1 (the two-host test, tests/dags/test_airflow_two_hosts.py, runs it on a veth
address between network namespaces); a workspace is mirrored from the home project, a
"task" changes files in it and the changes are sent back.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import requests

from pipeline.io.mirror import CACHE_OBJECTS, Mirror, MirrorError, Workspace, local_state
from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import gateway
from stack.supervisor import Program, Supervisor
from tests.conftest import free_port, make_project

pytestmark = [pytest.mark.stack, pytest.mark.service]  # nginx under supervisord

PASSWORD = "a-password-of-the-gateway-1234"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home project with some state, served by the gateway on 127.0.0.1."""
    if not shutil.which("nginx"):
        pytest.fail("nginx not installed: run `make setup`")
    root = make_project(tmp_path / "home")
    for rel, text in {"data/raw/source=s/location=a/month=2025-01.parquet": "raw a",
                      "data/raw/source=s/location=b/month=2025-01.parquet": "raw b",
                      "data/.raw.lock": "", "build/features/location=a/part.parquet": "fa",
                      "dvc.lock": "lock 1", "reports/quality.json": "{}"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        hour_ago = time.time() - 3600  # written a while ago (files just written are fetched
        os.utime(root / rel, (hour_ago, hour_ago))  # again: their second may not be over)
    paths = ProjectPaths(root)
    monkeypatch.setenv("AQ_STATE_PASSWORD", PASSWORD)
    ports = Ports(gateway=free_port(), airflow=free_port(), pushgateway=free_port())
    supervisor = Supervisor(tmp_path / "stack")
    program = gateway.program(paths, ports, ["127.0.0.1"], ["127.0.0.0/8"])
    supervisor.start(Program(program.name, program.command, directory=program.directory))
    url = f"http://127.0.0.1:{ports.gateway}"
    try:
        supervisor.wait_until("gateway", lambda: _answers(url), 30, "the gateway answered")
        yield root, url
    finally:
        supervisor.stop_all()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/params.yaml", timeout=2).status_code == 401
    except requests.RequestException:
        return False


def test_pull_mirrors_the_shared_state_and_push_sends_back_what_a_task_wrote(home, tmp_path):
    root, url = home
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "build" / "stale").mkdir(parents=True)
    (workspace / "build" / "stale" / "old.parquet").write_text("gone at home")
    mirror = Mirror(url, PASSWORD, workspace)
    before = mirror.pull()
    assert (workspace / "dvc.lock").read_text() == "lock 1"
    assert (workspace / "params.yaml").read_bytes() == (root / "params.yaml").read_bytes()
    assert (workspace / "data/raw/source=s/location=b/month=2025-01.parquet").read_text() == \
        "raw b"
    assert not (workspace / "data/.raw.lock").exists()  # dot files stay home
    assert not (workspace / "build" / "stale").exists()  # what home does not hold goes
    assert not (workspace / "pipeline").exists()  # code is not state

    # a task: rewrites a partition, adds a batch's files, removes a directory
    time.sleep(1.1)
    (workspace / "build/features/location=a/part.parquet").write_text("fa 2")
    pending = workspace / "predictions/pending/location=a"
    pending.mkdir(parents=True)
    (pending / "forecasts.parquet").write_text("f")
    time.sleep(0.05)
    (pending / "status.json").write_text("{}")  # written last
    shutil.rmtree(workspace / "data/raw/source=s/location=b")
    (workspace / "dvc.lock").write_text("lock 2")
    sent = mirror.push(before)
    assert sent == {"objects": 0, "written": 4, "removed": 1}
    assert (root / "build/features/location=a/part.parquet").read_text() == "fa 2"
    assert (root / "predictions/pending/location=a/status.json").read_text() == "{}"
    assert (root / "dvc.lock").read_text() == "lock 2"
    assert not (root / "data/raw/source=s/location=b").exists()
    assert (root / "data/raw/source=s/location=a/month=2025-01.parquet").exists()
    assert (root / "data/.raw.lock").exists()  # untouched
    # status.json after its forecasts: a reader at home never sees one without the other
    assert os.stat(root / "predictions/pending/location=a/status.json").st_mtime_ns >= \
        os.stat(root / "predictions/pending/location=a/forecasts.parquet").st_mtime_ns

    # the next task fetches only what changed at home since, and a file changed within the
    # second of the listing again the time after (its time cannot tell a second change)
    (root / "reports/quality.json").write_text('{"rows": 1}')
    again = Mirror(url, PASSWORD, workspace)
    state = local_state(workspace)
    again.pull()
    assert (workspace / "reports/quality.json").read_text() == '{"rows": 1}'
    unchanged = "data/raw/source=s/location=a/month=2025-01.parquet"
    assert local_state(workspace)[unchanged] == state[unchanged]  # not fetched again
    (root / "reports/quality.json").write_text('{"rows": 2}')  # same size, same second
    again.pull()
    assert (workspace / "reports/quality.json").read_text() == '{"rows": 2}'


def test_push_sends_the_dvc_cache_objects_a_task_made_before_the_lock_naming_them(home,
                                                                                  tmp_path):
    """A stage committed on a worker host is in the home project's DVC cache too: `dvc
    status` there finds its outputs, `dvc checkout` and `dvc push` can use them."""
    root, url = home
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    objects = workspace / CACHE_OBJECTS
    kept = objects / "0a" / ("b" * 30)  # in the workspace's cache before: home has it
    kept.parent.mkdir(parents=True)
    kept.write_text("old object")
    (root / CACHE_OBJECTS / "0a").mkdir(parents=True)
    (root / CACHE_OBJECTS / "0a" / ("b" * 30)).write_text("old object")
    mirror = Mirror(url, PASSWORD, workspace)
    before = mirror.pull()
    assert not (workspace / CACHE_OBJECTS / "ab").exists()  # the cache is never pulled

    # a task: `dvc commit` caches a directory output, then writes dvc.lock
    time.sleep(1.1)
    made = {f"12/{'3' * 30}": "a file of the output", f"45/{'6' * 30}.dir": "[the listing]"}
    for rel, text in made.items():
        (objects / rel).parent.mkdir(parents=True, exist_ok=True)
        (objects / rel).write_text(text)
    (objects / "12" / f"{'3' * 30}.a1b2.tmp").write_text("DVC's own temporary file")
    (workspace / "build/candidate").mkdir(parents=True)
    (workspace / "build/candidate/model.skops").write_text("model")
    (workspace / "dvc.lock").write_text("lock 2")
    assert mirror.push(before) == {"objects": 2, "written": 2, "removed": 0}
    for rel, text in made.items():
        assert (root / CACHE_OBJECTS / rel).read_text() == text
    assert not (root / CACHE_OBJECTS / "12" / f"{'3' * 30}.a1b2.tmp").exists()
    # the objects are home before the lock that names them
    assert max(os.stat(root / CACHE_OBJECTS / rel).st_mtime_ns for rel in made) <= \
        os.stat(root / "dvc.lock").st_mtime_ns
    # sent once: the next task's push sends only the objects it made
    assert Mirror(url, PASSWORD, workspace).push(mirror.pull()) == {
        "objects": 0, "written": 0, "removed": 0}

    # the gateway takes objects, nothing else of the cache, and never gives them out
    auth = ("worker", PASSWORD)
    cached = f"{url}/{CACHE_OBJECTS}/12/{'3' * 30}"
    assert requests.get(cached, auth=auth, timeout=5).status_code == 403
    assert requests.delete(cached, auth=auth, timeout=5).status_code == 403
    assert requests.get(f"{url}/{CACHE_OBJECTS}/12/", auth=auth, timeout=5).status_code == 404
    assert requests.put(f"{url}/{CACHE_OBJECTS}/12/not-an-object", data=b"x", auth=auth,
                        timeout=5).status_code == 404
    assert requests.put(f"{url}/.dvc/config", data=b"x", auth=auth, timeout=5).status_code == 404
    assert requests.put(cached, data=b"x", timeout=5).status_code == 401


def test_the_gateway_refuses_a_wrong_password_and_serves_only_the_shared_state(home, tmp_path):
    root, url = home
    with pytest.raises(MirrorError, match="refused the password"):
        Mirror(url, "not-the-password-0000", tmp_path).pull()
    auth = ("worker", PASSWORD)
    for path in ("pipeline/settings.py", "data/.raw.lock", ".stack/secrets/state.password",
                 "dvc.yaml", "../etc/passwd"):
        assert requests.get(f"{url}/{path}", auth=auth, timeout=5).status_code in (400, 404), \
            path
    assert requests.put(f"{url}/params.yaml", data=b"x", auth=auth, timeout=5).status_code == 403
    assert requests.put(f"{url}/pipeline/x.py", data=b"x", auth=auth,
                        timeout=5).status_code == 404
    assert not (root / "pipeline" / "x.py").exists()


def test_a_task_slot_holds_its_workspace_until_its_process_lets_go(tmp_path):
    checkout = make_project(tmp_path / "checkout")
    first = Workspace.claim(checkout, slots=2)
    second = Workspace.claim(checkout, slots=2)
    assert first.root != second.root
    assert (first.root / "pipeline" / "steps" / "train.py").is_file()  # the checkout's code
    assert (first.root / "params.yaml").exists() is False  # the home project's, mirrored
    with pytest.raises(MirrorError, match="no free workspace"):
        Workspace.claim(checkout, slots=2, timeout_s=0.5)
    first.handle.close()  # the task's process ended
    assert Workspace.claim(checkout, slots=2).root == first.root
