"""Serving benchmark: the API through its front door against the seed-style reference, same run.

It builds a temporary project with the repo's default params.yaml (5 cities, one synthetic
year, the model `make run` trains) and runs ingest .. predict; trains the reference models
(``../shared/bench-anchors/make_models.py``, run from there); starts the reference app under
``gunicorn -w 2`` on 127.0.0.1 and this project's API as ``make run`` does
(``stack/serving_local.py``: supervisord runs nginx on 127.0.0.1 in front of ``gunicorn -w 2``
on a unix socket, and mtail), all with ``OMP_NUM_THREADS=1``; then drives each configuration
with the same closed-loop load driver (C connections, one request in flight per connection, a
new connection per request as sync workers close them; with ``--reuse-connections`` each
client keeps its connection unless the server closes it, as an HTTP/1.1 client with a session
does: nginx keeps it, gunicorn's sync workers close it), interleaved round by round:

    reference        POST /predict of the reference app (pickle, one-row DataFrame per horizon)
    post_obs         POST /v1/forecasts with the newest hour's observations (feature row
                     rebuilt), through nginx: what users call (the headline)
    post_obs_direct  the same request straight to gunicorn's unix socket (no nginx)
    post             POST /v1/forecasts without observations (the stored newest hour), nginx
    get              GET /v1/forecasts/{id} (latest batch forecast), nginx
    v2_obs           MLServer's V2 infer (serving/v2.py, one process) with the same
                     observations
    v2               MLServer's V2 infer of the stored newest hour (as post)

Per configuration: req/s, p50/p99 latency, server CPU per request (user + system, /proc: the
gunicorn master and workers, plus nginx and mtail through the front door; also per process,
user and system apart), the load driver's
own CPU per request (it shares the cores: with the server's, it sets the req/s), and the ratio
to the reference of the same round. A soak run of ``--soak`` seconds on post_obs (front door)
samples each worker's RSS (flat = no growth).

    .venv/bin/python bench/bench_serving.py                       # 3 rounds x 15 s, 10 min soak
    .venv/bin/python bench/bench_serving.py --rounds 1 --seconds 5 --soak 0   # quick look
    .venv/bin/python bench/bench_serving.py --no-v2       # without MLServer (.venv-mlserver)
    .venv/bin/python bench/bench_serving.py --only v2 v2_obs --v2-processes 2  # 2 behind nginx
    .venv/bin/python bench/bench_serving.py --only post_obs post_obs_direct  # and the reference
    .venv/bin/python bench/bench_serving.py --reuse-connections  # clients keep their connections
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# ../shared/bench-anchors of the checkout (or of the folder above a git worktree's folder)
ANCHORS = next((d for d in (REPO.parent / "shared" / "bench-anchors",
                            REPO.parent.parent / "shared" / "bench-anchors") if d.exists()),
               REPO.parent / "shared" / "bench-anchors")
sys.path.insert(0, str(REPO))  # the launcher (stack/) and the settings of this checkout
STEPS = ["ingest", "preprocess", "train", "evaluate", "promote", "predict"]
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_project(root: Path) -> Path:
    """A project dir with the repo's params.yaml and its data, models and forecasts; the code
    is this checkout's (on PYTHONPATH: no copy that a later run could serve stale)."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    env = {**os.environ, "AQ_PROJECT_DIR": str(root), "PYTHONPATH": str(REPO)}
    env.pop("AQ_PUSHGATEWAY_URL", None)
    for step in STEPS:
        subprocess.run([sys.executable, "-m", "pipeline", step], cwd=root, env=env, check=True,
                       capture_output=True, timeout=1800)
    return root


def group_pids(leader: int) -> list[int]:
    """The gunicorn master and its workers (same process group)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == leader:
                pids.append(int(entry.name))
    return pids


def cpu_by_process(pids: list[int]) -> dict[str, tuple[float, float]]:
    """CPU seconds (user, system) of ``pids``, summed per process name (``comm``)."""
    totals: dict[str, tuple[float, float]] = {}
    for pid in pids:
        try:
            name, rest = Path(f"/proc/{pid}/stat").read_text().split("(", 1)[1].rsplit(")", 1)
        except (OSError, ValueError):
            continue
        fields = rest.split()
        user, system = totals.get(name, (0.0, 0.0))
        totals[name] = (user + int(fields[11]) / TICKS, system + int(fields[12]) / TICKS)
    return totals


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except OSError:
        return 0


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, port: int,
                 ready_path: str) -> None:
        self.name, self.port = name, port
        self.log = open(Path(tempfile.gettempdir()) / f"bench-serving-{name}-{port}.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}",
                                            timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()  # its whole process group: a server half up is not left running
                raise RuntimeError(f"{name} did not start; log {self.log.name}")
            time.sleep(0.5)

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    @property
    def pids(self) -> list[int]:
        return group_pids(self.proc.pid)

    def workers(self) -> list[int]:
        return [p for p in self.pids if p != self.proc.pid]

    def stop(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (gunicorn's, behind nginx)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class FrontDoor:
    """The API as ``make run`` starts it: supervisord, nginx on a free port, gunicorn on a
    unix socket, mtail (``stack.serving_local.start``), in ``<project>/.stack``."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        from pipeline.paths import ProjectPaths
        from pipeline.settings import Ports
        from stack import serving_local
        from stack.supervisor import Supervisor

        self.paths = ProjectPaths(project)
        self.supervisor = Supervisor(self.paths.stack_dir)
        self.ports = Ports().replace(serving=free_port(), serving_proxy_metrics=free_port())
        self.port = self.ports.serving
        self.socket = serving_local.socket_path(self.paths)
        saved = dict(os.environ)
        os.environ.update(env)  # what supervisord and its programs inherit
        os.environ.update(self.ports.env())
        try:
            serving_local.start(self.paths, self.ports, timeout=180)
            serving_local.wait_ready(self.ports.url("serving"), timeout=300)
        except Exception:
            self.stop()
            raise
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def _group(self, name: str) -> list[int]:
        pid = self.supervisor.pid(name)
        return group_pids(pid) if pid else []

    @property
    def pids(self) -> list[int]:
        """gunicorn (master, workers), nginx (master, worker) and mtail."""
        return [p for name in ("serving", "serving_proxy", "serving_proxy_metrics")
                for p in self._group(name)]

    def workers(self) -> list[int]:
        master = self.supervisor.pid("serving")
        return [p for p in self._group("serving") if p != master]

    def direct(self) -> Direct:
        return Direct(self)

    def stop(self) -> None:
        self.supervisor.stop_all()


class Direct:
    """The front door's gunicorn, called on its unix socket without nginx."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        return UnixConnection(self.door.socket, timeout)

    @property
    def pids(self) -> list[int]:
        return self.door._group("serving")


class V2Pool:
    """``--v2-processes N`` (N > 1): N MLServer processes (one per core) behind one nginx
    (``least_conn``, kept-alive upstream connections), a pool MLServer 1.7.1's own
    ``parallel_workers`` cannot give here (its workers die at start with uvloop >= 0.22)."""

    NGINX = """worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/error.log;
events {{ worker_connections 256; }}
http {{ access_log off;
  upstream v2 {{ least_conn; {servers} keepalive 16; }}
  server {{ listen 127.0.0.1:{port}; client_body_buffer_size 64k;
    location / {{ proxy_pass http://v2; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }} }} }}
"""

    def __init__(self, servers: list[Server], work: Path, env: dict[str, str]) -> None:
        self.servers = servers
        port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        conf = work / "nginx.conf"
        conf.write_text(self.NGINX.format(work=work, port=port, servers=" ".join(
            f"server 127.0.0.1:{s.port};" for s in servers)))
        self.nginx = Server("v2-nginx", [shutil.which("nginx") or "/usr/sbin/nginx", "-c",
                                         str(conf), "-p", str(work), "-e",
                                         str(work / "error.log")],
                            env, work, port, "/v2/models/aq-forecast/ready")
        self.port = port

    def connection(self, timeout: float = 30) -> http.client.HTTPConnection:
        return self.nginx.connection(timeout)

    @property
    def pids(self) -> list[int]:
        return [p for s in (*self.servers, self.nginx) for p in s.pids]

    def stop(self) -> None:
        self.nginx.stop()
        for server in self.servers:
            server.stop()


def drive(server: Server | FrontDoor | Direct | V2Pool, method: str, path: str, body: bytes | None,
          connections: int, seconds: float, reuse: bool = False) -> dict:
    """Closed loop: ``connections`` threads, each one request in flight, for ``seconds``.

    ``reuse``: each thread behaves as an HTTP/1.1 client with a connection pool of one (as
    ``requests.Session`` does): it keeps its connection unless the server closes it (gunicorn's
    sync workers close every one; nginx keeps them); otherwise a new connection per request.
    """
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    headers = {"Content-Type": "application/json"} if body is not None else {}
    stop_at = time.monotonic() + seconds

    def worker(i: int) -> None:
        mine = latencies[i]
        conn = None
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = server.connection()
                conn.request(method, path, body=body, headers=headers)
                reply = conn.getresponse()
                reply.read()
                if not reuse or reply.will_close:
                    conn.close()
                    conn = None
                if reply.status != 200:
                    errors[i] += 1
            except OSError:
                errors[i] += 1
                if conn is not None:
                    conn.close()
                    conn = None
            mine.append(time.perf_counter() - started)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = sorted(x for lat in latencies for x in lat)
    n = len(flat)
    return {
        "requests": n, "errors": sum(errors), "seconds": elapsed,
        "rps": n / elapsed,
        "p50_ms": flat[n // 2] * 1000 if n else float("nan"),
        "p99_ms": flat[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
    }


def measure(server: Server | FrontDoor | Direct | V2Pool, method: str, path: str,
            body: bytes | None, connections: int, seconds: float, reuse: bool = False) -> dict:
    drive(server, method, path, body, connections, 1.0, reuse)  # warm-up
    pids = server.pids
    cpu0, client0 = cpu_by_process(pids), own_cpu_seconds()
    result = drive(server, method, path, body, connections, seconds, reuse)
    done = max(result["requests"], 1)
    cpu1 = cpu_by_process(pids)
    # where the server's CPU goes: gunicorn (master and workers), nginx, mtail; user, system
    by_process = {name: [round((cpu1[name][i] - cpu0.get(name, (0.0, 0.0))[i]) / done * 1000, 3)
                         for i in (0, 1)] for name in cpu1}
    result["cpu_ms_per_request"] = sum(sum(v) for v in by_process.values())
    result["cpu_ms_per_request_by_process"] = by_process
    # the load driver shares the 2 cores: its CPU per request bounds the req/s ratio
    result["client_cpu_ms_per_request"] = (own_cpu_seconds() - client0) / done * 1000
    return result


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--soak", type=float, default=600.0, help="soak seconds (0: none)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--project", type=Path, default=None,
                        help="serve this project (with a champion) instead of building one")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    parser.add_argument("--anchors", type=Path, default=ANCHORS,
                        help="the reference apps' folder (default: ../shared/bench-anchors)")
    parser.add_argument("--no-v2", dest="v2", action="store_false",
                        help="leave out MLServer's V2 endpoint (.venv-mlserver)")
    parser.add_argument("--v2-processes", type=int, default=1, metavar="N",
                        help="N > 1: N MLServer processes behind one nginx (least_conn) for "
                             "the V2 configurations; default one process, as `make run`")
    parser.add_argument("--reuse-connections", action="store_true",
                        help="every configuration's client keeps its connection unless the "
                             "server closes it (HTTP/1.1 keep-alive, as requests.Session); "
                             "default: a new connection per request")
    parser.add_argument("--only", nargs="+", default=None, metavar="CONFIG",
                        help="run only these configurations (reference is always run: the "
                             "ratios need it), e.g. --only post_obs post_obs_direct")
    args = parser.parse_args(argv)
    anchors = args.anchors.resolve()
    if not (anchors / "baseline_app.py").exists():
        print(f"no reference app in {anchors} (--anchors)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench_serving_", dir=args.workdir))
    print(f"work dir {work}; load average {load_average()}", flush=True)
    project = args.project.resolve() if args.project else make_project(work / "project")
    bench_dir = work / "reference"
    bench_dir.mkdir()
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_DIR": str(bench_dir)}
    base_env.pop("AQ_PUSHGATEWAY_URL", None)
    subprocess.run([sys.executable, str(anchors / "make_models.py")], env=base_env, check=True,
                   cwd=anchors, capture_output=True, timeout=1800)
    gunicorn = str(Path(sys.executable).parent / "gunicorn")

    ref_port = free_port()
    reference = Server("reference", [gunicorn, "-w", "2", "-b", f"127.0.0.1:{ref_port}",
                                     "-c", str(anchors / "gunicorn_conf.py"),
                                     "--pythonpath", str(anchors), "baseline_app:app"],
                       {**base_env, "BASELINE": "seed"}, anchors, ref_port, "/healthz")
    v2 = None
    if args.only is not None and not {"v2", "v2_obs"} & set(args.only):
        args.v2 = False
    if args.v2:  # MLServer from its own venv, as `make run` starts it (stack/mlserver_local.py)
        processes = []
        try:
            for i in range(max(1, args.v2_processes)):
                v2_port = free_port()
                folder = work / f"mlserver{i}"
                folder.mkdir()
                processes.append(Server(
                    f"mlserver{i}", [str(REPO / ".venv-mlserver" / "bin" / "mlserver"), "start",
                                     str(REPO / "deploy" / "mlserver")],
                    {**base_env, "AQ_PROJECT_DIR": str(project), "MLSERVER_HOST": "127.0.0.1",
                     "MLSERVER_HTTP_PORT": str(v2_port),
                     "MLSERVER_GRPC_PORT": str(free_port()),
                     "MLSERVER_METRICS_PORT": str(free_port()),
                     "MLSERVER_METRICS_DIR": str(folder)},
                    folder, v2_port, "/v2/models/aq-forecast/ready"))
            v2 = (processes[0] if len(processes) == 1 else
                  V2Pool(processes, work / "v2-nginx", base_env))
        except Exception:
            for server in processes:
                server.stop()
            reference.stop()
            raise
    ours = None
    try:
        ours = FrontDoor(project, {"OMP_NUM_THREADS": "1", "AQ_PROJECT_DIR": str(project),
                                   "AQ_SERVING_WORKERS": "2"})
        direct = ours.direct()
        location = yaml.safe_load((project / "params.yaml").read_text())["locations"][0]["id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{ours.port}/v1/forecasts/{location}",
                                    timeout=30) as r:
            newest = json.load(r)["issue_time"]
        ref_body = (bench_dir / "body.json").read_bytes()
        obs_body = json.dumps({"location_id": location, "observations": [{
            "time": newest, "pm2_5": 23.4, "pm10": 31.0, "no2": 28.0, "o3": 40.0, "co": 300.0,
            "temperature_2m": 4.2, "relative_humidity_2m": 77.0, "wind_speed_10m": 3.1,
            "wind_direction_10m": 240.0, "surface_pressure": 1009.0, "precipitation": 0.0,
            "cloud_cover": 60.0}]}).encode()
        configs = {
            "reference": (reference, "POST", "/predict", ref_body),
            "post_obs": (ours, "POST", "/v1/forecasts", obs_body),
            "post_obs_direct": (direct, "POST", "/v1/forecasts", obs_body),
            "post": (ours, "POST", "/v1/forecasts",
                     json.dumps({"location_id": location}).encode()),
            "get": (ours, "GET", f"/v1/forecasts/{location}", None),
        }
        if v2 is not None:
            observations = json.loads(obs_body)["observations"]
            location_input = {"name": "location_id", "shape": [1], "datatype": "BYTES",
                              "data": [location]}
            configs["v2_obs"] = (v2, "POST", "/v2/models/aq-forecast/infer", json.dumps(
                {"inputs": [location_input, {"name": "observations", "shape": [1],
                                             "datatype": "BYTES",
                                             "data": [json.dumps(observations)]}]}).encode())
            configs["v2"] = (v2, "POST", "/v2/models/aq-forecast/infer",
                             json.dumps({"inputs": [location_input]}).encode())
        if args.only is not None:
            unknown = set(args.only) - set(configs)
            if unknown:
                raise SystemExit(f"--only: unknown configuration(s) {sorted(unknown)}; "
                                 f"known: {sorted(configs)}")
            configs = {k: v for k, v in configs.items() if k == "reference" or k in args.only}
        rounds = []
        for i in range(args.rounds):
            row = {"load_average": load_average()}
            for name, (server, method, path, body) in configs.items():
                row[name] = measure(server, method, path, body, args.connections, args.seconds,
                                    args.reuse_connections)
                r = row[name]
                print(f"round {i + 1} {name:<15} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms"
                      f"  p99 {r['p99_ms']:7.2f} ms  cpu {r['cpu_ms_per_request']:5.2f} ms/req"
                      f" (client {r['client_cpu_ms_per_request']:4.2f})"
                      f"  errors {r['errors']}  (load {row['load_average']})", flush=True)
                print("        cpu ms/req by process (user + system): " + ", ".join(
                    f"{k} {u:.3f} + {s:.3f}" for k, (u, s) in sorted(
                        r["cpu_ms_per_request_by_process"].items(), key=lambda kv: -sum(kv[1]))),
                    flush=True)
            rounds.append(row)
        summary = {}
        for name in configs:
            summary[name] = {k: statistics.median(r[name][k] for r in rounds)
                             for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request",
                                       "client_cpu_ms_per_request")}
            summary[name]["ratio_rps_to_reference"] = statistics.median(
                r[name]["rps"] / r["reference"]["rps"] for r in rounds)
            summary[name]["errors"] = sum(r[name]["errors"] for r in rounds)
        soak = None
        if args.soak > 0:
            workers = ours.workers()
            start_rss = {p: rss_bytes(p) for p in workers}
            samples = []
            began = time.monotonic()
            total = 0
            while time.monotonic() - began < args.soak:
                chunk = drive(ours, "POST", "/v1/forecasts", obs_body, args.connections,
                              min(30.0, args.soak - (time.monotonic() - began)),
                              args.reuse_connections)
                total += chunk["requests"]
                samples.append({"t": round(time.monotonic() - began), "rps": chunk["rps"],
                                "rss_mb": {p: round(rss_bytes(p) / 2**20, 1) for p in workers}})
                print(f"soak {samples[-1]}", flush=True)
            soak = {"seconds": args.soak, "requests": total, "workers": workers,
                    "start_rss_mb": {p: round(v / 2**20, 1) for p, v in start_rss.items()},
                    "end_rss_mb": {p: round(rss_bytes(p) / 2**20, 1) for p in workers},
                    "samples": samples}
        rss = {name: {p: round(rss_bytes(p) / 2**20, 1) for p in server.pids}
               for name, server in (("ours", ours), ("mlserver", v2)) if server is not None}
    finally:
        if ours is not None:
            ours.stop()
        reference.stop()
        if v2 is not None:
            v2.stop()
    machine = {"cores": os.cpu_count(), "python": platform.python_version(),
               "processor": platform.processor() or platform.machine()}
    result = {"machine": machine, "connections": args.connections, "seconds": args.seconds,
              "reuse_connections": args.reuse_connections, "rounds": rounds, "summary": summary,
              "soak": soak, "rss_mb": rss}
    print(json.dumps({"summary": summary, "rss_mb": rss, "soak": soak and {
        k: soak[k] for k in ("requests", "start_rss_mb", "end_rss_mb")}}, indent=2))
    for name in ("post_obs", "post_obs_direct"):
        if name not in summary:
            continue
        print(f"{name}: {summary[name]['ratio_rps_to_reference']:.2f}x the reference (median "
              f"of the rounds), p99 {summary[name]['p99_ms']:.1f} ms, "
              f"{summary[name]['cpu_ms_per_request']:.2f} ms CPU per request")
    for name in ("v2", "v2_obs"):
        if name in summary:
            print(f"{name}: p99 {summary[name]['p99_ms']:.1f} ms (median of the rounds), "
                  f"{summary[name]['cpu_ms_per_request']:.2f} ms CPU per request, "
                  f"{max(1, args.v2_processes)} MLServer process(es)")
    result["v2_processes"] = max(1, args.v2_processes)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
