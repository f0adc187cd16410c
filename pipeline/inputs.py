"""What models and forecasts are built from: the stored observations (re-validated), the
stored weather forecasts, and the features of both (the project's files through its Context).

One floor above ``io/`` (it reads through ``pipeline.io.storage``), below the steps and
serving: training, batch forecasts, backtests, drift and the online server read the same
rows the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from pipeline.context import Context
from pipeline.core.features import FeatureSettings, FeatureSpec, build_features, location_codes
from pipeline.core.validation import ValidationResult, validate, validate_forecasts
from pipeline.errors import MissingInputError
from pipeline.io.storage import newest_observation, read_forecasts, read_raw
from pipeline.schema import MAX_FORECAST_LEAD_H


def feature_spec(ctx: Context) -> FeatureSpec:
    """The features params.yaml asks for (a model brings its own: ``Champion.spec``)."""
    p = ctx.params
    return FeatureSpec(tuple(p.targets), tuple(p.horizons), FeatureSettings.of(p.features))


def timezones(ctx: Context) -> dict[str, str]:
    return {loc.id: loc.timezone for loc in ctx.params.locations}


def load_validated_raw(ctx: Context, start: pd.Timestamp | None = None,
                       locations: Sequence[str] | None = None) -> ValidationResult:
    """Stored rows of the configured source, re-validated (nothing is trusted blindly)."""
    source = ctx.params.source.kind
    raw = read_raw(ctx.paths.raw_dir, source,
                   ctx.params.location_ids if locations is None else locations, start=start)
    if raw.empty:
        raise MissingInputError(
            f"no raw data for source {source!r} in {ctx.paths.raw_dir}: "
            "run `python -m pipeline ingest` first"
        )
    return validate(raw, known_locations=ctx.params.location_ids)


def load_forecasts(ctx: Context, start: pd.Timestamp | None = None,
                   end: pd.Timestamp | None = None,
                   locations: Sequence[str] | None = None) -> pd.DataFrame:
    """Stored weather forecasts of the configured source issued in ``[start, end)``, of
    ``locations`` (default: all configured), re-validated (quarantined rows are left out);
    empty for a source without forecasts."""
    wanted = ctx.params.location_ids if locations is None else \
        [loc for loc in ctx.params.location_ids if loc in set(locations)]
    raw = read_forecasts(ctx.paths.raw_dir, ctx.params.source.kind, wanted,
                         start=start, end=end)
    return validate_forecasts(raw, known_locations=ctx.params.location_ids).valid


def features_from_raw(ctx: Context, valid: pd.DataFrame, codes: dict[str, int] | None = None,
                      with_labels: bool = True, spec: FeatureSpec | None = None) -> pd.DataFrame:
    """Features of validated rows, with the weather forecasts known at each of their hours."""
    codes = codes or location_codes(ctx.params.location_ids)
    spec = spec or feature_spec(ctx)
    forecasts = None
    if spec.config.forecast_weather and not valid.empty:
        # a run issued up to its longest lead before the first hour may still cover it
        # (of the rows' locations only: a batch of locations reads its own forecasts)
        forecasts = load_forecasts(ctx, valid["time"].min() - pd.Timedelta(
            hours=MAX_FORECAST_LEAD_H), valid["time"].max() + pd.Timedelta(hours=1),
            locations=valid["location_id"].unique().tolist())
    return build_features(valid, spec, timezones(ctx), codes, with_labels, forecasts)


def newest_stored(ctx: Context) -> pd.Timestamp | None:
    """The newest stored hour over every configured location (``history_days`` counts back
    from it, the same for every batch)."""
    newest = [newest_observation(ctx.paths.raw_dir, ctx.params.source.kind, loc)
              for loc in ctx.params.location_ids]
    newest = [t for t in newest if t is not None]
    return max(newest) if newest else None


def recent_window_start(
    ctx: Context, spec: FeatureSpec, extra_hours: int = 48,
    locations: Sequence[str] | None = None,
) -> pd.Timestamp | None:
    """Start of the raw window that covers every location's (or these ``locations``')
    latest features."""
    newest = [
        newest_observation(ctx.paths.raw_dir, ctx.params.source.kind, loc)
        for loc in (ctx.params.location_ids if locations is None else locations)
    ]
    newest = [t for t in newest if t is not None]
    if not newest:
        return None
    return min(newest) - pd.Timedelta(hours=spec.warmup_hours + extra_hours)
