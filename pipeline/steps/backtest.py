"""Rolling-origin backtest: how a model would have done over a window, with no look-ahead.

``python -m pipeline backtest [--start S] [--end E] [--model candidate|champion|VERSION]
[--refit-every DAYS] [--out DIR]``; unset options come from ``backtest`` in params.yaml.
Every origin whose target hour lies in ``[start, end)`` is forecast from its own feature
row (built from data at or before the origin). With no refit, the model's training
labels must all precede the first origin; with ``--refit-every N`` a model is refitted
every N days on the labels before that day, with the settings recorded in the model's
metadata (the per-horizon choices are not searched again).

Writes to ``reports/backtest/`` (or ``--out``): ``predictions.parquet`` (origin, target
time, horizon, location, value, 80 % interval, AQI-category probabilities, observation,
baselines), ``metrics.json`` (scores by horizon), ``by_horizon.csv``, ``by_location.csv``,
``by_month.csv``, ``by_hour.csv`` (DVC plots), PNG charts and ``summary.txt``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.context import Context
from pipeline.core.backtest import (
    KEY_COLUMNS,
    Window,
    forecast,
    nested_by_horizon,
    refit_origins,
    render_summary,
    score_tables,
)
from pipeline.core.keys import ModelKey
from pipeline.core.models import BOOSTING_KEYS, fit_one
from pipeline.errors import MissingInputError, PipelineError, RegistryError
from pipeline.forecaster import Champion, ChampionError, Inputs
from pipeline.forecaster import forecast as forecast_rows
from pipeline.inputs import features_from_raw, load_validated_raw, newest_stored
from pipeline.io.feature_store import location_batches
from pipeline.io.metrics import StepRun
from pipeline.io.plots import write_backtest_charts
from pipeline.io.registry import ModelBundle, Registry, load_bundle
from pipeline.io.storage import atomic_write_json, atomic_write_parquet, atomic_write_text
from pipeline.io.tracking import backtest_run, log_run
from pipeline.steps.common import require

log = logging.getLogger(__name__)


class BacktestError(PipelineError):
    """The backtest cannot be run as asked (window, model or data); the message says why."""


def _utc(value) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")


def load_model(ctx: Context, which: str) -> ModelBundle:
    if which == "candidate":
        return load_bundle(require(ctx.paths.candidate_dir, "train"))
    registry = Registry(ctx.paths)
    if which == "champion":
        return registry.load_champion()
    try:
        return registry.load(which)
    except RegistryError as exc:
        known = registry.versions()
        raise RegistryError(f"{exc}: use candidate, champion or one of "
                            f"{known[-5:] if known else 'none registered yet'}") from None


def resolve_window(ctx: Context, start, end, newest: pd.Timestamp) -> Window:
    """CLI values win over params.yaml; an open end is the hour after the newest data."""
    b = ctx.params.backtest
    end = _utc(end) if end is not None else _utc(b.end) if b.end is not None \
        else newest + pd.Timedelta(hours=1)
    start = _utc(start) if start is not None else _utc(b.start) if b.start is not None \
        else end - pd.Timedelta(days=b.days)
    try:
        return Window(start.floor("h"), end.ceil("h"))
    except ValueError as exc:
        raise BacktestError(str(exc)) from None


def window_start(spec, first_origin: pd.Timestamp) -> pd.Timestamp:
    """The first raw hour the window's feature rows read (with a day to spare)."""
    return first_origin - pd.Timedelta(hours=spec.warmup_hours + 24)


def model_settings(metadata: dict, target: str, horizon: int) -> dict:
    """The settings a model was trained with (older models: the base settings of its params)."""
    key = ModelKey.of(target, horizon)
    chosen = (metadata.get("settings") or {}).get(key.target, {}).get(key.hours)
    if chosen is not None:
        return dict(chosen)
    model = (metadata.get("params") or {}).get("model", {})
    return {"form": model.get("form", "log_change"),
            **{k: model[k] for k in BOOSTING_KEYS if k in model}}


def model_cutoff(metadata: dict) -> pd.Timestamp:
    """No label at or after this time was used to fit the model."""
    return _utc(metadata.get("train_end") or metadata["holdout_start"])


def write_outputs(directory: Path, predictions: pd.DataFrame, tables: dict, report: dict,
                  summary: str) -> None:
    atomic_write_parquet(directory / "predictions.parquet", predictions)
    for name, table in tables.items():
        atomic_write_text(directory / f"by_{name}.csv", table.round(4).to_csv(index=False))
    atomic_write_json(directory / "metrics.json", report)
    atomic_write_text(directory / "summary.txt", summary + "\n")
    write_backtest_charts(tables, predictions, directory)


def push(metrics: StepRun, scores: dict) -> None:
    names = {"mae": "aq_backtest_mae", "skill": "aq_backtest_skill",
             "coverage": "aq_backtest_interval_coverage"}
    for target, by_h in scores.items():
        for horizon, values in by_h.items():
            for key, name in names.items():
                if key in values and np.isfinite(values[key]):
                    metrics.set(name, values[key], target=target, horizon=horizon)


def run(ctx: Context, start=None, end=None, model: str | None = None,
        refit_every: float | None = None, out: str | None = None) -> dict:
    with ctx.reporter.step("backtest") as metrics:
        b = ctx.params.backtest
        which = model or b.model
        every_days = b.refit_every_days if refit_every is None else float(refit_every)
        if every_days < 0:
            raise BacktestError(f"--refit-every must be >= 0 days, got {every_days}")
        every = pd.Timedelta(days=every_days) if every_days > 0 else None
        bundle = load_model(ctx, which)
        meta = bundle.metadata
        try:  # the model's own features, whatever params.yaml says now
            champion = Champion.of(bundle)
        except ChampionError as exc:
            raise BacktestError(str(exc)) from None
        horizons = champion.horizons

        newest = newest_stored(ctx)
        if newest is None:
            raise MissingInputError(f"no raw data for source {ctx.params.source.kind!r} in "
                                    f"{ctx.paths.raw_dir}: run `python -m pipeline ingest` "
                                    "first")
        window = resolve_window(ctx, start, end, newest)
        if window.start > newest:
            raise BacktestError(f"window {window.describe()} starts after the newest "
                                f"observation ({newest:%Y-%m-%d %H:%M})")
        cutoff = model_cutoff(meta)
        first_origin = window.first_origin(horizons)
        if every is None and first_origin < cutoff:
            raise BacktestError(
                f"model {meta['version']} learnt from labels up to {cutoff:%Y-%m-%d %H:%M}; "
                f"a window from {window.start:%Y-%m-%d %H:%M} needs forecasts issued from "
                f"{first_origin:%Y-%m-%d %H:%M} ({max(horizons)} h ahead), before that: "
                f"start the window at {cutoff + pd.Timedelta(hours=max(horizons)):%Y-%m-%d %H:%M}"
                f" or later, or refit during the backtest (--refit-every DAYS)")
        features = list(champion.features)
        refits = refit_origins(window, horizons, every)
        params_model = (meta.get("params") or {}).get("model", {})
        max_rows = params_model.get("max_train_rows", ctx.params.model.max_train_rows)
        seed = params_model.get("random_state", ctx.params.model.random_state)
        fitted: dict[pd.Timestamp, Champion] = {}
        if every is None:
            # the model as trained: only the window (and the history its first features
            # need) is read, a batch of locations at a time
            reads = window_start(champion.spec, first_origin)
            batches = location_batches(ctx.params.location_ids, ctx.settings.batch_locations)
        else:
            # refits learn from all history before each refit origin: every location at once
            reads, batches = None, [ctx.params.location_ids]

        log.info("backtest: %s with %s (%s), %d refit(s)", window.describe(), meta["version"],
                 which, len(refits) if every is not None else 0)
        pieces, rows_in = [], 0
        for locations in batches:
            try:
                valid = load_validated_raw(ctx, start=reads, locations=locations).valid
            except MissingInputError:
                continue
            valid = valid[valid["time"] < window.end].reset_index(drop=True)
            rows_in += len(valid)
            frame = features_from_raw(ctx, valid, champion.location_codes, spec=champion.spec)

            def rows_of(part: pd.DataFrame, begin: pd.Timestamp, frame=frame) -> pd.DataFrame:
                model = champion
                if every is not None:
                    if begin not in fitted:
                        fitted[begin] = champion.with_models({key: fit_one(
                            frame, features, key.target, key.horizon,
                            model_settings(meta, *key), begin, max_rows, seed)
                            for key in champion.keys})
                    model = fitted[begin]
                return forecast_rows(model, Inputs.from_frame(champion, part)).frame()

            try:
                pieces.append(forecast(frame, window, horizons, rows_of, refits))
            except ValueError as exc:
                if "no feature rows forecast into" not in str(exc):
                    raise BacktestError(str(exc)) from exc
        if not pieces:
            raise BacktestError(f"no feature rows forecast into {window.describe()}: is there "
                                "data before and in the window?")
        predictions = pd.concat(pieces, ignore_index=True).sort_values(
            list(KEY_COLUMNS), ignore_index=True)
        try:
            tables = score_tables(predictions)
        except ValueError as exc:
            raise BacktestError(str(exc)) from exc
        predictions["model_version"] = meta["version"]
        scores = nested_by_horizon(tables["horizon"])
        refit_text = f"refit every {every_days:g} days" if every is not None else "no refit"
        header = (f"backtest {window.describe()}: model {meta['version']} ({which}), "
                  f"{refit_text}, {predictions['location_id'].nunique()} locations")
        summary = render_summary(scores, header)
        report = {
            "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
            "model": {"version": meta["version"], "which": which,
                      "train_end": cutoff.isoformat()},
            "refit_every_days": every_days if every is not None else None,
            "refits": len(refits) if every is not None else 0,
            "rows": int(len(predictions)),
            "locations": sorted(predictions["location_id"].unique().tolist()),
            "scores": scores,
        }
        directory = Path(out) if out else ctx.paths.backtest_dir
        if not directory.is_absolute():
            directory = ctx.paths.root / directory
        write_outputs(directory, predictions, tables, report, summary)
        push(metrics, scores)
        metrics.rows(rows_in=rows_in, rows_out=len(predictions))
        print(summary)
        log.info("backtest: %d forecasts -> %s", len(predictions), directory)
        log_run(ctx, backtest_run(ctx.paths.root, report, directory, metrics.started))
    return report

