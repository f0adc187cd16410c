"""Data sources: a time window and locations in, canonical rows out.

``make_source(params, settings)`` returns the source ``params.source.kind`` names.
Heavy or optional imports happen inside, so importing this package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.io.sources.base import FetchResult, Source, SourceError, SourceStats

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.config import Params
    from pipeline.settings import Settings


def make_source(params: Params, settings: Settings, root: Path | None = None) -> Source:
    """``root`` is the project directory relative CSV paths are resolved against."""
    kind = params.source.kind
    if kind == "synthetic":
        from pipeline.io.sources.synthetic import SyntheticSource

        return SyntheticSource(params.source.synthetic)
    if kind == "open_meteo":
        from pipeline.io.sources.open_meteo import OpenMeteoSource

        return OpenMeteoSource(params.source.open_meteo, settings)
    if kind == "openweathermap":
        from pipeline.io.sources.openweathermap import OpenWeatherMapSource

        return OpenWeatherMapSource(params.source.openweathermap, settings,
                                    open_meteo=params.source.open_meteo)
    if kind == "csv":
        from pipeline.io.sources.csv_import import CsvSource

        return CsvSource(params.source.csv, base_dir=root, data_dir=settings.csv_dir)
    raise SourceError(f"unknown source kind {kind!r}")


__all__ = ["FetchResult", "Source", "SourceError", "SourceStats", "make_source"]
