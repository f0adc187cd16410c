"""The champion over the V2 inference protocol: a real MLServer process (from .venv-mlserver)
beside the real Flask app under gunicorn, both serving one project."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import requests

from pipeline.io.registry import Registry

pytestmark = [pytest.mark.mlops, pytest.mark.slow, pytest.mark.service]


def flask_forecast(url: str, location: str, observations: list | None = None) -> dict:
    body = {"location_id": location}
    if observations is not None:
        body["observations"] = observations
    resp = requests.post(f"{url}/v1/forecasts", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def columns(answer: dict) -> dict[str, list]:
    return {o["name"]: o["data"] for o in answer["outputs"]}


def newest_observations(project, location: str) -> list[dict]:
    """The newest stored hour of a location, sent back slightly changed (as a sensor would)."""
    raw = pd.concat(pd.read_parquet(p) for p in sorted(
        (project.root / "data" / "raw").glob(f"source=*/location={location}/*.parquet")))
    last = raw.sort_values("time").iloc[-1]
    return [{"time": last["time"].isoformat(), "pm2_5": float(last["pm2_5"]) * 1.5 + 3.0,
             "temperature_2m": float(last["temperature_2m"]) - 2.0}]


@pytest.mark.parametrize("with_observations", [False, True])
def test_v2_infer_equals_the_flask_answer_for_the_same_request(both, with_observations):
    flask, v2 = both
    for location in ("berlin", "delhi"):
        observations = newest_observations(v2.project, location) if with_observations else None
        expected = flask_forecast(flask.url, location, observations)
        resp = v2.infer(location, observations)
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        got = columns(answer)
        assert answer["model_version"] == expected["model_version"] == v2.project.champion
        assert answer["parameters"]["issue_time"] == expected["issue_time"]
        assert answer["parameters"]["observations_used"] == len(observations or [])
        rows = expected["forecasts"]
        assert len(rows) == 4  # every horizon of the champion
        assert set(got) == set(rows[0])  # every field of /v1's items, as a column
        for name, column in got.items():
            for value, row in zip(column, rows, strict=True):
                if isinstance(value, str) or name == "horizon":
                    assert value == row[name], name
                elif row[name] is None:
                    assert math.isnan(value), name  # null in /v1: NaN in a V2 FP64 tensor
                else:
                    assert abs(value - row[name]) <= 1e-9, name


def test_metadata_and_readiness_name_the_champion_and_follow_a_promotion(both):
    flask, v2 = both
    base = v2.url
    assert requests.get(f"{base}/v2/health/live", timeout=10).status_code == 200
    assert requests.get(f"{base}/v2/health/ready", timeout=10).status_code == 200
    assert v2.ready() == 200
    meta = requests.get(f"{base}/v2/models/aq-forecast", timeout=10).json()
    assert meta["versions"] == [v2.project.champion]
    assert {i["name"] for i in meta["inputs"]} == {"location_id", "observations"}
    # promotion: the runtime swaps the champion in while answering (ready all along)
    Registry(v2.project.paths).promote(v2.project.other, reason="test promotion")
    seen, readiness = set(), set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        resp = v2.infer("berlin")
        assert resp.status_code == 200, resp.text
        seen.add(resp.json()["model_version"])
        readiness.add(v2.ready())
        if resp.json()["model_version"] == v2.project.other:
            break
        time.sleep(0.2)
    assert v2.project.other in seen
    assert readiness == {200}
    meta = requests.get(f"{base}/v2/models/aq-forecast", timeout=10).json()
    assert meta["versions"] == [v2.project.other]
    # and the new champion answers as Flask does once Flask has it too
    for _ in range(100):
        expected = flask_forecast(flask.url, "berlin")
        if expected["model_version"] == v2.project.other:
            break
        time.sleep(0.2)
    got = columns(v2.infer("berlin").json())
    assert max(abs(a - b["value"]) for a, b in zip(got["value"], expected["forecasts"],
                                                   strict=True)) <= 1e-9


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"inputs": []}, 422, "location_id is required"),
    ({"inputs": [{"name": "location_id", "shape": [1], "datatype": "INT32", "data": [1]}]},
     422, "must be BYTES"),
    ({"inputs": [{"name": "location_id", "shape": [1], "datatype": "BYTES",
                  "data": ["atlantis"]}]}, 404, "Unknown location"),
    ({"inputs": [{"name": "location_id", "shape": [1], "datatype": "BYTES", "data": ["berlin"]},
                 {"name": "observations", "shape": [1], "datatype": "BYTES",
                  "data": ["[{\"time\": \"2025-01-01T00:30:00Z\", \"pm2_5\": -4}]"]}]},
     422, "observations"),
    ({"inputs": [{"name": "location_id", "shape": [1], "datatype": "BYTES", "data": ["berlin"]},
                 {"name": "observations", "shape": [1], "datatype": "BYTES",
                  "data": ["not json"]}]}, 400, "not JSON"),
    ({"inputs": [{"name": "colour", "shape": [1], "datatype": "BYTES", "data": ["red"]}]},
     422, "unknown input"),
    ({"outputs": []}, 422, ""),  # no inputs at all: MLServer's own schema check
])
def test_malformed_v2_requests_get_a_4xx_naming_the_problem(both, body, status, says):
    _, v2 = both
    resp = requests.post(f"{v2.url}/v2/models/aq-forecast/infer", json=body, timeout=30)
    assert resp.status_code == status, resp.text
    assert says in resp.text
    assert requests.post(f"{v2.url}/v2/models/aq-forecast/infer", data=b"{not json",
                         headers={"Content-Type": "application/json"},
                         timeout=30).status_code == 422
    assert v2.ready() == 200  # and it keeps serving


def test_not_ready_before_the_first_champion_then_ready_without_a_restart(served_project,
                                                                          tmp_path):
    from stack import mlserver_local
    from tests.mlops.conftest import start_mlserver
    from tests.serving.conftest import copy_project

    project = copy_project(served_project, tmp_path / "project")
    (project.root / "models" / "champion.json").unlink()
    (project.root / "models" / "champion_history.jsonl").unlink(missing_ok=True)
    try:
        v2 = start_mlserver(project, ready=False)
        assert requests.get(f"{v2.url}/v2/health/live", timeout=10).status_code == 200
        assert v2.ready() == 400
        refused = v2.infer("berlin")
        assert refused.status_code == 400
        assert "not ready" in refused.text
        Registry(project.paths).promote(project.champion, reason="first champion")
        mlserver_local.wait_ready(v2.url, timeout=120)
        meta = requests.get(f"{v2.url}/v2/models/aq-forecast", timeout=10).json()
        assert meta["versions"] == [project.champion]
        assert v2.infer("berlin").status_code == 200
    finally:
        mlserver_local.stop(project.paths)
