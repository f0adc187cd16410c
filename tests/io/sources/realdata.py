"""Small slices of the real data sets of ``../shared/datasets`` (README there), for the import
tests: made here from the shared files when they are present, and committed under
``tests/data/realdata`` (a few kB, provenance in the README there) so the tests also run
without them."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from pathlib import Path

import pytest

from pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "tests" / "data" / "realdata"
BEIJING = "beijing_pm25_2010_2014.csv"
DETROIT = "detroit_windsor_openaq_2016_2026.csv.gz"
SHA256 = {
    BEIJING: "4127f868775e31b3956522adc0ec75af8937dde6a3896e8beed3a376c6d27f1c",
    DETROIT: "ab90cf769000f1a7ed3f6bcfec4d57c43f776f483223256ac756caca48b40066",
}
BEIJING_LINES = 72  # the first three days, 2010-01-01 .. 03: NA, all four wind categories
# (location_id, first, last datetime): a Windsor site's hours with repeated ozone rows, a
# Detroit site's hours where SO2 is negative beside good NO2, CO and PM2.5, and Dearborn's
# hours around a negative PM2.5
DETROIT_WINDOWS = (
    ("1385", "2022-10-28 01:00", "2022-10-28 05:00"),
    ("7002", "2022-10-19 00:00", "2022-10-19 02:00"),
    ("1998", "2022-10-19 20:00", "2022-10-19 22:00"),
)


def shared_file(name: str) -> Path:
    """The shared data file ``name`` (``$AQ_CSV_DIR`` or ``../shared/datasets`` beside the
    checkout), its sha256 checked; the test is skipped, saying why, when it is absent."""
    candidates = [Path(d) for d in (Settings.from_env().csv_dir,) if d]
    candidates.append(REPO.parent / "shared" / "datasets")
    for folder in candidates:
        path = folder / name
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != SHA256[name]:
                pytest.skip(f"{path} is not the published file (sha256 {digest[:12]}..., "
                            f"expected {SHA256[name][:12]}...)")
            return path
    pytest.skip(f"real data set {name} not found in {[str(c) for c in candidates]} "
                "(set AQ_CSV_DIR to the folder of ../shared/datasets/README.md)")


def beijing_slice(source: Path) -> str:
    with open(source, encoding="utf-8", newline="") as handle:
        return "".join(next(handle) for _ in range(BEIJING_LINES + 1))


def detroit_slice(source: Path) -> str:
    """The rows of :data:`DETROIT_WINDOWS`, verbatim and in file order, with the header."""
    out = io.StringIO()
    with gzip.open(source, "rt", encoding="utf-8", newline="") as handle:
        header = next(handle)
        out.write(header)
        names = next(csv.reader([header]))
        at, loc = names.index("datetime"), names.index("location_id")
        sites = [f",{site}," for site, _, _ in DETROIT_WINDOWS]
        for line in handle:
            if not any(site in line for site in sites):  # cheap pre-filter of 1.7 M lines
                continue
            row = next(csv.reader([line]))
            for site, first, last in DETROIT_WINDOWS:
                if row[loc] == site and first <= row[at][:16] <= last:
                    out.write(line)
                    break
    return out.getvalue()
