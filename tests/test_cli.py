"""``python -m pipeline``: bad input gets a one-line reason naming what to fix, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from pipeline.timeutil import TimeFormatError, utc
from tests.conftest import REPO, write_params


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.process
@pytest.mark.parametrize("value", ["yesterday", "01/02/2025", "2025-13-01", "", "now"])
def test_a_bad_cli_date_names_the_accepted_formats(tmp_path, value):
    write_params(tmp_path)
    proc = cli("ingest", "--start", value, "--end", "2025-01-02", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "argument --start: not an ISO 8601 date or time" in proc.stderr
    assert "accepted: YYYY-MM-DD" in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing ran


@pytest.mark.process
def test_a_broken_params_file_is_one_line_naming_the_file(tmp_path):
    params = write_params(tmp_path)
    params.write_bytes(params.read_bytes() + b"\n# \xff\xfe\n")
    proc = cli("ingest", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"error: ingest: {params}: not UTF-8 text" in proc.stderr


def test_iso_times_parse_and_others_do_not():
    assert utc("2025-03-01") == pd.Timestamp("2025-03-01", tz="UTC")
    assert utc("2025-03-01T05:00+01:00") == pd.Timestamp("2025-03-01T04:00", tz="UTC")
    assert utc("2025-03-01T05:00Z") == pd.Timestamp("2025-03-01T05:00", tz="UTC")
    assert utc(pd.Timestamp("2025-03-01")) == pd.Timestamp("2025-03-01", tz="UTC")
    for bad in ("1/3/2025", "March 1", "yesterday"):
        with pytest.raises(TimeFormatError, match="accepted"):
            utc(bad)


def test_the_repo_params_still_load_strictly():
    from pipeline.config import load_params

    assert load_params(REPO / "params.yaml").source.kind == "synthetic"
