"""What every step needs, built once per process: paths, params, settings, metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Params, load_params
from pipeline.io.metrics import MetricsReporter
from pipeline.paths import ProjectPaths
from pipeline.settings import Settings


@dataclass
class Context:
    paths: ProjectPaths
    params: Params
    settings: Settings
    reporter: MetricsReporter

    @classmethod
    def load(cls, root: Path | str | None = None, settings: Settings | None = None) -> Context:
        paths = ProjectPaths(Path(root).resolve()) if root else ProjectPaths.discover()
        settings = settings or Settings.from_env()
        return cls(
            paths=paths,
            params=load_params(paths.params),
            settings=settings,
            reporter=MetricsReporter(settings),
        )
