"""``params.yaml``'s locations from the stations of the CSV source's files: checked or written.

A long export (OpenAQ) names many stations, each with its coordinates: one location each.
:meth:`StationLocations.check` compares them with ``params.yaml`` and fails naming every
station that disagrees; :meth:`StationLocations.write` writes the list (ids from
``source.csv.mapping.location``, names and coordinates from the mapped columns; a location
already there keeps its name and time zone), keeping every other line of the file. Neither
needs valid ``locations`` to start with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from pipeline.config import (
    Location,
    Params,
    fixed_offset,
    load_yaml,
    parse_params,
    replace_locations,
)
from pipeline.errors import LocationsMismatch
from pipeline.io.sources.csv_import import CsvImportError, CsvSource, distance_m
from pipeline.io.storage import atomic_write_text

log = logging.getLogger(__name__)

# stands in for an empty locations list so the rest of params.yaml can be validated
_PLACEHOLDER = {"id": "placeholder", "name": "placeholder", "latitude": 0.0, "longitude": 0.0}


@dataclass
class LocationsReport:
    stations: pd.DataFrame  # one row per station of the files (csv_import.CsvSource.stations)
    locations: list[Location]  # params.yaml's, after a write the new ones
    not_imported: list[str] = field(default_factory=list)  # stations params.yaml lacks
    written: Path | None = None


def default_timezone(params: Params) -> str:
    """The zone new locations get: the file's when it is a named zone, a whole-hour fixed
    offset as its Etc/GMT name (``+08:00`` -> ``Etc/GMT-8``), else UTC."""
    zone = params.source.csv.time_zone
    offset = fixed_offset(zone)
    if offset is None:
        return zone
    hours, rest = divmod(int(offset.utcoffset(None).total_seconds()), 3600)
    if rest:
        return "UTC"
    return "UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"


def compare(stations: pd.DataFrame, locations: list[Location], tolerance_m: float,
            column: str) -> tuple[list[str], list[str]]:
    """(problems, stations not in params.yaml) between the file's stations and the locations."""
    problems = []
    by_id = {row.id: row for row in stations.itertuples(index=False)}
    for loc in locations:
        site = by_id.get(loc.id)
        if site is None:
            problems.append(f"location {loc.id!r} ({loc.name}) of params.yaml has no row in the "
                            f"file(s) (column {column!r}); run `python -m pipeline locations "
                            "--write` or remove it")
            continue
        apart = distance_m(loc.latitude, loc.longitude, site.latitude, site.longitude)
        if apart > tolerance_m:
            problems.append(
                f"location {loc.id!r} ({loc.name}): params.yaml has {loc.latitude}, "
                f"{loc.longitude}, the file {site.latitude}, {site.longitude} in {site.rows:,} "
                f"row(s), {apart:,.0f} m apart (more than source.csv.coordinate_tolerance_m = "
                f"{tolerance_m:g}); run `python -m pipeline locations --write` or fix it")
    known = {loc.id for loc in locations}
    return problems, [s for s in by_id if s not in known]


class StationLocations:
    """The stations of the CSV source ``params_path`` configures, against its locations."""

    def __init__(self, params_path: Path, root: Path, csv_dir: str | None = None) -> None:
        self.path = Path(params_path)
        raw = load_yaml(self.path)
        raw = raw if isinstance(raw, dict) else {}
        self.empty = not raw.get("locations")
        self.params = parse_params({**raw, "locations": raw.get("locations") or [_PLACEHOLDER]},
                                   str(self.path))
        if self.params.source.kind != "csv":
            raise CsvImportError(f"{self.path}: source.kind is {self.params.source.kind!r}: "
                                 "locations come from the files of a csv source (source.kind: "
                                 "csv)")
        self.csv = self.params.source.csv
        self.source = CsvSource(self.csv, base_dir=root, data_dir=csv_dir)
        self.current = [] if self.empty else list(self.params.locations)

    def stations(self) -> pd.DataFrame:
        """The files' stations; refused when a station's own coordinates spread too far."""
        stations = self.source.stations()
        tolerance = self.csv.coordinate_tolerance_m
        for row in stations.itertuples(index=False):
            log.info("locations: station %s (%s) at %s, %s: %d row(s), %s .. %s", row.id,
                     row.name, row.latitude, row.longitude, row.rows, row.first, row.last)
        moved = [
            f"station {row.id!r} ({row.name}): its coordinates in columns "
            f"{self.csv.mapping.latitude!r}, {self.csv.mapping.longitude!r} are up to "
            f"{row.spread_m:,.0f} m apart over {row.rows:,} row(s) (more than "
            f"source.csv.coordinate_tolerance_m = {tolerance:g}): a moved monitor is another "
            "location (source.csv.mapping.location_values), or raise the tolerance"
            for row in stations[stations["spread_m"] > tolerance].itertuples(index=False)]
        if moved:
            raise LocationsMismatch("; ".join(moved))
        return stations

    def check(self) -> LocationsReport:
        """Fails naming every location of params.yaml that disagrees with the files."""
        stations = self.stations()
        if self.empty:
            raise LocationsMismatch(f"{self.path} has no locations; the file(s) have "
                                    f"{len(stations)} station(s): run `python -m pipeline "
                                    "locations --write`")
        problems, not_imported = compare(stations, self.current, self.csv.coordinate_tolerance_m,
                                         self.csv.mapping.location)
        if not_imported:
            log.warning("locations: station(s) %s of the file(s) are not in params.yaml: their "
                        "rows are not imported (`python -m pipeline locations --write` adds "
                        "them)", not_imported)
        if problems:
            raise LocationsMismatch("; ".join(problems))
        log.info("locations: the %d location(s) of params.yaml match the file(s)",
                 len(self.current))
        return LocationsReport(stations, self.current, not_imported=not_imported)

    def write(self, timezone: str | None = None) -> LocationsReport:
        """Writes the files' stations as params.yaml's locations (every other line kept)."""
        stations = self.stations()
        kept = {loc.id: loc for loc in self.current}
        zone = timezone or default_timezone(self.params)
        locations = []
        for row in stations.itertuples(index=False):
            entry = {"id": row.id, "name": kept[row.id].name if row.id in kept else str(row.name),
                     "latitude": float(row.latitude), "longitude": float(row.longitude),
                     "timezone": kept[row.id].timezone if row.id in kept else zone}
            try:
                locations.append(Location.model_validate(entry))
            except ValidationError as exc:
                detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                   for e in exc.errors())
                raise LocationsMismatch(
                    f"station {row.id!r} ({row.name}) of column {self.csv.mapping.location!r} "
                    f"cannot be a location ({detail}); map it to an id in "
                    "source.csv.mapping.location_values, or pass --timezone") from None
        dropped = sorted(set(kept) - {loc.id for loc in locations})
        if dropped:
            log.warning("locations: %s of params.yaml have no row in the file(s): removed",
                        dropped)
        atomic_write_text(self.path, replace_locations(self.path.read_text(encoding="utf-8"),
                                                       locations))
        log.info("locations: %d location(s) written to %s", len(locations), self.path)
        return LocationsReport(stations, locations, written=self.path)
