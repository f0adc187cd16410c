"""A candidate records what it was built from, and the gate refuses one that covers less.

A store caught up half-way gives a holdout of the locations that got furthest: the gate
compares each location's extents with the champion's. A predict run forecasts with the model
pinned at its start, whatever is promoted meanwhile.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from pipeline.context import Context
from pipeline.io.registry import Registry
from pipeline.settings import Settings
from pipeline.steps import ingest, predict
from pipeline.steps.forecasting import clear_pending
from pipeline.steps.promote import coverage_refusals
from tests.conftest import make_project
from tests.steps.test_pipeline_steps import retrain

pytestmark = pytest.mark.slow  # trains models


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("settled") / "project",
                        {"horizons": [1, 6], "promotion": {"min_skill": -1.0, "tolerance": 1.0}})
    ctx = Context.load(root, settings=Settings())
    ingest.run(ctx)
    return root, retrain(ctx)


def copy(trained, tmp_path) -> Context:
    root = tmp_path / "project"
    shutil.copytree(trained[0], root)
    return Context.load(root, settings=Settings())


def test_the_promotion_record_names_the_data_version_and_each_locations_extents(trained):
    root, report = trained
    assert report["promoted"]
    version = report["data_version"]
    assert version["raw_content_sha256"]
    quality = json.loads((root / "reports/quality.json").read_text())
    assert quality["data_version"] == version  # what preprocess read, not the store later
    extents = report["location_extents"]
    assert set(extents) == {"berlin", "delhi"}
    for loc, e in extents.items():
        assert e["holdout_rows"] > 0, loc
        assert e["train_last_hour"] < e["holdout_first_hour"] <= e["holdout_last_hour"]
        assert e["holdout_last_hour"].startswith("2025-02-28T2"), loc
    meta = Registry(ctx_paths(root)).metadata(report["candidate"])
    assert meta["location_extents"] == extents
    assert meta["data_version"] == version


def ctx_paths(root):
    return Context.load(root, settings=Settings()).paths


def test_a_holdout_without_a_location_the_champion_serves_is_refused(trained, tmp_path):
    """The torn store of a half-way catch-up: delhi's February never arrived."""
    ctx = copy(trained, tmp_path)
    champion = Registry(ctx.paths).champion_version()
    (ctx.paths.raw_dir / "source=synthetic/location=delhi/month=2025-02.parquet").unlink()
    report = retrain(ctx)
    assert not report["promoted"]
    assert any(r.startswith("holdout leaves out 1 location(s) the champion serves: delhi")
               for r in report["refusals"]), report["refusals"]
    assert report["location_extents"]["delhi"]["holdout_rows"] == 0
    assert Registry(ctx.paths).champion_version() == champion


def test_data_ending_before_the_champions_is_refused(trained, tmp_path):
    ctx = copy(trained, tmp_path)
    for loc in ("berlin", "delhi"):  # a week less for both: the holdout still has both
        part = ctx.paths.raw_dir / f"source=synthetic/location={loc}/month=2025-02.parquet"
        frame = pd.read_parquet(part)
        frame[frame["time"] < pd.Timestamp("2025-02-21", tz="UTC")].to_parquet(part)
    report = retrain(ctx)
    assert not report["promoted"]
    assert any(r.startswith("data ends before the champion's for 2 location(s)")
               for r in report["refusals"]), report["refusals"]


def test_coverage_is_not_compared_with_a_champion_that_predates_extents():
    candidate = {"location_extents": {"berlin": {"holdout_rows": 5}}}
    refusals, note = coverage_refusals(candidate, {"version": "old"})
    assert refusals == []
    assert "no per-location extents" in note


def test_a_predict_run_finishes_with_the_model_it_pinned_when_a_promotion_lands(trained,
                                                                              tmp_path):
    """Batches made with A, then B becomes champion: finalising with A publishes A's
    forecasts; finalising for the champion recomputes the batches with B (no failure a retry
    could not change)."""
    ctx = copy(trained, tmp_path)
    registry = Registry(ctx.paths)
    first = registry.champion_version()
    second = "B-" + first  # the same artifact under another version
    shutil.copytree(registry.version_dir(first), registry.version_dir(second))
    meta = json.loads((registry.version_dir(second) / "metadata.json").read_text())
    (registry.version_dir(second) / "metadata.json").write_text(
        json.dumps({**meta, "version": second}))

    clear_pending(ctx)
    for loc in ctx.params.location_ids:
        predict.run(ctx, locations=loc, model=first)
    assert registry.promote(second)  # lands between the batches and the finalisation
    published = predict.run(ctx, finalize_only=True, model=first)
    assert published["model_version"] == first

    for loc in ctx.params.location_ids:
        predict.run(ctx, locations=loc, model=first)
    healed = predict.run(ctx, finalize_only=True)  # the champion: B, batches were A's
    assert healed["model_version"] == second
    latest = pd.read_parquet(ctx.paths.latest_predictions)
    assert set(latest["model_version"]) == {second}
