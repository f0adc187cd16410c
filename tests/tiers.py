"""Test tiers that say what a test starts, and a check that keeps them honest.

``make test-fast`` runs the tests marked with none of :data:`TIER_MARKS`: pure logic and
single steps in this process. Such a test may not start a process (``subprocess``,
``multiprocessing``, ``os.fork``: a CLI, DVC, git, promtool, a server, a browser, a worker
pool) nor fit a model (scikit-learn's gradient boosting): the check below fails it, naming
what it started and the marker to add, in every run (``make test`` too, so a test is marked
before the fast tier gets slow). It watches a test's setup (fixtures included: a session
fixture counts for the first test that asks for it) and its call, not teardown (stopping what
a fixture started is not starting it).

A test marked ``process``, ``service`` or ``browser`` may start processes; ``train`` may fit;
``slow``, ``stack``, ``airflow`` and ``network`` tests are out of the fast tier whatever they
start (their files carry the specific marker too where they start something in this process).

A fast-tier test also has a CPU budget (:data:`FAST_TEST_CPU_S` per phase, CPU time so a busy
machine does not trip it): one that needs more is slow, and says so.
"""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

PROCESS_MARKS = {"process", "service", "browser"}
TRAIN_MARKS = {"train"}
OUT_OF_FAST_TIER = {"slow", "stack", "airflow", "network"}
TIER_MARKS = PROCESS_MARKS | TRAIN_MARKS | OUT_OF_FAST_TIER  # described in pyproject.toml
# CPU one phase (setup or call) of a fast-tier test may take: the largest took 1.6 s when this
# was set, the ~420 of them ~25 s together (the tier's minute on 2 cores, with start-up)
FAST_TEST_CPU_S = 5.0


class UnmarkedStart(BaseException):
    """Raised where an unmarked test starts a process or fits: a BaseException, so no
    ``except Exception`` fallback in the code under test hides it."""


class Watch:
    """What the running test may start, and what it started that it may not."""

    def __init__(self) -> None:
        self.item: pytest.Item | None = None
        self.may_start = True
        self.may_train = True
        self.found: list[str] = []
        self._lock = threading.Lock()

    def refuse(self, what: str, marker: str) -> None:
        with self._lock:
            message = (f"{what}: {self.item.nodeid if self.item else '?'} is not marked "
                       f"{marker} (tests/tiers.py)")
            self.found.append(message)
        raise UnmarkedStart(message)

    def process(self, what: str) -> None:
        if self.item is not None and not self.may_start:
            self.refuse(f"started {what}", "'process' (or 'service', 'browser')")

    def fit(self, what: str) -> None:
        if self.item is not None and not self.may_train:
            self.refuse(f"fitted {what}", "'train'")


WATCH = Watch()


def _wrap(owner: Any, name: str, describe: Callable[..., str], check: Callable[[str], None]):
    original = getattr(owner, name)

    def guarded(*args, **kwargs):
        check(describe(*args, **kwargs))
        return original(*args, **kwargs)

    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(owner, name, guarded)


# a library's one-off look at the machine, not the test's work: joblib/loky count physical
# cores with lscpu when scikit-learn first sizes its OpenMP threads
PROBES = {"lscpu"}


def _argv(popen, args, *rest, **kwargs) -> str:
    text = args if isinstance(args, str) else " ".join(map(str, args))
    return f"a process ({text[:120]})"


def _popen_check(what: str) -> None:
    program = what.removeprefix("a process (").split(" ", 1)[0].rstrip(")")
    if os.path.basename(program) not in PROBES:
        WATCH.process(what)


def install() -> None:
    """Wrap the doors to a new process and to a fit (once per test process)."""
    _wrap(subprocess.Popen, "_execute_child", _argv, _popen_check)
    _wrap(multiprocessing.process.BaseProcess, "start",
          lambda proc: f"a {type(proc).__name__} ({proc.name})", WATCH.process)
    for name in ("fork", "forkpty"):  # subprocess's own spawn goes through _execute_child
        if hasattr(os, name):
            _wrap(os, name, lambda *a, _n=name, **k: f"os.{_n}", WATCH.process)
    from sklearn.ensemble._forest import BaseForest
    from sklearn.ensemble._gb import BaseGradientBoosting
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import (
        BaseHistGradientBoosting,
    )

    for family in (BaseHistGradientBoosting, BaseGradientBoosting, BaseForest):
        _wrap(family, "fit", lambda model, X, *a, **k: f"a {type(model).__name__} on {len(X)} "
              "rows", WATCH.fit)


def tier_marks(item: pytest.Item) -> set[str]:
    return {mark.name for mark in item.iter_markers()} & TIER_MARKS


def watching(item: pytest.Item) -> Iterator[None]:
    marks = tier_marks(item)
    WATCH.item = item
    WATCH.may_start = bool(marks & (PROCESS_MARKS | OUT_OF_FAST_TIER))
    WATCH.may_train = bool(marks & (TRAIN_MARKS | OUT_OF_FAST_TIER))
    WATCH.found.clear()
    started = time.process_time()
    try:
        yield
    finally:
        found, WATCH.item = list(WATCH.found), None
        WATCH.found.clear()
    if found:  # also what was refused in a thread, or caught and hidden by the code
        pytest.fail("\n".join(dict.fromkeys(found)), pytrace=False)
    used = time.process_time() - started  # CPU, not wall: the same on a busy machine
    if not marks and used > FAST_TEST_CPU_S:
        pytest.fail(f"{item.nodeid} used {used:.1f} s of CPU in one phase, more than a fast-tier "
                    f"test may ({FAST_TEST_CPU_S:g} s): make it cheaper or mark it 'slow' "
                    "(tests/tiers.py)", pytrace=False)
