"""The one HTTP client every live source uses.

Why one client: every provider call must have a deadline, the same retry rules
(connection errors, timeouts, 429 and 5xx are retried with exponential backoff
and jitter, honouring ``Retry-After``; other 4xx are not, and the error quotes
the provider's reason), a per-provider rate limit, request figures for the
metrics reporter, and API keys that never reach a log line or an exception.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from pipeline.io.sources.base import SourceError, SourceStats
from pipeline.settings import Secret

log = logging.getLogger(__name__)

REDACTED = "***"
USER_AGENT = "aq-forecast/0.1 (+https://github.com/; ingestion)"


# ------------------------------------------------------------------ errors


class HttpSourceError(SourceError):
    """A provider call failed; ``retryable`` says whether trying later may help."""

    def __init__(self, message: str, *, provider: str, status: int | None = None,
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retryable = retryable


class ProviderRejected(HttpSourceError):
    """A 4xx other than 429: the request itself is wrong (bad key, bad parameter)."""

    @property
    def is_auth(self) -> bool:
        return self.status in (401, 403)


class RetriesExhausted(HttpSourceError):
    """Timeouts, connection errors, 429 or 5xx on every attempt."""


class ResponseFormatError(HttpSourceError):
    """The body is not JSON, or not the documented shape (the message says what is wrong)."""


# ------------------------------------------------------------------ secrets

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_FILTER_INSTALLED = False
# urllib3 logs full request lines (query string included) at DEBUG
_CHATTY_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "requests")


class _RedactingFilter(logging.Filter):
    """Rewrites any record that would print a registered secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


def register_secret(secret: Secret | str | None) -> None:
    """Make ``secret`` redacted from our messages and from the HTTP libraries' log lines."""
    global _FILTER_INSTALLED
    value = secret.reveal() if isinstance(secret, Secret) else secret
    if not value:
        return
    with _SECRETS_LOCK:
        _SECRETS.add(value)
        if not _FILTER_INSTALLED:
            for name in _CHATTY_LOGGERS:
                logging.getLogger(name).addFilter(_RedactingFilter())
            _FILTER_INSTALLED = True


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every registered (and every ``extra``) secret replaced by ``***``."""
    out = str(text)
    for secret in sorted({*_SECRETS, *(e for e in extra if e)}, key=len, reverse=True):
        out = out.replace(secret, REDACTED)
    return out


# ------------------------------------------------------------------ rate limit


class RateLimiter:
    """At most ``rate`` request starts per second, shared by every thread using it."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for the next slot; return the seconds waited."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        wait = start - now
        if wait > 0:
            self._sleep(wait)
        return wait


_LIMITERS: dict[tuple[str, float], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(provider: str, rate: float) -> RateLimiter:
    """The process-wide limiter of a provider, so separate source objects share one budget."""
    with _LIMITERS_LOCK:
        key = (provider, float(rate))
        if key not in _LIMITERS:
            _LIMITERS[key] = RateLimiter(rate)
        return _LIMITERS[key]


# ------------------------------------------------------------------ retries


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0

    @classmethod
    def of(cls, config) -> RetryPolicy:
        """The policy a source's params.yaml section sets (same four field names)."""
        return cls(
            max_retries=config.max_retries,
            backoff_s=config.backoff_s,
            max_backoff_s=config.max_backoff_s,
            max_retry_after_s=config.max_retry_after_s,
        )

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with equal jitter: half fixed, half random."""
        base = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        return base / 2 + rng.uniform(0, base / 2)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delay-seconds or an HTTP-date; None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def provider_reason(body: bytes, limit: int = 300) -> str:
    """The provider's own words: Open-Meteo ``reason``, OpenWeatherMap ``message``, or the text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("reason", "message", "error_description", "error", "detail"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value[:limit]
    return (text[:limit] + ("..." if len(text) > limit else "")) or "(empty body)"


# ------------------------------------------------------------------ client


class _Deadline(Exception):
    """The whole response did not arrive within the timeout."""


class HttpClient:
    """GET JSON from one provider with deadline, retries, rate limit, stats and redaction."""

    def __init__(
        self,
        provider: str,
        *,
        timeout_s: float,
        retry: RetryPolicy,
        requests_per_second: float,
        secrets: Iterable[Secret | str] = (),
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        limiter: RateLimiter | None = None,
        limiter_key: str | None = None,
    ) -> None:
        self.provider = provider
        self.timeout_s = float(timeout_s)
        self.retry = retry
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", USER_AGENT)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._limiter = limiter or limiter_for(limiter_key or provider, requests_per_second)
        self._secrets = []
        for secret in secrets:
            register_secret(secret)
            value = secret.reveal() if isinstance(secret, Secret) else secret
            if value:
                self._secrets.append(value)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _get_once(self, url: str,
                  params: Mapping[str, Any]) -> tuple[int, Mapping[str, str], bytes]:
        """One GET with a deadline on the whole exchange (not just each socket read)."""
        started = time.monotonic()
        connect = min(self.timeout_s, 10.0)
        with self.session.get(url, params=params, timeout=(connect, self.timeout_s),
                              stream=True) as response:
            chunks = []
            for chunk in response.iter_content(chunk_size=64 * 1024):
                chunks.append(chunk)
                if time.monotonic() - started > self.timeout_s:
                    raise _Deadline()
            return response.status_code, dict(response.headers), b"".join(chunks)

    def get_json(self, url: str, params: Mapping[str, Any], stats: SourceStats,
                 label: str | None = None) -> Any:
        """Decoded JSON body of a successful GET, after retries; raises HttpSourceError."""
        provider = label or self.provider
        attempts = self.retry.max_retries + 1
        last_problem = "no attempt made"
        for attempt in range(attempts):
            self._limiter.acquire()
            started = time.monotonic()
            retry_after: float | None = None
            try:
                status, headers, body = self._get_once(url, params)
            except (requests.Timeout, _Deadline):
                stats.record(provider, "timeout", time.monotonic() - started)
                last_problem = f"no complete response within {self.timeout_s:g} s (timeout)"
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                stats.record(provider, "connection_error", time.monotonic() - started)
                last_problem = f"connection error: {self._redact(_short(exc))}"
            except requests.RequestException as exc:
                stats.record(provider, "request_error", time.monotonic() - started)
                message = f"{provider}: request could not be made: {self._redact(_short(exc))}"
                raise HttpSourceError(message, provider=provider) from None
            else:
                stats.record(provider, status, time.monotonic() - started)
                if 200 <= status < 300:
                    return self._decode(provider, status, headers, body)
                reason = self._redact(provider_reason(body))
                if status == 429 or status >= 500 or status == 408:
                    last_problem = f"HTTP {status}: {reason}"
                    retry_after = retry_after_seconds(headers.get("Retry-After"))
                    if retry_after is not None and retry_after > self.retry.max_retry_after_s:
                        raise RetriesExhausted(
                            f"{provider}: HTTP {status}: {reason} (asks to retry after "
                            f"{retry_after:g} s, more than the {self.retry.max_retry_after_s:g} s "
                            "this run waits)",
                            provider=provider, status=status, retryable=True,
                        )
                else:
                    raise ProviderRejected(
                        f"{provider} refused the request: HTTP {status}: {reason}",
                        provider=provider, status=status,
                    )
            if attempt + 1 < attempts:
                wait = self.retry.backoff(attempt, self._rng)
                if retry_after is not None:
                    wait = max(wait, retry_after)
                log.info("%s: %s; retry %d/%d in %.2f s", provider, last_problem, attempt + 1,
                         self.retry.max_retries, wait)
                self._sleep(wait)
        raise RetriesExhausted(
            f"{provider}: giving up after {attempts} attempt(s): {last_problem}",
            provider=provider, retryable=True,
        )

    def _decode(self, provider: str, status: int, headers: Mapping[str, str], body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            snippet = self._redact(body[:120].decode("utf-8", errors="replace"))
            raise ResponseFormatError(
                f"{provider}: HTTP {status} body is not JSON "
                f"(content-type {headers.get('Content-Type', 'unknown')!r}, "
                f"{len(body)} bytes, starts {snippet!r})",
                provider=provider, status=status,
            ) from None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."
