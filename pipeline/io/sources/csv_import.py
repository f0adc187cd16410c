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
  collapse, conflicting ones are quarantined with a reason).

Files are read in chunks of :data:`CHUNK_ROWS` rows and only the rows of the
requested window are kept, so memory follows the window, not the file size.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.core.units import UnitError, to_canonical
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


def _read_chunks(path: Path, separator: str) -> Iterator[pd.DataFrame]:
    """The file in chunks of CHUNK_ROWS rows (values as text; Parquet as stored)."""
    try:
        if _is_parquet(path):
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
                yield batch.to_pandas()
            return
        yield from pd.read_csv(path, sep=separator, dtype=str, keep_default_na=True,
                               skipinitialspace=True, chunksize=CHUNK_ROWS)
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
    anchor = naive.dt.tz_localize("UTC")  # wall time as UTC is close enough to pick a window
    return utc, anchor, notes


class CsvSource:
    """Canonical rows from local export files, validated like any provider's."""

    name = "csv"
    max_days_per_request = 366

    def __init__(self, config: CsvConfig, base_dir: Path | str | None = None) -> None:
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
        self._day_first: dict[Path, bool] = {}

    # -- files

    def files(self) -> list[Path]:
        pattern = Path(self.config.path).expanduser()
        if not pattern.is_absolute():
            pattern = self.base_dir / pattern
        matches = sorted(Path(p) for p in glob.glob(str(pattern)))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise CsvImportError(f"csv: no file matches source.csv.path {str(pattern)!r}")
        return files

    # -- parsing

    def _times(self, table: pd.DataFrame, path: Path, groups: pd.Series):
        """(UTC times, anchors, notes saying why a time is missing) of a chunk's rows."""
        utc, anchor, notes = self._parse_times(table, path, groups)
        raw = table[self.config.mapping.time]
        lost = utc.isna() & notes.isna()
        if lost.any():
            notes = notes.copy()
            notes[lost & raw.isna()] = f"no time in column {self.config.mapping.time!r}"
            unreadable = lost & raw.notna()
            notes[unreadable] = [f"time {str(v)[:40]!r} cannot be read (source.csv.time_format, "
                                 "day_first)" for v in raw[unreadable]]
        return utc, anchor, notes

    def _parse_times(self, table: pd.DataFrame, path: Path, groups: pd.Series):
        column = self.config.mapping.time
        none = pd.Series(None, index=table.index, dtype="object")
        if column not in table.columns:
            raise CsvImportError(f"csv: {path.name}: no time column {column!r} "
                                 f"(columns: {list(table.columns)})")
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
                    f"csv: {path.name}: column {column!r} mixes times with and without a UTC "
                    f"offset (e.g. {text[has_offset].iloc[0]!r} and "
                    f"{text[~has_offset].iloc[0]!r})")
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
                                 f"(columns: {list(table.columns)})")
        raw = table[mapping.location].astype("string").str.strip()
        return raw.map(lambda v: mapping.location_values.get(v, v) if v is not pd.NA else v)

    def _convert(self, variable: str, values: pd.Series, unit: str, where: str) -> np.ndarray:
        numeric = self._numbers(variable, values, where)
        if variable.startswith(COVARIATE_PREFIX):  # a covariate: values as in the file
            return numeric.to_numpy(dtype="float64")
        try:
            return to_canonical(variable, numeric.to_numpy(dtype="float64"), unit)
        except UnitError as exc:
            raise CsvImportError(f"csv: {where}: {exc}") from None

    def _numbers(self, variable: str, values: pd.Series, where: str) -> pd.Series:
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
                    f"csv: {where}: {variable} values are written with a decimal comma "
                    f"(e.g. {text[junk_mask][commas].iloc[0]!r}); set source.csv.decimal: ','")
        if junk_mask.any() and numeric.notna().sum() == 0:
            raise CsvImportError(
                f"csv: {where}: no {variable} value is a number (e.g. "
                f"{values[junk_mask].iloc[0]!r}); check source.csv.mapping, separator and "
                "decimal")
        junk = int(junk_mask.sum())
        if junk:
            log.warning("csv: %s: %d non-numeric %s value(s) read as missing", where, junk,
                        variable)
        return numeric

    def _wide(self, table: pd.DataFrame, path: Path, missing: dict[str, int]) -> dict:
        mapping = self.config.mapping
        columns = dict(mapping.columns) or {v: v for v in VALUE_COLUMNS if v in table.columns}
        columns.update({covariate_column(name): column
                        for name, column in mapping.covariates.items()})
        values = {}
        for variable, column in columns.items():
            if column not in table.columns:
                missing[variable] = missing.get(variable, 0) + 1
                continue
            unit = mapping.units.get(variable, VARIABLES[variable].unit) \
                if variable in VARIABLES else ""
            values[variable] = self._convert(variable, table[column], unit, path.name)
        return values

    def _long_rows(self, table: pd.DataFrame, path: Path, base: pd.DataFrame) -> pd.DataFrame:
        """One row per (location, time, variable) with its canonical value (a chunk's)."""
        mapping = self.config.mapping
        for column in (mapping.parameter, mapping.value, mapping.unit):
            if column is not None and column not in table.columns:
                raise CsvImportError(f"csv: {path.name}: no column {column!r} "
                                     f"(columns: {list(table.columns)})")
        aliases = {**PARAMETER_ALIASES, **{v: v for v in VALUE_COLUMNS}, **mapping.parameters,
                   **{parameter: covariate_column(name)
                      for name, parameter in mapping.covariates.items()}}
        names = table[mapping.parameter].astype("string").str.strip()
        variables = names.map(lambda n: aliases.get(n, aliases.get(str(n).lower()))
                              if n is not pd.NA else None)
        known = variables.notna()
        if (~known).any():
            log.info("csv: %s: %d row(s) of parameters not in the schema ignored (%s)",
                     path.name, int((~known).sum()), sorted(set(names[~known].dropna()))[:10])
        rows = base[known].copy()
        rows["variable"] = variables[known].to_numpy()
        rows["raw"] = table.loc[known, mapping.value].to_numpy()
        if mapping.unit is not None:
            rows["unit"] = table.loc[known, mapping.unit].astype("string").str.strip().to_numpy()
        else:
            rows["unit"] = [mapping.units.get(v, VARIABLES[v].unit) if v in VARIABLES else ""
                            for v in rows["variable"]]
        rows["value"] = np.nan
        for (variable, unit), part in rows.groupby(["variable", "unit"], sort=True):
            rows.loc[part.index, "value"] = self._convert(variable, part["raw"], unit,
                                                          f"{path.name} ({variable})")
        return rows.drop(columns=["raw", "unit"])

    def _pivot(self, rows: pd.DataFrame, path: Path) -> pd.DataFrame:
        """Long rows of a whole file (window only) as one wide row per (location, time)."""
        keys = ["location_id", "time", "anchor"]
        dupes = rows.duplicated([*keys, "variable"], keep="last")
        if dupes.any():
            log.warning("csv: %s: %d repeated (location, time, parameter) value(s): the last "
                        "one in the file is kept", path.name, int(dupes.sum()))
        rows = rows[~dupes]
        # one wide row per (location, time); NaT times (quarantined later) are kept as keys
        rows["key"] = rows.groupby(keys, dropna=False, sort=False).ngroup()
        values = rows.pivot(index="key", columns="variable", values="value")
        wide = rows.drop_duplicates("key").set_index("key")[[*keys, TIME_NOTE]].join(values)
        wide.columns.name = None
        return wide.reset_index(drop=True)

    def _detect_day_first(self, path: Path, separator: str) -> None:
        """Decide, once per file, whether non-ISO dates are day-first; refuse if both work."""
        config = self.config
        if config.time_format or path in self._day_first:
            return
        if config.day_first is not None:
            self._day_first[path] = config.day_first
            return
        first_over_12 = second_over_12 = None  # an example of each, once seen
        differ = None
        for table in _read_chunks(path, separator):
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
        if first_over_12 is not None and second_over_12 is not None:
            raise CsvImportError(
                f"csv: {path.name}: dates are written in both orders ({first_over_12!r} and "
                f"{second_over_12!r}); set source.csv.time_format")
        if first_over_12 is None and second_over_12 is None:
            if differ is not None:
                raise CsvImportError(
                    f"csv: {path.name}: dates such as {differ!r} read both day-first and "
                    "month-first; set source.csv.day_first (true or false) or "
                    "source.csv.time_format")
            self._day_first[path] = False
            return
        self._day_first[path] = first_over_12 is not None
        log.info("csv: %s: dates are %s-first (e.g. %r)", path.name,
                 "day" if self._day_first[path] else "month", first_over_12 or second_over_12)

    def _parse_chunk(self, table: pd.DataFrame, path: Path, missing: dict[str, int],
                     start: pd.Timestamp | None, end: pd.Timestamp | None) -> pd.DataFrame:
        """Canonical rows plus ``anchor`` of one chunk, only those inside [start, end)."""
        locations = self._locations(table, path)
        utc, anchor, notes = self._times(table, path, locations)
        keep = pd.Series(True, index=table.index)
        if start is not None:
            keep &= (anchor >= start).to_numpy()
        if end is not None:
            keep &= (anchor < end).to_numpy()
        table, locations, utc, anchor = table[keep], locations[keep], utc[keep], anchor[keep]
        base = pd.DataFrame({"location_id": locations.astype("object"), "time": utc,
                             "anchor": anchor, TIME_NOTE: notes[keep]})
        if self.config.mapping.parameter is not None:
            return self._long_rows(table, path, base)
        values = self._wide(table, path, missing)
        for variable, array in values.items():
            base[variable] = array
        return base

    def _ignored_columns(self, columns: Sequence[str], path: Path) -> None:
        mapping = self.config.mapping
        used = {mapping.time, mapping.location, mapping.parameter, mapping.value, mapping.unit}
        used |= set(mapping.columns.values()) if mapping.columns else set(VALUE_COLUMNS)
        used |= set(mapping.covariates.values())
        ignored = [c for c in columns if c not in used]
        if ignored:
            log.info("csv: %s: column(s) not in the mapping, ignored: %s", path.name, ignored)

    def _read_file(self, path: Path, missing: dict[str, int], start: pd.Timestamp | None,
                   end: pd.Timestamp | None) -> pd.DataFrame:
        separator = "," if _is_parquet(path) else (self.config.separator
                                                   or detect_separator(path))
        self._detect_day_first(path, separator)
        parts, rows, columns = [], 0, None
        for table in _read_chunks(path, separator):
            if columns is None:
                columns = list(table.columns)
                self._ignored_columns(columns, path)
                if self.config.mapping.parameter is None and not self._value_columns(columns):
                    raise CsvImportError(
                        f"csv: {path.name}: no value column found; map them in "
                        f"source.csv.mapping.columns (columns in the file: {columns})")
            rows += len(table)
            part = self._parse_chunk(table, path, missing, start, end)
            if len(part):
                parts.append(part)
        if not rows:
            log.warning("csv: %s has no rows", path.name)
            return pd.DataFrame()
        if not parts:
            return pd.DataFrame()
        frame = pd.concat(parts, ignore_index=True)
        if self.config.mapping.parameter is not None:
            return self._pivot(frame, path)
        return frame

    def _value_columns(self, columns: Sequence[str]) -> list[str]:
        mapping = self.config.mapping
        extra = [c for c in mapping.covariates.values() if c in columns]
        if mapping.columns:
            return [c for c in mapping.columns.values() if c in columns] + extra
        return [v for v in VALUE_COLUMNS if v in columns] + extra

    def load(self, start: pd.Timestamp | None = None,
             end: pd.Timestamp | None = None) -> pd.DataFrame:
        """The rows of every file inside [start, end) (all when None), canonical plus ``anchor``.

        Files are streamed chunk by chunk: memory follows the rows kept.
        """
        files = self.files()
        missing: dict[str, int] = {}
        parts = [self._read_file(path, missing, start, end) for path in files]
        for variable, n_files in sorted(missing.items()):
            column = self.config.mapping.columns.get(variable) or \
                self.config.mapping.covariates.get(variable.removeprefix(COVARIATE_PREFIX),
                                                   variable)
            log.warning("csv: column %r (%s) is missing in %d of %d file(s): %s is NaN there",
                        column, variable, n_files, len(files), variable)
        parts = [p for p in parts if not p.empty]
        if not parts:
            return empty_frame().assign(anchor=pd.Series(dtype="datetime64[us, UTC]"),
                                        **{TIME_NOTE: pd.Series(dtype="object")})
        frame = pd.concat(parts, ignore_index=True)
        anchor = frame.pop("anchor")
        notes = frame.pop(TIME_NOTE)
        frame = conform(frame)
        frame["anchor"] = anchor.to_numpy()
        frame[TIME_NOTE] = notes.to_numpy()
        return frame

    # -- the Source interface

    def fetch(self, locations: Sequence[Location], start: pd.Timestamp,
              end: pd.Timestamp) -> FetchResult:
        frame = self.load(start, end)
        wanted = [loc.id for loc in locations]
        in_window = (frame["anchor"] >= start) & (frame["anchor"] < end)
        selected = frame[in_window & frame["location_id"].isin(wanted)]
        others = frame[in_window & ~frame["location_id"].isin(wanted)]
        if len(others):
            log.info("csv: %d row(s) in the window belong to other locations %s: not imported",
                     len(others), sorted(others["location_id"].dropna().unique())[:10])
        counts = selected.groupby("location_id").size()
        failures = {
            loc_id: f"csv: no rows for {loc_id} in [{start}, {end}) in {self.config.path}"
            for loc_id in wanted
            if int(counts.get(loc_id, 0)) == 0
        }
        rows = selected.drop(columns="anchor").sort_values(list(KEYS), kind="stable")
        notes = rows.pop(TIME_NOTE).to_numpy()
        return FetchResult(frame=conform(rows), failures=failures, stats=SourceStats(),
                           time_notes={i: str(n) for i, n in enumerate(notes)
                                       if isinstance(n, str)})
