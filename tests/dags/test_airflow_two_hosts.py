"""A Celery worker on a second host that shares nothing with the first but the network.

The home host is this machine's network namespace: the scale-out profile (PostgreSQL,
Redis, the Airflow parts, one Celery worker, a Pushgateway) with ``AQ_BIND_ADDRESSES`` set
to its end of a veth pair, so PostgreSQL and Redis listen on 127.0.0.1 and that address,
and the gateway (nginx: execution API, Pushgateway, the project's shared state) on that
address only. The second host is a network namespace of its own (``ip netns add``) holding
the other end of the pair: no route to the home host's 127.0.0.1, and, in a mount namespace
of its own, the home host's directory hidden under an empty tmpfs. Its project directory
is a checkout of the code only; its worker is started the way docs/airflow.md tells a
second machine to (``python -m stack worker start``, credentials in the environment) under
its own supervisord, and gets every input from the gateway and hands every output back
through it (:mod:`pipeline.io.mirror`).

``aq_retrain`` and ``aq_predict`` then run with tasks on both hosts, and the features, the
models and the forecasts are those of the same steps run one after the other on one host,
compared by hash. Namespaces, veths and processes are removed in every case; every wait is
bounded. Root (as in CI) may create namespaces; elsewhere the module is skipped, saying why.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pipeline.io.registry import Registry
from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack import airflow_celery, airflow_local, gateway
from stack.supervisor import Supervisor
from tests.conftest import REPO, free_port, make_project
from tests.dags.airflow_harness import AirflowApi, failure_report, listening_addresses
from tests.dags.conftest import make_dvc_project, run, seed_history

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.stack, pytest.mark.service,
              pytest.mark.process, pytest.mark.train]

# RFC 2544's benchmarking range: a link between our own two namespaces, never a real network;
# each run takes a /30 no interface of this host uses (a run killed before its teardown, or
# another run sharing the kernel's network namespace, keeps its own)
BENCHMARK_RANGE = ipaddress.ip_network("198.18.0.0/15")
NAMESPACE_PREFIX = "aq-host2-"
WORKER = "host2"
LOCATIONS = 6  # one per mapped batch: the batches spread over both hosts
CMD_TIMEOUT_S = 60


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=CMD_TIMEOUT_S,
                          check=check)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot host the second host (None: it can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "creating a network namespace (ip netns add) needs root, as in CI"
    for tool in ("ip", "unshare", "nginx", "mount"):
        if not shutil.which(tool):
            return f"{tool} not found (make setup installs iproute2, util-linux and nginx)"
    probe = f"aq-probe-{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add fails here: {made.stderr.strip()[:200]}"
    _ip("netns", "del", probe, check=False)
    return None


def addresses_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network an interface of this namespace is on."""
    listing = _ip("-o", "-4", "addr", "show").stdout
    return [ipaddress.ip_interface(word).network
            for line in listing.splitlines() for word in line.split()[3:4]]


def free_link_network() -> ipaddress.IPv4Network:
    """A /30 of the benchmarking range that overlaps no network this host is on."""
    used = [n for n in addresses_in_use() if n.overlaps(BENCHMARK_RANGE)]
    candidates = list(BENCHMARK_RANGE.subnets(new_prefix=30))
    for _ in range(100):
        network = secrets.choice(candidates)
        if not any(network.overlaps(n) for n in used):
            return network
    raise RuntimeError(f"no free /30 in {BENCHMARK_RANGE} after 100 draws: {used[:10]}")


def reap_abandoned_namespaces() -> list[str]:
    """Remove the second hosts of runs that died before their teardown (their creator's pid,
    in the name, is gone): their processes, namespace and veth pair. Returns their names."""
    reaped = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{NAMESPACE_PREFIX}(\d+)-[0-9a-f]+", name)
        if not match or Path(f"/proc/{match.group(1)}").exists():
            continue
        SecondHost(name=name).close()
        reaped.append(name)
    return reaped


class SecondHost:
    """A network namespace joined to this one by a veth pair on a /30 of its own."""

    def __init__(self, name: str | None = None) -> None:
        tag = secrets.token_hex(3)
        self.name = name or f"{NAMESPACE_PREFIX}{os.getpid()}-{tag}"
        self.home_link, self.link = f"aqh{tag}", f"aqw{tag}"
        self.network = free_link_network() if name is None else None

    @property
    def home_address(self) -> str:
        return str(self.network[1])

    @property
    def worker_address(self) -> str:
        return str(self.network[2])

    def create(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.home_link, "type", "veth", "peer", "name", self.link)
        _ip("link", "set", self.link, "netns", self.name)
        prefix = f"/{self.network.prefixlen}"
        _ip("addr", "add", self.home_address + prefix, "dev", self.home_link)
        _ip("link", "set", self.home_link, "up")
        for args in (("addr", "add", self.worker_address + prefix, "dev", self.link),
                     ("link", "set", self.link, "up"), ("link", "set", "lo", "up")):
            _ip("netns", "exec", self.name, "ip", *args)

    def command(self, cmd: list[str], hide: Path) -> list[str]:
        """``cmd`` in the namespace, with ``hide`` (the home host's files) under a tmpfs."""
        script = 'mount -t tmpfs -o size=1m aq-hidden "$0" && exec "$@"'
        return ["ip", "netns", "exec", self.name, "unshare", "--mount",
                "--propagation", "private", "sh", "-c", script, str(hide), *cmd]

    def pids(self) -> list[int]:
        found = _ip("netns", "pids", self.name, check=False).stdout.split()
        return [int(p) for p in found if p.isdigit()]

    def close(self) -> None:
        """Every process in the namespace ended (TERM, then KILL), the namespace and the veth
        pair removed; bounded."""
        for sig, grace in ((15, 10.0), (9, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        _ip("netns", "del", self.name, check=False)  # its veth end, and so the pair, with it
        _ip("link", "del", self.home_link, check=False)


def connects(namespace: str | None, host: str, port: int) -> bool:
    """Can ``namespace`` (None: this one) open a TCP connection to host:port?"""
    code = (f"import socket; socket.create_connection(({host!r}, {port}), 3).close()")
    cmd = [sys.executable, "-c", code]
    if namespace:
        cmd = ["ip", "netns", "exec", namespace, *cmd]
    return subprocess.run(cmd, capture_output=True, timeout=CMD_TIMEOUT_S).returncode == 0


def places(n: int) -> list[dict]:
    return [{"id": f"town{i}", "name": f"Town {i}", "latitude": 20.0 + 7 * i,
             "longitude": -60.0 + 25 * i, "timezone": "UTC"} for i in range(n)]


def one_host_reference(home: Path, target: Path) -> Path:
    """The home project as it was before the DAGs ran, its steps run one after the other."""
    shutil.copytree(home, target, symlinks=True,
                    ignore=shutil.ignore_patterns(".stack", ".airflow"))
    env = {**os.environ, "AQ_PROJECT_DIR": str(target), "AQ_BATCH_LOCATIONS": "25"}
    env.pop("AQ_PUSHGATEWAY_URL", None)
    for step in ("preprocess", "train", "evaluate", "promote", "predict"):
        run([sys.executable, "-m", "pipeline", step], cwd=target, env=env, timeout=900)
    return target


def model_digest(artifact: Path) -> str:
    """The models in a skops file: its arrays and its schema, not the zip's timestamps nor
    the object ids skops names the arrays by (they differ from one process to the next)."""
    with zipfile.ZipFile(io.BytesIO(artifact.read_bytes())) as archive:
        parts = sorted(hashlib.sha256(archive.read(name)).hexdigest()
                       for name in archive.namelist() if name != "schema.json")
        schema = re.sub(rb"\d{9,}", b"ID", archive.read("schema.json"))
    return hashlib.sha256("".join(parts).encode() + schema).hexdigest()


def champion_digest(paths: ProjectPaths) -> str:
    version = Registry(paths).champion_version()
    return model_digest(paths.registry_dir / version / "model.skops")


def tree_digests(root: Path, pattern: str) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob(pattern))}


def forecast_digest(path: Path) -> str:
    """What was forecast (values, intervals, AQI), not when or by which version name."""
    frame = pd.read_parquet(path).drop(columns=["created_at", "model_version"])
    frame = frame.sort_values(["location_id", "target", "horizon"]).reset_index(drop=True)
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()
                          ).hexdigest()


@pytest.fixture(scope="module")
def two_hosts(pushgateway, monkeypatch_module):
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"second host not created: {reason}")
    reap_abandoned_namespaces()
    top = Path(tempfile.mkdtemp(prefix="aq-two-hosts-"))
    top.chmod(0o711)  # PostgreSQL runs as `postgres`: the home project must be reachable
    host = SecondHost()
    home_address = host.home_address
    paths = None
    worker_paths = None
    try:
        home = make_dvc_project(top / "home" / "project", {"locations": places(LOCATIONS)})
        seed_history(home)
        reference = one_host_reference(home, top / "reference")
        paths = ProjectPaths(home)
        host.create()
        monkeypatch_module.setenv("AQ_TASK_RETRIES", "0")
        monkeypatch_module.setenv("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", "False")
        monkeypatch_module.setenv("AQ_BATCH_LOCATIONS", "1")
        monkeypatch_module.setenv("AQ_CELERY_WORKERS", "1")
        monkeypatch_module.setenv("AQ_BIND_ADDRESSES", home_address)
        monkeypatch_module.setenv("AQ_PEER_NETWORKS", str(host.network))
        ports = Ports(airflow=free_port(), pushgateway=pushgateway.port, postgres=free_port(),
                      redis=free_port(), gateway=free_port())
        info = airflow_celery.start(paths, ports)

        # the second host: a checkout of the code, no state; its worker gets the
        # credentials from the environment, as docs/airflow.md tells a second machine
        checkout = make_project(top / "host2" / "project", {"locations": places(LOCATIONS)},
                                with_dvc=True)
        for code in ("dags", "stack"):  # what a checkout of the repository has beside
            shutil.copytree(REPO / code, checkout / code,
                            ignore=shutil.ignore_patterns("__pycache__"))
        worker_paths = ProjectPaths(checkout)
        layout = airflow_celery.Layout(paths.stack_dir)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRFLOW", "AQ_"))}
        env.update({
            "AQ_PROJECT_DIR": str(checkout),
            "AQ_HOME_URL": f"http://{home_address}:{ports.gateway}",
            "AQ_POSTGRES_PORT": str(ports.postgres), "AQ_REDIS_PORT": str(ports.redis),
            "AQ_GATEWAY_PORT": str(ports.gateway),
            "AQ_POSTGRES_PASSWORD": airflow_celery.password(layout, airflow_celery.POSTGRES),
            "AQ_REDIS_PASSWORD": airflow_celery.password(layout, airflow_celery.REDIS),
            "AQ_STATE_PASSWORD": gateway.state_password(paths),
            "AQ_CELERY_WORKER": WORKER, "AQ_CELERY_CONCURRENCY": "2",
            "AQ_TASK_RETRIES": "0", "AQ_BATCH_LOCATIONS": "1",
        })
        started = subprocess.run(
            host.command([sys.executable, "-m", "stack", "worker", "start"], top / "home"),
            cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"paths": paths, "ports": ports, "info": info, "host": host,
               "worker_paths": worker_paths, "reference": reference, "top": top}
    finally:
        if worker_paths is not None:
            Supervisor(worker_paths.stack_dir).stop_all(timeout=60)
        host.close()
        if paths is not None:
            airflow_celery.stop(paths)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def api(two_hosts) -> AirflowApi:
    info = two_hosts["info"]
    client = AirflowApi(info["airflow UI"], info["airflow user"], info["airflow password"])
    client.wait_parsed()
    return client


def _dead_pid() -> int:
    """A pid no process has: one just reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=CMD_TIMEOUT_S)
    return child.pid


def test_a_second_host_left_by_a_killed_run_neither_collides_nor_stays():
    """CI failed when a run killed before its teardown had left its namespace and its
    address: the next run put the same /30 on a second veth, the home host's replies took
    the stale one and the worker's PostgreSQL connection timed out. Now each run takes a
    free /30 and removes what dead runs left."""
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"second host not created: {reason}")
    abandoned = SecondHost()
    abandoned.name = f"{NAMESPACE_PREFIX}{_dead_pid()}-{abandoned.home_link[3:]}"
    fresh = None
    try:
        abandoned.create()
        assert abandoned.network in addresses_in_use()
        fresh = SecondHost()
        assert not fresh.network.overlaps(abandoned.network)
        assert reap_abandoned_namespaces() == [abandoned.name]
        assert abandoned.network not in addresses_in_use()
        assert abandoned.name not in _ip("netns", "list").stdout
    finally:
        abandoned.close()


def test_the_link_avoids_every_network_this_host_is_on(monkeypatch):
    taken = ipaddress.ip_network("198.18.0.0/16")
    monkeypatch.setattr(sys.modules[__name__], "addresses_in_use", lambda: [taken])
    for _ in range(20):
        network = free_link_network()
        assert network.prefixlen == 30
        assert network.subnet_of(BENCHMARK_RANGE)
        assert not network.overlaps(taken)


def test_services_bind_what_the_second_host_needs_and_nothing_wider(two_hosts):
    paths, ports, host = two_hosts["paths"], two_hosts["ports"], two_hosts["host"]
    home_address = host.home_address
    supervisor = Supervisor(paths.stack_dir)
    by_program = {name: listening_addresses([supervisor.pid(name)])
                  for name in (airflow_celery.POSTGRES, airflow_celery.REDIS, "gateway",
                               "airflow-api-server")}
    assert by_program[airflow_celery.POSTGRES] == {f"127.0.0.1:{ports.postgres}",
                                                   f"{home_address}:{ports.postgres}"}
    assert by_program[airflow_celery.REDIS] == {f"127.0.0.1:{ports.redis}",
                                                f"{home_address}:{ports.redis}"}
    gateway_pids = [supervisor.pid("gateway"), *_children(supervisor.pid("gateway"))]
    assert listening_addresses(gateway_pids) == {f"{home_address}:{ports.gateway}"}
    assert by_program["airflow-api-server"] <= {f"127.0.0.1:{ports.airflow}"}
    # the second host reaches the home host's private address, never its loopback
    assert connects(host.name, home_address, ports.gateway)
    assert connects(host.name, home_address, ports.postgres)
    assert not connects(host.name, "127.0.0.1", ports.airflow)
    assert not connects(host.name, "127.0.0.1", ports.postgres)
    assert not connects(host.name, home_address, ports.airflow)  # not on that address


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_the_gateway_serves_the_shared_state_only_with_the_password(two_hosts):
    import requests

    paths, ports = two_hosts["paths"], two_hosts["ports"]
    base = f"http://{two_hosts['host'].home_address}:{ports.gateway}"
    password = gateway.state_password(paths)
    assert requests.get(f"{base}/params.yaml", timeout=10).status_code == 401
    assert requests.get(f"{base}/params.yaml", auth=("worker", "wrong-password-x"),
                        timeout=10).status_code == 401
    got = requests.get(f"{base}/params.yaml", auth=("worker", password), timeout=10)
    assert got.status_code == 200
    assert got.content == paths.params.read_bytes()
    for hidden in (".stack/secrets/postgres.password", ".airflow/airflow.cfg",
                   "pipeline/settings.py", "data/.raw.lock", "dvc.yaml"):
        assert requests.get(f"{base}/{hidden}", auth=("worker", password),
                            timeout=10).status_code == 404, hidden
    assert requests.put(f"{base}/params.yaml", data=b"x", auth=("worker", password),
                        timeout=10).status_code == 403  # read-only
    assert password not in (paths.stack_dir / "gateway" / "nginx.conf").read_text()
    assert (paths.stack_dir / "gateway" / "htpasswd").stat().st_mode & 0o077 == 0


def test_retraining_and_forecasts_on_two_hosts_equal_one_host(two_hosts, api):
    paths, reference = two_hosts["paths"], two_hosts["reference"]
    worker_paths = two_hosts["worker_paths"]
    airflow_local.set_paused(paths, False, ["aq_retrain", "aq_predict"])
    hosts = set()
    ran_on = {}  # task -> host, for the message of a failure below
    for dag_id in ("aq_retrain", "aq_predict"):
        runs = [(dag_id, api.trigger(dag_id, None))]
        assert set(api.wait_finished(runs).values()) == {"success"}, failure_report(paths, runs)
        tis = api.task_instances(dag_id, runs[0][1])
        assert {ti["state"] for ti in tis} == {"success"}, tis
        batches = [ti for ti in tis if ti["task_id"].endswith("_batch")]
        assert len(batches) == LOCATIONS
        hosts |= {ti["hostname"].split("@")[0] for ti in tis}
        ran_on |= {f"{dag_id}.{ti['task_id']}": ti["hostname"].split("@")[0] for ti in tis
                   if ti.get("map_index", -1) == -1}
    assert hosts == {"worker1", WORKER}, hosts  # tasks ran on both hosts

    # the second host worked in its own workspaces, mirrored through the gateway
    task_logs = "".join(p.read_text(errors="replace")
                        for p in (worker_paths.airflow_home / "logs").rglob("*.log"))
    assert "mirrored the home project" in task_logs
    assert "sent back to the home project" in task_logs
    assert not (worker_paths.root / "build").exists()  # the checkout itself holds no state

    # what two hosts made is what one host makes: features, models, forecasts
    home, ref = paths.root, ProjectPaths(reference)
    assert tree_digests(home, "build/features/*/part.parquet") == tree_digests(
        reference, "build/features/*/part.parquet")
    assert len(tree_digests(home, "build/features/*/part.parquet")) == LOCATIONS
    assert model_digest(home / "build/candidate/model.skops") == model_digest(
        reference / "build/candidate/model.skops")
    assert champion_digest(paths) == champion_digest(ref)
    assert forecast_digest(paths.latest_predictions) == forecast_digest(ref.latest_predictions)
    assert (home / "metrics.json").read_text() == (reference / "metrics.json").read_text()
    # and dvc.lock records every stage as `dvc repro` would have
    status = run(["dvc", "status", "preprocess", "train", "evaluate", "promote", "predict"],
                 cwd=home).stdout
    assert "up to date" in status, (status, ran_on)


def test_every_process_of_the_second_host_lives_in_its_namespace(two_hosts):
    host, worker_paths = two_hosts["host"], two_hosts["worker_paths"]
    supervisor = Supervisor(worker_paths.stack_dir)
    pid = supervisor.pid(f"airflow-celery-{WORKER}")
    assert pid in host.pids()
    assert Path(f"/proc/{pid}/ns/net").readlink() != Path("/proc/self/ns/net").readlink()
    assert Path(f"/proc/{pid}/ns/mnt").readlink() != Path("/proc/self/ns/mnt").readlink()
