"""Worker processes for the CPU-bound parts of a step (synthetic ingestion, feature building).

Each worker is a fresh interpreter (``spawn``: no threads or locks inherited from the parent,
and the parent waits for it, so its CPU time counts as the step's). A worker logs like the
step (same format, secrets redacted) to the same stderr. With ``processes`` below 2 nothing is
started and the caller runs its work inline: one code path either way.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor


def start_worker_logging(plain: bool, level: int) -> None:
    from pipeline.pywarnings import relay_warnings_once
    from pipeline.redaction import install_log_redaction

    logging.basicConfig(level=level, format=("" if plain else "%(asctime)s ")
                        + "%(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    relay_warnings_once()


def _start(plain: bool, level: int, initializer: Callable, initargs: tuple) -> None:
    start_worker_logging(plain, level)
    initializer(*initargs)


@contextlib.contextmanager
def worker_pool(processes: int, initializer: Callable, initargs: tuple, *, plain_logs: bool
                ) -> Iterator[ProcessPoolExecutor | None]:
    """``processes`` workers, each set up once by ``initializer(*initargs)``; None below 2, and
    None inside a daemonic process (a Celery or multiprocessing pool's task process, which may
    not have children: the work runs inline there, as it does with one process)."""
    if processes < 2 or multiprocessing.current_process().daemon:
        yield None
        return
    with ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
        initargs=(plain_logs, logging.getLogger().level, initializer, initargs),
    ) as pool:
        yield pool
