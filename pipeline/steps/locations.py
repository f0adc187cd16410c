"""Write or check ``params.yaml``'s ``locations`` from the stations of the CSV source's files.

A long export (OpenAQ) names many stations, each with its coordinates: one location each.
``python -m pipeline locations`` compares them with ``params.yaml`` and fails naming every
station that disagrees; ``--write`` writes the list (ids from ``source.csv.mapping.location``,
names and coordinates from the mapped columns; a location already there keeps its name and
time zone), keeping every other line of the file. Needs no valid ``locations`` to start with.
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
from pipeline.paths import ProjectPaths
from pipeline.settings import Settings

log = logging.getLogger(__name__)

NEEDS_CONTEXT = False  # params.yaml may have no locations yet: this step writes them
# stands in for an empty locations list so the rest of params.yaml can be validated
_PLACEHOLDER = {"id": "placeholder", "name": "placeholder", "latitude": 0.0, "longitude": 0.0}


@dataclass
class LocationsReport:
    stations: pd.DataFrame
    locations: list[Location]
    problems: list[str] = field(default_factory=list)
    not_imported: list[str] = field(default_factory=list)
    written: Path | None = None


def _load(paths: ProjectPaths) -> tuple[Params, dict, bool]:
    raw = load_yaml(paths.params)
    raw = raw if isinstance(raw, dict) else {}
    empty = not raw.get("locations")
    params = parse_params({**raw, "locations": raw.get("locations") or [_PLACEHOLDER]},
                          str(paths.params))
    if params.source.kind != "csv":
        raise CsvImportError(f"{paths.params}: source.kind is {params.source.kind!r}: locations "
                             "come from the files of a csv source (source.kind: csv)")
    return params, raw, empty


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


def run(paths: ProjectPaths, write: bool = False, timezone: str | None = None
        ) -> LocationsReport:
    params, _raw, empty = _load(paths)
    csv = params.source.csv
    source = CsvSource(csv, base_dir=paths.root, data_dir=Settings.from_env().csv_dir)
    stations = source.stations()
    tolerance = csv.coordinate_tolerance_m
    column = csv.mapping.location
    moved = stations[stations["spread_m"] > tolerance]
    problems = [
        f"station {row.id!r} ({row.name}): its coordinates in columns {csv.mapping.latitude!r}, "
        f"{csv.mapping.longitude!r} are up to {row.spread_m:,.0f} m apart over {row.rows:,} "
        f"row(s) (more than source.csv.coordinate_tolerance_m = {tolerance:g}): a moved monitor "
        "is another location (source.csv.mapping.location_values), or raise the tolerance"
        for row in moved.itertuples(index=False)]
    current = [] if empty else list(params.locations)
    for row in stations.itertuples(index=False):
        log.info("locations: station %s (%s) at %s, %s: %d row(s), %s .. %s", row.id, row.name,
                 row.latitude, row.longitude, row.rows, row.first, row.last)
    if problems:
        raise LocationsMismatch("; ".join(problems))
    if write:
        kept = {loc.id: loc for loc in current}
        zone = timezone or default_timezone(params)
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
                    f"station {row.id!r} ({row.name}) of column {column!r} cannot be a location "
                    f"({detail}); map it to an id in source.csv.mapping.location_values, or "
                    "pass --timezone") from None
        dropped = sorted(set(kept) - {loc.id for loc in locations})
        if dropped:
            log.warning("locations: %s of params.yaml have no row in the file(s): removed",
                        dropped)
        text = replace_locations(paths.params.read_text(encoding="utf-8"), locations)
        atomic_write_text(paths.params, text)
        log.info("locations: %d location(s) written to %s", len(locations), paths.params)
        return LocationsReport(stations, locations, written=paths.params)
    if empty:
        raise LocationsMismatch(f"{paths.params} has no locations; the file(s) have "
                                f"{len(stations)} station(s): run `python -m pipeline locations "
                                "--write`")
    mismatches, not_imported = compare(stations, current, tolerance, column)
    if not_imported:
        log.warning("locations: station(s) %s of the file(s) are not in params.yaml: their rows "
                    "are not imported (`python -m pipeline locations --write` adds them)",
                    not_imported)
    if mismatches:
        raise LocationsMismatch("; ".join(mismatches))
    log.info("locations: the %d location(s) of params.yaml match the file(s)", len(current))
    return LocationsReport(stations, current, not_imported=not_imported)
