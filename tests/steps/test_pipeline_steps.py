"""The batch pipeline end to end through its steps, on a small synthetic project."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest

from pipeline.context import Context
from pipeline.core.models import Split
from pipeline.io.feature_store import FeatureStore
from pipeline.io.registry import Registry
from pipeline.io.storage import read_raw
from pipeline.settings import Settings
from pipeline.steps import (
    drift,
    evaluate,
    ingest,
    predict,
    preprocess,
    promote,
    rollback,
    score,
    train,
)
from tests.conftest import make_project, write_params

# trains models, runs the CLI
pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.process]


def reload(root, overrides=None) -> Context:
    if overrides is not None:
        write_params(root, overrides)
    return Context.load(root, settings=Settings())


def retrain(ctx: Context) -> dict:
    preprocess.run(ctx)
    train.run(ctx)
    evaluate.run(ctx)
    return promote.run(ctx)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One project ingested, trained, promoted and forecast; tests read it, or copy it."""
    # a small project gives a weak model: the gate's persistence check is exercised in
    # test_worse_candidate_is_not_promoted and on the default data in test_dvc_pipeline.py
    root = make_project(tmp_path_factory.mktemp("pipeline") / "project",
                        {"promotion": {"min_skill": -1.0}})
    ctx = reload(root)
    ingest.run(ctx)
    report = retrain(ctx)
    forecast = predict.run(ctx)
    return root, report, forecast


def test_first_candidate_becomes_champion_and_forecasts(trained):
    root, report, forecast = trained
    ctx = reload(root)
    assert report["promoted"]
    assert report["switched"]
    assert Registry(ctx.paths).champion_version() == report["candidate"]
    latest = pd.read_parquet(ctx.paths.latest_predictions)
    assert len(latest) == len(ctx.params.location_ids) * len(ctx.params.horizons)
    assert set(latest["location_id"]) == set(ctx.params.location_ids)
    assert (latest["target_time"] - latest["issue_time"] == pd.to_timedelta(
        latest["horizon"], unit="h")).all()
    assert latest["aqi_category"].isin(
        ["good", "moderate", "unhealthy_for_sensitive_groups", "unhealthy", "very_unhealthy",
         "hazardous"]).all()
    assert (latest["value"] >= 0).all()
    run_file = ctx.paths.root / forecast["path"] / "forecasts.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(run_file), latest)
    # the forecast starts from the newest stored hour of each location
    newest = read_raw(ctx.paths.raw_dir, "synthetic").groupby("location_id")["time"].max()
    issued = latest.groupby("location_id")["issue_time"].max()
    assert (issued == newest[issued.index]).all()


def test_evaluation_scores_every_target_and_horizon(trained):
    root, _, _ = trained
    ctx = reload(root)
    scores = pd.read_json(ctx.paths.evaluation_report, typ="series")["scores"]
    assert set(scores["pm2_5"]) == {"1", "6", "12", "24"}
    for s in scores["pm2_5"].values():
        assert s["n"] > 100
        assert {"mae", "rmse", "r2", "skill", "persistence_mae", "seasonal_naive_mae",
                "aqi_category_accuracy"} <= set(s)
    for plot in ("predicted_vs_observed.csv", "error_by_horizon.csv", "error_by_hour.csv"):
        assert (ctx.paths.plots_dir / plot).stat().st_size > 0


def test_worse_candidate_is_not_promoted(trained, tmp_path):
    import shutil

    root = tmp_path / "project"
    shutil.copytree(trained[0], root)
    ctx = reload(root)
    champion = Registry(ctx.paths).champion_version()
    # a crude model (two stumps): worse than the champion on the same holdout
    ctx = reload(root, {"promotion": {"min_skill": -1.0}, "model": {
        "max_iter": 2, "learning_rate": 1.0, "max_leaf_nodes": 2}})
    report = retrain(ctx)
    assert not report["promoted"]
    assert not report["switched"]
    assert any("regresses against champion" in r for r in report["refusals"])
    assert report["champion_scores_on_holdout"]["pm2_5"]["1"]["n"] > 0
    assert Registry(ctx.paths).champion_version() == champion
    # and a gate asking for more skill than it has refuses it on that ground too
    strict = reload(root, {"promotion": {"min_skill": 0.99}})
    assert any("does not beat persistence" in r for r in promote.run(strict)["refusals"])
    assert Registry(ctx.paths).champion_version() == champion
    assert report["candidate"] in Registry(ctx.paths).versions()  # kept, just not champion


def test_regression_against_champion_is_refused(trained, tmp_path):
    import shutil

    from pipeline.steps.promote import decide

    root = tmp_path / "project"
    shutil.copytree(trained[0], root)
    candidate = {"pm2_5": {"1": {"skill": 0.2, "mae": 5.0}}}
    champion = {"pm2_5": {"1": {"mae": 4.0}}}
    promoted, refusals = decide(candidate, champion, min_skill=0.0, tolerance=0.1)
    assert not promoted
    assert "regresses against champion" in refusals[0]
    assert decide(candidate, champion, 0.0, tolerance=0.3)[0]


def test_realised_accuracy_scores_forecasts_once_observations_arrive(trained, tmp_path):
    import shutil

    root = tmp_path / "project"
    shutil.copytree(trained[0], root)
    ctx = reload(root)
    before = score.run(ctx)
    assert before["scored"] == 0  # nothing observed after the issue time yet
    end = pd.Timestamp(ctx.params.source.end, tz="UTC")
    ingest.run(ctx, start=end, end=end + pd.Timedelta(days=2))
    report = score.run(ctx)
    n_loc = len(ctx.params.location_ids)
    by_h = report["by_target_horizon"]["pm2_5"]
    assert {h: v["n"] for h, v in by_h.items()}.keys() == {"1", "6", "12", "24"}
    assert all(0 < v["n"] <= n_loc for v in by_h.values())
    assert all(v["mae"] >= 0 for v in by_h.values())
    history = pd.read_parquet(ctx.paths.accuracy_history)
    again = score.run(ctx)  # idempotent: history does not grow on a re-run
    assert again["scored"] == report["scored"] == len(history)
    # a second batch issued later adds to the history
    predict.run(ctx)
    ingest.run(ctx, start=end + pd.Timedelta(days=2), end=end + pd.Timedelta(days=4))
    assert score.run(ctx)["scored"] > report["scored"]


def test_score_a_batch_of_locations_at_a_time_keeps_what_all_at_once_does(trained, tmp_path):
    """Score reads, matches and writes one batch of locations at a time (memory flat in the
    number of locations); the report and the history are those of every location at once,
    and a second run changes neither."""
    root = tmp_path / "project"
    shutil.copytree(trained[0], root)
    ctx = reload(root)
    end = pd.Timestamp(ctx.params.source.end, tz="UTC")
    ingest.run(ctx, start=end, end=end + pd.Timedelta(days=1))
    predict.run(ctx)  # a second forecast run, half of it observed by the next ingestion
    ingest.run(ctx, start=end + pd.Timedelta(days=1), end=end + pd.Timedelta(days=2))
    results = {}
    for size in (1, 25, 1):  # batches of one, all at once, then batches of one on that
        ctx = Context.load(root, settings=Settings(batch_locations=size))
        report = score.run(ctx)
        history = pd.read_parquet(ctx.paths.accuracy_history)
        results.setdefault(size, []).append((report, history))
    (one, history_one), (again, history_again) = results[1]
    whole, history_whole = results[25][0]
    assert one == whole == again
    pd.testing.assert_frame_equal(history_one, history_whole)
    pd.testing.assert_frame_equal(history_again, history_whole)
    assert history_whole["location_id"].nunique() == len(ctx.params.location_ids) > 1
    # the figures are those of the whole history at once
    for (target, horizon), part in history_whole.groupby(["target", "horizon"]):
        got = whole["by_target_horizon"][target][str(horizon)]
        assert got["n"] == len(part) > 0
        assert got["mae"] == pytest.approx((part["observed"] - part["value"]).abs().mean(),
                                           rel=1e-13)
    assert whole["scored"] == len(history_whole)


def test_drift_a_batch_of_locations_at_a_time_reports_what_all_at_once_does(trained, tmp_path):
    """Drift reads and featurises one batch of locations at a time (memory flat in the number
    of locations); the report is the one of every location at once."""
    root = tmp_path / "project"
    shutil.copytree(trained[0], root)
    reports = {size: drift.run(Context.load(root, settings=Settings(batch_locations=size)))
               for size in (1, 25)}
    assert len(reload(root).params.location_ids) > 1
    assert reports[1] == reports[25]
    assert reports[1]["rows"] > 0


def test_evaluate_and_promote_a_batch_of_locations_at_a_time_report_what_all_at_once_does(
        trained, tmp_path):
    """Evaluate and the gate's re-scoring of the champion stream the holdout one batch of
    locations at a time (memory flat in the number of locations); the report, metrics.json
    and the plot files are byte for byte those of every location at once."""
    root = tmp_path / "project"
    shutil.copytree(trained[0], root)
    plots = ("predicted_vs_observed", "error_by_horizon", "error_by_hour")
    outputs = {}
    for size in (1, 25):
        ctx = Context.load(root, settings=Settings(batch_locations=size))
        report = evaluate.run(ctx)
        store = FeatureStore(ctx.paths.features, size)
        champion = promote.champion_scores(
            Registry(ctx.paths).load_champion(), store,
            Split(pd.Timestamp(report["holdout_start"])),
            {(t, int(h)) for t, by_h in report["scores"].items() for h in by_h})
        outputs[size] = (report, ctx.paths.metrics_json.read_bytes(),
                         [(ctx.paths.plots_dir / f"{name}.csv").read_bytes() for name in plots],
                         champion)
    assert len(reload(root).params.location_ids) > 1
    assert outputs[1] == outputs[25]
    assert outputs[1][3][0]["pm2_5"]["1"]["n"] > 100  # the champion was scored


def test_drift_report_and_rollback(trained, tmp_path):
    import shutil

    root = tmp_path / "project"
    shutil.copytree(trained[0], root)
    ctx = reload(root)
    report = drift.run(ctx)
    assert report["psi"]
    assert 0 <= report["share"] <= 1
    assert not any(f.startswith(("hour_", "doy_")) for f in report["psi"])
    first = Registry(ctx.paths).champion_version()
    # the champion's own settings on the same data: a candidate exactly as good as the champion
    # on the same holdout (training is seeded), so it passes the gate (within its tolerance) and
    # there is a switch to roll back
    second = retrain(reload(root, {"promotion": {"min_skill": -1.0}}))
    assert second["switched"], second["refusals"] or second["note"]
    assert second["previous_champion"] == first != second["champion"]
    ctx = reload(root)
    assert rollback.run(ctx) == first
    assert Registry(ctx.paths).champion_version() == first


def test_cli_reports_missing_inputs_without_traceback(tmp_path):
    root = make_project(tmp_path / "p")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "predict"], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "AQ_PROJECT_DIR": str(root)})
    assert proc.returncode == 1
    assert "error: predict: no champion yet" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ingest_quarantines_spikes_and_is_idempotent(tmp_path):
    root = make_project(tmp_path / "p", {"source": {"synthetic": {"spike_rate": 0.01}}})
    ctx = reload(root)
    first = ingest.run(ctx, start="2025-01-01", end="2025-01-15")
    files = {p: p.read_bytes() for p in ctx.paths.raw_dir.rglob("*.parquet")}
    assert first.quality.quarantined > 0
    quarantined = pd.concat(pd.read_parquet(p) for p in ctx.paths.ingest_quarantine_dir.rglob(
        "*.parquet"))
    assert len(quarantined) == first.quality.quarantined
    assert quarantined["reason"].str.contains("outside").all()
    second = ingest.run(ctx, start="2025-01-01", end="2025-01-15")
    assert second.write.written == []
    assert {p: p.read_bytes() for p in ctx.paths.raw_dir.rglob("*.parquet")} == files
    stored = read_raw(ctx.paths.raw_dir, "synthetic")
    hours = 14 * 24 * len(ctx.params.location_ids)
    assert len(stored) + first.quality.quarantined == hours  # every hour stored or quarantined


def test_the_emission_shift_scenario_makes_drift_fire_and_plain_data_does_not(trained, tmp_path):
    """DriftDetected must mean something: quiet on the generator's normal data, firing when
    its emission_shift scenario multiplies local emissions by 2.5 over the recent window
    (regional background unchanged: PM2.5 roughly doubles)."""
    plain = drift.run(reload(trained[0]))
    assert not plain["detected"], plain["drifted_features"]

    root = make_project(tmp_path / "shifted", {"promotion": {"min_skill": -1.0}, "source": {
        "synthetic": {"scenarios": [{"kind": "emission_shift", "start": "2025-02-15",
                                     "variable": "pm2_5", "factor": 2.5}]}}})
    ctx = reload(root)
    ingest.run(ctx)
    retrain(ctx)
    shifted = drift.run(ctx)
    assert shifted["detected"]
    assert shifted["seasonal"]
    assert {"pm2_5", "pm2_5_lag1", "pm10"} <= set(shifted["drifted_features"])


def test_preprocess_batches_in_worker_processes_build_the_same_features(tmp_path):
    """Batches spread over two processes: the same partitions byte for byte, the same report."""
    root = make_project(tmp_path / "project")
    ingest.run(reload(root))
    built = {}
    for processes in (1, 2):
        ctx = Context.load(root, settings=Settings(processes=processes, batch_locations=1))
        shutil.rmtree(ctx.paths.features, ignore_errors=True)
        report = preprocess.run(ctx)
        files = {str(p.relative_to(ctx.paths.features)): p.read_bytes()
                 for p in sorted(ctx.paths.features.rglob("*.parquet"))}
        assert len({name.split("/")[0] for name in files}) == len(ctx.params.location_ids) > 1
        built[processes] = (files, report)
    assert built[2] == built[1]
