"""The V2 examples of docs/mlops.md keep working after the schedule has run: pasted as a reader
would (bash) against a real MLServer whose project's data is current (the newest stored hour
an hour or two ago; the synthetic source computes any hour)."""

from __future__ import annotations

import json
import re
import subprocess

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.mlops.conftest import run_step, start_mlserver
from tests.serving.conftest import copy_project

pytestmark = [pytest.mark.mlops, pytest.mark.slow, pytest.mark.service, pytest.mark.process]
DOCUMENTED_URL = "http://127.0.0.1:8090"


def hour_iso(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%S")


def documented_v2() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "docs" / "mlops.md").read_text(), flags=re.S)
    return [b for b in blocks if "/v2/models/aq-forecast/infer" in b]


def paste(command: str, url: str) -> dict:
    assert DOCUMENTED_URL in command
    proc = subprocess.run(["bash", "-c", command.replace(DOCUMENTED_URL, url)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_documented_v2_requests_answer_with_a_forecast(served_project, tmp_path):
    from stack import mlserver_local

    project = copy_project(served_project, tmp_path / "project")
    now = pd.Timestamp.now(tz="UTC").floor("h")
    run_step(project.root, "ingest", "--start", hour_iso(now - pd.Timedelta(days=21)),
             "--end", hour_iso(now))  # up to the last complete hour
    v2 = start_mlserver(project)
    try:
        plain, with_observations = documented_v2()
        answer = paste(plain, v2.url)
        assert answer["model_version"] == project.champion, answer
        assert answer["parameters"]["issue_time"] == (now - pd.Timedelta(hours=1)).isoformat()
        assert answer["parameters"]["observations_used"] == 0
        answer = paste(with_observations, v2.url)
        assert answer["parameters"]["observations_used"] == 1, answer
        assert answer["parameters"]["issue_time"] == (now - pd.Timedelta(hours=1)).isoformat()
        values = {o["name"]: o["data"] for o in answer["outputs"]}["value"]
        assert len(values) == 4
        assert all(v >= 0 for v in values)
    finally:
        mlserver_local.stop(project.paths)
