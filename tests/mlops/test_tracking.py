"""MLflow tracking against a real ``mlflow server``: runs, artifacts, model versions, aliases,
a promotion and a rollback moving ``champion``, and a server that is down or hangs."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import pytest
import requests
import yaml

from tests.conftest import free_port, make_project
from tests.mlops.conftest import OVERRIDES, mlflow_client, run_step

pytestmark = [pytest.mark.mlops, pytest.mark.slow, pytest.mark.service, pytest.mark.process]


def by_step(runs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        out.setdefault(tags.get("aq.step", "?"), []).append(run)
    return out


def values(run: dict, kind: str) -> dict:
    return {i["key"]: i["value"] for i in run["data"].get(kind, [])}


def test_every_step_logs_one_run_with_what_the_issue_lists(tracked, mlflow):
    runs = by_step(mlflow.runs())
    assert {s: len(r) for s, r in runs.items()} == {
        "train": 1, "evaluate": 1, "backtest": 1, "promote": 1}
    version = tracked.champion()
    for run in (r[0] for r in runs.values()):
        assert run["info"]["status"] == "FINISHED"
        tags = values(run, "tags")
        assert tags["aq.version"] == version
        assert tags["mlflow.source.git.commit"] == tracked.commit()
    train = runs["train"][0]
    params = values(train, "params")
    metadata = json.loads((tracked.paths.registry_dir / version / "metadata.json").read_text())
    # the model section, the per-horizon choices, the data version and extents, the sha256
    assert json.loads(params["model.max_iter"]) == OVERRIDES["model"]["max_iter"]
    for target, by_h in metadata["settings"].items():
        for horizon, chosen in by_h.items():
            for key, value in chosen.items():
                text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                assert params[f"settings.{target}.{horizon}.{key}"] == text
    assert params["data.raw_content_sha256"] == metadata["data_version"]["raw_content_sha256"]
    dvc = yaml.safe_load((tracked.root / "data.dvc").read_text())
    assert params["data.dvc_md5"] == dvc["outs"][0]["md5"]
    assert params["data.locations"] == "2"
    assert params["model.sha256"] == metadata["sha256"]
    evaluation = json.loads((tracked.root / "reports" / "evaluation.json").read_text())
    metrics = values(runs["evaluate"][0], "metrics")
    for target, by_h in evaluation["scores"].items():
        for horizon, scores in by_h.items():
            for name in ("mae", "skill", "coverage"):
                assert metrics[f"{target}/{horizon}/{name}"] == pytest.approx(scores[name])
    backtest = json.loads((tracked.root / "reports" / "backtest" / "metrics.json").read_text())
    metrics = values(runs["backtest"][0], "metrics")
    for target, by_h in backtest["scores"].items():
        for horizon, scores in by_h.items():
            assert metrics[f"{target}/{horizon}/mae"] == pytest.approx(scores["mae"])
    assert values(runs["promote"][0], "metrics")["promoted"] == 1.0
    # nothing about MLflow in the steps' output but their own lines: no warning
    assert not any("not reachable" in log for log in tracked.logs.values())


def test_artifacts_are_the_registry_files_and_nothing_mlflow_could_unpickle(tracked, mlflow):
    run = by_step(mlflow.runs())["train"][0]
    run_id = run["info"]["run_id"]
    listing = mlflow_client(mlflow.url, f"""
        print(json.dumps(sorted(f.path for f in client.list_artifacts({run_id!r}, "model"))))
    """)
    assert listing == ["model/metadata.json", "model/model.skops"]  # no MLmodel: no flavour
    version = tracked.champion()
    local = tracked.paths.registry_dir / version / "model.skops"
    url = (f"{mlflow.url}/get-artifact?path=model/model.skops&run_uuid={run_id}")
    served = requests.get(url, timeout=30).content
    assert hashlib.sha256(served).hexdigest() == hashlib.sha256(local.read_bytes()).hexdigest()
    backtest = by_step(mlflow.runs())["backtest"][0]["info"]["run_id"]
    names = mlflow_client(mlflow.url, f"""
        print(json.dumps(sorted(f.path for f in client.list_artifacts({backtest!r}, "backtest"))))
    """)
    assert any(n.endswith(".png") for n in names)
    assert "backtest/summary.txt" in names
    extents = requests.get(f"{mlflow.url}/get-artifact?path=data/extents.json&run_uuid="
                           f"{run['info']['run_id']}", timeout=30).json()
    assert set(extents) == {"berlin", "delhi"}
    assert all(e["first_hour"] < e["last_hour"] and e["rows"] > 0 for e in extents.values())


def test_champion_alias_follows_promotion_and_rollback_through_mlflows_client(tracked, mlflow):
    first = tracked.champion()
    alias = mlflow_client(mlflow.url, """
        v = client.get_model_version_by_alias("aq-forecast", "champion")
        print(json.dumps({"version": v.version, "tags": v.tags, "source": v.source}))
    """)
    assert alias["tags"]["aq.version"] == first
    assert alias["source"].startswith("runs:/")
    assert alias["source"].endswith("/model")
    # a second candidate passes the (lenient) gate: champion moves to it, candidate too
    params = (tracked.root / "params.yaml").read_text().replace("max_iter: 40", "max_iter: 25")
    (tracked.root / "params.yaml").write_text(params)
    for name in ("train", "evaluate", "promote"):
        run_step(tracked.root, name, uri=mlflow.url)
    second = tracked.champion()
    assert second != first
    assert mlflow.alias("champion")["tags"][0] == {"key": "aq.version", "value": second} \
        or {"key": "aq.version", "value": second} in mlflow.alias("champion")["tags"]
    assert {"key": "aq.version", "value": second} in mlflow.alias("candidate")["tags"]
    # rollback: the alias goes back to the first version's model version
    run_step(tracked.root, "rollback", uri=mlflow.url)
    assert tracked.champion() == first
    back = mlflow_client(mlflow.url, """
        v = client.get_model_version_by_alias("aq-forecast", "champion")
        print(json.dumps(v.tags))
    """)
    assert back["aq.version"] == first
    steps = by_step(mlflow.runs())
    assert len(steps["rollback"]) == 1
    assert len(steps["promote"]) == 2


def test_a_server_that_is_down_queues_the_run_and_the_next_step_logs_it(tracked, mlflow,
                                                                        tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    before = len(mlflow.runs())
    proc = run_step(tracked.root, "evaluate", uri=down)
    warnings = [line for line in proc.stderr.splitlines() if "not reachable" in line]
    assert len(warnings) == 1, proc.stderr  # said once
    assert down in warnings[0]
    assert ".tracking/queue" in warnings[0]
    queue = tracked.paths.tracking_queue
    entries = [p for p in queue.iterdir() if p.is_dir()]
    assert len(entries) == 1
    assert len(mlflow.runs()) == before
    # the server is back: the next step logs the queued run first, then its own
    run_step(tracked.root, "evaluate", uri=mlflow.url)
    assert not [p for p in queue.iterdir() if p.is_dir()]
    evaluations = by_step(mlflow.runs())["evaluate"]
    replayed = [r for r in evaluations if "aq.replayed_at_ms" in values(r, "tags")]
    assert len(replayed) == 1
    assert replayed[0]["info"]["status"] == "FINISHED"
    assert len(mlflow.runs()) == before + 2


def test_a_server_that_hangs_costs_a_bounded_wait(tmp_path):
    """A server that accepts and never answers: MLflow's own timeout variables bound it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        project = make_project(tmp_path / "project", overrides=OVERRIDES)
        for name in ("ingest", "preprocess"):
            run_step(project, name)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        proc = run_step(project, "train", uri=uri, MLFLOW_HTTP_REQUEST_TIMEOUT="1",
                        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        elapsed = time.monotonic() - started
        assert "did not answer" in proc.stderr
        assert "not reachable" in proc.stderr
        assert len(list((project / ".tracking" / "queue").iterdir())) == 1
        assert held  # it did connect, and gave up after its timeout
        assert elapsed < 120
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_version_trained_while_tracking_was_off_gets_its_model_version_at_promotion(
        tracked, mlflow):
    params = (tracked.root / "params.yaml").read_text()
    (tracked.root / "params.yaml").write_text(params.replace("max_iter: 40", "max_iter: 33")
                                              .replace("max_iter: 25", "max_iter: 33"))
    for name in ("train", "evaluate"):
        run_step(tracked.root, name)  # tracking off
    before = {r["info"]["run_id"] for r in mlflow.runs()}
    run_step(tracked.root, "promote", uri=mlflow.url)
    version = tracked.champion()
    champion = mlflow.alias("champion")
    assert {"key": "aq.version", "value": version} in champion["tags"]
    promote = [r for r in mlflow.runs() if r["info"]["run_id"] not in before]
    assert len(promote) == 1
    # the promote run carries the model's files: the model version points at them
    assert champion["run_id"] == promote[0]["info"]["run_id"]
    listing = mlflow_client(mlflow.url, f"""
        print(json.dumps(sorted(f.path for f in client.list_artifacts(
            {champion['run_id']!r}, "model"))))
    """)
    assert listing == ["model/metadata.json", "model/model.skops"]
