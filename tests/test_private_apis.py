"""Private library APIs the code relies on, checked against the installed versions.

Two calls reach below a library's public API: DVC's read/write lock (``dvc.rwlock.rwlock``,
pipeline/io/storage.py) and Treelite's C predict entry point (``treelite.core._LIB``,
serving/predictor.py). Each is taken only on the versions it was written against, and a run on
any other version carries on without it (DVC: raw writes held against other writers only;
Treelite: the public ``treelite.gtil.predict``). Upgrading either library therefore fails
these tests, not a run: re-verify the call, then add the version.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import pytest

from pipeline.io import storage
from serving import predictor


@pytest.fixture
def fresh_dvc_api():
    storage.dvc_rwlock_api.cache_clear()
    yield
    storage.dvc_rwlock_api.cache_clear()


def dvc_project(root: Path) -> Path:
    """A directory DVC's lock treats as a repository (no ``dvc init``: no process)."""
    (root / ".dvc").mkdir(parents=True)
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    return raw


# ---------------------------------------------------------------- DVC


def test_installed_dvc_has_the_rwlock_the_code_was_written_against(fresh_dvc_api):
    import dvc
    from dvc.rwlock import rwlock

    assert dvc.__version__.split(".")[0] == storage.DVC_RWLOCK_MAJOR, dvc.__version__
    assert tuple(inspect.signature(rwlock).parameters) == storage.DVC_RWLOCK_PARAMETERS
    assert storage.dvc_rwlock_api() is not None


def test_the_raw_write_lock_is_one_dvc_itself_honours(tmp_path, fresh_dvc_api):
    """While a raw write holds it, DVC's own lock refuses a stage reading data/raw ("busy")."""
    from dvc.fs import localfs
    from dvc.lock import LockError
    from dvc.rwlock import rwlock

    raw = dvc_project(tmp_path)
    tmp_dir = str(tmp_path / ".dvc" / "tmp")
    as_a_stage = {"tmp_dir": tmp_dir, "fs": localfs, "cmd": "dvc repro train",
                  "read": [str(raw.resolve())], "write": [], "hardlink": False}
    with storage.raw_write_lock(raw, timeout_s=5), pytest.raises(LockError, match="busy"), \
            rwlock(**as_a_stage):
        pass
    with rwlock(**as_a_stage):  # released with the write
        pass


def test_another_dvc_lock_signature_is_not_called_and_the_write_goes_on(tmp_path, monkeypatch,
                                                                       fresh_dvc_api, caplog):
    import dvc.rwlock

    called = []

    def rwlock(tmp_dir, fs, cmd, read, write, hardlink, wait):  # a parameter more
        called.append(cmd)
        raise AssertionError("an unverified lock must not be called")

    monkeypatch.setattr(dvc.rwlock, "rwlock", rwlock)
    raw = dvc_project(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.io.storage"), \
            storage.raw_write_lock(raw, timeout_s=5):
        pass
    assert called == []
    assert "not the rwlock" in caplog.text
    assert "only against other writers" in caplog.text


def test_another_dvc_major_version_is_not_trusted(monkeypatch, fresh_dvc_api):
    import dvc

    monkeypatch.setattr(dvc, "__version__", "4.0.0")
    assert storage.dvc_rwlock_api() is None


# ---------------------------------------------------------------- Treelite


def two_leaf_model():
    """A one-split regression tree built with Treelite's public model builder (no training)."""
    from treelite.model_builder import Metadata, ModelBuilder, PostProcessorFunc, TreeAnnotation

    builder = ModelBuilder(
        threshold_type="float64", leaf_output_type="float64",
        metadata=Metadata(num_feature=2, task_type="kRegressor", average_tree_output=False,
                          num_target=1, num_class=[1], leaf_vector_shape=(1, 1)),
        tree_annotation=TreeAnnotation(num_tree=1, target_id=[0], class_id=[0]),
        postprocessor=PostProcessorFunc(name="identity"), base_scores=[0.0])
    builder.start_tree()
    builder.start_node(0)
    builder.numerical_test(feature_id=0, threshold=0.5, default_left=True, opname="<",
                           left_child_key=1, right_child_key=2)
    builder.end_node()
    for key, value in ((1, 1.25), (2, -3.5)):
        builder.start_node(key)
        builder.leaf(value)
        builder.end_node()
    builder.end_tree()
    return builder.commit()


ROWS = np.array([[0.0, 1.0], [1.0, 2.0], [np.nan, 0.0], [0.5, -1.0]])


def test_installed_treelite_is_a_version_the_fast_call_was_verified_on():
    import treelite
    from treelite.core import _LIB, _check_call  # noqa: F401 (the names the fast call takes)
    from treelite.gtil.gtil import GTILConfig

    assert predictor.treelite_fast_call_verified(treelite.__version__), treelite.__version__
    assert hasattr(_LIB, "TreeliteGTILPredict")
    assert hasattr(_LIB, "TreeliteGTILGetOutputShape")
    assert tuple(inspect.signature(GTILConfig).parameters) == ("predict_type", "nthread")
    gtil = predictor.Gtil(two_leaf_model())
    assert gtil._fast, gtil.reason


def test_the_fast_call_equals_the_public_predict():
    import treelite.gtil

    model = two_leaf_model()
    public = treelite.gtil.predict(model, ROWS, nthread=1).reshape(-1)
    assert public.tolist() == [1.25, -3.5, 1.25, -3.5]
    np.testing.assert_array_equal(predictor.Gtil(model)(ROWS), public)


def test_another_treelite_version_uses_the_public_predict(monkeypatch):
    import treelite

    monkeypatch.setattr(treelite, "__version__", "5.0.0")
    gtil = predictor.Gtil(two_leaf_model())
    assert not gtil._fast
    assert "5.0.0" in gtil.reason
    np.testing.assert_array_equal(gtil(ROWS), [1.25, -3.5, 1.25, -3.5])
