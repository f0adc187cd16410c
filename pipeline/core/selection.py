"""Per-horizon settings chosen on a time-ordered validation window, and interval calibration.

For each target x horizon, inside the training period (never the holdout): fit on
the labels before the validation window, score candidates on the window, keep
the best, calibrate the prediction interval on the window's errors of that
model, then refit the chosen settings on every training label.

The search is greedy, one dimension at a time (loss, then target form, then
regularisation), within ``max_fits`` fits; the number of boosting iterations
comes free from each fit's staged predictions on the window. Pure: plain
values in, plain values out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from pipeline.core.features import label_column
from pipeline.core.intervals import calibrate, scale_candidates, scale_input, scale_inputs
from pipeline.core.models import eligible_rows, fit_one, staged_predictions
from pipeline.core.scoring import mae

log = logging.getLogger(__name__)

MIN_ITERATIONS = 10


@dataclass(frozen=True)
class SearchSpace:
    """What the search may change, one dimension at a time, in this order."""

    losses: Sequence[str] = ("squared_error", "absolute_error")
    forms: Sequence[str] = ("log_change", "log_level", "change")
    regularisation: Sequence[Mapping] = ()  # each: boosting keyword overrides
    max_fits: int = 6  # per target x horizon, the final refit not counted; 1 = no search
    max_rows: int | None = 150_000  # rows per search fit (seeded sample); the refit uses all
    validation_days: int = 28
    # the mean of the best `ensemble` candidates (by validation MAE) when it beats the best one
    # on the window; 1 = the best candidate alone
    ensemble: int = 1


@dataclass
class HorizonFit:
    model: Pipeline
    settings: dict
    report: dict = field(default_factory=dict)
    calibration: dict | None = None
    # the chosen model's forecasts of the validation window (what calibrated the interval)
    validation: pd.DataFrame | None = None


def validation_window(train_end: pd.Timestamp, train_start: pd.Timestamp,
                      days: int) -> pd.Timestamp:
    """Start of the validation window: ``days`` before ``train_end``, at most a quarter of
    the training period (so most of it stays to fit on)."""
    span_days = (train_end - train_start) / pd.Timedelta(days=1)
    usable = min(float(days), span_days / 4)
    if usable < 1:
        raise ValueError(f"a training period of {span_days:.1f} days is too short for a "
                         "validation window (needs at least 4 days)")
    return (train_end - pd.Timedelta(days=usable)).floor("h")


def _validation_rows(frame: pd.DataFrame, target: str, horizon: int,
                     start: pd.Timestamp, label_cutoff: pd.Timestamp) -> pd.Series:
    return (frame["time"] >= start) & eligible_rows(frame, target, horizon, label_cutoff)


def _score_candidate(frame, features, target, horizon, settings, fit_cutoff, valid,
                     max_rows, seed, choose_iterations: bool = True
                     ) -> tuple[float, int, np.ndarray]:
    """(best validation MAE, its iteration count, its predictions) of one candidate."""
    model = fit_one(frame, features, target, horizon, settings, fit_cutoff, max_rows, seed)
    part = frame.loc[valid]
    observed = part[label_column(target, horizon)].to_numpy(dtype=float)
    if not choose_iterations:
        predicted = model.predict(part)
        return mae(observed, predicted), int(settings.get("max_iter", 100)), predicted
    best = (np.inf, 0, None)
    for iteration, predicted in enumerate(staged_predictions(model, part), start=1):
        if iteration < MIN_ITERATIONS and iteration != settings.get("max_iter"):
            continue
        error = mae(observed, predicted)
        if error < best[0]:
            best = (error, iteration, predicted)
    return best


def fit_horizon(frame: pd.DataFrame, features: Sequence[str], target: str, horizon: int,
                base: Mapping, space: SearchSpace, label_cutoff: pd.Timestamp,
                validation_start: pd.Timestamp, max_rows: int | None = None,
                seed: int = 0) -> HorizonFit:
    """Choose the settings of one target x horizon, calibrate its interval, refit on all."""
    valid = _validation_rows(frame, target, horizon, validation_start, label_cutoff)
    if int(valid.sum()) < 20:
        raise ValueError(f"only {int(valid.sum())} validation rows for {target} h={horizon} "
                         f"from {validation_start:%Y-%m-%d %H:%M}: ingest more history")
    fit_cutoff = validation_start  # labels before the window: the window stays unseen
    search_rows = space.max_rows if max_rows is None or space.max_rows is None \
        else min(space.max_rows, max_rows)
    base = dict(base)
    base.setdefault("form", "log_change")
    dimensions = [
        [{"loss": loss} for loss in space.losses],
        [{"form": form} for form in space.forms],
        [dict(r) for r in space.regularisation],
    ]
    tried: list[dict] = []
    current = dict(base)
    # max_fits = 1: no search at all, the base settings as given (iterations included);
    # the window then only calibrates the interval
    search = space.max_fits > 1
    best_error, best_iter, best_pred = _score_candidate(
        frame, features, target, horizon, current, fit_cutoff, valid, search_rows, seed,
        choose_iterations=search)
    tried.append({**current, "validation_mae": round(best_error, 4), "best_iter": best_iter})
    scored = [(best_error, {**current, "max_iter": int(best_iter)}, best_pred)]
    budget = max(space.max_fits, 1) - 1
    for options in dimensions:
        for option in options:
            candidate = {**current, **option}
            if budget <= 0 or any(all(t.get(k) == v for k, v in candidate.items())
                                  for t in tried):
                continue
            budget -= 1
            error, iteration, predicted = _score_candidate(
                frame, features, target, horizon, candidate, fit_cutoff, valid, search_rows,
                seed)
            tried.append({**candidate, "validation_mae": round(error, 4),
                          "best_iter": iteration})
            scored.append((error, {**candidate, "max_iter": int(iteration)}, predicted))
            if error < best_error:
                best_error, best_iter, best_pred = error, iteration, predicted
                current = candidate
    chosen = {**current, "max_iter": int(best_iter)}
    observed = frame.loc[valid, label_column(target, horizon)].to_numpy(dtype=float)
    if space.ensemble > 1 and len(scored) > 1:
        best = sorted(scored, key=lambda item: item[0])[:space.ensemble]
        mean_pred = np.mean([item[2] for item in best], axis=0)
        mean_error = mae(observed, mean_pred)
        if mean_error < best_error:
            chosen = {"members": [item[1] for item in best]}
            best_error, best_pred = mean_error, mean_pred
    window_rows = frame.loc[valid]
    calibration = calibrate(
        observed, best_pred, window_rows["location_id"].to_numpy(),
        scales=[(spec, scale_input(spec, lambda c: window_rows[c].to_numpy(dtype=float)))
                for spec in scale_candidates(target, frame.columns)],
        times=window_rows["time"].to_numpy())
    model = fit_one(frame, features, target, horizon, chosen, label_cutoff, max_rows, seed)
    times = frame.loc[valid, "time"]
    report = {
        "chosen": chosen,
        "validation": {"start": validation_start.isoformat(),
                       "end": label_cutoff.isoformat(), "rows": int(valid.sum()),
                       "mae": round(float(best_error), 4),
                       "first_origin": times.min().isoformat(),
                       "last_origin": times.max().isoformat()},
        "tried": tried,
    }
    shown = [{k: c[k] for k in ("loss", "form", "max_iter", "max_leaf_nodes",
                                "min_samples_leaf", "l2_regularization") if k in c}
             for c in chosen.get("members", [chosen])]
    log.info("%s h=%s: chose %s (validation MAE %.3f over %d fits)", target, horizon,
             shown[0] if len(shown) == 1 else f"the mean of {shown}", best_error, len(tried))
    window = pd.DataFrame({"location_id": frame.loc[valid, "location_id"].to_numpy(),
                           "origin": times.to_numpy(), "observed": observed,
                           "predicted": best_pred})
    for column in scale_inputs(calibration):
        window[column] = frame.loc[valid, column].to_numpy()
    return HorizonFit(model, chosen, report, calibration, window)
