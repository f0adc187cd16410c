"""What the DAGs' DVC runner puts in a task log: the step's own lines as they happen, at their
own level, stamped once, without DVC's advice for people at a git checkout."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

TALK = textwrap.dedent("""
    import time
    print("INFO pipeline.steps.talk: first line", flush=True)
    time.sleep(1.5)
    print("WARNING pipeline.steps.talk: second line", flush=True)
    open("out.txt", "w").write("x")
""")


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    venv = Path(sys.executable).parent
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(venv / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "talk.py").write_text(TALK)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  talk:\n    cmd: python talk.py\n    outs:\n      - out.txt\n")
    return tmp_path


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_stage_lines_stream_at_their_level_without_dvc_advice(dvc_project):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dags"))
    from aq_common import run_dvc

    seen = Records()  # Airflow's logging setup owns the root handlers: listen on ours
    loggers = [logging.getLogger(n) for n in ("aq_common", "pipeline.steps.talk")]
    for logger in loggers:
        logger.addHandler(seen)
        logger.setLevel(logging.INFO)
    try:
        run_dvc("repro", project=dvc_project)
    finally:
        for logger in loggers:
            logger.removeHandler(seen)

    lines = {r.getMessage(): r for r in seen.records}
    first, second = lines["first line"], lines["second line"]
    assert first.levelno == logging.INFO
    assert second.levelno == logging.WARNING
    assert first.name == second.name == "pipeline.steps.talk"
    # relayed as printed, not all at once when the stage ended
    assert second.created - first.created >= 1.0
    text = "\n".join(lines)
    for advice in ("git add", "To track the changes with git", "core.autostage",
                   "Use `dvc push`"):
        assert advice not in text
    assert "Running stage 'talk'" in text


def test_steps_log_without_their_own_timestamp_under_a_task(tmp_path):
    """The task log stamps each line; the step must not add a second timestamp."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dags"))
    from aq_common import child_env

    from tests.conftest import make_project

    root = make_project(tmp_path / "project")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--start", "2025-01-01",
                           "--end", "2025-01-02"], cwd=root, env=child_env(root),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines
    assert lines[0].startswith("INFO pipeline.ingestion: ingest synthetic: ")
