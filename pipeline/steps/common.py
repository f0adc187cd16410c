"""Glue shared by several steps: reading validated raw data and building features."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from pipeline.config import FeatureConfig
from pipeline.context import Context
from pipeline.core.features import FeatureSettings, FeatureSpec, build_features, location_codes
from pipeline.core.validation import ValidationResult, validate, validate_forecasts
from pipeline.errors import MissingInputError, PipelineError
from pipeline.io.storage import newest_observation, raw_files, read_forecasts, read_raw
from pipeline.schema import MAX_FORECAST_LEAD_H


def feature_spec(ctx: Context) -> FeatureSpec:
    p = ctx.params
    return FeatureSpec(tuple(p.targets), tuple(p.horizons), FeatureSettings.of(p.features))


def feature_spec_of(metadata: dict) -> FeatureSpec:
    """The feature spec a model was trained with (from its metadata), whatever params.yaml
    says now: predicting builds exactly the features the model knows."""
    targets = sorted({str(t) for t in metadata["targets"]})
    horizons = sorted(int(h) for h in metadata["horizons"])
    config = FeatureConfig.model_validate(metadata["params"]["features"])
    return FeatureSpec(tuple(targets), tuple(horizons), FeatureSettings.of(config))


def timezones(ctx: Context) -> dict[str, str]:
    return {loc.id: loc.timezone for loc in ctx.params.locations}


def parse_locations(ctx: Context, locations: str | Sequence[str]) -> list[str]:
    """Location ids from ``a,b,c`` (or a list), each one of params.yaml's; else an error."""
    wanted = [w.strip() for w in locations.split(",")] if isinstance(locations, str) \
        else [str(w) for w in locations]
    wanted = [w for w in wanted if w]
    known = set(ctx.params.location_ids)
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise PipelineError(f"--locations: unknown location id(s) {unknown or wanted}; "
                            f"params.yaml has {len(known)} ({', '.join(sorted(known)[:10])}"
                            f"{', ...' if len(known) > 10 else ''})")
    return wanted


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


def data_version(ctx: Context) -> dict[str, str | None]:
    """The DVC hash of data/ (from data.dvc) and a content hash of the files actually read."""
    dvc_md5 = None
    dvc_file = ctx.paths.root / "data.dvc"
    if dvc_file.exists():
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
        dvc_md5 = outs[0].get("md5")
    digest = hashlib.sha256()
    for path in raw_files(ctx.paths.raw_dir, ctx.params.source.kind, ctx.params.location_ids):
        digest.update(str(Path(path).relative_to(ctx.paths.raw_dir)).encode())
        digest.update(hashlib.md5(Path(path).read_bytes()).digest())
    return {"dvc_md5": dvc_md5, "raw_content_sha256": digest.hexdigest()}


def newest_stored(ctx: Context) -> pd.Timestamp | None:
    """The newest stored hour over every configured location (``history_days`` counts back
    from it, the same for every batch)."""
    newest = [newest_observation(ctx.paths.raw_dir, ctx.params.source.kind, loc)
              for loc in ctx.params.location_ids]
    newest = [t for t in newest if t is not None]
    return max(newest) if newest else None


def require(path: Path, produced_by: str) -> Path:
    if not Path(path).exists():
        raise MissingInputError(f"{path} not found: run `python -m pipeline {produced_by}` first")
    return path


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

