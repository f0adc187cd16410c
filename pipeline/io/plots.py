"""PNG charts of backtest scores (matplotlib, no display: the Agg backend).

Each chart is written atomically; the CSV tables next to them are the DVC plots.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from pipeline.io.storage import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight",
                metadata={"Software": None})  # no version stamp: same data, same bytes
    atomic_write_bytes(path, buffer.getvalue())


def _lines(table: pd.DataFrame, x: str, columns: dict[str, str], title: str, ylabel: str,
           path: Path, reference: float | None = None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        ticks = sorted(table[x].unique())
        for (target, horizon), part in table.groupby(["target", "horizon"], sort=True):
            part = part.sort_values(x)
            # months are labels, not numbers: plot them at their position
            xs = part[x].map(ticks.index) if x == "month" else part[x]
            for column, label in columns.items():
                ax.plot(xs, part[column], marker="o", markersize=3,
                        label=f"{target} {horizon} h {label}".strip())
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel(x if x != "hour" else "hour of day of the target (UTC)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        if x == "month":
            ax.set_xticks(range(len(ticks)), ticks, rotation=45)
        _save(fig, path)
    finally:
        plt.close(fig)


def write_backtest_charts(tables: dict[str, pd.DataFrame], predictions: pd.DataFrame,
                          directory: Path) -> list[Path]:
    """Skill and coverage by horizon, MAE by hour and month, and one location's forecasts."""
    plt = _pyplot()
    directory = Path(directory)
    written = []
    by_h = tables["horizon"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for target, part in by_h.groupby("target", sort=True):
            left.plot(part["horizon"], part["skill"], marker="o", label=f"{target} vs persistence")
            left.plot(part["horizon"], part["skill_vs_seasonal"], marker="s", linestyle=":",
                      label=f"{target} vs seasonal naive")
            if "coverage" in part:
                right.plot(part["horizon"], part["coverage"], marker="o", label=target)
        left.axhline(0, color="grey", linewidth=1)
        left.set(title="MAE skill by horizon", xlabel="horizon (h)", ylabel="1 - MAE/MAE_ref")
        right.axhspan(0.78, 0.82, color="green", alpha=0.15, label="goal 78-82 %")
        right.axhline(0.8, color="grey", linestyle="--", linewidth=1)
        right.set(title="80 % interval coverage", xlabel="horizon (h)", ylabel="share inside",
                  ylim=(0.5, 1.0))
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        _save(fig, directory / "skill_and_coverage.png")
        written.append(directory / "skill_and_coverage.png")
    finally:
        plt.close(fig)
    _lines(tables["hour"], "hour", {"mae": "model", "persistence_mae": "persistence"},
           "MAE by hour of day", "MAE", directory / "error_by_hour.png")
    _lines(tables["month"], "month", {"mae": "model", "persistence_mae": "persistence"},
           "MAE by month", "MAE", directory / "error_by_month.png")
    written += [directory / "error_by_hour.png", directory / "error_by_month.png"]

    # the first location's forecasts at the longest horizon, with the interval
    first = predictions.sort_values(["target", "location_id"]).iloc[0]
    longest = predictions["horizon"].max()
    part = predictions[(predictions["target"] == first["target"])
                       & (predictions["location_id"] == first["location_id"])
                       & (predictions["horizon"] == longest)].sort_values("target_time")
    fig, ax = plt.subplots(figsize=(10, 4))
    try:
        if "lower" in part and part["lower"].notna().any():
            ax.fill_between(part["target_time"], part["lower"], part["upper"], alpha=0.25,
                            label="80 % interval", step="mid")
        ax.plot(part["target_time"], part["observed"], color="black", linewidth=0.8,
                label="observed")
        ax.plot(part["target_time"], part["value"], linewidth=0.8,
                label=f"forecast {longest} h ahead")
        ax.set(title=f"{first['target']} at {first['location_id']}", ylabel="ug/m3")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.autofmt_xdate()
        _save(fig, directory / "example_forecasts.png")
        written.append(directory / "example_forecasts.png")
    finally:
        plt.close(fig)
    return written
