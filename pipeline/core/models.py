"""Direct multi-horizon models: one scikit-learn Pipeline per target x horizon.

The split is by time, never shuffled. Every model of a candidate is fitted on
rows whose label (``t + h``) lies before ``Split.train_end``, which is the
holdout start minus the longest horizon: every forecast scored on the holdout,
and every forecast a backtest makes for a target hour in the holdout, is issued
after the last label any model saw.

Pure: takes plain values (settings are dicts of HistGradientBoosting keyword
arguments plus ``form``), never the project's config objects.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from pipeline.core.counts import hour_counts
from pipeline.core.features import (
    anchor_column,
    columns_for_horizon,
    label_column,
    persistence_column,
    seasonal_column,
    spread_columns,
    volatility_column,
)
from pipeline.core.keys import ModelKey, keys_of, nest
from pipeline.core.scoring import score

CATEGORICAL = ("location_code",)
# HistGradientBoosting takes at most 255 categories (max_bins) per categorical feature
MAX_CATEGORIES = 255
# what a model forecasts, relative to the level at the origin (``anchor``, log1p):
# log_change = log1p(y) - log1p(level), log_level = log1p(y), level = y, change = y - level
FORMS = ("log_change", "log_level", "level", "change")
BOOSTING_KEYS = ("loss", "max_iter", "learning_rate", "max_leaf_nodes", "min_samples_leaf",
                 "l2_regularization", "early_stopping", "random_state")
MIN_TRAINING_ROWS = 100


def fit_keeping_warning_filters(estimator, X, y):
    """``estimator.fit(X, y)`` with the process's warning filters as they were afterwards.

    HistGradientBoosting bins its features in scikit-learn's threaded ``Parallel``, whose
    workers reset the warning filters inside ``warnings.catch_warnings``, which is not
    thread-safe: two workers at once can leave the process with an empty filter list, and
    from then on every scikit-learn ``delayed`` call (each ColumnTransformer transform)
    warns that it "should be used with sklearn.utils.parallel.Parallel" (1,726 lines in one
    train log). Fitted inside its own ``catch_warnings``, whatever the workers do to the
    filters ends with the fit.
    """
    with warnings.catch_warnings():
        return estimator.fit(X, y)


def inverse_target(form: str, raw, anchor=None, fallback: float = float("nan")) -> np.ndarray:
    """A model's forecast (>= 0, in the target's unit) from its trees' output ``raw``.

    The one inverse of the target forms (:data:`FORMS`), used by the wrappers' ``predict``,
    by :func:`staged_predictions` and by serving's compiled trees. ``anchor`` holds the rows'
    anchor column (log1p of the level at the origin); a missing anchor takes ``fallback``, as
    fitted: in log space for ``log_change``, in the target's unit for ``change``.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if form == "log_change":
        level = np.asarray(anchor, dtype=np.float64)
        level = np.where(np.isnan(level), fallback, level)
        return np.maximum(np.expm1(level + raw), 0)
    if form == "log_level":
        return np.maximum(np.expm1(raw), 0)
    if form == "level":
        return np.maximum(raw, 0)
    if form == "change":
        level = np.expm1(np.asarray(anchor, dtype=np.float64))
        level = np.where(np.isnan(level), fallback, level)
        return np.maximum(level + raw, 0)
    raise ValueError(f"unknown target form {form!r}; known: {list(FORMS)}")


class LogResidualRegressor(RegressorMixin, BaseEstimator):
    """Fits ``log1p(y) - log1p(level now)`` and adds it back when predicting.

    Trees cannot extrapolate: forecasting the change relative to the latest known
    level (column ``anchor``, already log1p) keeps forecasts sensible when a
    location reaches levels training never saw, and puts clean and polluted
    places on one scale.
    """

    form = "log_change"  # not a parameter: the class is the form

    def __init__(self, estimator=None, anchor: str = "pm2_5_log"):
        self.estimator = estimator
        self.anchor = anchor

    def fit(self, X: pd.DataFrame, y):
        level = X[self.anchor].to_numpy(dtype=float)
        self.fallback_ = float(np.nanmedian(level))
        level = np.where(np.isnan(level), self.fallback_, level)
        self.estimator_ = fit_keeping_warning_filters(
            clone(self.estimator), X, np.log1p(np.asarray(y, float)) - level)
        return self

    def from_model_space(self, X: pd.DataFrame, raw: np.ndarray) -> np.ndarray:
        return inverse_target(self.form, raw, X[self.anchor].to_numpy(dtype=float),
                              self.fallback_)

    def predict(self, X: pd.DataFrame):
        return self.from_model_space(X, self.estimator_.predict(X))


class TargetFormRegressor(RegressorMixin, BaseEstimator):
    """The other target forms: ``log_level``, ``level`` or ``change`` (linear, from the origin).

    A separate class from :class:`LogResidualRegressor` so that code specialised for
    the log-change form (the Treelite fast path in serving) never mistakes it for one.
    """

    def __init__(self, estimator=None, anchor: str = "pm2_5_log", form: str = "log_level"):
        self.estimator = estimator
        self.anchor = anchor
        self.form = form

    def _level(self, X: pd.DataFrame) -> np.ndarray:
        level = np.expm1(X[self.anchor].to_numpy(dtype=float))
        return np.where(np.isnan(level), self.fallback_, level)

    def to_model_space(self, X: pd.DataFrame, y) -> np.ndarray:
        y = np.asarray(y, float)
        if self.form == "log_level":
            return np.log1p(y)
        if self.form == "level":
            return y
        if self.form == "change":
            return y - self._level(X)
        raise ValueError(f"unknown target form {self.form!r}; known: {FORMS[1:]}")

    def from_model_space(self, X: pd.DataFrame, raw: np.ndarray) -> np.ndarray:
        anchor = X[self.anchor].to_numpy(dtype=float) if self.form == "change" else None
        return inverse_target(self.form, raw, anchor, self.fallback_)

    def fit(self, X: pd.DataFrame, y):
        self.fallback_ = float(np.nanmedian(np.expm1(X[self.anchor].to_numpy(dtype=float))))
        self.estimator_ = fit_keeping_warning_filters(clone(self.estimator), X,
                                                      self.to_model_space(X, y))
        return self

    def predict(self, X: pd.DataFrame):
        return self.from_model_space(X, self.estimator_.predict(X))


class MeanRegressor(RegressorMixin, BaseEstimator):
    """The mean of the forecasts of several fitted models of one target x horizon.

    Models chosen differently (another loss, target form or regularisation) make partly
    independent errors, so their average is usually closer than the best of them alone
    (``pipeline/core/selection.py`` keeps the average only when it is, on the validation
    window). ``members`` are fitted Pipelines; :func:`fit_one` fits them.
    """

    def __init__(self, members=()):
        self.members = members

    def fit(self, X: pd.DataFrame, y):
        self.members = [clone(m).fit(X, y) for m in self.members]
        return self

    def predict(self, X: pd.DataFrame):
        return np.mean([m.predict(X) for m in self.members], axis=0)


def staged_predictions(model: Pipeline, X: pd.DataFrame):
    """Predictions after each boosting iteration (for choosing the number of iterations)."""
    selected = model[:-1].transform(X)
    regressor = model[-1]
    for raw in regressor.estimator_.staged_predict(selected):
        yield regressor.from_model_space(selected, raw)


def categorical_inputs(frame: pd.DataFrame, features: Sequence[str]) -> list[str]:
    """The inputs a model treats as categories: the location code while the rows hold at
    most :data:`MAX_CATEGORIES` locations; above that (a deployment of 500 places) the code
    is an ordinary number the trees split by ranges, as HistGradientBoosting cannot take
    more categories."""
    return [c for c in features if c in CATEGORICAL and frame[c].nunique() <= MAX_CATEGORIES]


def build_estimator(features: Sequence[str], target: str, settings: Mapping,
                    categorical: Sequence[str] | None = None) -> Pipeline:
    """The model of one target x horizon from plain settings (``form`` + boosting arguments);
    ``categorical``: the inputs treated as categories (default: those of CATEGORICAL)."""
    select = ColumnTransformer(
        [("features", "passthrough", list(features))],
        remainder="drop",
        verbose_feature_names_out=False,
    ).set_output(transform="pandas")
    categorical = [c for c in features if c in CATEGORICAL] if categorical is None \
        else list(categorical)
    boosting = HistGradientBoostingRegressor(
        **{k: settings[k] for k in BOOSTING_KEYS if k in settings},
        categorical_features=categorical or None,
    )
    form = settings.get("form", "log_change")
    if form == "log_change":
        model = LogResidualRegressor(boosting, anchor=anchor_column(target))
    elif form in FORMS:
        model = TargetFormRegressor(boosting, anchor=anchor_column(target), form=form)
    else:
        raise ValueError(f"unknown target form {form!r}; known: {list(FORMS)}")
    return Pipeline([("select", select), ("model", model)])


def observed_days(frame: pd.DataFrame, targets: Sequence[str]) -> pd.DatetimeIndex:
    """The UTC dates (midnights) with at least one observation of a target, sorted."""
    return _observed_days(hour_counts(frame, targets))


def _observed_days(counts: pd.DataFrame) -> pd.DatetimeIndex:
    observed = counts.loc[counts["observed"] > 0, "time"]
    return pd.DatetimeIndex(np.sort(observed.dt.floor("D").unique()))


@dataclass(frozen=True)
class Split:
    """Models learn from labels before ``train_end``; scores start at ``holdout_start``."""

    holdout_start: pd.Timestamp
    train_end: pd.Timestamp | None = None  # None: the holdout start

    @property
    def label_cutoff(self) -> pd.Timestamp:
        return self.holdout_start if self.train_end is None else self.train_end

    @classmethod
    def for_holdout(cls, frame: pd.DataFrame, targets: Sequence[str], horizons: Sequence[int],
                    start: pd.Timestamp | None = None, days: int | None = None) -> Split:
        """The holdout from a date (``start``), else the last ``days`` days that have data.

        ``days`` counts UTC dates with at least one observation, so a year of data with
        scattered missing hours gives a calendar year, and data that resumes after a long
        gap still leaves a holdout with history. A holdout that cannot be honoured (no data
        in it, or none before it to learn from) is an error, never quietly shortened.
        """
        return cls.from_counts(hour_counts(frame, targets), targets, horizons, start, days)

    @classmethod
    def from_counts(cls, counts: pd.DataFrame, targets: Sequence[str], horizons: Sequence[int],
                    start: pd.Timestamp | None = None, days: int | None = None) -> Split:
        """:meth:`for_holdout` from the table's :func:`hour_counts`."""
        days_seen = _observed_days(counts)
        if days_seen.empty:
            raise ValueError(f"no observation of {list(targets)} at all: ingest data first")
        first, last = days_seen[0], days_seen[-1]
        span = f"data has {len(days_seen)} observed days, {first:%Y-%m-%d} .. {last:%Y-%m-%d}"
        if start is not None:
            holdout_start = pd.Timestamp(start)
            holdout_start = (holdout_start.tz_localize("UTC") if holdout_start.tz is None
                             else holdout_start.tz_convert("UTC"))
            if holdout_start > last + pd.Timedelta(hours=23):
                raise ValueError(f"holdout start {holdout_start:%Y-%m-%d %H:%M} is after the "
                                 f"newest observation ({span})")
        elif days is not None:
            if len(days_seen) <= days:
                raise ValueError(f"a holdout of {days} observed days leaves nothing to train "
                                 f"on ({span})")
            holdout_start = days_seen[-days]
        else:
            raise ValueError("give a holdout start or a number of days")
        train_end = holdout_start - pd.Timedelta(hours=max(horizons))
        if train_end <= counts["time"].min():
            raise ValueError(f"no data before the holdout start {holdout_start:%Y-%m-%d %H:%M} "
                             f"minus the longest horizon ({max(horizons)} h) to train on "
                             f"({span})")
        return cls(pd.Timestamp(holdout_start), pd.Timestamp(train_end))

    def train_mask(self, frame: pd.DataFrame, horizon: int) -> pd.Series:
        return frame["time"] + pd.Timedelta(hours=horizon) < self.label_cutoff

    def holdout_mask(self, frame: pd.DataFrame) -> pd.Series:
        return frame["time"] >= self.holdout_start

    def describe(self, frame: pd.DataFrame, targets: Sequence[str]) -> dict:
        """Period and row counts, for the metadata, metrics.json and the log."""
        return self.describe_counts(hour_counts(frame, targets))

    def describe_counts(self, counts: pd.DataFrame) -> dict:
        """:meth:`describe` from the table's :func:`hour_counts`."""
        observed = counts["observed"] > 0
        holdout = (counts["time"] >= self.holdout_start) & observed
        training = (counts["time"] < self.label_cutoff) & observed
        end = counts.loc[holdout, "time"].max()
        return {
            "start": self.holdout_start.isoformat(),
            "end": None if pd.isna(end) else (end + pd.Timedelta(hours=1)).isoformat(),
            "train_end": self.label_cutoff.isoformat(),
            "train_start": counts.loc[training, "time"].min().isoformat()
            if training.any() else None,
            "holdout_rows": int(counts.loc[holdout, "observed"].sum()),
            "holdout_days": int(counts.loc[holdout, "time"].dt.floor("D").nunique()),
            "train_rows": int(counts.loc[training, "observed"].sum()),
        }


def empty_features(frame: pd.DataFrame, features: Sequence[str],
                   rows: pd.Series) -> list[str]:
    """Features with no value at all in ``rows`` (a variable the source does not have).

    Fitting on a column that is entirely NaN fails inside scikit-learn's binning, and
    such a column carries nothing to learn from.
    """
    present = frame.loc[rows, list(features)].notna().any(axis=0)
    return [f for f in features if not present[f]]


def training_rows(eligible: pd.Series, max_rows: int | None, seed: int) -> np.ndarray:
    """Positions of the rows a model is fitted on, in their original (time) order.

    All eligible rows, or a seeded uniform sample of ``max_rows`` of them: spread over
    the whole training period, so every season and location stays represented. Only
    rows before the holdout are eligible, so sampling never touches the time split.
    """
    positions = np.flatnonzero(eligible.to_numpy())
    if max_rows is None or len(positions) <= max_rows:
        return positions
    chosen = np.random.default_rng(seed).choice(positions, size=max_rows, replace=False)
    return np.sort(chosen)


def eligible_rows(frame: pd.DataFrame, target: str, horizon: int,
                  label_cutoff: pd.Timestamp) -> pd.Series:
    """Rows whose label is known and lies before ``label_cutoff``."""
    return ((frame["time"] + pd.Timedelta(hours=horizon) < label_cutoff)
            & frame[label_column(target, horizon)].notna())


def fit_one(frame: pd.DataFrame, features: Sequence[str], target: str, horizon: int,
            settings: Mapping, label_cutoff: pd.Timestamp, max_rows: int | None = None,
            seed: int = 0) -> Pipeline | MeanRegressor:
    """Fit the model of one target x horizon on the labels before ``label_cutoff``.

    Settings with ``members`` (a list of settings) give a :class:`MeanRegressor` of one
    model per member.
    """
    if settings.get("members"):
        return MeanRegressor([fit_one(frame, features, target, horizon, member, label_cutoff,
                                      max_rows, seed) for member in settings["members"]])
    eligible = eligible_rows(frame, target, horizon, label_cutoff)
    if (count := int(eligible.sum())) < MIN_TRAINING_ROWS:
        raise ValueError(
            f"only {count} training rows for {target} h={horizon} before "
            f"{label_cutoff:%Y-%m-%d %H:%M}: ingest more history or shorten the holdout"
        )
    rows = training_rows(eligible, max_rows, seed)
    features = columns_for_horizon(features, horizon)  # its own target-hour features only
    # a column with no value in these rows carries nothing (and fails scikit-learn's binning):
    # e.g. weather forecasts stored only from a later date than a backtest's refit origin
    inputs = frame.iloc[rows, [frame.columns.get_loc(f) for f in features]]
    known = inputs.notna().any(axis=0).to_numpy()
    if not known.all():
        inputs = inputs.loc[:, known]
        features = [f for f, k in zip(features, known, strict=True) if k]
    estimator = build_estimator(features, target, settings, categorical_inputs(inputs, features))
    try:
        estimator.fit(inputs, frame[label_column(target, horizon)].iloc[rows])
    except ValueError as exc:
        raise ValueError(f"fitting {target} h={horizon} on {len(rows)} rows failed: {exc}") \
            from exc
    return estimator


def fit_models(
    frame: pd.DataFrame,
    features: Sequence[str],
    targets: Sequence[str],
    horizons: Sequence[int],
    settings: Mapping | Callable[[str, int], Mapping],
    split: Split,
    max_rows: int | None = None,
    seed: int = 0,
    progress=None,
) -> dict[ModelKey, Pipeline]:
    """One model per target x horizon; ``settings`` is one dict or a function of (target, h)."""
    models = {}
    for key in keys_of(targets, horizons):
        chosen = settings(*key) if callable(settings) else settings
        models[key] = fit_one(frame, features, key.target, key.horizon, chosen,
                              split.label_cutoff, max_rows, seed)
        if progress is not None:
            progress(*key)
    return models


def evaluation_rows(frame: pd.DataFrame, split: Split, target: str, horizon: int) -> pd.Series:
    """The holdout rows every method is scored on: label and both baselines known."""
    return (
        split.holdout_mask(frame)
        & frame[label_column(target, horizon)].notna()
        & frame[persistence_column(target)].notna()
        & frame[seasonal_column(target, horizon)].notna()
    )


def holdout_predictions(
    models: Mapping[tuple[str, int], Pipeline],
    frame: pd.DataFrame,
    split: Split,
) -> pd.DataFrame:
    """Each model's forecasts on the holdout rows of ``frame``, with what they are scored
    against (observed, persistence, seasonal naive); ``frame`` may be any part of the table
    (a batch of locations): the predictions of the parts add up to those of the whole."""
    predictions = []
    for (target, horizon), estimator in models.items():
        rows = evaluation_rows(frame, split, target, horizon)
        part = frame.loc[rows]
        if part.empty:
            continue
        predictions.append(
            pd.DataFrame(
                {
                    "location_id": part["location_id"].to_numpy(),
                    "issue_time": part["time"].to_numpy(),
                    "target": target,
                    "horizon": horizon,
                    "observed": part[label_column(target, horizon)].to_numpy(np.float64),
                    "predicted": estimator.predict(part),
                    "persistence": part[persistence_column(target)].to_numpy(np.float64),
                    "seasonal": part[seasonal_column(target, horizon)].to_numpy(np.float64),
                    # what the interval may scale by (intervals.py), for the holdout coverage
                    **{c: part[c].to_numpy(np.float64)
                       for c in (volatility_column(target), *spread_columns(target))
                       if c in part},
                }
            )
        )
    if not predictions:
        return pd.DataFrame(columns=["location_id", "issue_time", "target", "horizon",
                                     "observed", "predicted", "persistence", "seasonal"])
    return pd.concat(predictions, ignore_index=True)


def score_predictions(
    models: Sequence[tuple[str, int]], predictions: pd.DataFrame,
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores of :func:`holdout_predictions` (all parts together), serialised by key
    (:func:`nest`: ``{target: {hours: scores}}``)."""
    scores: dict[ModelKey, dict[str, float]] = {}
    groups = dict(list(predictions.groupby(["target", "horizon"], sort=False)))
    for key in (ModelKey.of(*k) for k in models):
        part = groups.get(key)
        if part is None or part.empty:
            raise ValueError(f"no holdout rows for {key}")
        scores[key] = score(
            key.target,
            part["observed"].to_numpy(),
            part["predicted"].to_numpy(),
            part["persistence"].to_numpy(),
            part["seasonal"].to_numpy(),
        )
    return nest(scores)


def evaluate_models(
    models: Mapping[tuple[str, int], Pipeline],
    frame: pd.DataFrame,
    split: Split,
) -> tuple[dict[str, dict[str, dict[str, float]]], pd.DataFrame]:
    """Scores per target and horizon, and the holdout predictions (for plots)."""
    predictions = holdout_predictions(models, frame, split)
    return score_predictions(list(models), predictions), predictions
