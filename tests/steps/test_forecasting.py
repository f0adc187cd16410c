"""Honest batch forecasts, and rollbacks that carry through to the forecasts users read."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.context import Context
from pipeline.errors import PipelineError
from pipeline.forecaster import Champion, _tile
from pipeline.io.metrics import StepRun
from pipeline.io.registry import Registry
from pipeline.settings import Settings
from pipeline.steps import evaluate, ingest, predict, preprocess, promote, rollback, summary, train
from pipeline.steps.forecasting import issue_forecasts
from tests.conftest import make_project, write_params

# trains models, runs the CLI
pytestmark = [pytest.mark.slow, pytest.mark.train, pytest.mark.process]

END = pd.Timestamp("2025-03-01", tz="UTC")  # the small project's history ends here


def load(root, overrides=None) -> Context:
    if overrides is not None:
        write_params(root, overrides)
    return Context.load(root, settings=Settings())


@pytest.fixture(scope="module")
def two_champions(tmp_path_factory):
    """A project with two registered champions (first, then second) and forecasts."""
    root = make_project(tmp_path_factory.mktemp("forecasting") / "project",
                        {"promotion": {"min_skill": -1.0}})
    ctx = load(root)
    ingest.run(ctx)
    preprocess.run(ctx)
    train.run(ctx)
    evaluate.run(ctx)
    first = promote.run(ctx)["champion"]
    ctx = load(root, {"promotion": {"min_skill": -1.0}, "model": {"max_iter": 30,
                                                                 "random_state": 7}})
    train.run(ctx)
    registry = Registry(ctx.paths)
    second = registry.register(ctx.paths.candidate_dir)
    assert registry.promote(second, reason="test: second champion")
    predict.run(ctx)
    return root, first, second


@pytest.fixture
def project(two_champions, tmp_path):
    root, first, second = two_champions
    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    return copy, first, second


def metric(run: StepRun, name: str, **labels) -> float | None:
    return run.registry.get_sample_value(name, labels)


def test_a_location_with_an_isolated_hour_gets_no_forecast_and_no_aqi(project, caplog):
    """The Delhi incident: history ends, then one isolated hour arrives weeks later."""
    root, _, _ = project
    ctx = load(root)
    ingest.run(ctx, start=END, end=END + pd.Timedelta(days=20), locations="berlin")
    lone = END + pd.Timedelta(days=20) - pd.Timedelta(hours=1)
    ingest.run(ctx, start=lone, end=lone + pd.Timedelta(hours=1), locations="delhi")
    run = StepRun("predict")

    with caplog.at_level(logging.WARNING):
        report = issue_forecasts(ctx, Champion.of(Registry(ctx.paths).load_champion()), run)

    assert set(report["withheld"]) == {"delhi"}
    needs = ctx.params.forecast.min_input_completeness
    assert f"of the model's features present (needs {needs:.0%})" in report["withheld"]["delhi"]
    assert "no forecast for delhi this run" in caplog.text
    latest = pd.read_parquet(ctx.paths.latest_predictions)
    assert set(latest["location_id"]) == {"berlin"}
    assert (latest["issue_time"] == lone).all()
    assert (latest["input_completeness"] >= needs).all()
    assert (latest["hours_since_observation"] == 0).all()
    assert metric(run, "aq_forecast_degraded", location="delhi") == 1
    assert metric(run, "aq_forecast_degraded", location="berlin") == 0
    assert metric(run, "aq_forecast_input_completeness", location="delhi") < 0.5
    # no AQI figure for the withheld location, so it cannot drive the AQI alert
    assert metric(run, "aq_forecast_max_aqi_24h", location="delhi", target="pm2_5") is None
    assert metric(run, "aq_forecast_max_aqi_24h", location="berlin", target="pm2_5") is not None


def test_a_stale_target_observation_withholds_the_location(project):
    root, _, _ = project
    ctx = load(root, {"forecast": {"max_hours_since_observation": 0}})
    raw = ctx.paths.raw_dir / "source=synthetic" / "location=delhi" / "month=2025-02.parquet"
    frame = pd.read_parquet(raw)
    frame.loc[frame.index[-2:], "pm2_5"] = float("nan")  # the last two hours lack the target
    frame.to_parquet(raw)
    report = issue_forecasts(ctx, Champion.of(Registry(ctx.paths).load_champion()),
                             StepRun("predict"))
    assert "pm2_5 last observed 2 h before the issue time" in report["withheld"]["delhi"]


def test_nothing_forecastable_is_an_error_naming_each_location(project):
    root, _, _ = project
    ctx = load(root, {"forecast": {"max_hours_since_observation": 0}})
    for location in ("berlin", "delhi"):
        raw = (ctx.paths.raw_dir / "source=synthetic" / f"location={location}"
               / "month=2025-02.parquet")
        frame = pd.read_parquet(raw)
        frame.loc[frame.index[-1], "pm2_5"] = float("nan")
        frame.to_parquet(raw)
    with pytest.raises(PipelineError, match="no location has complete enough inputs.*berlin.*"
                                            "delhi"):
        issue_forecasts(ctx, Champion.of(Registry(ctx.paths).load_champion()), StepRun("predict"))


def test_rollback_reissues_forecasts_and_roll_forward_returns(project, capsys):
    root, first, second = project
    ctx = load(root)
    assert set(pd.read_parquet(ctx.paths.latest_predictions)["model_version"]) == {second}

    assert rollback.run(ctx) == first
    assert set(pd.read_parquet(ctx.paths.latest_predictions)["model_version"]) == {first}
    assert "forecasts re-issued with" in capsys.readouterr().out
    # summary names the real champion, not the one the last promotion report named
    assert f"champion: {first} " in summary.run(ctx)

    assert rollback.run(ctx, to=second) == second  # roll forward
    assert set(pd.read_parquet(ctx.paths.latest_predictions)["model_version"]) == {second}
    history = Registry(ctx.paths).history()
    assert [h["version"] for h in history[-2:]] == [first, second]
    assert history[-1]["reason"] == f"rollback --to {second} from {first}"


def test_rollback_to_an_unknown_version_changes_nothing(project):
    root, _, second = project
    ctx = load(root)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "rollback", "--to", "nope"],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "AQ_PROJECT_DIR": str(root)})
    assert proc.returncode == 1
    assert "error: rollback: unknown model version 'nope'" in proc.stderr
    assert Registry(ctx.paths).champion_version() == second


def test_a_champion_with_other_horizons_says_what_it_serves(project, caplog):
    root, _, second = project
    ctx = load(root, {"horizons": [1, 6]})
    with caplog.at_level(logging.WARNING):
        report = predict.run(ctx)
    assert report["serves"]["horizons"] == [1, 6, 12, 24]
    assert report["params_ask"]["horizons"] == [1, 6]
    assert "serves targets ['pm2_5'] at horizons [1, 6, 12, 24] h; params.yaml asks" in caplog.text
    latest = pd.read_parquet(ctx.paths.latest_predictions)
    assert sorted(latest["horizon"].unique()) == [1, 6, 12, 24]


@pytest.mark.parametrize(("state", "what"), [
    ("models/champion.json", "champion pointer"),
    ("models/registry/{version}/metadata.json", "model metadata"),
])
def test_a_garbled_state_file_is_named_with_the_way_out(project, state, what):
    root, _, second = project
    path = root / state.format(version=second)
    path.write_text('{"version": ')
    proc = subprocess.run([sys.executable, "-m", "pipeline", "predict"], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "AQ_PROJECT_DIR": str(root)})
    assert proc.returncode == 1
    assert f"error: predict: {what} {path} is not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_summary_before_any_data_says_what_to_run(tmp_path):
    ctx = load(make_project(tmp_path / "fresh"))
    text = summary.run(ctx)
    assert "nothing to summarise yet" in text
    assert "make run" in text


def test_evaluation_report_without_scores_is_named(project):
    root, _, _ = project
    ctx = load(root)
    ctx.paths.evaluation_report.write_text(json.dumps({"version": "x"}))
    with pytest.raises(PipelineError, match=r"evaluation report .*evaluation.json lacks "
                                            r"\['scores', 'holdout_start'\]"):
        promote.run(ctx)


# ------------------------------------------------------------------ crashes and concurrency


def cli(root, *args, fault: str | None = None, timeout: float = 300):
    env = {"PATH": "/usr/bin:/bin", "AQ_PROJECT_DIR": str(root)}
    if fault:
        env["AQ_FAULT_KILL_AT"] = fault
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def new_candidate(root, seed: int) -> Context:
    ctx = load(root, {"promotion": {"min_skill": -1.0, "tolerance": 1.0},
                      "model": {"max_iter": 25, "random_state": seed}})
    train.run(ctx)
    evaluate.run(ctx)
    return ctx


def test_two_promotes_at_once_leave_one_winner_and_one_history_entry(project):
    root, _, _ = project
    ctx = new_candidate(root, seed=11)
    registry = Registry(ctx.paths)
    before = len(registry.history())

    procs = [cli(root, "promote") for _ in range(2)]
    results = [finish(p) for p in procs]

    assert [code for code, _ in results] == [0, 0], results
    logs = "\n".join(out for _, out in results)
    assert logs.count("is the new champion") == 1
    assert logs.count("passed the gate and stays champion") == 1
    history = registry.history()
    assert len(history) == before + 1
    assert history[-1]["version"] == registry.champion_version()


def test_a_train_killed_between_artifact_and_metadata_never_enters_the_registry(project):
    root, _, second = project
    new_candidate(root, seed=12)  # evaluation.json and metadata of a finished candidate
    code, _ = finish(cli(root, "train", fault="save_bundle:artifact_written"))
    assert code == -9  # killed at the write point: new artifact, old metadata
    ctx = load(root)
    versions = Registry(ctx.paths).versions()

    code, out = finish(cli(root, "promote"))

    assert code == 1
    assert "candidate in" in out
    assert "is incomplete or damaged" in out
    assert "run `python -m pipeline train` again" in out
    assert Registry(ctx.paths).versions() == versions
    assert Registry(ctx.paths).champion_version() == second


def test_a_promote_killed_while_registering_leaves_nothing_the_next_one_keeps(project):
    root, _, _ = project
    ctx = new_candidate(root, seed=13)
    code, _ = finish(cli(root, "promote", fault="register:staged"))
    assert code == -9
    assert list(ctx.paths.models_dir.glob(".register-*"))  # the killed copy's staging

    code, out = finish(cli(root, "promote"))

    assert code == 0, out
    assert not list(ctx.paths.models_dir.glob(".register-*"))
    assert "is the new champion" in out


def test_a_full_disk_during_train_leaves_no_temporary_file(project, tmp_path):
    """build/candidate on a 16 KiB tmpfs: the artifact cannot fit."""
    root, _, _ = project
    candidate = root / "build" / "candidate"
    shutil.rmtree(candidate)
    candidate.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs",
                              str(candidate)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        code, out = finish(cli(root, "train"))
        leftovers = sorted(p.name for p in candidate.iterdir())
    finally:
        subprocess.run(["umount", str(candidate)], check=True)
    assert code == 1
    assert "error: train: No space left on device" in out
    assert "build/candidate/model.skops" in out  # the file it could not write
    assert "Traceback" not in out
    assert not [name for name in leftovers if name.endswith(".tmp")], leftovers


def test_the_rows_repeat_per_model_as_np_tile_does():
    """forecaster._tile (the one-row path's repeat of each input column per model) is
    np.tile's copy for each column type a forecast row carries."""
    for values in (np.array(["a", "b"], dtype=object), np.array([0.5, np.nan]),
                   np.array(["2025-01-01T00", "2025-01-01T01"], dtype="datetime64[us]"),
                   np.zeros(0)):
        for m in (0, 1, 4):
            got = _tile(values, m)
            np.testing.assert_array_equal(got, np.tile(values, m))
            assert got.dtype == values.dtype
            assert not np.shares_memory(got, values)  # a copy, as np.tile gives
