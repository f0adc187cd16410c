"""Pipeline-scale benchmark: N locations x Y years through every step, one process per step.

For each size it builds a temporary project (a copy of pipeline/, dvc.yaml and the
repo's params.yaml with N generated locations and a Y-year synthetic window), then
runs ``python -m pipeline <step>`` for ingest, preprocess, train, evaluate, promote,
predict, score and drift exactly as DVC would (own process, project directory as the
working directory). Per step it records wall time, CPU time (user + system) and the
peak resident set size of that process (its own ``VmHWM``, read at exit: ``ru_maxrss``
would include the parent's size at fork), the peak of its whole process tree (the worker
processes of ``AQ_PROCESSES`` included: summed RSS sampled every 0.2 s), plus the load
average, so timings taken on a busy machine can be judged. CPU time includes the workers'
(they are reaped by the step). No Pushgateway.

    .venv/bin/python bench/bench_pipeline.py                            # 5x1, 20x2, 50x2
    .venv/bin/python bench/bench_pipeline.py --sizes 50x2 --out docs/bench.json --out t.md
    .venv/bin/python bench/bench_pipeline.py --sizes 5x1 --profile-dir /tmp/prof  # cProfile
    .venv/bin/python bench/bench_pipeline.py --project /tmp/b/project_500x2 --steps train,evaluate
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STEPS = ["ingest", "preprocess", "train", "evaluate", "promote", "predict", "score", "drift"]
# the data window ends where the repo's default window ends; Y years go back from there
WINDOW_END = dt.date(2026, 1, 1)

# real IANA zones (with and without DST) and their reference longitude; a generated place
# gets the zone nearest to it in longitude, so local-clock features see many offsets
ZONES = [
    ("Pacific/Honolulu", -157.8), ("America/Anchorage", -149.9),
    ("America/Los_Angeles", -118.2), ("America/Denver", -105.0),
    ("America/Chicago", -87.6), ("America/New_York", -74.0),
    ("America/Sao_Paulo", -46.6), ("Atlantic/Azores", -25.7),
    ("Europe/London", -0.1), ("Europe/Berlin", 13.4), ("Europe/Athens", 23.7),
    ("Europe/Moscow", 37.6), ("Asia/Dubai", 55.3), ("Asia/Karachi", 67.0),
    ("Asia/Kolkata", 77.2), ("Asia/Dhaka", 90.4), ("Asia/Bangkok", 100.5),
    ("Asia/Shanghai", 116.4), ("Asia/Tokyo", 139.7), ("Australia/Sydney", 151.2),
    ("Pacific/Auckland", 174.8),
]


def synthetic_locations(n: int) -> list[dict]:
    """n distinct, deterministic places spread over the inhabited globe.

    Longitudes follow the golden angle, latitudes a low-discrepancy sequence in
    [-40, 60] degrees; the synthetic source builds a site profile for any place.
    """
    out = []
    for i in range(n):
        lon = ((i * 137.50776405) % 360.0) - 180.0
        lat = -40.0 + 100.0 * ((i * 0.6180339887498949 + 0.5) % 1.0)
        tz = min(ZONES, key=lambda z: min(abs(z[1] - lon), 360 - abs(z[1] - lon)))[0]
        out.append({"id": f"site_{i:03d}", "name": f"Site {i}", "latitude": round(lat, 4),
                    "longitude": round(lon, 4), "timezone": tz})
    return out


def make_bench_project(root: Path, n_locations: int, years: int) -> Path:
    """The repo's code, dvc.yaml and params.yaml (defaults) with N places and Y years."""
    root.mkdir(parents=True)
    shutil.copytree(REPO / "pipeline", root / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["locations"] = synthetic_locations(n_locations)
    start = WINDOW_END.replace(year=WINDOW_END.year - years)
    params["source"]["start"] = start.isoformat()
    params["source"]["end"] = WINDOW_END.isoformat()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def step_env(root: Path) -> dict[str, str]:
    env = {**os.environ, "AQ_PROJECT_DIR": str(root), "DVC_NO_ANALYTICS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("AQ_PUSHGATEWAY_URL", None)  # no Pushgateway: steps must not wait on one
    return env


# runs `python -m pipeline STEP` and, at exit, writes the process's own VmHWM (peak RSS, KiB)
# to the file in AQ_BENCH_PEAK_FILE: ru_maxrss would include the parent's size at fork
PEAK_WRAPPER = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as status:
        kb = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
    with open(os.environ["AQ_BENCH_PEAK_FILE"], "w") as out:
        out.write(str(kb))
atexit.register(_peak)
sys.argv = ["pipeline", *sys.argv[1:]]
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
"""


def child_peak_kb(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def _tree_rss_kb(pid: int) -> int:
    """Resident memory (VmRSS) of ``pid`` and every descendant, summed, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/status") as handle:
                total += next((int(line.split()[1]) for line in handle
                               if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total


class TreePeak:
    """The largest summed RSS of a process and its descendants (worker processes included),
    sampled every ``interval`` seconds while the step runs."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import threading

        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self.loads: list[float] = []  # the 1-minute load average, sampled with the memory
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _tree_rss_kb(self.pid))
            self.loads.append(os.getloadavg()[0])
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak_kb


def run_step(root: Path, step: str, log_dir: Path, profile_dir: Path | None) -> dict:
    """One step as its own process; wall time, CPU time and that process's peak RSS."""
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile_dir / f"{step}.prof"),
               "-m", "pipeline", step]
    else:
        cmd = [sys.executable, "-c", PEAK_WRAPPER, step]
    peak_file = log_dir / f"{step}.peak"
    load_before = os.getloadavg()[0]
    log_path = log_dir / f"{step}.log"
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, env={**step_env(root),
                                                    "AQ_BENCH_PEAK_FILE": str(peak_file)},
                                stdout=log, stderr=subprocess.STDOUT)
        tree = TreePeak(proc.pid)
        # wait4 gives the rusage of exactly this child (RUSAGE_CHILDREN would be the max
        # over every child so far), its reaped worker processes' CPU time included
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        tree_peak_kb = tree.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"step {step} failed with exit code {proc.returncode}:\n{tail}")
    return {
        "step": step,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        # the child's own VmHWM; under cProfile (no wrapper) ru_maxrss, which includes the
        # parent's size at fork
        "peak_rss_mb": round((child_peak_kb(peak_file) or usage.ru_maxrss) / 1024, 1),
        # the step's process and its worker processes together (AQ_PROCESSES), sampled
        "tree_peak_rss_mb": round(tree_peak_kb / 1024, 1),
        "load_1m_before": round(load_before, 2),
        # the machine's 1-minute load while the step ran (the step's own processes included)
        "load_1m_mean": round(sum(tree.loads) / len(tree.loads), 2) if tree.loads
        else round(load_before, 2),
        "load_1m_max": round(max(tree.loads), 2) if tree.loads else round(load_before, 2),
    }


def run_size(n_locations: int, years: int, workdir: Path, keep: bool,
             profile_dir: Path | None) -> dict:
    label = f"{n_locations}x{years}"
    root = make_bench_project(workdir / f"project_{label}", n_locations, years)
    log_dir = workdir / f"logs_{label}"
    log_dir.mkdir()
    steps = []
    load_start = os.getloadavg()
    for step in STEPS:
        prof = None if profile_dir is None else profile_dir / label
        result = run_step(root, step, log_dir, prof)
        steps.append(result)
        print(f"  {label} {step:<10} {result['wall_s']:8.2f} s wall {result['cpu_s']:8.2f} s cpu "
              f"{result['peak_rss_mb']:8.1f} MB ({result['tree_peak_rss_mb']:.1f} MB with "
              f"workers)  load {result['load_1m_mean']:.2f} mean, {result['load_1m_max']:.2f} "
              f"max", file=sys.stderr, flush=True)
    quality = json.loads((root / "reports" / "quality.json").read_text())
    evaluation = json.loads((root / "metrics.json").read_text())
    promotion = json.loads((root / "reports" / "promotion.json").read_text())
    total = sum(s["wall_s"] for s in steps)
    rows = int(quality["rows_valid"])
    print(f"  {label} end to end {total:8.2f} s wall {sum(s['cpu_s'] for s in steps):8.2f} s cpu "
          f"{max(s['peak_rss_mb'] for s in steps):8.1f} MB largest step "
          f"({max(s['tree_peak_rss_mb'] for s in steps):.1f} MB with workers), "
          f"{os.cpu_count()} cores, load {min(s['load_1m_mean'] for s in steps):.2f}.."
          f"{max(s['load_1m_max'] for s in steps):.2f}", file=sys.stderr, flush=True)
    result = {
        "size": label,
        "locations": n_locations,
        "years": years,
        "rows_raw": rows,
        "feature_rows": int(quality["feature_rows"]),
        "steps": steps,
        "total_wall_s": round(total, 2),
        "total_cpu_s": round(sum(s["cpu_s"] for s in steps), 2),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in steps),
        "tree_peak_rss_mb": max(s["tree_peak_rss_mb"] for s in steps),
        "rows_per_s": round(rows / total),
        "wall_us_per_row": round(total / rows * 1e6, 1),
        "cpu_us_per_row": round(sum(s["cpu_s"] for s in steps) / rows * 1e6, 1),
        "load_avg_start": [round(x, 2) for x in load_start],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "skill": {t: {h: s["skill"] for h, s in by_h.items()} for t, by_h in evaluation.items()
                  if t != "holdout"},
        "promoted": promotion["promoted"],
    }
    if keep:
        result["project"] = str(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - reporting only
        return "?"


def machine() -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        mem_kb = int(handle.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
        **{name: _version(name) for name in ("numpy", "pandas", "sklearn", "pyarrow", "pandera")},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def markdown(results: list[dict], info: dict, command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {info['nproc']} cores ({info['cpu']}), {info['ram_gb']} GB RAM, "
        f"Python {info['python']}, numpy {info['numpy']}, pandas {info['pandas']}, "
        f"scikit-learn {info['sklearn']}, pyarrow {info['pyarrow']}, pandera {info['pandera']}.",
        "",
    ]
    for r in results:
        start = ", ".join(f"{x:g}" for x in r["load_avg_start"])
        end = ", ".join(f"{x:g}" for x in r["load_avg_end"])
        lines += [
            f"**{r['locations']} locations × {r['years']} year(s)**: {r['rows_raw']:,} raw rows, "
            f"{r['feature_rows']:,} feature rows; load average {start} at the start, "
            f"{end} at the end.",
            "",
            "| step | wall (s) | CPU (s) | peak RSS (MB) | with workers (MB) | "
            "load (1 min, mean / max during) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in r["steps"]:
            lines.append(f"| {s['step']} | {s['wall_s']:.2f} | {s['cpu_s']:.2f} | "
                         f"{s['peak_rss_mb']:.0f} | {s.get('tree_peak_rss_mb', 0):.0f} | "
                         f"{s.get('load_1m_mean', s['load_1m_before']):.2f} / "
                         f"{s.get('load_1m_max', s['load_1m_before']):.2f} |")
        lines += [
            f"| **end to end** | **{r['total_wall_s']:.2f}** | **{r['total_cpu_s']:.2f}** | "
            f"**{r['peak_rss_mb']:.0f}** | **{r.get('tree_peak_rss_mb', 0):.0f}** | |",
            "",
        ]
    lines += [
        "| size | raw rows | wall (s) | CPU (s) | rows/s | wall µs/row | CPU µs/row | "
        "peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['size']} | {r['rows_raw']:,} | {r['total_wall_s']:.1f} | "
                     f"{r['total_cpu_s']:.1f} | {r['rows_per_s']:,} | {r['wall_us_per_row']} | "
                     f"{r['cpu_us_per_row']} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            n, y = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"size {item!r}: expected LOCATIONSxYEARS, e.g. 20x2") from None
        if n < 1 or y < 1:
            raise argparse.ArgumentTypeError(f"size {item!r}: locations and years must be >= 1")
        sizes.append((n, y))
    return sizes


def measure_project(root: Path, steps: list[str]) -> int:
    """Each step on an existing project, measured as in a full run; one JSON line per step."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        print(f"unknown step(s) {unknown}; known: {STEPS}", file=sys.stderr)
        return 2
    log_dir = root.parent / f"logs_{root.name}"
    log_dir.mkdir(exist_ok=True)
    for step in steps:
        result = run_step(root.resolve(), step, log_dir, None)
        result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("5x1,20x2,50x2"),
                        help="comma-separated LOCATIONSxYEARS (default 5x1,20x2,50x2)")
    parser.add_argument("--out", action="append", default=[], type=Path,
                        help="write results: .json (raw) or .md (tables); repeatable")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary projects go (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the projects afterwards")
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="run every step under cProfile, writing <dir>/<size>/<step>.prof "
                             "(timings then include the profiler's overhead)")
    parser.add_argument("--project", type=Path, default=None,
                        help="measure --steps on this existing project (e.g. one kept with "
                             "--keep, or one whose ingest was cut short) instead of --sizes")
    parser.add_argument("--steps", default=",".join(STEPS[1:]),
                        help="with --project: comma-separated steps (default: all after ingest)")
    args = parser.parse_args(argv)
    if args.project is not None:
        return measure_project(args.project, [s for s in args.steps.split(",") if s])
    for out in args.out:
        if out.suffix not in {".json", ".md"}:
            parser.error(f"--out {out}: use a .json or .md file name")
    command = "python bench/bench_pipeline.py " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])
    info = machine()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n, y in args.sizes:
            print(f"{n} locations x {y} year(s) in {workdir}", file=sys.stderr, flush=True)
            results.append(run_size(n, y, workdir, args.keep, args.profile_dir))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    table = markdown(results, info, command.strip())
    print(table)
    for out in args.out:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".json":
            out.write_text(json.dumps({"command": command, "machine": info,
                                       "results": results}, indent=2) + "\n")
        else:
            out.write_text(table)
    if len(results) > 1:
        smallest = results[0]
        for r in results[1:]:
            ratio = r["cpu_us_per_row"] / smallest["cpu_us_per_row"]
            if not math.isfinite(ratio):
                continue
            print(f"CPU per row, {r['size']} vs {smallest['size']}: x{ratio:.2f}",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
