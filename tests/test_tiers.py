"""The tier check of tests/tiers.py stops an unmarked test that starts a process or fits, and
lets a marked one through. These tests are unmarked on purpose: the check is live here."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import threading
import time

import pytest
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

from tests import tiers


def forgive() -> list[str]:
    """What this test was stopped doing on purpose: returned, and not a finding of the test."""
    found = list(tiers.WATCH.found)
    tiers.WATCH.found.clear()
    return found


def test_an_unmarked_test_that_starts_a_process_is_stopped_naming_the_marker():
    with pytest.raises(tiers.UnmarkedStart, match=r"started a process \(true\).*not marked "
                                                  r"'process'"):
        subprocess.run(["true"], check=True)
    with pytest.raises(tiers.UnmarkedStart, match="started a .*Process"):
        multiprocessing.get_context("fork").Process(target=print).start()
    with pytest.raises(tiers.UnmarkedStart, match="started os.fork"):
        os.fork()
    found = forgive()
    assert len(found) == 3
    assert all("test_tiers.py::test_an_unmarked_test_that_starts" in f for f in found)


def test_an_unmarked_test_that_fits_is_stopped():
    with pytest.raises(tiers.UnmarkedStart, match="fitted a HistGradientBoostingRegressor on 2 "
                                                  "rows.*not marked 'train'"):
        HistGradientBoostingRegressor(max_iter=1).fit([[0.0], [1.0]], [0.0, 1.0])
    with pytest.raises(tiers.UnmarkedStart, match="fitted a RandomForestRegressor"):
        RandomForestRegressor(n_estimators=1).fit([[0.0], [1.0]], [0.0, 1.0])
    assert len(forgive()) == 2


def test_a_start_caught_by_the_code_under_test_is_still_found():
    """A process refused in a thread (or under a broad ``except``) is recorded: the phase then
    fails even though nothing reached the test."""

    def quietly():
        try:
            subprocess.run(["true"], check=False)
        except BaseException:  # noqa: BLE001 (the code under test swallowing everything)
            pass

    thread = threading.Thread(target=quietly)
    thread.start()
    thread.join()
    assert len(forgive()) == 1


@pytest.mark.process
def test_a_process_marked_test_may_start_one_but_not_fit():
    assert subprocess.run(["true"], check=False).returncode == 0
    with pytest.raises(tiers.UnmarkedStart, match="not marked 'train'"):
        HistGradientBoostingRegressor(max_iter=1).fit([[0.0], [1.0]], [0.0, 1.0])
    assert len(forgive()) == 1


@pytest.mark.train
def test_a_train_marked_test_may_fit():
    model = HistGradientBoostingRegressor(max_iter=1, min_samples_leaf=1)
    assert model.fit([[0.0], [1.0]], [0.0, 1.0]).n_iter_ == 1


def test_a_fast_test_over_its_cpu_budget_fails_naming_slow():
    class Unmarked:
        nodeid = "tests/x.py::test_heavy"

        def iter_markers(self):
            return iter(())

    saved = (tiers.WATCH.item, tiers.WATCH.may_start, tiers.WATCH.may_train,
             tiers.FAST_TEST_CPU_S)
    tiers.FAST_TEST_CPU_S = 0.02
    phase = tiers.watching(Unmarked())
    next(phase)
    start = time.process_time()
    while time.process_time() - start < 0.05:
        pass
    try:
        with pytest.raises(pytest.fail.Exception, match=r"test_heavy used 0\.\d s of CPU.*"
                                                        r"mark it 'slow'"):
            next(phase)
    finally:
        (tiers.WATCH.item, tiers.WATCH.may_start, tiers.WATCH.may_train,
         tiers.FAST_TEST_CPU_S) = saved
