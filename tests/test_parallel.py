"""Worker pools: none below two processes, none where a process may not have children."""

from __future__ import annotations

import multiprocessing

import pytest

from pipeline.parallel import worker_pool

pytestmark = pytest.mark.process


def _noop() -> None:
    pass


def _pool_inside(queue) -> None:
    try:
        with worker_pool(2, _noop, (), plain_logs=True) as pool:
            queue.put(("ok", pool is None))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(exc)))


def test_a_daemonic_process_runs_the_work_inline_instead_of_failing():
    """Airflow's Celery task processes are daemonic: preprocess's finalisation rebuilding stale
    batches there failed with "daemonic processes are not allowed to have children"."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_pool_inside, args=(queue,), daemon=True)
    child.start()
    assert queue.get(timeout=60) == ("ok", True)
    child.join(timeout=30)


def test_two_processes_get_a_pool_and_one_gets_none():
    with worker_pool(1, _noop, (), plain_logs=True) as pool:
        assert pool is None
    with worker_pool(2, _noop, (), plain_logs=True) as pool:
        assert pool is not None
        assert pool.submit(sum, [1, 2]).result(timeout=60) == 3
