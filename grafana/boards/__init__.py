"""One module per dashboard, each a ``build() -> Board``; the file is named after the uid
(``aq-drift`` -> ``drift.json``). A new dashboard is a module here and a line in BOARDS."""

from __future__ import annotations

from collections.abc import Callable

from grafana.board import Board
from grafana.boards import airflow, drift, forecasts, model_quality, pipeline_health, serving

BOARDS: tuple[Callable[[], Board], ...] = (
    pipeline_health.build, model_quality.build, forecasts.build, drift.build, airflow.build,
    serving.build)


def file_name(uid: str) -> str:
    return uid.removeprefix("aq-") + ".json"
