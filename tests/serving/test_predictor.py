"""Served predictions equal Pipeline.predict; what Treelite cannot take falls back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.context import Context
from pipeline.core.keys import ModelKey
from pipeline.io.feature_store import FeatureStore
from pipeline.io.registry import Registry, save_bundle
from pipeline.settings import ServingSettings, Settings
from serving import metrics
from serving.predictor import (
    SKLEARN,
    TREELITE,
    ServedModel,
    build_predictor,
    fuse,
    fused_difference,
    verification_rows,
)
from serving.state import ServingState


@pytest.fixture(scope="module")
def champion(served_project):
    return Registry(served_project.paths).load_champion()


@pytest.fixture(scope="module")
def feature_table(served_project, champion) -> pd.DataFrame:
    return FeatureStore(served_project.paths.features).read()


def test_served_predictions_equal_pipeline_predict_on_every_feature_row(served_project,
                                                                        champion, feature_table):
    """Every row of the training feature table (~2,800 per location, gaps and warm-up NaNs)."""
    state = ServingState(Context.load(served_project.root, settings=Settings()),
                         ServingSettings())
    model = state.compile(champion.metadata, champion.models)
    assert {p.engine for p in model.predictors.values()} == {TREELITE}
    rows = feature_table[list(model.features)].to_numpy(dtype=np.float64)
    assert len(rows) > 2000
    assert np.isnan(rows).any()  # missing values take the trees' missing branches
    served = model.predict(rows)
    for key, pipeline in champion.models.items():
        expected = pipeline.predict(feature_table)
        np.testing.assert_allclose(served[key], expected, rtol=0, atol=1e-9, err_msg=str(key))


def test_every_compiled_model_is_evaluated_in_one_treelite_call_and_exact(served_project,
                                                                          champion,
                                                                          feature_table):
    """The fused trees (every model, each member of a mean, one GTIL call) equal each model's
    own compiled trees and Pipeline.predict; a row alone gives what it gives in a batch; a
    difference is caught (the trees of one model renumbered wrongly)."""
    state = ServingState(Context.load(served_project.root, settings=Settings()),
                         ServingSettings())
    model = state.compile(champion.metadata, champion.models)
    assert model.fused is not None
    members = [m for p in model.predictors.values() for m in getattr(p, "members", None) or [p]]
    assert model.fused.runner._width == sum(m._tree.num_tree for m in members)
    rows = feature_table[list(model.features)].to_numpy(dtype=np.float64)[-300:]
    fused = model.predict(rows)
    own = ServedModel(model.champion, model.predictors).predict(rows)  # one call per model
    for key, pipeline in champion.models.items():
        np.testing.assert_allclose(fused[key], own[key], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(fused[key], pipeline.predict(feature_table.iloc[-300:]),
                                   rtol=0, atol=1e-9, err_msg=str(key))
        alone = np.array([model.predict(row)[key][0] for row in rows[:20]])
        np.testing.assert_array_equal(alone, fused[key][:20])
    assert fused_difference(model.fused, model.predictors, model.features, rows) == ""
    model.fused.bases[-1] += 0.01  # one member's trees now say something else
    assert "against" in fused_difference(model.fused, model.predictors, model.features, rows)


def test_fused_trees_invert_each_member_as_its_own_predictor_does(served_project, champion,
                                                                  feature_table):
    """The fused trees invert every member of a form in one call and average by key: the
    same floats as each member's own inverse (``Predictor._finish``) then ``np.mean`` of a
    mean's members, bit for bit, rows with a missing anchor included."""
    state = ServingState(Context.load(served_project.root, settings=Settings()),
                         ServingSettings())
    model = state.compile(champion.metadata, champion.models)
    fused = model.fused
    rows = feature_table[list(model.features)].to_numpy(dtype=np.float64)[-200:].copy()
    anchors = {a for _, _, a in fused.members if a >= 0}
    assert anchors
    rows[::7, sorted(anchors)] = np.nan  # the fallback branch
    assert_fused_inverts_member_by_member(fused, list(model.features), rows)


def assert_fused_inverts_member_by_member(fused, features: list[str], rows: np.ndarray) -> None:
    """``fused.predict`` is each member's own inverse of its trees' sum, then np.mean."""
    raw = np.add.reduceat(fused.runner(rows), fused.starts, axis=1) + fused.bases
    by_key: dict = {}
    for j, (k, member, _) in enumerate(fused.members):
        mine = rows[:, [features.index(c) for c in member.columns]]
        by_key.setdefault(fused.keys[k], []).append(member._finish(mine, raw[:, j]))
    got = fused.predict(rows)
    assert list(got) == list(by_key)
    for key, found in by_key.items():
        expected = found[0] if len(found) == 1 else np.mean(found, axis=0)
        np.testing.assert_array_equal(got[key], expected, err_msg=str(key))


def test_one_row_at_a_time_equals_the_batch_of_rows(champion, feature_table):
    features = champion.metadata["features"]
    pipeline = champion.models[("pm2_5", 6)]
    predictor = build_predictor("pm2_5", 6, pipeline, features,
                                feature_table[features].to_numpy(dtype=np.float64)[-50:])
    # a model takes its own inputs (the common ones and its horizon's target-hour ones)
    assert len(predictor.columns) < len(features)
    rows = feature_table[predictor.columns].to_numpy(dtype=np.float64)[-50:]
    one_by_one = np.array([predictor.predict(row)[0] for row in rows])
    np.testing.assert_array_equal(one_by_one, predictor.predict(rows))


@pytest.mark.train
@pytest.mark.parametrize("form", ["log_change", "log_level", "level", "change"])
@pytest.mark.parametrize("loss", ["squared_error", "absolute_error"])
def test_every_target_form_the_search_can_pick_is_compiled_and_exact(champion, feature_table,
                                                                     form, loss):
    """The per-horizon search (issue 12) picks a form and a loss per model: each one the trees
    can give is served by Treelite, equal to Pipeline.predict on every row."""
    from pipeline.core.models import build_estimator

    features = champion.metadata["features"]
    train = feature_table.iloc[:3000]
    label = train["y__pm2_5__h6"]
    keep = label.notna().to_numpy()
    model = build_estimator(features, "pm2_5", {"form": form, "loss": loss, "max_iter": 20})
    model.fit(train[features][keep], label[keep])
    rows = feature_table[features].to_numpy(dtype=np.float64)
    predictor = build_predictor("pm2_5", 6, model, features, rows[:200])
    assert predictor.engine == TREELITE, predictor.reason
    np.testing.assert_allclose(predictor.predict(rows), model.predict(feature_table),
                               rtol=1e-12, atol=1e-9)


@pytest.mark.train  # fits the two members of the mean
def test_a_mean_of_models_is_compiled_member_by_member_and_exact(champion, feature_table,
                                                                tmp_path):
    """model.selection.ensemble: a MeanRegressor of differently configured models is served by
    Treelite (each member compiled), equal to its predict; it saves and loads as a trusted
    type."""
    from pipeline.core.models import MeanRegressor, build_estimator
    from pipeline.io.registry import load_bundle

    features = champion.metadata["features"]
    train = feature_table.iloc[:3000]
    label = train["y__pm2_5__h6"]
    keep = label.notna().to_numpy()
    members = [build_estimator(features, "pm2_5", settings).fit(train[features][keep],
                                                                 label[keep])
               for settings in ({"form": "log_change", "loss": "absolute_error", "max_iter": 15},
                                {"form": "change", "loss": "squared_error", "max_iter": 10,
                                 "max_leaf_nodes": 7})]
    mean = MeanRegressor(members)
    save_bundle(tmp_path / "bundle", {("pm2_5", 6): mean}, {"features": features})
    mean = load_bundle(tmp_path / "bundle").models[("pm2_5", 6)]
    rows = feature_table[features].to_numpy(dtype=np.float64)
    predictor = build_predictor("pm2_5", 6, mean, features, rows[:200])
    assert predictor.engine == TREELITE, predictor.reason
    expected = mean.predict(feature_table)
    np.testing.assert_allclose(expected, np.mean([m.predict(feature_table) for m in members],
                                                 axis=0), rtol=1e-12)
    np.testing.assert_allclose(predictor.predict(rows), expected, rtol=1e-12, atol=1e-9)
    # fused with a one-model key: two target forms, a mean and a single model in one call
    alone = build_predictor("pm2_5", 1, members[1], features, rows[:200])
    fused = fuse({ModelKey("pm2_5", 1): alone, ModelKey("pm2_5", 6): predictor}, features,
                 rows[:200])
    assert fused is not None
    assert len(fused._forms) == 2
    with_gaps = rows[:300].copy()
    with_gaps[::5, [features.index("pm2_5_log")]] = np.nan  # the anchor's fallback
    assert_fused_inverts_member_by_member(fused, list(features), with_gaps)
    np.testing.assert_allclose(fused.predict(rows)[ModelKey("pm2_5", 6)], expected,
                               rtol=1e-12, atol=1e-9)
    # a member the fast path cannot take: the whole mean is served by scikit-learn, and says so
    forest = Pipeline([("select", members[1].steps[0][1]),
                       ("model", RandomForestRegressor(n_estimators=3, random_state=0))])
    forest.fit(train[features][keep], label[keep])
    slow = MeanRegressor([members[0], forest])
    predictor = build_predictor("pm2_5", 6, slow, features, rows[:200])
    assert predictor.engine == SKLEARN
    assert "a member is not compilable" in predictor.reason
    frame = pd.DataFrame(rows[:100], columns=features)
    np.testing.assert_array_equal(predictor.predict(frame[predictor.columns].to_numpy()),
                                  slow.predict(frame))


def wrapped(pipeline: Pipeline) -> Pipeline:
    """The champion's Pipeline behind an extra step: a structure the fast path does not know."""
    select, model = pipeline.steps
    scaler = StandardScaler().set_output(transform="pandas")
    return Pipeline([select, ("scale", scaler), model])


@pytest.mark.train
def test_a_structure_treelite_cannot_take_is_served_by_scikit_learn(champion, feature_table):
    features = champion.metadata["features"]
    rows = feature_table[features].to_numpy(dtype=np.float64)
    frame = feature_table[features].iloc[:3000]
    forest = Pipeline([("select", champion.models[("pm2_5", 1)].steps[0][1]),
                       ("model", RandomForestRegressor(n_estimators=5, random_state=0))])
    forest.fit(frame, feature_table["y__pm2_5__h1"].iloc[:3000].fillna(0))
    predictor = build_predictor("pm2_5", 1, forest, features, rows[:100])
    assert predictor.engine == SKLEARN
    assert "final step is RandomForestRegressor" in predictor.reason
    np.testing.assert_array_equal(predictor.predict(rows[:200]),
                                  forest.predict(feature_table.iloc[:200]))


def test_an_unknown_champion_structure_is_served_and_says_so(served_project, champion,
                                                              feature_table, tmp_path):
    """Through the registry (sha256 checked): one model falls back, the metric shows which."""
    models = dict(champion.models)
    scaled = Pipeline(champion.models[("pm2_5", 12)].steps)  # same fitted steps...
    scaled.steps.insert(1, ("noop", "passthrough"))  # ...behind a step it does not know
    models[("pm2_5", 12)] = scaled
    metadata = {k: v for k, v in champion.metadata.items()
                if k not in ("sha256", "created_at", "version")}
    saved = save_bundle(tmp_path / "bundle", models, metadata)
    registry = Registry(served_project.paths)
    version = registry.register(tmp_path / "bundle")
    bundle = registry.load(version)
    state = ServingState(Context.load(served_project.root, settings=Settings()),
                         ServingSettings())
    model = state.compile(bundle.metadata, bundle.models)
    assert model.engines == {"pm2_5": {"1": TREELITE, "6": TREELITE, "12": SKLEARN,
                                       "24": TREELITE}}
    assert model.fused is None  # one model is scikit-learn's: each model is called by itself
    rows = feature_table[list(model.features)].to_numpy(dtype=np.float64)[-300:]
    served = model.predict(rows)
    np.testing.assert_allclose(served[("pm2_5", 12)],
                               scaled.predict(feature_table.iloc[-300:]), rtol=0, atol=1e-9)
    metrics.set_served(saved["version"], None, [(t, h, model.predictors[(t, h)].engine == SKLEARN)
                                                for t, h in model.predictors], 0.0)
    sample = metrics.MODEL_SKLEARN_FALLBACK.labels(target="pm2_5", horizon="12")
    assert sample._value.get() == 1
    assert metrics.MODEL_SKLEARN_FALLBACK.labels(target="pm2_5", horizon="6")._value.get() == 0


def test_verification_rows_cover_missing_values_and_known_locations(champion):
    features = champion.metadata["features"]
    codes = champion.metadata["location_codes"]
    rows = verification_rows(features, None, codes, n=500)
    assert np.isnan(rows).mean() == pytest.approx(0.2, abs=0.03)
    code = rows[:, features.index("location_code")]
    assert set(code[~np.isnan(code)]) == set(map(float, codes.values()))
