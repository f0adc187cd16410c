"""gunicorn with several workers: exact metrics across workers, hot reload under load."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pipeline.io.registry import ARTIFACT, Registry
from stack import serving_local
from tests.monitoring import wait_until
from tests.serving.conftest import copy_project, start_server

pytestmark = pytest.mark.service


def sample(text: str, name: str, **labels: str) -> float:
    """A metric's value in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        series, _, rest = metric.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if series == name and got == want:
            return float(value)
    return 0.0


def post_count(text: str) -> float:
    return sample(text, "flask_http_request_duration_seconds_count", endpoint="v1_forecasts_post",
                  method="POST", status="200")


def test_n_requests_in_n_counted_across_workers(server):
    before_text = server.metrics()
    before = post_count(before_text)
    n = 300
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: requests.post(
            f"{server.url}/v1/forecasts", json={"location_id": "berlin"}, timeout=30).status_code,
            range(n)))
    assert codes == [200] * n
    after_text = server.metrics()
    assert post_count(after_text) == before + n
    assert sample(after_text, "flask_http_request_total", method="POST", status="200") >= n
    # both workers answered, and each reports its own resources (liveall: one series per pid)
    pids = set(re.findall(r'aq_serving_worker_cpu_seconds\{pid="(\d+)"\}', after_text))
    assert len(pids) == 2
    assert sum(sample(after_text, "aq_serving_prediction_aqi_count", target="pm2_5",
                      horizon=str(h)) for h in (1, 6, 12, 24)) >= 4 * n


def values_by_version(url: str, body: dict) -> tuple[str, list[float]]:
    reply = requests.post(f"{url}/v1/forecasts", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    return data["model_version"], [f["value"] for f in data["forecasts"]]


@pytest.mark.slow
def test_promotion_under_load_swaps_models_without_a_failed_request(served_project, tmp_path):
    project = copy_project(served_project, tmp_path / "project")
    server = start_server(project)
    try:
        body = {"location_id": "delhi"}
        old_version, old_values = values_by_version(server.url, body)
        assert old_version == project.champion
        results: list[tuple[int, str | None, list[float] | None]] = []
        stop = threading.Event()

        def load():
            session = requests.Session()
            while not stop.is_set():
                reply = session.post(f"{server.url}/v1/forecasts", json=body, timeout=30)
                data = reply.json() if reply.status_code == 200 else {}
                results.append((reply.status_code, data.get("model_version"),
                                [f["value"] for f in data.get("forecasts", [])]))
                batch = session.get(f"{server.url}/v1/forecasts/delhi", timeout=30)
                results.append((batch.status_code, None, None))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        Registry(project.paths).promote(project.other, reason="test: promote under load")
        # every worker swaps within a few reload intervals; load goes on meanwhile
        wait_until(lambda: sample(server.metrics(), "aq_serving_model_info",
                                  version=project.champion) == 0, timeout=60,
                   what="every worker to serve the new champion")
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        statuses = [status for status, _, _ in results]
        assert len(statuses) > 50
        assert set(statuses) == {200}, "a request failed during the swap"
        versions = [v for _, v, _ in results if v]
        assert versions[0] == project.champion
        assert versions[-1] == project.other
        new_version, new_values = values_by_version(server.url, body)
        assert new_version == project.other
        assert new_values != old_values
        # each answer is the whole of one model: its values are those of the version it names
        expected = {project.champion: old_values, project.other: new_values}
        for _, version, values in results:
            if version:
                assert values == expected[version]
        text = server.metrics()
        assert sample(text, "aq_serving_model_info", version=project.other) == 1
        assert sample(text, "aq_serving_model_outdated") == 0
        assert sample(text, "aq_serving_model_reloads_total", result="success") == 4  # 2 x 2

        # a champion that fails verification is never served: the old one goes on
        artifact = Registry(project.paths).version_dir(project.champion) / ARTIFACT
        artifact.write_bytes(artifact.read_bytes() + b"tampered")
        Registry(project.paths)._switch(project.champion, project.other, "test: tampered")
        wait_until(lambda: sample(server.metrics(), "aq_serving_model_reload_failing") == 1,
                   timeout=30, what="the reload failure to show")
        text = server.metrics()
        assert sample(text, "aq_serving_model_reload_failures_total", reason="integrity") >= 1
        assert sample(text, "aq_serving_model_outdated") == 1
        assert sample(text, "aq_serving_model_info", version=project.other) == 1
        assert values_by_version(server.url, body) == (project.other, new_values)
        ready = requests.get(f"{server.url}/readyz", timeout=10).json()
        assert ready["model_version"] == project.other
        assert re.search(rf"champion {project.champion} not loaded \(integrity\): refusing to "
                         rf"load .*; still serving {project.other}", server.log())
    finally:
        serving_local.stop(project.paths)
