"""The rule a retrain waits by (dags/aq_common.py settle_decision, docs/airflow.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pipeline.io.catchup import Pending

pytestmark = pytest.mark.airflow

SLOT = datetime(2026, 12, 7, 2, tzinfo=UTC)
NOW = pd.Timestamp("2026-12-07T09:40", tz="UTC")
CATCHING_UP = [Pending("delhi", NOW.floor("h"), NOW, NOW)]
BEHIND = {"delhi": datetime(2026, 1, 1, tzinfo=UTC)}


@pytest.fixture
def decide():
    from aq_common import settle_decision

    return settle_decision


def test_any_run_waits_while_a_catch_up_is_under_way(decide):
    for scheduled in (True, False):
        ready, why = decide(scheduled=scheduled, slot=SLOT, started=SLOT, now=SLOT,
                            pending=CATCHING_UP, behind={})
        assert not ready
        assert "an ingestion is catching up delhi (to 2026-12-07T09:00Z" in why
    assert decide(scheduled=False, slot=SLOT, started=SLOT, now=SLOT, pending=[],
                  behind={}) == (True, "")


def test_a_nightly_slot_started_late_waits_for_the_store_to_reach_its_start(decide):
    """The hand-over after `make run`: the 02:00 slot starts at 09:40, the store ends in
    January; the catch-up may not have begun yet. It waits, then trains."""
    started = SLOT + timedelta(hours=7, minutes=40)
    ready, why = decide(scheduled=True, slot=SLOT, started=started, now=started,
                        pending=[], behind=BEHIND)
    assert not ready
    assert "started 7.7 h late" in why
    assert "delhi to 2026-01-01T00:00Z" in why
    assert decide(scheduled=True, slot=SLOT, started=started, now=started, pending=[],
                  behind={}) == (True, "")
    # an on-time nightly run, or one triggered by hand, does not wait for "now"
    assert decide(scheduled=True, slot=SLOT, started=SLOT + timedelta(minutes=2),
                  now=SLOT, pending=[], behind=BEHIND)[0]
    assert decide(scheduled=False, slot=SLOT, started=started, now=started, pending=[],
                  behind=BEHIND)[0]


def test_after_the_wait_the_run_gives_up_with_the_reason(decide):
    from aq_common import SETTLE_WAIT

    started = SLOT + timedelta(hours=8)
    ready, why = decide(scheduled=True, slot=SLOT, started=started,
                        now=started + SETTLE_WAIT + timedelta(seconds=1), pending=CATCHING_UP,
                        behind=BEHIND)
    assert not ready
    assert why.startswith("not retrained: after 100 min an ingestion is catching up delhi")
    assert why.endswith("the next run trains on the caught-up store")
