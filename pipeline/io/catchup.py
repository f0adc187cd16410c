"""Is an ingestion catching the raw store up right now? (what training waits for)

A scheduled ingestion that fills a long gap writes its chunks one after another, in several
tasks at once: half-way, some locations reach May and others October. A model trained on
that store holds out the last days of the one location that got furthest. So each catch-up
records what it is doing, and training reads the store only when none is under way:

- :meth:`CatchUpLog.attempt` wraps one catch-up (``Ingestion.catch_up``): before its first
  chunk it records, per location, the hour it is heading for; after each chunk it renews
  that record; when it ends (done, failed or timed out) it removes it;
- :meth:`CatchUpLog.in_progress` names the locations a live catch-up is working on. A record
  not renewed for :data:`STALE_AFTER` (a killed task) no longer counts.

The record lives next to the catch-up cursor, ``build/ingest_state/pending_<source>.json``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.io.storage import StateFileError, atomic_write_json, file_lock, read_state_json
from pipeline.timeutil import now_utc, utc

STALE_AFTER = pd.Timedelta(minutes=30)  # longer than an ingest task's timeout (20 min)
RECOVERY = "delete it: it only records catch-ups under way, the next ingestion rewrites it"


@dataclass(frozen=True)
class Pending:
    """One location being caught up: to which hour, since when, last renewed when."""

    location: str
    to: pd.Timestamp
    since: pd.Timestamp
    renewed: pd.Timestamp

    def describe(self) -> str:
        return f"{self.location} (to {self.to:%Y-%m-%dT%H:%M}Z, since {self.since:%H:%M:%S}Z)"


class CatchUpLog:
    """The catch-ups under way for one source (a JSON file under a file lock)."""

    def __init__(self, state_dir: Path, source: str) -> None:
        self.path = Path(state_dir) / f"pending_{source}.json"

    def _read(self) -> dict[str, dict[str, dict]]:
        if not self.path.exists():
            return {}
        state = read_state_json(self.path, "catch-up record", RECOVERY)
        pending = state.get("pending") if isinstance(state, dict) else None
        if not isinstance(pending, dict):
            raise StateFileError(f"catch-up record {self.path} has no 'pending' mapping: "
                                 f"{RECOVERY}")
        return pending

    def _update(self, change) -> None:
        with file_lock(self.path.with_suffix(".lock"), what="catch-up record lock"):
            pending = self._read()
            change(pending)
            pending = {loc: owners for loc, owners in sorted(pending.items()) if owners}
            atomic_write_json(self.path, {"version": 1, "pending": pending})

    @contextlib.contextmanager
    def attempt(self, targets: Mapping[str, pd.Timestamp]) -> Iterator[CatchUpAttempt]:
        """Record that these locations are being caught up to these hours, until the block
        ends (however it ends)."""
        attempt = CatchUpAttempt(self, f"{os.getpid()}-{uuid.uuid4().hex[:8]}",
                                 {loc: utc(to) for loc, to in targets.items()})
        if not attempt.targets:
            yield attempt
            return
        now = now_utc().isoformat()

        def begin(pending):
            for loc, to in attempt.targets.items():
                pending.setdefault(loc, {})[attempt.token] = {
                    "to": to.isoformat(), "since": now, "renewed": now}

        def end(pending):
            for owners in pending.values():
                owners.pop(attempt.token, None)

        self._update(begin)
        try:
            yield attempt
        finally:
            self._update(end)

    def in_progress(self, now: pd.Timestamp | None = None) -> list[Pending]:
        """Locations a live catch-up is working on (furthest target per location), sorted."""
        now = now_utc() if now is None else utc(now)
        found: dict[str, Pending] = {}
        try:
            for loc, owners in self._read().items():
                for record in owners.values():
                    entry = Pending(loc, utc(record["to"]), utc(record["since"]),
                                    utc(record["renewed"]))
                    if now - entry.renewed > STALE_AFTER:
                        continue
                    if loc not in found or entry.to > found[loc].to:
                        found[loc] = entry
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateFileError(f"catch-up record {self.path}: {exc!r}: {RECOVERY}") from None
        return [found[loc] for loc in sorted(found)]


@dataclass
class CatchUpAttempt:
    log: CatchUpLog
    token: str
    targets: dict[str, pd.Timestamp]

    def renew(self) -> None:
        """Still working (after each chunk): the record stays live."""
        if not self.targets:
            return
        now = now_utc().isoformat()

        def renew(pending):
            for owners in pending.values():
                if self.token in owners:
                    owners[self.token]["renewed"] = now

        self.log._update(renew)


def describe(pending: list[Pending], limit: int = 5) -> str:
    shown = ", ".join(p.describe() for p in pending[:limit])
    return shown + (f" and {len(pending) - limit} more" if len(pending) > limit else "")
