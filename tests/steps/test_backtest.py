"""Train, evaluate and backtest as a user does: a CSV with few variables, the CLI, the outputs."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from pipeline.context import Context
from pipeline.core.backtest import forecast, refit_origins
from pipeline.core.features import columns_for_horizon, feature_names
from pipeline.forecaster import Champion, Inputs
from pipeline.forecaster import forecast as forecast_rows
from pipeline.inputs import feature_spec, features_from_raw, load_validated_raw
from pipeline.io.registry import load_bundle
from pipeline.io.storage import read_raw
from pipeline.settings import Settings
from pipeline.steps import (
    backtest,
    drift,
    evaluate,
    ingest,
    predict,
    preprocess,
    promote,
    train,
)
from tests.conftest import make_project

# trains models, runs the CLI
pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.process]

BERLIN = {"id": "berlin", "name": "Berlin", "latitude": 52.52, "longitude": 13.405,
          "timezone": "Europe/Berlin"}
# what a real hourly NO2 monitoring export has: NO2, wind and temperature, nothing else
CSV_CONFIG = {
    "path": "station.csv",
    "location_id": "berlin",
    "time_zone": "UTC",
    "mapping": {"time": "Datetime (GMT)",
                "columns": {"no2": "NO2", "wind_speed_10m": "WS", "wind_direction_10m": "WD",
                            "temperature_2m": "Temp"}},
}
WINDOW = {"start": "2025-04-10", "end": "2025-04-24"}


def cli(root, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "AQ_PROJECT_DIR": str(root), "HOME": str(root)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def no2_export(tmp_path_factory):
    """An hourly NO2 station export (synthetic values), written the way a network does."""
    root = make_project(tmp_path_factory.mktemp("export") / "project", {
        "locations": [BERLIN], "source": {"start": "2025-01-01", "end": "2025-04-24"}})
    ctx = Context.load(root, settings=Settings())
    ingest.run(ctx)
    stored = read_raw(ctx.paths.raw_dir, "synthetic")
    export = pd.DataFrame({
        "Datetime (GMT)": stored["time"].dt.strftime("%Y-%m-%d %H:%M"),
        "NO2": stored["no2"].round(1), "WS": stored["wind_speed_10m"],
        "WD": stored["wind_direction_10m"], "Temp": stored["temperature_2m"],
    })
    return export.to_csv(index=False)


@pytest.fixture(scope="module")
def no2_project(tmp_path_factory, no2_export):
    """The export through the default params: targets [no2], every default feature asked."""
    root = make_project(tmp_path_factory.mktemp("no2") / "project", {
        "locations": [BERLIN], "targets": ["no2"],
        "source": {"kind": "csv", "start": "2025-01-01", "end": "2025-04-24", "csv": CSV_CONFIG},
        "model": {"max_iter": 60}, "backtest": WINDOW,
    })
    (root / "station.csv").write_text(no2_export)
    ctx = Context.load(root, settings=Settings())
    ingest.run(ctx)
    preprocess.run(ctx)
    return root


def test_a_no2_wind_temperature_export_trains_with_default_features(no2_project, caplog):
    ctx = Context.load(no2_project, settings=Settings())
    with caplog.at_level(logging.WARNING):
        metadata = train.run(ctx)
    dropped = set(metadata["dropped_features"])
    # variables the file does not have are left out, said so, and recorded for predict/serving
    assert {"pm10", "o3", "co", "relative_humidity_2m", "surface_pressure", "precipitation",
            "cloud_cover", "pm10_lag1", "precipitation_sum24"} <= dropped
    assert "no value in the training data" in caplog.text
    assert "pm10" in caplog.text
    assert not dropped & set(metadata["features"])
    assert {"no2_lag1", "temperature_2m", "wind_u", "wind_v"} <= set(metadata["features"])
    # no weather forecasts in a CSV: the target-hour forecast features are left out too
    assert {"fc_temperature_2m__h6", "fc_wind_speed_10m__h24"} <= dropped
    assert "no2_rel_daily_profile__h6" in metadata["features"]
    bundle = load_bundle(ctx.paths.candidate_dir)
    for (_, horizon), model in bundle.models.items():
        assert list(model[0].transformers[0][2]) == columns_for_horizon(metadata["features"],
                                                                       horizon)
    report = evaluate.run(ctx)
    assert all(s["skill"] > 0 for s in report["scores"]["no2"].values()), report["scores"]


def test_the_no2_export_backtests_from_the_cli(no2_project):
    ctx = Context.load(no2_project, settings=Settings())
    if not ctx.paths.candidate_dir.exists():  # trained by the test above when run together
        train.run(ctx)
    proc = cli(no2_project, "backtest", "--refit-every", "7")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no2:" in proc.stdout
    assert "cover80" in proc.stdout
    out = no2_project / "reports" / "backtest"
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert predictions["target_time"].min() == pd.Timestamp(WINDOW["start"], tz="UTC")
    assert predictions["target_time"].max() == pd.Timestamp("2025-04-23 23:00", tz="UTC")
    assert predictions[["lower", "upper"]].notna().all().all()
    assert (predictions["lower"] <= predictions["value"]).all()
    assert (predictions["value"] <= predictions["upper"]).all()
    assert predictions["refit_origin"].nunique() == 3  # origins over 15 days, every 7 days
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["refit_every_days"] == 7
    assert set(metrics["scores"]["no2"]) == {"1", "6", "12", "24"}


def test_an_extra_numeric_column_comes_in_as_a_covariate_with_lags(tmp_path, no2_export,
                                                                     caplog):
    """A second station's NO2 in the export: mapped under a name of the user's choosing, it is
    stored, becomes features like a co-pollutant (value and lags), and the model uses it."""
    export = pd.read_csv(io.StringIO(no2_export))
    export["NO2 Kensington"] = (export["NO2"].shift(1) * 0.8).round(1)
    export["QC flag"] = "ok"
    config = {**CSV_CONFIG, "mapping": {**CSV_CONFIG["mapping"],
                                        "covariates": {"no2_kensington": "NO2 Kensington"}}}
    root = make_project(tmp_path / "project", {
        "locations": [BERLIN], "targets": ["no2"], "horizons": [1, 6],
        "source": {"kind": "csv", "start": "2025-01-01", "end": "2025-04-24", "csv": config},
        "model": {"max_iter": 30, "selection": {"max_fits": 1}}, "backtest": WINDOW,
    })
    (root / "station.csv").write_text(export.to_csv(index=False))
    ctx = Context.load(root, settings=Settings())
    assert ctx.params.features.covariates == ["no2_kensington"]  # every mapped one by default
    with caplog.at_level(logging.INFO):
        ingest.run(ctx)
    assert "column(s) not in the mapping, ignored: ['QC flag']" in caplog.text
    stored = read_raw(ctx.paths.raw_dir, "csv")
    assert stored["cov_no2_kensington"].iloc[1:5].tolist() == \
        export["NO2 Kensington"].iloc[1:5].tolist()
    preprocess.run(ctx)
    metadata = train.run(ctx)
    assert {"cov_no2_kensington", "cov_no2_kensington_lag1",
            "cov_no2_kensington_lag24"} <= set(metadata["features"])
    assert metadata["params"]["features"]["covariates"] == ["no2_kensington"]
    report = backtest.run(ctx)
    assert report["scores"]["no2"]["1"]["n"] > 300


def test_a_train_failure_is_one_clear_error_line(no2_project):
    import shutil

    root = no2_project.parent / "impossible"
    shutil.copytree(no2_project, root)
    params = (root / "params.yaml").read_text().replace("holdout_days: 14", "holdout_days: 200")
    (root / "params.yaml").write_text(params)
    proc = cli(root, "train")
    assert proc.returncode == 1
    assert "error: train: evaluation.holdout_days=200: a holdout of 200 observed days leaves " \
           "nothing to train on (data has 113 observed days, 2025-01-01 .. 2025-04-23)" \
           in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The small synthetic project (2 locations, 2 months, 14-day holdout), promoted."""
    root = make_project(tmp_path_factory.mktemp("bt") / "project",
                        {"promotion": {"min_skill": -1.0, "tolerance": 1.0},
                         "backtest": {"days": 14}})
    ctx = Context.load(root, settings=Settings())
    ingest.run(ctx)
    preprocess.run(ctx)
    metadata = train.run(ctx)
    evaluate.run(ctx)
    promote.run(ctx)
    return root, metadata


def test_holdout_period_and_rows_are_logged_and_recorded(trained):
    root, metadata = trained
    holdout = metadata["holdout"]
    assert holdout["start"] == "2025-02-15T00:00:00+00:00"  # the last 14 days of Jan-Feb
    assert holdout["end"] == "2025-03-01T00:00:00+00:00"
    assert metadata["train_end"] == "2025-02-14T00:00:00+00:00"  # minus the 24 h horizon
    assert holdout["holdout_rows"] > 0
    assert holdout["train_rows"] > 0
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["holdout"] == holdout
    # each horizon's choices and its interval calibration travel with the model
    for horizon in ("1", "6", "12", "24"):
        chosen = metadata["settings"]["pm2_5"][horizon]
        # one model's settings, or those of each model of a mean (model.selection.ensemble)
        for member in chosen.get("members", [chosen]):
            assert member["loss"] in ("squared_error", "absolute_error")
            assert member["form"] in ("log_change", "log_level", "change")
        assert 1 <= len(metadata["selection"]["pm2_5"][horizon]["tried"]) <= 6
        calibration = metadata["intervals"]["by_model"]["pm2_5"][horizon]
        assert len(calibration["quantiles"]) == len(metadata["intervals"]["levels"])
        validation = metadata["selection"]["pm2_5"][horizon]["validation"]
        assert validation["end"] <= metadata["train_end"]  # never the holdout


def test_backtest_of_the_candidate_over_its_holdout(trained):
    root, metadata = trained
    ctx = Context.load(root, settings=Settings())
    report = backtest.run(ctx)
    assert report["window"] == {"start": "2025-02-15T00:00:00+00:00",
                                "end": "2025-03-01T00:00:00+00:00"}
    assert report["model"]["version"] == metadata["version"]
    out = ctx.paths.backtest_dir
    for name in ("by_horizon.csv", "by_location.csv", "by_month.csv", "by_hour.csv",
                 "summary.txt", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    for name in ("skill_and_coverage.png", "error_by_hour.png", "error_by_month.png",
                 "example_forecasts.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    by_location = pd.read_csv(out / "by_location.csv")
    assert set(by_location["location_id"]) == {"berlin", "delhi"}
    scores = report["scores"]["pm2_5"]
    assert all(0.5 < s["coverage"] < 1 for s in scores.values())
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert {"p_reach_moderate", "p_reach_hazardous"} <= set(predictions.columns)
    assert (predictions["origin"] >= pd.Timestamp(metadata["train_end"])).all()
    # the backtest of the candidate over its own holdout agrees with evaluate where they meet
    evaluation = json.loads(ctx.paths.evaluation_report.read_text())["scores"]["pm2_5"]
    for h in ("1", "24"):
        assert scores[h]["mae"] == pytest.approx(evaluation[h]["mae"], rel=0.1)


def test_a_backtest_read_by_location_batches_and_window_forecasts_as_the_whole_table(
        trained, tmp_path):
    """Backtest holds one batch of locations and only the history the window's first
    features need, yet forecasts exactly what the model makes of the whole feature table."""
    root, metadata = trained
    ctx = Context.load(root, settings=Settings(batch_locations=1))
    backtest.run(ctx, out=str(tmp_path / "batched"))
    got = pd.read_parquet(tmp_path / "batched" / "predictions.parquet")

    champion = Champion.of(backtest.load_model(ctx, "candidate"))
    frame = features_from_raw(ctx, load_validated_raw(ctx).valid, champion.location_codes,
                              spec=champion.spec)
    window = backtest.resolve_window(ctx, None, None, frame["time"].max())
    whole = forecast(frame, window, champion.horizons,
                     lambda part, _: forecast_rows(champion, Inputs.from_frame(
                         champion, part)).frame(),
                     refit_origins(window, champion.horizons, None))
    assert set(got["location_id"]) == {"berlin", "delhi"}
    pd.testing.assert_frame_equal(got, whole)


def test_a_backtest_of_an_older_model_after_a_feature_change(trained, tmp_path):
    """The model's own features are built, whatever params.yaml asks for now: a longer lag
    and no profiles any more (the model needs both) leave its backtest as it was."""
    root, metadata = trained
    ctx = Context.load(root, settings=Settings())
    backtest.run(ctx, model=metadata["version"], out=str(tmp_path / "before"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    saved = yaml.safe_dump(params, sort_keys=False)
    params["features"] = {**params.get("features", {}), "lags": [1, 2, 3, 6, 12, 24, 48],
                          "profiles": False}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = Context.load(root, settings=Settings())
        assert any(f.endswith("_lag168") for f in metadata["features"])
        assert not any(f.endswith("_lag168") for f in feature_names(feature_spec(changed)))
        backtest.run(changed, model=metadata["version"], out=str(tmp_path / "after"))
        # drift compares the champion's own features with its training reference
        drifted = drift.run(changed)
        assert drifted["model_version"] == metadata["version"]
        assert set(drifted["psi"]) == set(metadata["reference"])
    finally:
        (root / "params.yaml").write_text(saved)
    before = pd.read_parquet(tmp_path / "before" / "predictions.parquet")
    after = pd.read_parquet(tmp_path / "after" / "predictions.parquet")
    pd.testing.assert_frame_equal(before, after)


def test_a_fixed_model_is_refused_a_window_it_has_seen(trained):
    root, metadata = trained
    proc = cli(root, "backtest", "--start", "2025-02-01", "--end", "2025-02-10",
               "--model", "champion")
    assert proc.returncode == 1
    assert "learnt from labels up to 2025-02-14 00:00" in proc.stderr
    assert "--refit-every" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad = cli(root, "backtest", "--model", "20990101T000000Z-deadbeef")
    assert bad.returncode == 1
    assert "unknown model version" in bad.stderr


def test_a_refitting_backtest_of_an_earlier_window_from_the_cli(trained):
    root, metadata = trained
    proc = cli(root, "backtest", "--start", "2025-02-01", "--end", "2025-02-08",
               "--model", metadata["version"], "--refit-every", "3", "--out", "backtests/feb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((root / "backtests" / "feb" / "metrics.json").read_text())
    assert report["window"]["start"] == "2025-02-01T00:00:00+00:00"
    assert report["refits"] == 3
    predictions = pd.read_parquet(root / "backtests" / "feb" / "predictions.parquet")
    assert (predictions["refit_origin"] <= predictions["origin"]).all()
    assert len(predictions) == 2 * 4 * 7 * 24  # locations x horizons x target hours


def test_batch_forecasts_carry_intervals_and_category_probabilities(trained):
    root, _ = trained
    ctx = Context.load(root, settings=Settings())
    predict.run(ctx)
    latest = pd.read_parquet(ctx.paths.latest_predictions)
    assert (latest["lower"] <= latest["value"]).all()
    assert (latest["value"] <= latest["upper"]).all()
    chances = latest[[f"p_reach_{c}" for c in ("moderate", "unhealthy_for_sensitive_groups",
                                                "unhealthy", "very_unhealthy", "hazardous")]]
    assert chances.notna().all().all()
    assert chances.apply(lambda r: r.is_monotonic_decreasing, axis=1).all()
    # a forecast well inside a category makes reaching it likely, and the next one less so
    delhi = latest[latest["location_id"] == "delhi"].iloc[0]
    assert delhi["value"] > 35.5  # winter haze
    assert delhi["p_reach_moderate"] > 0.9
