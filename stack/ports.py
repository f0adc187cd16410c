"""Which ports the running stack uses: recorded at start, so later commands find it again."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.paths import ProjectPaths
from pipeline.settings import Ports
from stack.supervisor import Supervisor

log = logging.getLogger(__name__)


def ports_file(paths: ProjectPaths) -> Path:
    return paths.stack_dir / "ports.json"


def record_ports(paths: ProjectPaths, ports: Ports) -> None:
    paths.stack_dir.mkdir(parents=True, exist_ok=True)
    ports_file(paths).write_text(ports.model_dump_json())


def resolve_ports(paths: ProjectPaths) -> Ports:
    """The ports of the running stack if there is one, else the configured ones."""
    configured = Ports.from_env()
    recorded = ports_file(paths)
    if recorded.is_file() and any(s["running"]
                                  for s in Supervisor(paths.stack_dir).status().values()):
        running = Ports.model_validate_json(recorded.read_text())
        if running != configured:
            log.warning("services already running on their recorded ports (%s): using those",
                        recorded)
        return running
    return configured
