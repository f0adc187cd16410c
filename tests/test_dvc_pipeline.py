"""`dvc repro` on the default synthetic data: skill, no-op re-runs, minimal re-runs.

This is what `make run` does, in a temporary copy of the project.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

STAGES = ["preprocess", "train", "evaluate", "backtest", "promote", "predict", "score", "drift"]


def dvc(root: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "AQ_PROJECT_DIR": str(root)}
    env.pop("AQ_PUSHGATEWAY_URL", None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=root,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def default_project(tmp_path_factory) -> Path:
    """The repo's own params.yaml (5 locations x 1 year), ingested and reproduced once."""
    root = tmp_path_factory.mktemp("dvc") / "project"
    root.mkdir()
    shutil.copytree(REPO / "pipeline", root / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    env = {**os.environ, "AQ_PROJECT_DIR": str(root)}
    env.pop("AQ_PUSHGATEWAY_URL", None)
    subprocess.run([sys.executable, "-m", "pipeline", "ingest"], cwd=root, env=env, check=True,
                   timeout=600)
    dvc(root, "add", "data")
    output = dvc(root, "repro")
    (root / "first_repro.log").write_text(output)
    return root


@pytest.mark.process
@pytest.mark.train
@pytest.mark.slow
def test_repro_runs_every_stage_and_beats_persistence(default_project):
    assert ran((default_project / "first_repro.log").read_text()) == STAGES
    metrics = json.loads((default_project / "metrics.json").read_text())
    skills = {h: s["skill"] for h, s in metrics["pm2_5"].items()}
    assert set(skills) == {"1", "6", "12", "24"}  # a ModelKey's serialised horizon
    assert all(s > 0 for s in skills.values()), skills
    promotion = json.loads((default_project / "reports/promotion.json").read_text())
    assert promotion["promoted"], promotion["refusals"]
    summary = subprocess.run([sys.executable, "-m", "pipeline", "summary"], cwd=default_project,
                             capture_output=True, text=True, check=True).stdout
    assert "skill" in summary
    assert f"champion: {promotion['champion']}" in summary


@pytest.mark.process
@pytest.mark.train
@pytest.mark.slow
def test_second_repro_is_a_no_op(default_project):
    output = dvc(default_project, "repro")
    assert ran(output) == []
    assert "up to date" in dvc(default_project, "status")


@pytest.mark.process
@pytest.mark.train
@pytest.mark.slow
def test_model_parameter_change_reruns_only_what_depends_on_it(default_project):
    params_path = default_project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    # a model parameter that also makes the re-run cheap: train without its settings search
    # (~20 instead of ~110 CPU s; the search itself ran in the first repro)
    params["model"]["selection"]["max_fits"] = 1
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    output = dvc(default_project, "repro")
    reran = ran(output)
    assert "preprocess" not in reran
    assert reran[:5] == ["train", "evaluate", "backtest", "promote", "predict"]
    assert set(reran) <= {"train", "evaluate", "backtest", "promote", "predict", "score", "drift"}


def stage_imports(stage: str) -> set[str]:
    """Files of every pipeline module `python -m pipeline <stage>` imports."""
    code = (
        "import importlib, sys, pipeline.__main__\n"
        # what main() imports before it runs the step
        "import pipeline.config, pipeline.context, pipeline.errors\n"
        f"importlib.import_module('pipeline.steps.{stage}')\n"
        "print('\\n'.join(sorted(m.__file__ for n, m in sys.modules.items()\n"
        "    if n.split('.')[0] == 'pipeline' and getattr(m, '__file__', None))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    return {str(Path(p).resolve().relative_to(REPO)) for p in out.split()}


@pytest.mark.process
@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_list_every_module_it_imports(stage):
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    assert spec["cmd"] == f"python -m pipeline {stage}"
    deps = set(spec["deps"])
    imported = stage_imports(stage)
    # package __init__ files hold only a docstring; they cannot change a result
    inits = {p for p in imported if p.endswith("__init__.py")}
    for init in inits:
        body = [line for line in (REPO / init).read_text().splitlines()
                if line.strip() and not line.startswith(('"""', "#"))]
        assert body == [], f"{init} has code: list it in dvc.yaml deps"
    missing = sorted(imported - inits - deps)
    assert not missing, f"stage {stage} imports modules not in its deps: {missing}"
    stale = sorted(d for d in deps if d.endswith(".py") and d not in imported)
    assert not stale, f"stage {stage} lists modules it does not import: {stale}"


def test_stage_outputs_never_overlap_the_raw_data():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    tracked = [o["path"] for o in yaml.safe_load((REPO / "data.dvc").read_text())["outs"]]
    for name, spec in stages.items():
        for key in ("outs", "metrics", "plots"):
            for out in spec.get(key, []):
                path = next(iter(out)) if isinstance(out, dict) else out
                assert not any(path == t or path.startswith(t.rstrip("/") + "/")
                               for t in tracked), f"{name} writes {path} inside {tracked}"


CONCURRENT_WRITER = """
import sys, time
import pandas as pd
from pipeline.io.storage import write_raw
raw_dir, generations = sys.argv[1], int(sys.argv[2])
times = pd.date_range("2025-01-01", "2025-03-01", freq="h", inclusive="left", tz="UTC")
print("started", flush=True)
for g in range(2, generations + 2):
    write_raw(raw_dir, "synthetic", pd.DataFrame({"location_id": "berlin", "time": times,
                                                 "pm2_5": float(g)}))
    time.sleep(0.05)
print("done", flush=True)
"""


def write_generation(root: Path, value: float) -> None:
    import pandas as pd

    from pipeline.io.storage import write_raw

    times = pd.date_range("2025-01-01", "2025-03-01", freq="h", inclusive="left", tz="UTC")
    write_raw(root / "data" / "raw", "synthetic",
              pd.DataFrame({"location_id": "berlin", "time": times, "pm2_5": value}))


@pytest.mark.process
@pytest.mark.slow
def test_dvc_lock_records_the_data_preprocess_read_while_ingestion_writes(tmp_path, monkeypatch):
    """An ingestion writes raw partitions over and over while `dvc repro preprocess` runs.

    Whatever interleaving happens, dvc.lock must describe the data the features were built
    from: put that generation back and DVC must call the stage up to date.
    """
    from pipeline.io.feature_store import FeatureStore
    from tests.conftest import make_project

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    root = make_project(tmp_path / "project", {"locations": [
        {"id": "berlin", "name": "Berlin", "latitude": 52.52, "longitude": 13.405}]},
        with_dvc=True)
    write_generation(root, 1.0)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "AQ_PROJECT_DIR": str(root)}
    env.pop("AQ_PUSHGATEWAY_URL", None)
    writer = subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER,
                               str(root / "data" / "raw"), "40"], cwd=root, env=env,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "started"
    busy = 0
    try:
        for _ in range(60):  # a hand-run repro meets "busy" while a write is in progress
            proc = subprocess.run(["dvc", "repro", "--single-item", "preprocess"], cwd=root,
                                  env=env, capture_output=True, text=True, timeout=300)
            if proc.returncode == 0:
                break
            assert "is busy, it is being blocked by" in proc.stdout + proc.stderr, proc.stderr
            busy += 1
        else:
            pytest.fail("dvc repro never got the raw data")
    finally:
        writer.communicate(timeout=300)
    features = FeatureStore(root / "build" / "features").read(columns=["pm2_5"])
    read = features["pm2_5"].dropna().unique()
    assert len(read) == 1, f"features mixed generations {sorted(read)}"
    write_generation(root, float(read[0]))
    assert "up to date" in dvc(root, "status", "preprocess")
