"""Python warnings as one log line each, at WARNING, once per distinct message.

A warning printed the stdlib way is two lines on stderr (the message and the source
line), which a task log relays as two INFO lines, and a warning raised in a loop (or
after another library has reset the filters) is printed again and again. Routed through
logging instead, it is one ``WARNING py.warnings: <Category>: <message> (<file>:<line>)``
line, at its level in a task log, and a message already said is not repeated.
"""

from __future__ import annotations

import logging
import threading
import warnings

LOGGER = "py.warnings"
_SEEN: set[tuple[str, str]] = set()
_LOCK = threading.Lock()


def _log_once(message, category, filename, lineno, file=None, line=None) -> None:
    key = (category.__name__, str(message))
    with _LOCK:
        if key in _SEEN:
            return
        _SEEN.add(key)
    logging.getLogger(LOGGER).warning("%s: %s (%s:%s)", category.__name__, message,
                                      filename, lineno)


def relay_warnings_once(*_args, **_kwargs) -> None:
    """Route every Python warning to the ``py.warnings`` logger, once per distinct message.

    Idempotent; callable as an Airflow callback (it ignores the context it is given).
    """
    warnings.showwarning = _log_once


def seen_messages() -> set[tuple[str, str]]:
    """(category, message) of every warning relayed so far in this process."""
    with _LOCK:
        return set(_SEEN)
