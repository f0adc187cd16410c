"""The catch-up record training waits by: live while a catch-up runs, gone when it ends."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.errors import CatchingUpError, PipelineError
from pipeline.ingestion import Ingestion
from pipeline.io.catchup import STALE_AFTER, CatchUpLog
from pipeline.steps import ingest, preprocess
from pipeline.timeutil import now_utc

TO = pd.Timestamp("2026-12-07T09:00", tz="UTC")


def test_an_attempt_is_in_progress_until_it_ends_however_it_ends(tmp_path):
    log = CatchUpLog(tmp_path, "synthetic")
    assert log.in_progress() == []
    with log.attempt({"berlin": TO, "delhi": TO - pd.Timedelta(hours=3)}):
        assert [(p.location, p.to) for p in log.in_progress()] == [
            ("berlin", TO), ("delhi", TO - pd.Timedelta(hours=3))]
    assert log.in_progress() == []
    seen = []

    def failing_catch_up():
        with log.attempt({"berlin": TO}):
            seen.extend(p.location for p in log.in_progress())
            raise RuntimeError("the provider went away")

    with pytest.raises(RuntimeError):
        failing_catch_up()
    assert seen == ["berlin"]
    assert log.in_progress() == []


def test_two_attempts_on_one_location_each_remove_only_their_own(tmp_path):
    log = CatchUpLog(tmp_path, "synthetic")
    with log.attempt({"berlin": TO}):
        with log.attempt({"berlin": TO + pd.Timedelta(hours=1)}):
            assert [p.to for p in log.in_progress()] == [TO + pd.Timedelta(hours=1)]
        assert [p.to for p in log.in_progress()] == [TO]
    assert log.in_progress() == []


def test_a_record_nobody_renews_stops_counting(tmp_path):
    """A killed ingestion leaves its record behind: it stops holding training back."""
    log = CatchUpLog(tmp_path, "synthetic")
    with log.attempt({"berlin": TO}) as attempt:
        later = now_utc() + STALE_AFTER + pd.Timedelta(minutes=1)
        assert log.in_progress(now=later) == []
        assert [p.location for p in log.in_progress()] == ["berlin"]
        attempt.renew()
        assert [p.location for p in log.in_progress()] == ["berlin"]


def test_a_damaged_record_is_named(tmp_path):
    log = CatchUpLog(tmp_path, "synthetic")
    log.path.write_text(json.dumps({"pending": {"berlin": {"x": {"to": "soon"}}}}))
    with pytest.raises(PipelineError, match="pending_synthetic.json"):
        log.in_progress()


def test_catch_up_is_recorded_while_its_chunks_run(ctx, monkeypatch):
    """Ingestion.catch_up records every location it heads for before its first chunk."""
    seen = []
    chunks = Ingestion._chunks

    def spy(self, locs, start, end, *args, **kwargs):
        seen.append([(p.location, p.to) for p in CatchUpLog(
            ctx.paths.ingest_state_dir, "synthetic").in_progress()])
        return chunks(self, locs, start, end, *args, **kwargs)

    monkeypatch.setattr(Ingestion, "_chunks", spy)
    end = pd.Timestamp("2025-01-03", tz="UTC")
    Ingestion(ctx).catch_up(end)
    assert seen
    assert seen[0] == [(loc, end) for loc in sorted(ctx.params.location_ids)]
    assert CatchUpLog(ctx.paths.ingest_state_dir, "synthetic").in_progress() == []


def test_preprocess_refuses_to_snapshot_a_store_being_caught_up(ctx):
    """`dvc repro` during a catch-up stops with the reason, naming the locations."""
    ingest.run(ctx, start="2025-01-01", end="2025-01-08")
    log = CatchUpLog(ctx.paths.ingest_state_dir, "synthetic")
    with log.attempt({"delhi": TO}), pytest.raises(CatchingUpError, match="delhi"):
        preprocess.run(ctx)
    with log.attempt({"delhi": TO}), pytest.raises(CatchingUpError, match="delhi"):
        preprocess.run(ctx, finalize_only=True)
    report = preprocess.run(ctx)  # settled: the snapshot, with its version and extents
    assert report["data_version"]["raw_content_sha256"]
    assert set(report["extents"]) == set(ctx.params.location_ids)
    assert report["extents"]["delhi"]["last_hour"].startswith("2025-01-07T23:00")
