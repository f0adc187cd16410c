"""The one HTTP client every live source uses.

Why one client: every provider call must have a deadline, the same retry rules
(connection errors, timeouts, 429 and 5xx are retried with exponential backoff
and jitter, honouring ``Retry-After``; other 4xx are not, and the error quotes
the provider's reason), a per-provider rate limit, request figures for the
metrics reporter, and API keys that never reach a log line or an exception.

Bounds, enforced while the bytes arrive (a hostile or broken server cannot
hold a step longer or grow it bigger):

* one wall-clock deadline per attempt (``timeout_s``) covering connect,
  headers and every byte of the body: a watchdog shuts the attempt's socket
  when it passes, so a server trickling one byte a second is cut off on time;
* a maximum body size (``max_bytes``, decoded bytes): a larger
  ``Content-Length`` is refused before reading, an endless body is cut there;
* a total budget for all attempts and backoff waits (``total_s``);
* a body that does not decode (not JSON, nested too deep) is a
  :class:`ResponseFormatError`, which the sources turn into a failure of the
  locations of that request, never of the step.

The rate limit is per process by default; with ``AQ_RATE_LIMIT_REDIS_URL`` set
(the Airflow scale-out profile sets it for every worker) it is one budget per
provider for every process on every machine sharing that Redis.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from pydantic import SecretStr
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from pipeline.io.sources.base import SourceError, SourceStats
from pipeline.redaction import REDACTED, redact, register_secret

log = logging.getLogger(__name__)

__all__ = ["REDACTED", "HttpClient", "HttpSourceError", "ProviderRejected", "RateLimiter",
           "RateLimitUnavailable", "ResponseFormatError", "ResponseTooLarge", "RetriesExhausted",
           "RetryPolicy", "SharedRateLimiter", "redact", "register_secret"]
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


class ResponseTooLarge(HttpSourceError):
    """The body is bigger than ``max_bytes``: not retried (the next answer would be too)."""


DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TOTAL_S = 120.0


# ------------------------------------------------------------------ secrets
# one mechanism for the whole project (pipeline.redaction); re-exported for the sources

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


class RateLimitUnavailable(HttpSourceError):
    """The shared rate limit could not be consulted, or its queue is too long: no request sent."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message, provider=provider, retryable=True)


# Reserve the next free slot of a provider: the same schedule as RateLimiter, kept in Redis
# and timed by Redis's clock (one clock for every machine). Returns the wait in microseconds,
# or -1 without reserving when the slot is more than max_wait away.
_RESERVE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(now, nxt)
if start - now > tonumber(ARGV[2]) then
  return -1
end
redis.call('SET', KEYS[1], string.format('%d', start + interval), 'PX',
           math.floor((start + interval - now) / 1000) + 60000)
return start - now
"""


def _shown_url(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class SharedRateLimiter:
    """At most ``rate`` request starts per second for everyone sharing a Redis key.

    Each ``acquire`` reserves the next free slot (``1/rate`` after the previous
    one) in one atomic script call, then sleeps until it: the budget holds for
    every process and machine of a deployment (all Celery workers), not per
    process. A slot further away than ``max_wait_s`` is not reserved, and an
    unreachable Redis is not guessed around: both raise
    :class:`RateLimitUnavailable` and no request is sent.
    """

    def __init__(self, url: SecretStr | str, provider: str, rate: float, *,
                 max_wait_s: float = DEFAULT_TOTAL_S, timeout_s: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        try:
            import redis
        except ImportError:
            raise RateLimitUnavailable(
                "AQ_RATE_LIMIT_REDIS_URL is set but the redis package is missing: install the "
                "airflow extra (`make setup` does)", provider=provider) from None
        value = url.get_secret_value() if isinstance(url, SecretStr) else url
        self.provider = provider
        self.key = f"aq:rate:{provider}"
        self.interval_us = max(1, round(1_000_000 / rate))
        self.max_wait_s = max_wait_s
        self.shown_url = _shown_url(value)
        self._password = urlsplit(value).password or ""
        self._sleep = sleep
        self._errors = (redis.RedisError, OSError)
        try:
            self._redis = redis.Redis.from_url(value, socket_timeout=timeout_s,
                                               socket_connect_timeout=timeout_s)
        except ValueError as exc:
            raise RateLimitUnavailable(
                f"AQ_RATE_LIMIT_REDIS_URL is not a Redis URL ({type(exc).__name__})",
                provider=provider) from None
        self._reserve = self._redis.register_script(_RESERVE_SLOT)

    def acquire(self) -> float:
        """Wait for the next shared slot; return the seconds waited."""
        try:
            wait_us = int(self._reserve(keys=[self.key],
                                        args=[self.interval_us, round(self.max_wait_s * 1e6)]))
        except self._errors as exc:
            raise RateLimitUnavailable(
                f"{self.provider}: shared rate limit at {self.shown_url} unavailable "
                f"({type(exc).__name__}: {redact(str(exc), [self._password])[:200]}); "
                "no request sent",
                provider=self.provider) from None
        if wait_us < 0:
            raise RateLimitUnavailable(
                f"{self.provider}: the shared rate limit has no free slot within "
                f"{self.max_wait_s:g} s (too many requests queued deployment-wide); "
                "no request sent", provider=self.provider)
        wait = wait_us / 1e6
        if wait > 0:
            self._sleep(wait)
        return wait


_LIMITERS: dict[tuple[str, float, str, float], RateLimiter | SharedRateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(provider: str, rate: float, shared_url: SecretStr | str | None = None,
                max_wait_s: float = DEFAULT_TOTAL_S) -> RateLimiter | SharedRateLimiter:
    """The limiter of a provider, made once per process so separate source objects share
    one budget: in Redis when ``shared_url`` is given (every worker shares it; a slot more
    than ``max_wait_s`` away is refused), else local."""
    url = (shared_url.get_secret_value() if isinstance(shared_url, SecretStr)
           else (shared_url or ""))
    with _LIMITERS_LOCK:
        key = (provider, float(rate), url, float(max_wait_s) if url else 0.0)
        if key not in _LIMITERS:
            _LIMITERS[key] = (SharedRateLimiter(url, provider, rate, max_wait_s=max_wait_s)
                              if url else RateLimiter(rate))
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


def provider_reason(body: bytes, limit: int = 300, secrets: Iterable[str] = ()) -> str:
    """The provider's own words: Open-Meteo ``reason``, OpenWeatherMap ``message``, or the text.

    Secrets are redacted before the text is cut, so a cut never leaves part of a key.
    """
    text = body[: 64 * 1024].decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        for key in ("reason", "message", "error_description", "error", "detail"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return redact(value, secrets)[:limit]
    text = redact(text, secrets)
    return (text[:limit] + ("..." if len(text) > limit else "")) or "(empty body)"


# ------------------------------------------------------------------ deadline watchdog


class _Deadline(Exception):
    """The whole response did not arrive within the timeout."""


class _Attempt:
    """One attempt's wall-clock deadline: when it passes, every socket of the attempt is shut.

    ``requests``' own timeouts bound each socket operation, not the exchange: a
    server sending one byte per second never trips them. Shutting the socket
    makes the blocked read return at once, wherever it is (headers or body).
    """

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Attempt:
        _ACTIVE.attempt = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _ACTIVE.attempt = None

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if self.expired:
                _shutdown(sock)
            elif all(s is not sock for s in self._sockets):
                self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


_ACTIVE = threading.local()


def _watch(sock: socket.socket | None) -> None:
    attempt = getattr(_ACTIVE, "attempt", None)
    if attempt is not None:
        attempt.watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    """Hands its socket to the running attempt's watchdog (new and reused connections)."""

    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def getresponse(self, *args, **kwargs):
        _watch(self.sock)
        return super().getresponse(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def getresponse(self, *args, **kwargs):
        _watch(self.sock)
        return super().getresponse(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class WatchedAdapter(HTTPAdapter):
    """A requests adapter whose connections the per-attempt watchdog can cut."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool,
                                                   "https": _WatchedHTTPSPool}


# ------------------------------------------------------------------ client


class HttpClient:
    """GET JSON from one provider with deadline, retries, rate limit, stats and redaction."""

    def __init__(
        self,
        provider: str,
        *,
        timeout_s: float,
        retry: RetryPolicy,
        requests_per_second: float,
        secrets: Iterable[SecretStr | str] = (),
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        limiter: RateLimiter | SharedRateLimiter | None = None,
        limiter_key: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        total_s: float = DEFAULT_TOTAL_S,
        shared_limit_url: SecretStr | str | None = None,
    ) -> None:
        self.provider = provider
        self.timeout_s = float(timeout_s)
        self.max_bytes = int(max_bytes)
        self.total_s = float(total_s)
        self.retry = retry
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", USER_AGENT)
        adapter = WatchedAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._sleep = sleep
        self._rng = rng or random.Random()
        # a shared slot further away than the request's whole budget is refused, not waited for
        self._limiter = limiter or limiter_for(limiter_key or provider, requests_per_second,
                                               shared_limit_url, max_wait_s=self.total_s)
        self._secrets = []
        for secret in secrets:
            register_secret(secret)
            value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            if value:
                self._secrets.append(value)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _get_once(self, url: str, params: Mapping[str, Any],
                  budget_s: float) -> tuple[int, Mapping[str, str], bytes]:
        """One GET within ``budget_s`` of wall clock (connect, headers, body) and ``max_bytes``."""
        connect = min(budget_s, 10.0)
        with _Attempt(budget_s) as attempt:
            try:
                with self.session.get(url, params=params, timeout=(connect, budget_s),
                                      stream=True) as response:
                    self._check_length(response)
                    chunks, size = [], 0
                    for chunk in response.iter_content(chunk_size=64 * 1024):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise self._too_large(f"more than {self.max_bytes} bytes arrived")
                        chunks.append(chunk)
                        if attempt.expired:
                            raise _Deadline()
                    status, headers = response.status_code, dict(response.headers)
            except (requests.RequestException, OSError):
                if attempt.expired:
                    raise _Deadline() from None
                raise
            if attempt.expired:  # a cut connection can look like a short, complete body
                raise _Deadline()
        return status, headers, b"".join(chunks)

    def _check_length(self, response: requests.Response) -> None:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(f"Content-Length {int(declared)}")

    def _too_large(self, what: str) -> ResponseTooLarge:
        return ResponseTooLarge(
            f"{self.provider}: response too large: {what}, above the {self.max_bytes} byte "
            "limit (AQ_HTTP_MAX_BYTES)", provider=self.provider)

    def get_json(self, url: str, params: Mapping[str, Any], stats: SourceStats,
                 label: str | None = None) -> Any:
        """Decoded JSON body of a successful GET, after retries; raises HttpSourceError."""
        provider = label or self.provider
        attempts = self.retry.max_retries + 1
        last_problem = "no attempt made"
        give_up_at = time.monotonic() + self.total_s
        made = 0
        for attempt in range(attempts):
            self._limiter.acquire()
            started = time.monotonic()
            budget = min(self.timeout_s, give_up_at - started)
            if budget <= 0:
                break
            made += 1
            retry_after: float | None = None
            try:
                status, headers, body = self._get_once(url, params, budget)
            except (requests.Timeout, _Deadline):
                stats.record(provider, "timeout", time.monotonic() - started)
                last_problem = f"no complete response within {budget:g} s (timeout)"
            except ResponseTooLarge:
                stats.record(provider, "too_large", time.monotonic() - started)
                raise
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                stats.record(provider, "connection_error", time.monotonic() - started)
                last_problem = f"connection error: {_short(self._redact(_text(exc)))}"
            except requests.RequestException as exc:
                stats.record(provider, "request_error", time.monotonic() - started)
                detail = _short(self._redact(_text(exc)))
                message = f"{provider}: request could not be made: {detail}"
                raise HttpSourceError(message, provider=provider) from None
            else:
                stats.record(provider, status, time.monotonic() - started)
                if 200 <= status < 300:
                    return self._decode(provider, status, headers, body)
                reason = provider_reason(body, secrets=self._secrets)
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
                if time.monotonic() + wait >= give_up_at:
                    raise RetriesExhausted(
                        f"{provider}: giving up after {attempt + 1} attempt(s): {last_problem} "
                        f"(the next retry would pass the {self.total_s:g} s budget of this "
                        "request, AQ_HTTP_TOTAL_S)", provider=provider, retryable=True)
                log.info("%s: %s; retry %d/%d in %.2f s", provider, last_problem, attempt + 1,
                         self.retry.max_retries, wait)
                self._sleep(wait)
        raise RetriesExhausted(
            f"{provider}: giving up after {made} attempt(s): {last_problem}",
            provider=provider, retryable=True,
        )

    def _decode(self, provider: str, status: int, headers: Mapping[str, str], body: bytes) -> Any:
        try:
            return json.loads(body)
        except RecursionError:
            raise ResponseFormatError(
                f"{provider}: HTTP {status} body is JSON nested too deeply to read "
                f"({len(body)} bytes)", provider=provider, status=status) from None
        except ValueError:
            snippet = self._redact(body[:4096].decode("utf-8", errors="replace"))[:120]
            raise ResponseFormatError(
                f"{provider}: HTTP {status} body is not JSON "
                f"(content-type {headers.get('Content-Type', 'unknown')!r}, "
                f"{len(body)} bytes, starts {snippet!r})",
                provider=provider, status=status,
            ) from None


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _short(text: str, limit: int = 300) -> str:
    """Cut after redaction, never before (a cut key could no longer be recognised)."""
    return text if len(text) <= limit else text[:limit] + "..."
