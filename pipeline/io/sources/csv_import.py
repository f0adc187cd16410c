"""History import from CSV/Parquet exports (national networks, OpenAQ).

The column mapping in ``params.yaml`` (``source.csv``) says which column holds
the time and its timezone, the location, each variable and its unit. Files are
either wide (one column per variable) or long (one row per time and variable,
as OpenAQ exports them). Real files are messy, so:

* naive local times are localised in ``time_zone``; the repeated hour of a
  daylight-saving fall-back is told apart by file order (first = summer time);
  a local time that does not exist (spring-forward) or cannot be told apart
  becomes a missing time and is quarantined by validation, not guessed;
* times carrying an offset (``+01:00``, ``Z``) keep it;
* a variable whose column a file lacks is NaN for that file's rows;
* values are converted from the mapped unit (ppb, mg/m3, degF, km/h...);
* duplicate timestamps are passed on and resolved by validation (exact copies
  collapse, conflicting ones are quarantined with a reason);
* a time may be split over ``year, month, day, hour`` columns, be in a fixed UTC
  offset without daylight saving (``+08:00``) and label the end of its hour
  (``hour_ending``: stored at the hour before, the canonical start of the hour);
* in the long layout each reading stands alone: a negative or impossible one, and
  a repeated (location, time, parameter), is quarantined with its reason without
  costing the other parameters of that hour;
* wind given as a compass category and a speed cumulated since the category last
  changed (``mapping.wind``) becomes the canonical direction and hourly speed.

Files are read in chunks of :data:`CHUNK_ROWS` rows (only the mapped columns), once
per source: the parsed rows go to Parquet pieces by year in a temporary directory
(:class:`_Spool`), and each requested window reads its years, so memory follows a
chunk and the window, not the file size, and a backfill costs one pass, not one per
window.
What the mapping does not state is detected, and what stays ambiguous is
refused with the option to set: the separator (``separator``), dates that
read both day-first and month-first (``day_first`` or ``time_format``), a
decimal comma (``decimal``), a value column with no number in it. Columns the
mapping ignores are listed in the log.
"""

from __future__ import annotations

import glob
import gzip
import logging
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.config import TimeParts, fixed_offset
from pipeline.core.units import (
    UnitError,
    check_unit,
    compass_degrees,
    hourly_from_cumulated,
    to_canonical,
)
from pipeline.core.validation import REASON
from pipeline.io.sources.base import FetchResult, SourceError, SourceStats
from pipeline.schema import (
    COVARIATE_PREFIX,
    KEYS,
    VALUE_COLUMNS,
    VARIABLES,
    conform,
    covariate_column,
    empty_frame,
)

if TYPE_CHECKING:
    from pipeline.config import CsvSource as CsvConfig
    from pipeline.config import Location

log = logging.getLogger(__name__)

# long-layout parameter names seen in exports, besides the canonical names
PARAMETER_ALIASES = {
    "pm25": "pm2_5",
    "pm2.5": "pm2_5",
    "pm2_5": "pm2_5",
    "temperature": "temperature_2m",
    "relativehumidity": "relative_humidity_2m",
    "wind_speed": "wind_speed_10m",
    "wind_direction": "wind_direction_10m",
    "pressure": "surface_pressure",
}
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")
# dd/mm/yyyy or mm/dd/yyyy (also with . or -): which is which is decided per file
_NUMERIC_DATE = re.compile(r"^(\d{1,2})[./-](\d{1,2})[./-]\d{4}\b")
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
SEPARATORS = (",", ";", "\t", "|")
CHUNK_ROWS = 200_000
_HOUR_24 = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T]24:00(:00)?$")
TIME_NOTE = "time_note"  # why a row's time is missing (its quarantine reason)
CATEGORY = "category"  # a refused reading's reason category (counted like validation's)
HOUR = pd.Timedelta(hours=1)
_NOT_ID = re.compile(r"[^a-z0-9]+")


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine, mean Earth radius)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat, dlon = p2 - p1, np.radians(lon2 - lon1)
    h = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return float(2 * 6_371_008.8 * np.arcsin(np.sqrt(min(1.0, h))))


def location_id_of(value: str) -> str:
    """A station value as a location id: lower case, every run of other characters than a-z
    and 0-9 as one "_" ("Windsor West 1" -> "windsor_west_1", "2144" stays)."""
    return _NOT_ID.sub("_", str(value).strip().lower()).strip("_")


class CsvImportError(SourceError):
    """The file or the mapping cannot work at all (missing file, time column, layout)."""


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(".parquet")


def _head_lines(path: Path, n: int = 20) -> list[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
            lines = []
            for line in handle:
                lines.append(line[:100_000])
                if len(lines) >= n:
                    break
            return lines
    except OSError as exc:
        raise CsvImportError(f"csv: cannot read {path}: {exc}") from None


def detect_separator(path: Path) -> str:
    """The one candidate separator that splits the header and every sampled line alike."""
    lines = [line for line in _head_lines(path) if line.strip()]
    if not lines:
        return ","
    header, rows = lines[0], lines[1:]
    fits = [sep for sep in SEPARATORS
            if header.count(sep) > 0 and all(r.count(sep) == header.count(sep) for r in rows)]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        present = [sep for sep in SEPARATORS if header.count(sep) > 0]
        if not present:
            return ","  # one column
        fits = present
    shown = ", ".join(repr(s) for s in fits)
    raise CsvImportError(
        f"csv: {path.name}: cannot tell the separator (the header splits on {shown}); "
        "set source.csv.separator")


def _read_chunks(path: Path, separator: str, columns: set[str] | None = None
                 ) -> Iterator[pd.DataFrame]:
    """The file in chunks of CHUNK_ROWS rows (values as text; Parquet as stored), only the
    ``columns`` it has of those named (all when None): text columns cost most of the time."""
    try:
        if _is_parquet(path):
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path)
            names = [c for c in parquet.schema_arrow.names if columns is None or c in columns]
            for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=names):
                yield batch.to_pandas()
            return
        yield from pd.read_csv(path, sep=separator, dtype=str, keep_default_na=True,
                               skipinitialspace=True, chunksize=CHUNK_ROWS,
                               usecols=None if columns is None else (lambda c: c in columns))
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise CsvImportError(f"csv: cannot read {path}: {exc}") from None


def _non_iso(text: pd.Series) -> pd.Series:
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
    return text[parsed.isna() & text.notna()]


def _parse_naive_strings(raw: pd.Series, time_format: str | None,
                         day_first: bool = False) -> pd.Series:
    text = raw.astype("string").str.strip()
    # "24:00" (end of day) as some networks write it -> 00:00 of the next day
    is_24 = text.str.match(_HOUR_24).fillna(False).astype(bool)
    shifted = text.where(~is_24, text.str.slice(0, 10) + " 00:00")
    if time_format:
        parsed = pd.to_datetime(shifted, format=time_format, errors="coerce")
    else:
        parsed = pd.to_datetime(shifted, format="ISO8601", errors="coerce")
        retry = parsed.isna() & shifted.notna()
        if retry.any():  # e.g. "31/03/2024 02:00" is not ISO: the order was detected per file
            parsed[retry] = pd.to_datetime(shifted[retry], errors="coerce", dayfirst=day_first,
                                           format="mixed")
    return parsed.where(~is_24, parsed + pd.Timedelta(days=1))


def localize(naive: pd.Series, zone: str, groups: pd.Series,
             ) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(UTC times, anchor times, time notes) of naive local wall times in ``zone``.

    The fall-back hour occurs twice: per group, in file order, the first
    occurrence is summer time and the later ones standard time; an ambiguous
    hour seen only once, and a spring-forward hour that never existed, become
    NaT with a note saying so (the quarantine reason: a file written in UTC or
    GMT but configured with a zone that has daylight saving shows exactly these).
    The anchor is a best-effort time used only to place such rows in a window,
    so they reach validation (and quarantine) exactly once.
    """
    notes = pd.Series(None, index=naive.index, dtype="object")
    fixed = fixed_offset(zone)
    if fixed is not None:  # a fixed offset has no daylight saving: every wall time is one hour
        utc = naive.dt.tz_localize(fixed).dt.tz_convert("UTC")
        return utc, utc, notes
    n = len(naive)
    as_dst = naive.dt.tz_localize(zone, ambiguous=np.ones(n, dtype=bool), nonexistent="NaT")
    as_std = naive.dt.tz_localize(zone, ambiguous=np.zeros(n, dtype=bool), nonexistent="NaT")
    ambiguous = as_dst.notna() & as_std.notna() & (as_dst != as_std)
    result = as_dst.copy()
    if ambiguous.any():
        keys = [groups[ambiguous], naive[ambiguous]]
        occurrence = naive[ambiguous].groupby(keys, sort=False).cumcount()
        count = naive[ambiguous].groupby(keys, sort=False).transform("size")
        later = occurrence.index[occurrence.to_numpy() > 0]
        result.loc[later] = as_std.loc[later]
        lone = count.index[count.to_numpy() == 1]
        if len(lone):
            log.warning("csv: %d row(s) at an ambiguous local time (daylight-saving fall-back) "
                        "appear only once; their hour cannot be told: quarantined", len(lone))
            result.loc[lone] = pd.NaT
            notes.loc[lone] = [
                f"hour repeated at a daylight-saving change: local time {t:%Y-%m-%d %H:%M} "
                f"occurs twice in {zone} but once in the file, so its UTC hour cannot be "
                f"told; check source.csv.time_zone (a file in UTC or GMT needs 'UTC')"
                for t in naive.loc[lone]]
    nonexistent = naive.notna() & as_dst.isna()
    if nonexistent.any():
        log.warning("csv: %d row(s) at a local time that does not exist in %s "
                    "(daylight-saving spring-forward): quarantined", int(nonexistent.sum()), zone)
        notes.loc[nonexistent] = [
            f"hour missing at a daylight-saving change: local time {t:%Y-%m-%d %H:%M} does not "
            f"exist in {zone}; check source.csv.time_zone (a file in UTC or GMT needs 'UTC')"
            for t in naive[nonexistent]]
    utc = result.dt.tz_convert("UTC")
    # a time that could not be placed still needs a window (to be quarantined exactly once):
    # its wall time read as UTC is close enough
    anchor = utc.where(utc.notna(), naive.dt.tz_localize("UTC"))
    return utc, anchor, notes


@dataclass
class _Pass:
    """What one pass over one file carries from chunk to chunk."""

    path: Path
    missing: set = field(default_factory=set)  # variables whose mapped column the file lacks
    wind: dict = field(default_factory=dict)  # location -> last (hour, category, cumulated)
    rows: int = 0  # rows read so far
    seen: set = field(default_factory=set)  # every location id of the file
    refused: list[pd.DataFrame] = field(default_factory=list)  # long layout: refused readings


@dataclass
class _Spool:
    """One file parsed once: its rows (and refused readings) in Parquet pieces by year of
    their anchor, in file order, so each window of a backfill reads its years instead of the
    whole file again. Valid while the file keeps its size and modification time."""

    root: Path
    stamp: tuple[int, int]
    missing: set
    seen: set
    rows: int = 0

    def read(self, kind: str, start: pd.Timestamp | None, end: pd.Timestamp | None
             ) -> list[pd.DataFrame]:
        """The ``kind`` ("rows" or "refused") pieces whose anchors fall in [start, end)."""
        first = None if start is None else (start - pd.Timedelta(days=1)).year
        last = None if end is None else (end + pd.Timedelta(days=1)).year
        parts = []
        for piece in sorted(self.root.glob(f"{kind}-*.parquet")):
            year = int(piece.name.split("-")[1])
            if (first is not None and year < first) or (last is not None and year > last):
                continue
            part = pd.read_parquet(piece)
            keep = pd.Series(True, index=part.index)
            if start is not None:
                keep &= part["anchor"] >= start
            if end is not None:
                keep &= part["anchor"] < end
            if keep.any():
                parts.append(part[keep])
        return parts


def _write_pieces(root: Path, kind: str, number: int, frame: pd.DataFrame) -> None:
    """``frame`` as one Parquet piece per anchor year (``<kind>-<year>-<chunk>.parquet``);
    rows without an anchor can fall in no window and are not kept."""
    if not len(frame):
        return
    years = frame["anchor"].dt.year
    for year, part in frame.groupby(years, sort=True):
        part.to_parquet(root / f"{kind}-{int(year):04d}-{number:06d}.parquet", index=False)


def _naive_from_parts(table: pd.DataFrame, parts: TimeParts) -> pd.Series:
    """Naive wall times from whole-number year, month, day, hour columns (hour 24 = 00:00 of
    the next day); NaT where a part is missing, not a whole number or out of range."""
    numbers = {}
    for name in ("year", "month", "day", "hour"):
        raw = table[getattr(parts, name)]
        text = raw if pd.api.types.is_numeric_dtype(raw) else raw.astype("string").str.strip()
        value = pd.to_numeric(text, errors="coerce")
        numbers[name] = value.where(value == np.floor(value))
    hour = numbers["hour"]
    ok = pd.concat(numbers, axis=1).notna().all(axis=1) & hour.between(0, 24)
    ok &= numbers["year"].between(1900, 2200)
    days = pd.Series(pd.NaT, index=table.index, dtype="datetime64[ns]")
    if ok.any():
        days[ok] = pd.to_datetime(pd.DataFrame({k: numbers[k][ok].astype("int64")
                                                for k in ("year", "month", "day")}),
                                  errors="coerce")
    return days + pd.to_timedelta(hour.where(ok), unit="h")


class CsvSource:
    """Canonical rows from local export files, validated like any provider's."""

    name = "csv"
    max_days_per_request = 366

    def __init__(self, config: CsvConfig, base_dir: Path | str | None = None,
                 data_dir: Path | str | None = None) -> None:
        """``base_dir``: the project directory; ``data_dir`` (``AQ_CSV_DIR``), when set, is
        where a relative ``path`` is looked for instead."""
        if not config.path:
            raise CsvImportError("source.csv.path is empty: name the file (or glob) to import")
        if config.mapping.location is None and config.location_id is None:
            raise CsvImportError(
                "source.csv needs mapping.location (a column naming the location) or "
                "location_id (the one location a single-station file belongs to)")
        self.config = config
        if base_dir is None:
            from pipeline.paths import ProjectPaths

            base_dir = ProjectPaths.discover().root
        self.base_dir = Path(base_dir)
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self._day_first: dict[Path, bool] = {}
        self._headers: dict[Path, list[str]] = {}
        self._spools: dict[Path, _Spool] = {}
        self._spool_root: Path | None = None

    # -- files

    def files(self) -> list[Path]:
        pattern = Path(self.config.path).expanduser()
        if not pattern.is_absolute():
            pattern = (self.data_dir or self.base_dir) / pattern
        matches = sorted(Path(p) for p in glob.glob(str(pattern)))
        files = [p for p in matches if p.is_file()]
        if not files:
            where = (f"AQ_CSV_DIR={str(self.data_dir)!r}" if self.data_dir else
                     "the project directory (set AQ_CSV_DIR to look elsewhere)")
            raise CsvImportError(f"csv: no file matches source.csv.path {str(pattern)!r} "
                                 f"(a relative path is looked for in {where})")
        return files

    def separator(self, path: Path) -> str:
        return "," if _is_parquet(path) else (self.config.separator or detect_separator(path))

    def chunks(self, path: Path, columns: set[str] | None = None) -> Iterator[pd.DataFrame]:
        """The file's rows in chunks of :data:`CHUNK_ROWS`, as text (Parquet as stored)."""
        return _read_chunks(path, self.separator(path), columns)

    def header(self, path: Path) -> list[str]:
        """The file's column names (for messages: chunks hold only the mapped ones)."""
        if path not in self._headers:
            try:
                if _is_parquet(path):
                    import pyarrow.parquet as pq

                    self._headers[path] = list(pq.ParquetFile(path).schema_arrow.names)
                else:
                    self._headers[path] = list(pd.read_csv(path, sep=self.separator(path),
                                                           nrows=0, skipinitialspace=True).columns)
            except (OSError, ValueError, pd.errors.ParserError) as exc:
                raise CsvImportError(f"csv: cannot read {path}: {exc}") from None
        return self._headers[path]

    def mapped_columns(self, stations: bool = False) -> set[str]:
        """The file columns the mapping reads (``stations``: with the coordinates and names)."""
        mapping = self.config.mapping
        used = {*self._time_columns(), mapping.location, mapping.parameter, mapping.value,
                mapping.unit}
        if stations:
            used |= {mapping.latitude, mapping.longitude, mapping.location_name}
        used |= set(mapping.columns.values()) if mapping.columns else set(VALUE_COLUMNS)
        used |= set(mapping.covariates.values())
        if mapping.wind is not None:
            used |= {mapping.wind.direction, mapping.wind.speed}
        return used - {None}

    # -- parsing

    def _time_columns(self) -> list[str]:
        time = self.config.mapping.time
        if isinstance(time, TimeParts):
            return [time.year, time.month, time.day, time.hour]
        return [time]

    def _time_text(self, table: pd.DataFrame) -> pd.Series:
        """A row's time as written (parts joined), for messages; NA where every part is empty."""
        columns = self._time_columns()
        if len(columns) == 1:
            return table[columns[0]]
        parts = table[columns].astype("string")
        text = parts[columns[0]].fillna("").str.cat(
            [parts[c].fillna("") for c in columns[1:]], sep="-")
        return text.where(parts.notna().any(axis=1))

    def _times(self, table: pd.DataFrame, path: Path, groups: pd.Series):
        """(UTC hour starts, anchors, notes saying why a time is missing) of a chunk's rows."""
        utc, anchor, notes = self._parse_times(table, path, groups)
        lost = utc.isna() & notes.isna()
        if lost.any():
            columns = self._time_columns()
            raw = self._time_text(table)
            notes = notes.copy()
            notes[lost & raw.isna()] = f"no time in column(s) {columns}"
            unreadable = lost & raw.notna()
            option = ("source.csv.mapping.time: whole numbers, hour 0-24" if len(columns) > 1
                      else "source.csv.time_format, day_first")
            notes[unreadable] = [f"time {str(v)[:40]!r} cannot be read ({option})"
                                 for v in raw[unreadable]]
        if self.config.hour_ending:  # a label at the end of the hour: the hour started before
            utc, anchor = utc - HOUR, anchor - HOUR
        return utc, anchor, notes

    def _parse_times(self, table: pd.DataFrame, path: Path, groups: pd.Series):
        mapping = self.config.mapping
        none = pd.Series(None, index=table.index, dtype="object")
        absent = [c for c in self._time_columns() if c not in table.columns]
        if absent:
            which = (f"no time column {absent[0]!r}" if len(absent) == 1
                     else f"no time columns {absent}")
            raise CsvImportError(f"csv: {path.name}: {which} (columns: {self.header(path)}); "
                                 "set source.csv.mapping.time")
        if isinstance(mapping.time, TimeParts):
            parsed = _naive_from_parts(table, mapping.time)
            written = table[self._time_columns()].notna().any(axis=1)
            raw = written.where(written)  # NaN where no part is written (only .notna() is used)
        else:
            column = mapping.time
            raw = table[column]
            if pd.api.types.is_datetime64_any_dtype(raw):
                parsed = raw
            else:
                text = raw.astype("string").str.strip()
                has_offset = text.str.contains(_OFFSET, na=False)
                if has_offset.all():
                    utc = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
                    return utc, utc.ffill().bfill(), none
                if has_offset.any():
                    raise CsvImportError(
                        f"csv: {path.name}: column {column!r} mixes times with and without a "
                        f"UTC offset ({int(has_offset.sum())} of {len(text)} row(s) of this "
                        f"chunk have one, e.g. {text[has_offset].iloc[0]!r} and "
                        f"{text[~has_offset].iloc[0]!r}); write them alike (source.csv."
                        "time_zone applies to times without one)")
                parsed = _parse_naive_strings(raw, self.config.time_format,
                                              self._day_first.get(path, False))
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            utc = parsed.dt.tz_convert("UTC")
            return utc, utc.ffill().bfill(), none
        unreadable = int((parsed.isna() & raw.notna()).sum())
        if unreadable:
            log.warning("csv: %s: %d time value(s) unreadable: quarantined", path.name, unreadable)
        utc, anchor, notes = localize(parsed, self.config.time_zone, groups)
        return utc, anchor.ffill().bfill(), notes

    def _locations(self, table: pd.DataFrame, path: Path) -> pd.Series:
        mapping = self.config.mapping
        if mapping.location is None:
            return pd.Series(self.config.location_id, index=table.index, dtype="object")
        if mapping.location not in table.columns:
            raise CsvImportError(f"csv: {path.name}: no location column {mapping.location!r} "
                                 f"(columns: {self.header(path)}); set "
                                 "source.csv.mapping.location")
        codes, values = pd.factorize(table[mapping.location].astype("string").str.strip())
        ids = np.array([mapping.location_values.get(v, location_id_of(v)) for v in values] + [None],
                       dtype="object")
        return pd.Series(ids[codes], index=table.index, dtype="object")  # code -1: missing

    def _unit(self, unit: str) -> str:
        return self.config.mapping.unit_values.get(unit, unit)

    def _convert(self, variable: str, values: pd.Series, unit: str, where: str,
                 column: str) -> np.ndarray:
        numeric = self._numbers(variable, values, where, column)
        if variable.startswith(COVARIATE_PREFIX):  # a covariate: values as in the file
            return numeric.to_numpy(dtype="float64")
        try:
            return to_canonical(variable, numeric.to_numpy(dtype="float64"), self._unit(unit))
        except UnitError as exc:
            raise CsvImportError(f"csv: {where}: column {column!r} ({len(values)} row(s)): {exc}; "
                                 "set source.csv.mapping.units (or unit_values)") from None

    def _numbers(self, variable: str, values: pd.Series, where: str, column: str) -> pd.Series:
        """A column's cells as numbers (NaN where empty); junk refused or warned about."""
        is_text = not pd.api.types.is_numeric_dtype(values)  # CSV cells; Parquet may be numbers
        text = values.astype("string").str.strip() if is_text else values
        if self.config.decimal == "," and is_text:
            text = text.str.replace(",", ".", regex=False)
        numeric = pd.to_numeric(text, errors="coerce")
        junk_mask = numeric.isna() & values.notna()
        if junk_mask.any() and self.config.decimal is None and is_text:
            commas = text[junk_mask].str.match(_DECIMAL_COMMA).fillna(False).astype(bool)
            if commas.any():
                raise CsvImportError(
                    f"csv: {where}: column {column!r}: {int(commas.sum())} of {len(values)} "
                    f"{variable} value(s) of this chunk use a decimal comma "
                    f"(e.g. {text[junk_mask][commas].iloc[0]!r}); set source.csv.decimal: ','")
        if junk_mask.any() and numeric.notna().sum() == 0:
            raise CsvImportError(
                f"csv: {where}: column {column!r}: no {variable} value is a number (e.g. "
                f"{values[junk_mask].iloc[0]!r}) in {int(junk_mask.sum())} row(s); check "
                "source.csv.mapping, separator and decimal")
        junk = int(junk_mask.sum())
        if junk:
            log.warning("csv: %s: %d non-numeric %s value(s) in column %r read as missing",
                        where, junk, variable, column)
        return numeric

    def _wide(self, table: pd.DataFrame, path: Path, missing: set) -> dict:
        mapping = self.config.mapping
        columns = dict(mapping.columns) or {v: v for v in VALUE_COLUMNS if v in table.columns
                                            and (mapping.wind is None
                                                 or not v.startswith("wind_"))}
        columns.update({covariate_column(name): column
                        for name, column in mapping.covariates.items()})
        values = {}
        for variable, column in columns.items():
            if column not in table.columns:
                missing.add(variable)
                continue
            unit = mapping.units.get(variable, VARIABLES[variable].unit) \
                if variable in VARIABLES else ""
            values[variable] = self._convert(variable, table[column], unit, path.name, column)
        return values

    def _wind(self, table: pd.DataFrame, locations: pd.Series, utc: pd.Series,
              state: _Pass) -> dict[str, np.ndarray]:
        """Canonical wind of every row of a chunk (in file order: a cumulated speed needs the
        row before, carried over from the previous chunk)."""
        wind, name = self.config.mapping.wind, state.path.name
        for column, key in ((wind.direction, "direction"), (wind.speed, "speed")):
            if column is not None and column not in table.columns:
                raise CsvImportError(f"csv: {name}: no wind {key} column {column!r} (columns: "
                                     f"{self.header(state.path)}); set "
                                     f"source.csv.mapping.wind.{key}")
        categories = table[wind.direction].astype("string").str.strip()
        degrees, unknown = compass_degrees(categories, wind.directions)
        if unknown:
            rows = int(categories.isin(unknown).sum())
            raise CsvImportError(
                f"csv: {name}: column {wind.direction!r}: {rows} row(s) among rows "
                f"{state.rows + 1}..{state.rows + len(table)} hold compass categories that "
                f"source.csv.mapping.wind.directions does not map ({unknown[:10]}); add them "
                "(degrees the wind blows from, or null for calm or variable)")
        out = {"wind_direction_10m": degrees}
        if wind.speed is None:
            return out
        speed = self._convert("wind_speed_10m", table[wind.speed], wind.speed_unit, name,
                              wind.speed)
        if not wind.speed_cumulated:
            out["wind_speed_10m"] = speed
            return out
        known = utc.notna().to_numpy()
        hours = (utc[known] - pd.Timestamp(0, tz="UTC")) // HOUR
        hourly = np.full(len(table), np.nan)
        try:
            hourly[known], state.wind = hourly_from_cumulated(
                speed[known], categories[known].to_numpy(dtype="object", na_value=None),
                hours.to_numpy(dtype="int64"), locations[known], state.wind)
        except ValueError as exc:
            raise CsvImportError(
                f"csv: {name}: column {wind.speed!r} is cumulated (source.csv.mapping.wind."
                f"speed_cumulated) but {exc} in rows {state.rows + 1}..{state.rows + len(table)}"
                "; sort the file by location and time, or set speed_cumulated: false") from None
        untold = int((np.isnan(hourly) & ~np.isnan(speed)).sum())
        if untold:
            log.info("csv: %s: %d hourly wind speed(s) in rows %d..%d cannot be told from the "
                     "cumulated column %r (first row, after a gap or a decrease): missing",
                     name, untold, state.rows + 1, state.rows + len(table), wind.speed)
        out["wind_speed_10m"] = hourly
        return out

    def _long_rows(self, table: pd.DataFrame, state: _Pass, base: pd.DataFrame) -> pd.DataFrame:
        """One row per (location, time, variable) with its canonical value (a chunk's); the
        readings no variable can hold go to ``state.refused`` with their reason."""
        mapping, name = self.config.mapping, state.path.name
        for column, key in ((mapping.parameter, "parameter"), (mapping.value, "value"),
                            (mapping.unit, "unit")):
            if column is not None and column not in table.columns:
                raise CsvImportError(f"csv: {name}: no column {column!r} (columns: "
                                     f"{self.header(state.path)}); set source.csv.mapping.{key}")
        aliases = {**PARAMETER_ALIASES, **{v: v for v in VALUE_COLUMNS}, **mapping.parameters,
                   **{parameter: covariate_column(cov)
                      for cov, parameter in mapping.covariates.items()}}
        names = table[mapping.parameter].astype("string").str.strip()
        codes, found = pd.factorize(names)
        lookup = np.array([aliases.get(n, aliases.get(str(n).lower())) for n in found] + [None],
                          dtype="object")
        variables = pd.Series(lookup[codes], index=table.index, dtype="object")
        known = variables.notna()
        if (~known).any():
            log.info("csv: %s: %d row(s) of parameters not in the schema ignored (%s)",
                     name, int((~known).sum()), sorted(set(names[~known].dropna()))[:10])
        rows = base[known].copy()
        rows["variable"] = variables[known].to_numpy()
        rows["raw"] = table.loc[known, mapping.value].to_numpy()
        if mapping.unit is not None:
            rows["unit"] = table.loc[known, mapping.unit].astype("string").str.strip().to_numpy()
        else:
            rows["unit"] = [mapping.units.get(v, VARIABLES[v].unit) if v in VARIABLES else ""
                            for v in rows["variable"]]
        rows["value"] = np.nan
        among = f"among rows {state.rows + 1}..{state.rows + len(table)}"
        for (variable, unit), part in rows.groupby(["variable", "unit"], sort=True,
                                                   dropna=False):
            if mapping.unit is not None and not variable.startswith(COVARIATE_PREFIX):
                problem = "have no unit" if pd.isna(unit) else None
                if problem is None:
                    try:
                        check_unit(variable, self._unit(unit))
                    except UnitError as exc:
                        problem = f"are in unit {unit!r}: {exc}"
                if problem:
                    raise CsvImportError(
                        f"csv: {name}: column {mapping.unit!r}: {len(part)} {variable} row(s) "
                        f"{among} {problem}; set source.csv.mapping.unit_values (a spelling "
                        "in the file -> a known unit) or mapping.parameters")
            rows.loc[part.index, "value"] = self._convert(
                variable, part["raw"], unit, f"{name} ({variable})", mapping.value)
        bad, reasons, categories = _impossible(rows)
        if bad.any():
            refused = rows[bad].assign(**{REASON: reasons, CATEGORY: categories})
            state.refused.append(refused.drop(columns=["raw", "unit"]))
        return rows[~bad].drop(columns=["raw", "unit"])

    def _pivot(self, rows: pd.DataFrame, path: Path) -> pd.DataFrame:
        """Long rows of a whole file (window only) as one wide row per (location, time)."""
        keys = ["location_id", "time", "anchor"]
        # one wide row per (location, time); rows without a time (quarantined later) are no
        # hour at all: each stays a row of its own
        untimed = rows["time"].isna()
        rows["seq"] = 0
        rows.loc[untimed, "seq"] = rows[untimed].groupby(
            [*keys, "variable"], dropna=False, sort=False).cumcount()
        rows["key"] = rows.groupby([*keys, "seq"], dropna=False, sort=False).ngroup()
        values = rows.pivot(index="key", columns="variable", values="value")
        wide = rows.drop_duplicates("key").set_index("key")[[*keys, TIME_NOTE]].join(values)
        wide.columns.name = None
        return wide.reset_index(drop=True)

    def _detect_day_first(self, path: Path, separator: str) -> None:
        """Decide, once per file, whether non-ISO dates are day-first; refuse if both work."""
        config = self.config
        if config.time_format or path in self._day_first:
            return
        if isinstance(config.mapping.time, TimeParts):
            return
        if config.day_first is not None:
            self._day_first[path] = config.day_first
            return
        first_over_12 = second_over_12 = None  # an example of each, once seen
        differ = None
        for table in _read_chunks(path, separator, {config.mapping.time}):
            if config.mapping.time not in table.columns:
                return  # reported with the columns when the chunk is parsed
            raw = table[config.mapping.time]
            if pd.api.types.is_datetime64_any_dtype(raw):
                return
            text = raw.astype("string").str.strip()
            text = _non_iso(text[~text.str.contains(_OFFSET, na=False)])
            parts = text.str.extract(_NUMERIC_DATE).dropna()
            if parts.empty:
                continue
            first, second = parts[0].astype(int), parts[1].astype(int)
            if first_over_12 is None and (first > 12).any():
                first_over_12 = text[parts.index[(first > 12).to_numpy()][0]]
            if second_over_12 is None and (second > 12).any():
                second_over_12 = text[parts.index[(second > 12).to_numpy()][0]]
            if differ is None and (first != second).any():
                differ = text[parts.index[(first != second).to_numpy()][0]]
        column = config.mapping.time
        if first_over_12 is not None and second_over_12 is not None:
            raise CsvImportError(
                f"csv: {path.name}: column {column!r}: dates are written in both orders "
                f"({first_over_12!r} and {second_over_12!r}); set source.csv.time_format")
        if first_over_12 is None and second_over_12 is None:
            if differ is not None:
                raise CsvImportError(
                    f"csv: {path.name}: column {column!r}: dates such as {differ!r} read both "
                    "day-first and month-first; set source.csv.day_first (true or false) or "
                    "source.csv.time_format")
            self._day_first[path] = False
            return
        self._day_first[path] = first_over_12 is not None
        log.info("csv: %s: dates are %s-first (e.g. %r)", path.name,
                 "day" if self._day_first[path] else "month", first_over_12 or second_over_12)

    def _parse_chunk(self, table: pd.DataFrame, state: _Pass,
                     start: pd.Timestamp | None, end: pd.Timestamp | None) -> pd.DataFrame:
        """Canonical rows plus ``anchor`` of one chunk, only those inside [start, end)."""
        path, mapping = state.path, self.config.mapping
        locations = self._locations(table, path)
        state.seen.update(locations.dropna().unique())
        utc, anchor, notes = self._times(table, path, locations)
        wind = self._wind(table, locations, utc, state) if mapping.wind is not None else {}
        keep = pd.Series(True, index=table.index)
        if start is not None:
            keep &= (anchor >= start).to_numpy()
        if end is not None:
            keep &= (anchor < end).to_numpy()
        mask = keep.to_numpy()
        table, locations, utc, anchor = table[mask], locations[mask], utc[mask], anchor[mask]
        base = pd.DataFrame({"location_id": locations.astype("object"), "time": utc,
                             "anchor": anchor, TIME_NOTE: notes[mask]})
        if mapping.parameter is not None:
            return self._long_rows(table, state, base)
        for variable, array in self._wide(table, path, state.missing).items():
            base[variable] = array
        for variable, array in wind.items():
            base[variable] = array[mask]
        return base

    def _ignored_columns(self, columns: Sequence[str], path: Path) -> None:
        used = self.mapped_columns(stations=True)
        ignored = [c for c in columns if c not in used]
        if ignored:
            log.info("csv: %s: column(s) not in the mapping, ignored: %s", path.name, ignored)

    def _spooled(self, path: Path) -> _Spool:
        """``path`` parsed once (again only when the file changed): one streamed pass, chunk
        by chunk, every row localised, converted and checked as a window would have it."""
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        spool = self._spools.get(path)
        if spool is not None and spool.stamp == stamp:
            return spool
        if spool is not None:
            shutil.rmtree(spool.root, ignore_errors=True)
        if self._spool_root is None:
            self._spool_root = Path(tempfile.mkdtemp(prefix="aq_csv_"))
            weakref.finalize(self, shutil.rmtree, self._spool_root, True)
        root = Path(tempfile.mkdtemp(prefix=f"{path.name}.", dir=self._spool_root))
        separator = self.separator(path)
        self._detect_day_first(path, separator)
        state = _Pass(path)
        started = time.monotonic()
        for number, table in enumerate(_read_chunks(path, separator, self.mapped_columns())):
            if number == 0:
                columns = self.header(path)
                self._ignored_columns(columns, path)
                if self.config.mapping.parameter is None and not self._value_columns(columns):
                    raise CsvImportError(
                        f"csv: {path.name}: no value column found; map them in "
                        f"source.csv.mapping.columns (columns in the file: {columns})")
            table.index = pd.RangeIndex(state.rows, state.rows + len(table))
            _write_pieces(root, "rows", number, self._parse_chunk(table, state, None, None))
            _write_pieces(root, "refused", number, _concat(state.refused))
            state.refused.clear()
            state.rows += len(table)
            log.info("csv: %s: %d row(s) parsed (%.0f s)", path.name, state.rows,
                     time.monotonic() - started)
        if not state.rows:
            log.warning("csv: %s has no rows", path.name)
        log.info("csv: %s: %d row(s) read in %.1f s (read once; each window reads its years)",
                 path.name, state.rows, time.monotonic() - started)
        spool = _Spool(root, stamp, state.missing, state.seen, state.rows)
        self._spools[path] = spool
        return spool

    def _read_file(self, path: Path, missing: dict[str, int], start: pd.Timestamp | None,
                   end: pd.Timestamp | None, seen: set) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(canonical rows, refused readings) of one file inside [start, end); every location
        id of the file is added to ``seen``, every variable it lacks counted in ``missing``."""
        spool = self._spooled(path)
        seen |= spool.seen
        for variable in spool.missing:
            missing[variable] = missing.get(variable, 0) + 1
        parts, refused = spool.read("rows", start, end), spool.read("refused", start, end)
        if not parts:
            return pd.DataFrame(), _concat(refused)
        frame = pd.concat(parts, ignore_index=True)
        if self.config.mapping.parameter is None:
            return frame, _concat(refused)
        frame, repeated = _repeated(frame, path.name)
        return self._pivot(frame, path), _concat([*refused, repeated])

    def _value_columns(self, columns: Sequence[str]) -> list[str]:
        mapping = self.config.mapping
        extra = [c for c in mapping.covariates.values() if c in columns]
        if mapping.wind is not None:
            extra += [c for c in (mapping.wind.direction, mapping.wind.speed) if c in columns]
        if mapping.columns:
            return [c for c in mapping.columns.values() if c in columns] + extra
        return [v for v in VALUE_COLUMNS if v in columns] + extra

    def load(self, start: pd.Timestamp | None = None,
             end: pd.Timestamp | None = None) -> pd.DataFrame:
        """The rows of every file inside [start, end) (all when None), canonical plus ``anchor``.

        Files are streamed chunk by chunk: memory follows the rows kept.
        """
        return self._load(start, end, set())[0]

    def _load(self, start, end, seen: set) -> tuple[pd.DataFrame, pd.DataFrame]:
        files = self.files()
        missing: dict[str, int] = {}
        read = [self._read_file(path, missing, start, end, seen) for path in files]
        for variable, n_files in sorted(missing.items()):
            column = self.config.mapping.columns.get(variable) or \
                self.config.mapping.covariates.get(variable.removeprefix(COVARIATE_PREFIX),
                                                   variable)
            log.warning("csv: column %r (%s) is missing in %d of %d file(s): %s is NaN there",
                        column, variable, n_files, len(files), variable)
        refused = _concat([r for _, r in read])
        parts = [p for p, _ in read if not p.empty]
        if not parts:
            return empty_frame().assign(anchor=pd.Series(dtype="datetime64[us, UTC]"),
                                        **{TIME_NOTE: pd.Series(dtype="object")}), refused
        frame = pd.concat(parts, ignore_index=True)
        anchor = frame.pop("anchor")
        notes = frame.pop(TIME_NOTE)
        frame = conform(frame)
        frame["anchor"] = anchor.to_numpy()
        frame[TIME_NOTE] = notes.to_numpy()
        return frame, refused

    # -- the stations a file describes (python -m pipeline locations)

    def stations(self) -> pd.DataFrame:
        """One row per location id in the files: ``id, name, latitude, longitude, rows,
        spread_m, first, last`` (the most frequent coordinates, and the largest distance in
        metres of any other coordinates of that station from them), in one streamed pass."""
        mapping = self.config.mapping
        if mapping.location is None or mapping.latitude is None:
            missing = "mapping.location" if mapping.location is None else \
                "mapping.latitude and mapping.longitude"
            raise CsvImportError(f"csv: the stations of a file need source.csv.{missing} (the "
                                 "columns naming each station and its coordinates)")
        counts: dict[tuple, int] = {}  # (id, name, lat, lon) -> rows
        span: dict[str, list] = {}  # id -> [first, last] UTC hour
        for path in self.files():
            rows = 0
            self._detect_day_first(path, self.separator(path))
            for table in self.chunks(path, self.mapped_columns(stations=True)):
                needed = [c for c in (mapping.latitude, mapping.longitude, mapping.location_name)
                          if c is not None]
                absent = [c for c in needed if c not in table.columns]
                if absent:
                    raise CsvImportError(f"csv: {path.name}: no column(s) {absent} (columns: "
                                         f"{self.header(path)}); set source.csv.mapping."
                                         "latitude, longitude, location_name")
                table.index = pd.RangeIndex(rows, rows + len(table))
                ids = self._locations(table, path)
                lat = self._numbers("latitude", table[mapping.latitude], path.name,
                                    mapping.latitude).round(6)
                lon = self._numbers("longitude", table[mapping.longitude], path.name,
                                    mapping.longitude).round(6)
                names = (table[mapping.location_name].astype("string").str.strip()
                         if mapping.location_name else ids)
                part = pd.DataFrame({"id": ids, "name": names, "lat": lat, "lon": lon})
                bad = part["id"].isna() | (part["id"] == "") | lat.isna() | lon.isna()
                if bad.any():
                    raise CsvImportError(
                        f"csv: {path.name}: {int(bad.sum())} row(s) near row {rows + 1} have no "
                        f"station (column {mapping.location!r}) or no coordinates (columns "
                        f"{mapping.latitude!r}, {mapping.longitude!r}); fix source.csv.mapping")
                for key, n in part.groupby(["id", "name", "lat", "lon"], sort=False).size().items():
                    counts[key] = counts.get(key, 0) + int(n)
                utc, _, _ = self._times(table, path, ids)
                hours = pd.DataFrame({"id": ids, "t": utc}).groupby("id")["t"].agg(["min", "max"])
                for sid, (first, last) in hours.iterrows():
                    known = span.setdefault(sid, [first, last])
                    known[0] = min(known[0], first) if pd.notna(first) else known[0]
                    known[1] = max(known[1], last) if pd.notna(last) else known[1]
                rows += len(table)
        records = []
        for sid in sorted({k[0] for k in counts}):
            mine = {k: n for k, n in counts.items() if k[0] == sid}
            (_, name, lat, lon), _ = max(mine.items(), key=lambda kv: kv[1])
            spread = max(distance_m(lat, lon, k[2], k[3]) for k in mine)
            names = {k[1] for k in mine}
            if len(names) > 1:
                log.info("csv: station %s has %d names in the files (%s): %r is the most "
                         "frequent", sid, len(names), sorted(names)[:5], name)
            records.append({"id": sid, "name": name, "latitude": lat, "longitude": lon,
                            "rows": sum(mine.values()), "spread_m": spread,
                            "first": span[sid][0], "last": span[sid][1]})
        return pd.DataFrame.from_records(
            records, columns=["id", "name", "latitude", "longitude", "rows", "spread_m", "first",
                              "last"])

    # -- the Source interface

    def fetch(self, locations: Sequence[Location], start: pd.Timestamp,
              end: pd.Timestamp) -> FetchResult:
        seen: set = set()
        frame, refused = self._load(start, end, seen)
        wanted = [loc.id for loc in locations]
        in_window = (frame["anchor"] >= start) & (frame["anchor"] < end)
        selected = frame[in_window & frame["location_id"].isin(wanted)]
        others = frame[in_window & ~frame["location_id"].isin(wanted)]
        if len(others):
            log.info("csv: %d row(s) in the window belong to other locations %s: not imported",
                     len(others), sorted(others["location_id"].dropna().unique())[:10])
        counts = selected.groupby("location_id").size()
        # a location the files never name fails; one whose rows are all outside this window
        # (a monitor that started later: each has its own span) has nothing to store here
        column = self.config.mapping.location
        why = (f"column {column!r} never names it (it names {sorted(seen)[:10]}; "
               "source.csv.mapping.location_values maps names to ids)" if column else
               f"the file is source.csv.location_id {self.config.location_id!r}'s")
        failures = {loc_id: f"csv: no rows for {loc_id} in {self.config.path}: {why}"
                    for loc_id in wanted if loc_id not in seen}
        outside = [loc_id for loc_id in wanted
                   if loc_id in seen and int(counts.get(loc_id, 0)) == 0]
        if outside:
            log.info("csv: no rows in [%s, %s) for %s (their rows are outside this window)",
                     start, end, outside)
        rows = selected.drop(columns="anchor").sort_values(list(KEYS), kind="stable")
        notes = rows.pop(TIME_NOTE).to_numpy()
        if len(refused):
            refused = refused[(refused["anchor"] >= start) & (refused["anchor"] < end)
                              & refused["location_id"].isin(wanted)]
        quarantine, reasons = _quarantine_rows(refused)
        return FetchResult(frame=conform(rows), failures=failures, stats=SourceStats(),
                           time_notes={i: str(n) for i, n in enumerate(notes)
                                       if isinstance(n, str)},
                           quarantine=quarantine, quarantine_reasons=reasons)


# ---------------------------------------------------------------- readings refused one by one


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["location_id", "time", "anchor", "variable", "value",
                                     REASON, CATEGORY])
    return pd.concat(frames, ignore_index=True)


def _impossible(rows: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """Long readings no canonical variable can hold: negative or outside the physical range
    (a covariate: not a finite number). Returns the mask, reasons and categories."""
    bad = np.zeros(len(rows), dtype=bool)
    reasons = np.full(len(rows), None, dtype="object")
    categories = np.full(len(rows), None, dtype="object")
    value = rows["value"].to_numpy(dtype="float64")
    variable = rows["variable"].to_numpy(dtype="object")
    for name in pd.unique(variable):
        mine = variable == name
        if name in VARIABLES:
            var = VARIABLES[name]
            out = mine & ~np.isnan(value) & ((value < var.low) | (value > var.high))
        else:
            out = mine & np.isinf(value)
        for i in np.flatnonzero(out):
            raw, unit = rows["raw"].iat[i], rows["unit"].iat[i]
            if name in VARIABLES and value[i] < 0 <= VARIABLES[name].low:
                categories[i] = f"{name}_negative"
                reasons[i] = (f"{name} reading {raw} {unit} is negative: a concentration or "
                              "amount cannot be below zero")
            elif name in VARIABLES:
                var = VARIABLES[name]
                categories[i] = f"{name}_out_of_range"
                reasons[i] = (f"{name}={value[i]:g} outside [{var.low:g}, {var.high:g}] "
                              f"{var.unit} (file: {raw} {unit})")
            else:
                categories[i] = f"{name}_invalid"
                reasons[i] = f"{name}={raw!r}: not a finite number"
        bad |= out
    return bad, list(reasons[bad]), list(categories[bad])


def _repeated(rows: pd.DataFrame, file: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long readings of a (location, time, parameter) seen before: the last one in the file is
    kept, the others are refused (an exact copy loses nothing; different values say so)."""
    key = ["location_id", "time", "variable"]
    timed = rows["time"].notna()
    again = rows.duplicated(key, keep=False) & timed
    if not again.any():
        return rows, _concat([])
    group = rows[again]
    copies = group.groupby(key, sort=False)["value"]
    count = copies.transform("size")
    distinct = group.drop_duplicates([*key, "value"]).groupby(key, sort=False).size()
    distinct = group.join(distinct.rename("distinct"), on=key)["distinct"]
    drop = rows.duplicated(key, keep="last") & timed
    refused = rows[drop].copy()
    exact = (distinct[drop[again]] == 1).to_numpy()
    values = group.groupby(key, sort=False)["value"].agg(
        lambda v: ", ".join(f"{x:g}" for x in v)).rename("values")
    listed = refused.join(values, on=key)["values"]
    refused[REASON] = [
        (f"duplicate reading: {v} of this location and hour appears {int(n)} times in {file} "
         + ("with the same value; one copy was kept" if same else
            f"with different values ({vals}); the last one in the file was kept"))
        for v, n, same, vals in zip(refused["variable"], count[drop[again]], exact, listed,
                                    strict=True)]
    refused[CATEGORY] = "duplicate_key"
    log.warning("csv: %s: %d repeated (location, time, parameter) reading(s) quarantined "
                "(%d exact copies); the last one in the file is kept", file, len(refused),
                int(exact.sum()))
    return rows[~drop], refused


def _quarantine_rows(refused: pd.DataFrame) -> tuple[pd.DataFrame | None, dict[str, int]]:
    """Refused long readings as canonical rows (only the reading's variable set) with a
    ``reason``, and their count per category."""
    if not len(refused):
        return None, {}
    frame = pd.DataFrame({"location_id": refused["location_id"].astype("object"),
                          "time": refused["time"]})
    for variable, part in refused.groupby("variable", sort=True):
        frame.loc[part.index, variable] = part["value"].to_numpy(dtype="float64")
    rows = conform(frame)
    rows[REASON] = refused[REASON].to_numpy()
    counts = refused[CATEGORY].value_counts()
    return rows, {str(k): int(v) for k, v in counts.items()}
