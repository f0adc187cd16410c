"""Examples keep working after the schedule has run: the documented on-demand request of
docs/serving.md, of /openapi.json and of /docs, pasted as a reader would against a server whose
data is current (the newest stored hour is an hour or two ago), is answered 200.

The project is the served one with three weeks of data up to now ingested on top (the
synthetic source computes any hour); the app runs in-process behind werkzeug's HTTP server on
127.0.0.1, and the documented ``curl`` runs in bash.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator

import pandas as pd
import pytest
from werkzeug.serving import make_server

from pipeline.context import Context
from pipeline.settings import ServingSettings, Settings
from serving.app import create_app
from serving.schemas import OnDemandForecastResponse
from tests.conftest import REPO, free_port
from tests.fixtures.make_frozen import run_step
from tests.serving.conftest import copy_project

pytestmark = pytest.mark.process  # the ingest step's CLI, bash and curl

DOCUMENTED_URL = "http://127.0.0.1:8000"


def hour_iso(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture(scope="module")
def current(served_project, tmp_path_factory) -> Iterator[tuple[str, object, object]]:
    """A server whose newest stored hour is two hours before now (the hourly ingestion has
    not stored the last complete hour yet); the tests move it to one hour before now."""
    project = copy_project(served_project, tmp_path_factory.mktemp("current") / "project")
    now = pd.Timestamp.now(tz="UTC").floor("h")
    run_step(project.root, "ingest", "--start", hour_iso(now - pd.Timedelta(days=21)),
             "--end", hour_iso(now - pd.Timedelta(hours=1)))
    ctx = Context.load(project.root, settings=Settings())
    app = create_app(ctx, ServingSettings(), start=False)
    state = app.extensions["aq_serving"]
    state.refresh()
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", state, project
    finally:
        server.shutdown()
        thread.join(timeout=10)


def newest_stored(state) -> pd.Timestamp:
    return pd.Timestamp(int(state.history["berlin"].hours[-1]) * 3600, unit="s", tz="UTC")


def documented_post() -> str:
    """The shell block of docs/serving.md that POSTs an on-demand forecast."""
    text = (REPO / "docs" / "serving.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    posts = [b for b in blocks if "-X POST" in b and "/v1/forecasts" in b]
    assert len(posts) == 1, posts
    return posts[0]


def paste(command: str, url: str) -> dict:
    """Run a documented shell command against ``url`` as a reader pastes it."""
    assert DOCUMENTED_URL in command
    proc = subprocess.run(["bash", "-c", command.replace(DOCUMENTED_URL, url)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - loopback
        return reply.read().decode()


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/v1/forecasts", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def check_examples(url: str, state) -> None:
    # docs/serving.md: an hour before now, whatever the server stores
    answer = paste(documented_post(), url)
    assert "forecasts" in answer, answer
    forecast = OnDemandForecastResponse.model_validate(answer)
    assert forecast.observations_used == 1
    now = pd.Timestamp.now(tz="UTC").floor("h")
    assert pd.Timestamp(forecast.issue_time) == now - pd.Timedelta(hours=1)
    # /openapi.json: the newest hour the server stores
    document = json.loads(fetch(f"{url}/openapi.json"))
    post_op = document["paths"]["/v1/forecasts"]["post"]
    example = post_op["requestBody"]["content"]["application/json"]["examples"]["newest_hour"]
    assert example["value"]["observations"][0]["time"] == \
        newest_stored(state).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, body = post(url, example["value"])
    assert status == 200, body
    # /docs: the curl the page shows, with the URL the reader used
    page = fetch(f"{url}/docs")
    shown = html.unescape(re.search(r'<h2 id="examples">Examples</h2><pre>(.*?)</pre>', page,
                                    flags=re.S).group(1))
    command = shown[shown.index("curl -s -X POST"):]
    assert url in command
    answer = paste(command.replace(url, DOCUMENTED_URL), url)
    assert "forecasts" in answer, answer
    assert answer["issue_time"] == newest_stored(state).isoformat()


def test_documented_examples_work_when_the_newest_hour_is_not_stored_yet(current):
    url, state, _ = current
    now = pd.Timestamp.now(tz="UTC").floor("h")
    assert newest_stored(state) == now - pd.Timedelta(hours=2)
    check_examples(url, state)


def test_documented_examples_work_once_the_last_complete_hour_is_stored(current):
    url, state, project = current
    now = pd.Timestamp.now(tz="UTC").floor("h")
    run_step(project.root, "ingest", "--start", hour_iso(now - pd.Timedelta(hours=1)),
             "--end", hour_iso(now))
    state.refresh()
    assert newest_stored(state) == now - pd.Timedelta(hours=1)
    check_examples(url, state)
