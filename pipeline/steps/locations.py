"""Write or check ``params.yaml``'s ``locations`` from the stations of the CSV source's files.

``python -m pipeline locations`` fails naming every station that disagrees; ``--write``
writes the list, keeping every other line of the file (:mod:`pipeline.io.locations`).
"""

from __future__ import annotations

from pipeline.io.locations import LocationsReport, StationLocations
from pipeline.paths import ProjectPaths
from pipeline.settings import Settings

NEEDS_CONTEXT = False  # params.yaml may have no locations yet: this step writes them


def run(paths: ProjectPaths, write: bool = False, timezone: str | None = None
        ) -> LocationsReport:
    stations = StationLocations(paths.params, paths.root, Settings.from_env().csv_dir)
    return stations.write(timezone) if write else stations.check()
