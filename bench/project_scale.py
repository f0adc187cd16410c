"""A projection, not a measurement: what L places x Y years would take on N Celery workers.

Reads the measured per-step costs of the 500 x 2 run (``bench/results/scale_inputs.json``,
copied from docs/benchmarks.md with the section each figure came from) and the cheap
scaling-law probe (``bench/results/scale_probe.json``, ``bench/scale_probe.py``), and
prints per step: its scaling law, where it runs (the DAGs' mapped batches over every task
slot, ingestion's batches on the home host only, one task on one host), its CPU seconds at
the target size, its wall time on N workers of 2 cores each, its peak memory; then DVC's
serial work, the worker mirror's transfer through the home host's gateway, the serial share
(Amdahl) and the step that bounds each N.

    .venv/bin/python bench/project_scale.py                       # 5,000 x 2, N = 1 2 4 8
    .venv/bin/python bench/project_scale.py --locations 2000 --workers 1,4 --json out.json

Every figure is arithmetic on measured figures under stated laws; nothing here runs the
pipeline.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CORES_PER_WORKER = 2

HOME, MAPPED, ONE_CORE = "home host", "mapped: every slot", "one task, 1 core"
# how each step's work grows, and where the DAGs run it (dags/aq_*.py, docs/airflow.md)
LAWS = {
    "ingest": ("location-years", HOME, "linear in location-hours (probe: 50 -> 200 places)"),
    "preprocess": ("location-years", MAPPED, "linear in location-hours (probe)"),
    "train": ("train", "one task, 2 cores", "scan linear in feature rows + fits constant "
              "(sample of max_train_rows)"),
    "evaluate": ("locations", ONE_CORE, "linear in places (60-day holdout), not years"),
    "promote": ("locations", ONE_CORE, "re-scores the champion on the holdout: assumed "
                "evaluate's rate per place"),
    "predict": ("locations", MAPPED, "linear in places (latest window)"),
    "score": ("locations", ONE_CORE, "assumed predict's rate per place (the bench had "
              "nothing to score)"),
    "drift": ("locations", ONE_CORE, "linear in places (14-day window), batched"),
}
MEMORY = {
    "ingest": "flat: groups of places per worker process",
    "preprocess": "flat: one batch of places per task",
    "train": "flat: the sample (max_train_rows)",
    "evaluate": "flat since it streams by batch (issue 23 item 2); the 500 x 2 figure is "
                "before that",
    "promote": "flat: streams by batch",
    "predict": "flat: one batch per task",
    "score": "flat: streams by batch",
    "drift": "flat: batched",
}
LAWS_NAMES = list(LAWS)
NIGHTLY = ("preprocess", "train", "evaluate", "promote")
AFTER_INGEST = ("predict", "score", "drift")
MIRROR = "mirror: features to and from other hosts, per rebuild"


@dataclass
class Row:
    name: str
    law: str
    where: str
    cpu_s: float
    wall_s: dict[int, float]
    peak_mb: float | None = None
    memory: str = ""

    def serial(self) -> bool:
        """Its wall time does not fall as workers are added."""
        values = list(self.wall_s.values())
        return len(values) < 2 or values[-1] >= values[0] - 1e-9


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def slope(probe: dict, value, amount) -> float:
    """Cost per unit between the probe's smallest and largest size (the fixed part drops)."""
    small, large = probe["results"][0], probe["results"][-1]
    return (value(large) - value(small)) / (amount(large) - amount(small))


def linear(ref_cpu: float, start: float, scale: float) -> float:
    """A step whose work is proportional to its input, plus one process start."""
    return start + max(ref_cpu - start, 0.0) * scale


def mapped_wall(cpu_s: float, tasks: int, overhead_s: float, slots: int) -> float:
    """Mapped tasks spread over ``slots`` one-core task slots: the work and every task's
    start-up shared out, never below one task's own time."""
    tasks = max(tasks, 1)
    return max((cpu_s + tasks * overhead_s) / max(slots, 1), cpu_s / tasks + overhead_s)


def derived(inputs: dict, probe: dict) -> dict:
    """Rates the projection needs beyond the reference run's per-step figures."""
    ref = inputs["reference"]
    steps = inputs["steps"]
    second = inputs["second_size"]
    train = steps["train"]
    feature_rows_second = ref["feature_rows"] * second["locations"] / ref["locations"]
    scan = (train["cpu_s"] - train["cpu_s_at_second_size"]) / (ref["feature_rows"]
                                                                - feature_rows_second)
    start = inputs["process_start_cpu_s"]["value"]
    fits = train["cpu_s"] - start - scan * ref["feature_rows"]
    b = probe["results"][-1]["bytes"]
    return {
        "train_scan_cpu_s_per_row": scan,
        "train_fits_cpu_s": fits,
        "probe_scan_cpu_s_per_row": slope(probe, lambda r: r["train_scans"]["total_cpu_s"],
                                          lambda r: r["feature_rows"]),
        "raw_bytes_per_row": b["data"] / probe["results"][-1]["rows_raw"],
        "feature_bytes_per_row": b["features_per_row"],
        "raw_files_per_location_month": b["data_files"] / (probe["results"][-1]["locations"]
                                                          * probe["results"][-1]["months"]),
        "listing_dirs_per_location": slope(probe, lambda r: r["bytes"]["shared_dirs"],
                                           lambda r: r["locations"]),
        "dvc_add_s_per_file": slope(probe, lambda r: r["dvc"]["add"]["wall_s"],
                                        lambda r: r["bytes"]["data_files"]),
        "dvc_push_s_per_file": slope(probe, lambda r: r["dvc"]["push"]["wall_s"],
                                     lambda r: r["bytes"]["data_files"]),
        "dvc_add_s_per_byte": slope(probe, lambda r: r["dvc"]["add_features"]["wall_s"],
                                    lambda r: r["bytes"]["features"]),
        "ingest_probe_ratio": _probe_ratio(probe, "ingest", start),
        "preprocess_probe_ratio": _probe_ratio(probe, "preprocess", start),
    }


def _probe_ratio(probe: dict, step: str, start: float) -> dict:
    """How the step's CPU (less one start) grew in the probe, against how its places grew."""
    small, large = probe["results"][0], probe["results"][-1]
    grew = (large["steps"][step]["cpu_s"] - start) / (small["steps"][step]["cpu_s"] - start)
    return {"cpu": round(grew, 2), "places": large["locations"] / small["locations"]}


def project(inputs: dict, probe: dict, locations: int, years: float,
            workers: list[int], train_fits_cpu_s: float | None = None,
            ingest_batch_size: int | None = None) -> dict:
    """Per-step rows and the summary for ``locations`` x ``years`` on each N in ``workers``."""
    ref = inputs["reference"]
    steps = inputs["steps"]
    celery = dict(inputs["celery"])
    if ingest_batch_size is not None:
        celery["ingest_batch_size"] = ingest_batch_size
    start = inputs["process_start_cpu_s"]["value"]
    rates = derived(inputs, probe)
    if train_fits_cpu_s is not None:
        rates["train_fits_cpu_s"] = train_fits_cpu_s
    k_loc = locations / ref["locations"]
    k_ly = k_loc * years / ref["years"]
    feature_rows = ref["feature_rows"] * k_ly
    raw_rows = ref["raw_rows"] * k_ly
    overhead = celery["task_overhead_slot_s"]
    batches = math.ceil(locations / celery["batch_locations"])
    ingest_tasks = math.ceil(locations / celery["ingest_batch_size"])
    home_slots = celery["slots_per_worker"]
    rows: list[Row] = []
    for name, (scale, where, law) in LAWS.items():
        s = steps[name]
        k = k_ly if scale == "location-years" else k_loc
        walls: dict[int, float] = {}
        if name == "train":
            scan = rates["train_scan_cpu_s_per_row"] * feature_rows
            fits = rates["train_fits_cpu_s"]
            cpu = start + scan + fits
            for n in workers:  # the scan on one core, the fits two at a time, one host
                walls[n] = start + scan + fits / CORES_PER_WORKER
        else:
            base = s["cpu_s"]
            if name == "promote":
                base = steps["evaluate"]["cpu_s"]
            elif name == "score":
                base = steps["predict"]["cpu_s"]
            cpu = linear(base, start, k)
            for n in workers:
                if where == MAPPED:
                    walls[n] = mapped_wall(cpu, batches, overhead, n * celery["slots_per_worker"])
                elif where == HOME:  # the backfill command, AQ_PROCESSES on the home host
                    walls[n] = cpu / CORES_PER_WORKER
                else:
                    walls[n] = cpu
        rows.append(Row(name, law, where, cpu, walls, s.get("peak_mb"), MEMORY[name]))

    # DVC's work in the one-slot pool: the data version after the backfill and after each
    # hour's ingestion (the month files that changed), the features preprocess records
    raw_files = rates["raw_files_per_location_month"] * locations * years * 12
    hourly_files = rates["raw_files_per_location_month"] * locations
    per_file = rates["dvc_add_s_per_file"] + rates["dvc_push_s_per_file"]
    feature_bytes = rates["feature_bytes_per_row"] * feature_rows
    raw_bytes = rates["raw_bytes_per_row"] * raw_rows
    dvc_features = feature_bytes * rates["dvc_add_s_per_byte"]
    for name, law, seconds in (
            ("dvc: data_version after the backfill", "per file (probe)", raw_files * per_file),
            ("dvc: commit preprocess (hash + cache copy)", "per byte (probe)", dvc_features),
            ("dvc: data_version each hour (month files changed)", "per file (probe)",
             hourly_files * per_file)):
        rows.append(Row(name, law, "dvc pool", seconds, dict.fromkeys(workers, seconds)))
    # aq_ingest maps AQ_INGEST_BATCH_SIZE places per task, on the home host only
    startup = ingest_tasks * overhead / home_slots
    rows.append(Row(f"aq_ingest: start-up of {ingest_tasks:,} tasks each hour",
                    "per task (Celery)", HOME, ingest_tasks * overhead,
                    dict.fromkeys(workers, startup)))

    # the worker mirror (pipeline/io/mirror.py): every task slot on another host mirrors the
    # home project's whole shared state before its task and sends its writes back after
    link = inputs["network"]["link_mb_s"] * 1e6
    mirror = {}
    for n in workers:
        remote_slots = (n - 1) * celery["slots_per_worker"]
        pushed = feature_bytes * (n - 1) / n
        pulled = feature_bytes * remote_slots
        mirror[n] = {"nightly_gb": round((pushed + pulled) / 1e9, 1),
                     "nightly_s": (pushed + pulled) / link,
                     "first_pull_raw_gb": round(raw_bytes * remote_slots / 1e9, 1)}
    rows.append(Row(MIRROR, "per byte x remote slots", "home link", 0.0,
                    {n: mirror[n]["nightly_s"] for n in workers}))

    def total(names) -> dict[int, float]:
        return {n: sum(r.wall_s[n] for r in rows if r.name in names) for n in workers}

    names = [r.name for r in rows]
    groups = {
        "backfill": [LAWS_NAMES[0], names[len(LAWS)]],
        "nightly": [*NIGHTLY, names[len(LAWS) + 1]],
        "hourly": [*AFTER_INGEST, names[len(LAWS) + 2], names[len(LAWS) + 3]],
    }
    totals = {group: total(members) for group, members in groups.items()}
    totals["end_to_end"] = total(LAWS_NAMES)
    first = workers[0]
    nightly_rows = [r for r in rows if r.name in groups["nightly"]]
    serial = sum(r.wall_s[first] for r in nightly_rows if r.serial())
    bottleneck = {n: max(nightly_rows, key=lambda r: r.wall_s[n]).name for n in workers}
    overall = {n: max(rows, key=lambda r: r.wall_s[n]).name for n in workers}
    return {
        "locations": locations, "years": years, "workers": workers,
        "raw_rows": raw_rows, "feature_rows": feature_rows,
        "raw_gb": raw_bytes / 1e9, "features_gb": feature_bytes / 1e9,
        "raw_files": raw_files, "mapped_batches": batches, "ingest_tasks": ingest_tasks,
        "listing_requests_per_task": rates["listing_dirs_per_location"] * locations,
        "rates": rates, "rows": [asdict(r) for r in rows], "mirror": mirror,
        "groups": groups, "totals": totals,
        "nightly_serial_s": serial, "nightly_amdahl_ceiling":
            totals["nightly"][first] / serial if serial else math.inf,
        "bottleneck": bottleneck, "largest": overall,
    }


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def markdown(p: dict) -> str:
    ws = p["workers"]
    head = " | ".join(f"N={n} (min)" for n in ws)
    lines = [
        f"**{p['locations']:,} places × {p['years']:g} years** (projection): "
        f"{p['raw_rows'] / 1e6:.1f} M raw rows ({p['raw_gb']:.1f} GB in {p['raw_files']:,.0f} "
        f"files), {p['feature_rows'] / 1e6:.1f} M feature rows ({p['features_gb']:.1f} GB), "
        f"{p['mapped_batches']} mapped batches, {p['ingest_tasks']:,} ingestion tasks; "
        f"N workers × {CORES_PER_WORKER} cores.",
        "",
        f"| step | scaling law | runs on | CPU (min) | {head} | peak MB (500 × 2) |",
        "|---|---|---|---:|" + "---:|" * len(ws) + "---:|",
    ]
    for r in p["rows"]:
        walls = " | ".join(_minutes(r["wall_s"][n]) for n in ws)
        cpu = _minutes(r["cpu_s"]) if r["cpu_s"] else "—"
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] else "—"
        lines.append(f"| {r['name']} | {r['law']} | {r['where']} | {cpu} | {walls} | {peak} |")

    def line(label: str, values: dict) -> str:
        return f"| **{label}** | | | | " + " | ".join(
            f"**{_minutes(values[n])}**" for n in ws) + " | |"

    t = p["totals"]
    lines += [
        line("once: the 2-year backfill (ingest, data_version)", t["backfill"]),
        line("each night: retrain (preprocess, its DVC commit, train, evaluate, promote)",
             t["nightly"]),
        line("each hour: ingest's task start-up, data_version, predict, score, drift",
             t["hourly"]),
        line("the bench's 8 steps, end to end", t["end_to_end"]),
        "",
        f"Nightly retrain: {_minutes(p['nightly_serial_s'])} of its "
        f"{_minutes(t['nightly'][ws[0]])} min at N={ws[0]} do not shrink with N (one task "
        f"each, or DVC's one slot); Amdahl's ceiling for any N: "
        f"{p['nightly_amdahl_ceiling']:.2f}×.",
        "",
        "Mirror (workers on other hosts; the home host's link, not overlapped): "
        + "; ".join(f"N={n}: {p['mirror'][n]['nightly_gb']:,.0f} GB per rebuild of the "
                    f"features, first pull of the raw data "
                    f"{p['mirror'][n]['first_pull_raw_gb']:,.0f} GB" for n in ws if n > 1)
        + f"; ~{p['listing_requests_per_task']:,.0f} listing requests per task.",
        "",
        "Largest step of the nightly retrain: " + "; ".join(f"N={n}: {p['bottleneck'][n]}"
                                                            for n in ws) + ".",
        "Largest row overall: " + "; ".join(f"N={n}: {p['largest'][n]}" for n in ws) + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--locations", type=int, default=5000)
    parser.add_argument("--years", type=float, default=2.0)
    parser.add_argument("--workers", default="1,2,4,8", help="comma-separated N")
    parser.add_argument("--inputs", type=Path, default=RESULTS / "scale_inputs.json")
    parser.add_argument("--probe", type=Path, default=RESULTS / "scale_probe.json")
    parser.add_argument("--train-fits-cpu", type=float, default=None,
                        help="CPU s of train's fits (default: derived from the 500 x 2 run)")
    parser.add_argument("--ingest-batch-size", type=int, default=None,
                        help="places per aq_ingest task (default: AQ_INGEST_BATCH_SIZE's 2)")
    parser.add_argument("--json", type=Path, help="also write the projection as JSON")
    args = parser.parse_args(argv)
    workers = [int(n) for n in args.workers.split(",")]
    p = project(load(args.inputs), load(args.probe), args.locations, args.years, workers,
                args.train_fits_cpu, args.ingest_batch_size)
    print(markdown(p))
    r = p["rates"]
    print(f"\nRates: train scan {r['train_scan_cpu_s_per_row'] * 1e6:.1f} µs CPU per feature "
          f"row (50 → 500 × 2 runs; probe {r['probe_scan_cpu_s_per_row'] * 1e6:.1f}), train "
          f"fits {r['train_fits_cpu_s']:.0f} CPU s; {r['raw_bytes_per_row']:.0f} B per raw row, "
          f"{r['feature_bytes_per_row']:.0f} B per feature row; probe CPU growth for 4× the "
          f"places: ingest {r['ingest_probe_ratio']['cpu']}×, preprocess "
          f"{r['preprocess_probe_ratio']['cpu']}×.", file=sys.stdout)
    if args.json:
        args.json.write_text(json.dumps(p, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
