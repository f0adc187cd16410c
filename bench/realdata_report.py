"""The docs tables of the real-data benchmark, from the JSON that ``bench_realdata.py`` wrote.

    .venv/bin/python bench/realdata_report.py bench/results/realdata_test_beijing.json \
        bench/results/realdata_test_detroit.json

Prints, per data set x target x horizon, the project's MAE skill against persistence, the
reference's, their difference, the seasonal naive forecast's skill against persistence (from
the same rows: ``1 - (1 - skill) / (1 - skill_vs_seasonal)``), the project's 80 % interval
coverage and the number of rows; then the cost of each step (wall, CPU, peak RSS, load).
The figures are read, never typed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def seasonal_skill(record: dict) -> float:
    """The seasonal naive forecast's skill against persistence, on the record's rows."""
    return 1 - (1 - record["skill"]) / (1 - record["skill_vs_seasonal"])


def label(result: dict, name: str) -> str:
    """The data set's name, with the params.yaml overrides of its run if any."""
    overrides = ", ".join(f"{k}={v}" for k, v in result.get("overrides", {}).items())
    return f"{name} ({overrides})" if overrides else name


def quality(results: list[dict]) -> str:
    lines = ["| data set | target | h | project skill | reference skill | difference | "
             "seasonal naive skill | coverage 80 % | n |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    summaries = []
    for result in results:
        for name, out in result["datasets"].items():
            ref = {(r["target"], r["horizon"]): r for r in out.get("reference", [])}
            shown = label(result, name)
            differences = []
            for p in out.get("pipeline", []):
                r = ref.get((p["target"], p["horizon"]))
                diff = p["skill"] - r["skill"] if r else float("nan")
                if r:
                    differences.append(diff)
                lines.append(
                    f"| {shown} | {p['target']} | {p['horizon']} | {p['skill']:.3f} | "
                    f"{r['skill'] if r else float('nan'):.3f} | {diff:+.3f} | "
                    f"{seasonal_skill(p):.3f} | {p.get('coverage', float('nan')):.1%} | "
                    f"{p['n']:,} |")
            if differences:
                summaries.append(
                    f"- {shown}: project minus reference median "
                    f"{statistics.median(differences):+.3f}, worst {min(differences):+.3f}, "
                    f"best {max(differences):+.3f}, at or above at "
                    f"{sum(d >= 0 for d in differences)} of {len(differences)}")
    return "\n".join(lines + ([""] + summaries if summaries else []))


def costs(results: list[dict]) -> str:
    lines = ["| data set | step | wall (s) | CPU (s) | peak RSS (MB) | load 1 min before / after |",
             "|---|---|---:|---:|---:|---|"]
    for result in results:
        for name, out in result["datasets"].items():
            shown = label(result, name)
            for s in out.get("steps", []):
                lines.append(f"| {shown} | {s['step']} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | "
                             f"{s['peak_rss_mb']:,} | {s['load_1m_before']:.1f} / "
                             f"{s['load_1m_after']:.1f} |")
            if "reference_cost" in out:
                c = out["reference_cost"]
                lines.append(f"| {shown} | reference (features, search, refit, test) | "
                             f"{c['wall_s']:.1f} | {c['cpu_s']:.1f} | | |")
    return "\n".join(lines)


def runs(results: list[dict], paths: list[Path]) -> str:
    lines = []
    for result, path in zip(results, paths, strict=True):
        m = result["machine"]
        overrides = ", ".join(f"{k}={v}" for k, v in result.get("overrides", {}).items())
        lines.append(f"- `{path}`: `{result['command']}`"
                     + (f" (overrides: {overrides})" if overrides else "")
                     + f"; {m['nproc']} cores {m['cpu']}, load {m['load_1m_start']} at start, "
                     f"{result.get('load_1m_end')} at the end")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args(argv)
    results = [json.loads(p.read_text()) for p in args.results]
    print(runs(results, args.results), "", quality(results), "", costs(results), sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
