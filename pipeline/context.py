"""What every step needs, built once per process: paths, params, settings, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Params, load_params
from pipeline.io.metrics import MetricsReporter
from pipeline.paths import ProjectPaths
from pipeline.settings import Settings, TrackingSettings


@dataclass
class Context:
    paths: ProjectPaths
    params: Params
    settings: Settings
    reporter: MetricsReporter
    # where the steps log their MLflow runs (pipeline/io/tracking.py); default: off
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    @classmethod
    def load(cls, root: Path | str | None = None, settings: Settings | None = None,
             tracking: TrackingSettings | None = None) -> Context:
        """The project at ``root`` (default: discovered); settings from the environment
        unless given (a test passing ``Settings()`` gets no Pushgateway and no tracking)."""
        paths = ProjectPaths(Path(root).resolve()) if root else ProjectPaths.discover()
        if tracking is None:
            tracking = TrackingSettings.from_env() if settings is None else TrackingSettings()
        settings = settings or Settings.from_env()
        return cls(
            paths=paths,
            params=load_params(paths.params),
            settings=settings,
            reporter=MetricsReporter(settings),
            tracking=tracking,
        )
