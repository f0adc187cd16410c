"""One redaction for every secret the project holds: log records, exception messages, errors.

Why one place: a key can reach output through many doors (a provider echoing
the request in a 200 body, a truncated snippet, urllib3's DEBUG request line,
a traceback). Secrets are registered once (every settings object registers each
``SecretStr`` it holds, :mod:`pipeline.settings`; the HTTP client the keys it
sends); from then on

* every :class:`~pipeline.errors.PipelineError` message is redacted when built,
* a filter on every handler of the root logger (and on the HTTP libraries'
  loggers) rewrites records, their arguments and their traceback text,
* the CLI's ``error: <step>: ...`` line is redacted.

Redaction happens before any truncation, so a cut can never leave half a key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

REDACTED = "***"
# shorter values are not treated as secrets: replacing "1" everywhere would wreck every message
MIN_SECRET_LENGTH = 4

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
# urllib3 logs full request lines (query string included) at DEBUG
CHATTY_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "requests")


def register_secret(secret: object) -> None:
    """Redact ``secret`` (a str or a pydantic ``SecretStr``) from now on, and filter logs."""
    value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    with _LOCK:
        _SECRETS.add(value)
    install_log_redaction()


def redact(text: object, extra: Iterable[str] = ()) -> str:
    """``text`` with every registered (and every ``extra``) secret replaced by ``***``."""
    out = str(text)
    secrets = {*_SECRETS, *(e for e in extra if e and len(e) >= MIN_SECRET_LENGTH)}
    for secret in sorted(secrets, key=len, reverse=True):
        out = out.replace(secret, REDACTED)
    return out


class RedactingFilter(logging.Filter):
    """Rewrites a record whose message, arguments or traceback would show a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logging's to report
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of ``logger`` (root by default) and the HTTP loggers.

    Idempotent; call it again after adding handlers (the CLI does after
    ``basicConfig``; Airflow tasks get it through ``Settings.from_env``).
    """
    targets = [logger or logging.getLogger()]
    targets += [logging.getLogger(name) for name in CHATTY_LOGGERS]
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
        for handler in target.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
