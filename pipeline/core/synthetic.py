"""A deterministic, window-independent generator of hourly weather and air quality.

Every random number is a stable hash of (seed, location id, stream name, index),
so the value at (location, hour) never depends on which window was asked for:
ingesting [a, b) then [b, c) gives exactly the rows of [a, c). Processes with
memory (accumulation, rain washout, episodes, heating demand) are finite causal
filters computed over a padding of ``PAD_HOURS`` before the window.

The physics is deliberately simple but internally consistent, so forecasting is
a real problem: weather drives dilution, washout, photochemistry and heating;
traffic follows the local clock; noise is autocorrelated but mean-reverting.
The model and its parameters are described in ``docs/data.md``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.schema import POLLUTANTS, VALUE_COLUMNS, VARIABLES, WEATHER

HOUR_NS = 3_600_000_000_000
YEAR_DAYS = 365.2422
# Longest chain of causal filters (episodes 168 h -> wind -> accumulation 24 h -> ...);
# hours before the window that are generated and then dropped.
PAD_HOURS = 21 * 24

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SECOND = 0x5851F42D4C957F2D  # decorrelates the second uniform of Box-Muller


# ------------------------------------------------------------------ stable hashing


def stream_key(*parts: object) -> int:
    """A 64-bit key from text parts, stable across processes and Python versions."""
    text = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _splitmix(state: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = state ^ (state >> np.uint64(30))
        z = z * _MIX1
        z = z ^ (z >> np.uint64(27))
        z = z * _MIX2
        return z ^ (z >> np.uint64(31))


def hash_uniform(key: int, index: np.ndarray) -> np.ndarray:
    """Uniform (0, 1) numbers, one per integer index, a pure function of (key, index)."""
    idx = np.asarray(index, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        state = idx * _GOLDEN + np.uint64(key & 0xFFFFFFFFFFFFFFFF)
    bits = _splitmix(_splitmix(state))
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def hash_normal(key: int, index: np.ndarray) -> np.ndarray:
    """Standard normal numbers (Box-Muller), a pure function of (key, index)."""
    u1 = hash_uniform(key, index)
    u2 = hash_uniform(key ^ _SECOND, index)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


# ------------------------------------------------------------------ value noise

@functools.cache
def _catmull_rom_weights(period: int) -> np.ndarray:
    """Interpolation weights for each position inside a knot interval, unit-variance scaled."""
    f = np.arange(period, dtype=np.float64) / period
    f2, f3 = f * f, f * f * f
    w = np.stack(
        [
            (-f3 + 2 * f2 - f) / 2,
            (3 * f3 - 5 * f2 + 2) / 2,
            (-3 * f3 + 4 * f2 + f) / 2,
            (f3 - f2) / 2,
        ],
        axis=1,
    )
    # independent unit-normal knots: dividing by the weights' norm keeps the
    # variance constant inside an interval, so no spurious cycle at the knot period
    return w / np.sqrt((w * w).sum(axis=1, keepdims=True))


def value_noise(key: int, hours: np.ndarray, period: int) -> np.ndarray:
    """Smooth unit-variance noise: hashed normal knots every ``period`` hours, cubic spline."""
    x = hours + (key % period)  # a per-stream phase so knots of different streams do not align
    knot = x // period
    pos = x - knot * period
    first = int(knot.min()) - 1
    knots = hash_normal(key, np.arange(first, int(knot.max()) + 3, dtype=np.int64))
    w = _catmull_rom_weights(period)[pos]
    base = knot - first
    return (
        w[:, 0] * knots[base - 1]
        + w[:, 1] * knots[base]
        + w[:, 2] * knots[base + 1]
        + w[:, 3] * knots[base + 2]
    )


def multiscale_noise(
    key: int, hours: np.ndarray, scales: Sequence[tuple[int, float]]
) -> np.ndarray:
    """Sum of value noise at several periods (hours, weight), scaled to unit variance."""
    total = np.zeros(len(hours))
    for period, weight in scales:
        total += weight * value_noise(stream_key(key, period), hours, period)
    return total / np.sqrt(sum(w * w for _, w in scales))


def causal_filter(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """y[t] = sum_k weights[k] * values[t - k]; the first len(weights)-1 outputs are partial.

    One vectorised add per tap (not np.convolve) so each output is summed in the same
    order whatever the window, which keeps split and whole windows bit-identical.
    """
    out = weights[0] * values
    for lag in range(1, len(weights)):
        out[lag:] += weights[lag] * values[:-lag]
    return out


def exp_kernel(tau_h: float, length: int, normalise: bool = True) -> np.ndarray:
    kernel = np.exp(-np.arange(length) / tau_h)
    return kernel / kernel.sum() if normalise else kernel


# ------------------------------------------------------------------ site climate


@dataclass(frozen=True)
class Emissions:
    """Concentration contributions (ug/m3) at mean activity and reference ventilation."""

    traffic: float = 0.0
    heating: float = 0.0
    industry: float = 0.0
    background: float = 0.0


@dataclass(frozen=True)
class SiteProfile:
    """The climate and emission inventory of one location (see docs/data.md)."""

    elevation_m: float
    t_mean: float  # annual mean temperature, degC
    t_seasonal_amp: float  # half the summer-winter difference, degC
    t_peak_doy: float  # day of year of the warmest season
    t_diurnal_amp: float  # half the clear-sky day-night difference, degC
    dewpoint_depression: float  # mean T - Td, degC
    wetness: tuple[float, ...]  # 12 monthly cloud/rain tendencies (0 normal, + wetter)
    rain_threshold: float  # higher = fewer wet hours
    pressure_variability: float  # hPa, std of synoptic pressure anomalies
    wind_mean: float  # m/s
    prevailing_dir: float  # deg, direction the prevailing wind blows from
    prevailing_strength: float  # 0 = no preferred direction, 1 = strongly steady
    sea_breeze_dir: float = 0.0
    sea_breeze: float = 0.0  # strength of an afternoon onshore wind
    industry_dir: float = 0.0  # deg, the sector where an industrial area lies upwind
    heating_base_t: float = 15.5  # degC below which heating (or biomass burning) starts
    background_cold_gain: float = 0.25  # secondary PM (nitrate) grows in cold air
    pm2_5: Emissions = Emissions()
    nox: Emissions = Emissions()  # as NO2-equivalent mass
    co: Emissions = Emissions()
    so2: Emissions = Emissions()
    coarse_traffic: float = 3.0  # road dust, ug/m3 of PM10-PM2.5
    coarse_wind: float = 0.05  # wind-blown dust / sea salt coefficient
    coarse_background: float = 5.0
    o3_background: float = 50.0
    o3_production: float = 40.0  # afternoon photochemical production at 25 degC, clear sky
    episode_rate: tuple[float, ...] = (0.03,) * 12  # chance per day an episode starts, by month
    episode_scale: float = 1.0  # peak relative increase of a typical episode
    noise: float = 1.0  # scale of unexplained (autocorrelated) variability


def _months(*values: float) -> tuple[float, ...]:
    assert len(values) == 12
    return tuple(float(v) for v in values)


# Known defaults for the locations in params.yaml, used when id and coordinates match.
KNOWN_SITES: dict[str, tuple[float, float, SiteProfile]] = {
    "berlin": (52.52, 13.405, SiteProfile(
        elevation_m=35, t_mean=10.0, t_seasonal_amp=9.5, t_peak_doy=200, t_diurnal_amp=4.5,
        dewpoint_depression=4.0,
        wetness=_months(0.1, 0, 0, -0.15, -0.1, 0.05, 0.15, 0.05, -0.1, 0, 0.15, 0.2),
        rain_threshold=1.95, pressure_variability=9.0, wind_mean=3.6, prevailing_dir=255,
        prevailing_strength=0.55, industry_dir=110, heating_base_t=15.5,
        background_cold_gain=0.35,
        pm2_5=Emissions(traffic=2.0, heating=2.2, industry=1.4, background=5.5),
        nox=Emissions(traffic=28, heating=3, industry=5, background=5),
        co=Emissions(traffic=60, heating=50, industry=15, background=170),
        so2=Emissions(traffic=0.2, heating=1.0, industry=4.5, background=0.8),
        coarse_traffic=3.0, coarse_wind=0.03, coarse_background=4.0,
        o3_background=70, o3_production=46,
        episode_rate=_months(0.04, 0.04, 0.04, 0.035, 0.02, 0.012, 0.012, 0.012, 0.02, 0.03,
                             0.035, 0.04),
        episode_scale=1.1,
    )),
    "london": (51.5072, -0.1276, SiteProfile(
        elevation_m=15, t_mean=11.5, t_seasonal_amp=7.0, t_peak_doy=200, t_diurnal_amp=3.8,
        dewpoint_depression=3.2,
        wetness=_months(0.25, 0.1, 0.05, 0, -0.1, -0.1, -0.1, 0, 0.05, 0.2, 0.25, 0.25),
        rain_threshold=1.85, pressure_variability=10.0, wind_mean=4.5, prevailing_dir=235,
        prevailing_strength=0.6, industry_dir=80, heating_base_t=15.5,
        background_cold_gain=0.25,
        pm2_5=Emissions(traffic=1.8, heating=1.4, industry=0.8, background=5.0),
        nox=Emissions(traffic=42, heating=3, industry=4, background=6),
        co=Emissions(traffic=60, heating=30, industry=10, background=160),
        so2=Emissions(traffic=0.3, heating=0.6, industry=3.0, background=0.8),
        coarse_traffic=3.0, coarse_wind=0.06, coarse_background=5.0,
        o3_background=62, o3_production=32,
        episode_rate=_months(0.035, 0.035, 0.045, 0.04, 0.02, 0.012, 0.012, 0.012, 0.02, 0.025,
                             0.03, 0.035),
        episode_scale=1.0,
    )),
    "madrid": (40.4168, -3.7038, SiteProfile(
        elevation_m=660, t_mean=15.0, t_seasonal_amp=10.0, t_peak_doy=205, t_diurnal_amp=6.5,
        dewpoint_depression=7.0,
        wetness=_months(0.15, 0.05, 0.0, 0.05, -0.1, -0.4, -0.75, -0.65, -0.3, 0.1, 0.2, 0.15),
        rain_threshold=2.0, pressure_variability=7.0, wind_mean=2.8, prevailing_dir=225,
        prevailing_strength=0.45, industry_dir=150, heating_base_t=15.0,
        background_cold_gain=0.2,
        pm2_5=Emissions(traffic=2.2, heating=1.4, industry=0.8, background=5.0),
        nox=Emissions(traffic=30, heating=3, industry=4, background=5),
        co=Emissions(traffic=70, heating=30, industry=10, background=170),
        so2=Emissions(traffic=0.3, heating=1.0, industry=3.5, background=1.0),
        coarse_traffic=4.0, coarse_wind=0.06, coarse_background=6.0,
        o3_background=76, o3_production=62,
        episode_rate=_months(0.035, 0.03, 0.025, 0.02, 0.02, 0.025, 0.025, 0.025, 0.02, 0.025,
                             0.03, 0.035),
        episode_scale=1.0,
    )),
    "delhi": (28.6139, 77.209, SiteProfile(
        elevation_m=215, t_mean=25.0, t_seasonal_amp=9.0, t_peak_doy=185, t_diurnal_amp=6.0,
        dewpoint_depression=9.0,
        wetness=_months(-0.4, -0.4, -0.6, -0.7, -0.5, 0.1, 0.9, 0.9, 0.4, -0.6, -0.8, -0.6),
        rain_threshold=1.95, pressure_variability=3.5, wind_mean=2.3, prevailing_dir=295,
        prevailing_strength=0.5, industry_dir=200, heating_base_t=20.0,
        background_cold_gain=0.4,
        pm2_5=Emissions(traffic=20, heating=35, industry=12, background=30),
        nox=Emissions(traffic=50, heating=8, industry=12, background=8),
        co=Emissions(traffic=450, heating=350, industry=60, background=450),
        so2=Emissions(traffic=1.0, heating=4.0, industry=9.0, background=3.0),
        coarse_traffic=35, coarse_wind=0.5, coarse_background=55,
        o3_background=65, o3_production=50,
        episode_rate=_months(0.06, 0.04, 0.03, 0.035, 0.04, 0.025, 0.005, 0.005, 0.01, 0.05,
                             0.07, 0.06),
        episode_scale=0.5,
        noise=0.7,
    )),
    "los_angeles": (34.0522, -118.2437, SiteProfile(
        elevation_m=90, t_mean=18.5, t_seasonal_amp=4.5, t_peak_doy=225, t_diurnal_amp=5.0,
        dewpoint_depression=7.5,
        wetness=_months(0.2, 0.2, 0.1, -0.2, -0.5, -0.7, -0.9, -0.9, -0.7, -0.4, -0.1, 0.1),
        rain_threshold=2.05, pressure_variability=4.0, wind_mean=2.4, prevailing_dir=255,
        prevailing_strength=0.4, sea_breeze_dir=240, sea_breeze=0.9, industry_dir=170,
        heating_base_t=14.0, background_cold_gain=0.0,
        pm2_5=Emissions(traffic=2.8, heating=0.4, industry=1.4, background=6.0),
        nox=Emissions(traffic=38, heating=1, industry=6, background=6),
        co=Emissions(traffic=120, heating=10, industry=15, background=180),
        so2=Emissions(traffic=0.3, heating=0.1, industry=2.0, background=0.6),
        coarse_traffic=5.0, coarse_wind=0.08, coarse_background=8.0,
        o3_background=72, o3_production=110,
        episode_rate=_months(0.03, 0.025, 0.015, 0.015, 0.015, 0.02, 0.025, 0.025, 0.03, 0.035,
                             0.035, 0.035),
        episode_scale=0.9,
    )),
}


def _unit(location_id: str, name: str) -> float:
    """A stable number in [0, 1) for one property of a location."""
    return stream_key("site", location_id, name) / 2.0**64


def fallback_profile(location_id: str, latitude: float, longitude: float) -> SiteProfile:
    """A plausible climate and inventory from latitude/longitude and a hash of the id."""
    lat = abs(latitude)
    south = latitude < 0
    u = {name: _unit(location_id, name) for name in (
        "elev", "cont", "wind", "dir", "ind", "urban", "wet", "dry", "o3")}
    continental = u["cont"]
    # regions with high emissions and frequent haze
    south_asia = 5 <= latitude <= 35 and 60 <= longitude <= 95
    east_asia = 20 <= latitude <= 45 and 100 <= longitude <= 125
    urban = float(np.exp(-0.6 + 1.4 * u["urban"])) * (4.0 if south_asia else 2.5 if east_asia
                                                      else 1.0)
    heating = float(np.clip((lat - 22.0) / 25.0, 0.0, 1.0))
    if lat < 30:
        prevailing = 120.0 if south else 60.0  # trade winds
    elif lat < 62:
        prevailing = 250.0  # westerlies
    else:
        prevailing = 90.0
    prevailing = (prevailing + 80.0 * (u["dir"] - 0.5)) % 360.0
    wet_phase = 2 * np.pi * u["wet"]
    wetness = tuple(
        float(0.35 * u["dry"] * np.cos(2 * np.pi * m / 12 - wet_phase) - 0.2 * u["dry"])
        for m in range(12)
    )
    base_pm = 5.0 * urban
    return SiteProfile(
        elevation_m=20.0 + 800.0 * u["elev"] ** 2,
        t_mean=28.0 - 0.0068 * lat * lat,
        t_seasonal_amp=float(np.clip(0.12 * lat * (1 + continental), 1.5, 18.0)),
        t_peak_doy=20.0 if south else 200.0,
        t_diurnal_amp=3.5 + 3.0 * continental,
        dewpoint_depression=3.0 + 6.0 * u["dry"],
        wetness=wetness,
        rain_threshold=1.8 + 0.3 * u["dry"],
        pressure_variability=3.0 + 8.0 * min(lat / 50.0, 1.0),
        wind_mean=2.2 + 2.5 * u["wind"],
        prevailing_dir=prevailing,
        prevailing_strength=0.5,
        industry_dir=360.0 * u["ind"],
        heating_base_t=15.5,
        background_cold_gain=0.1 + 0.3 * heating,
        pm2_5=Emissions(traffic=0.4 * base_pm, heating=0.5 * base_pm * heating + 0.1 * base_pm,
                        industry=0.3 * base_pm, background=1.1 * base_pm),
        nox=Emissions(traffic=12 + 14 * u["urban"], heating=3 * heating, industry=5,
                      background=5),
        co=Emissions(traffic=28.0 * base_pm, heating=25.0 * base_pm * heating,
                     industry=5.0 * base_pm, background=150),
        so2=Emissions(traffic=0.2, heating=1.2 * heating, industry=1.0 + 0.5 * base_pm,
                      background=0.5 + 0.1 * base_pm),
        coarse_traffic=0.6 * base_pm,
        coarse_wind=0.03 + 0.2 * u["dry"] * (1 - heating),
        coarse_background=base_pm,
        o3_background=40.0 + 15.0 * u["o3"],
        o3_production=30.0 + 50.0 * u["o3"] * (1 - 0.5 * heating),
        episode_rate=tuple(0.015 + 0.02 * heating * (1 + np.cos(2 * np.pi * m / 12 + (
            np.pi if south else 0.0))) for m in range(12)),
        episode_scale=0.8 + 0.4 * u["urban"],
    )


def site_profile(location_id: str, latitude: float, longitude: float) -> SiteProfile:
    """The known profile when id and coordinates match a default location, else a fallback."""
    known = KNOWN_SITES.get(location_id)
    if known is not None:
        lat, lon, profile = known
        if abs(lat - latitude) < 1.0 and abs(lon - longitude) < 1.0:
            return profile
    return fallback_profile(location_id, latitude, longitude)


# ------------------------------------------------------------------ calendar and sun

# Traffic activity by local hour (Monday-Friday, Saturday, Sunday); means 1.1, 0.8, 0.6.
_WEEKDAY = np.array([0.35, 0.25, 0.2, 0.2, 0.3, 0.6, 1.1, 1.7, 1.9, 1.5, 1.2, 1.15,
                     1.2, 1.2, 1.25, 1.4, 1.7, 1.95, 1.8, 1.3, 0.95, 0.8, 0.65, 0.5])
_SATURDAY = np.array([0.5, 0.4, 0.3, 0.25, 0.25, 0.3, 0.45, 0.6, 0.8, 1.0, 1.15, 1.25,
                      1.3, 1.3, 1.3, 1.3, 1.3, 1.25, 1.2, 1.05, 0.9, 0.8, 0.7, 0.6])
_SUNDAY = np.array([0.55, 0.45, 0.35, 0.25, 0.2, 0.2, 0.25, 0.35, 0.5, 0.7, 0.9, 1.05,
                    1.1, 1.1, 1.1, 1.1, 1.15, 1.15, 1.1, 1.0, 0.85, 0.7, 0.6, 0.5])
TRAFFIC = np.stack([
    *([_WEEKDAY / _WEEKDAY.mean() * 1.1] * 5),
    _SATURDAY / _SATURDAY.mean() * 0.8,
    _SUNDAY / _SUNDAY.mean() * 0.6,
])
# Domestic heating by local hour (morning and evening peaks), mean 1.
_HEAT = np.array([0.7, 0.6, 0.6, 0.6, 0.7, 0.9, 1.3, 1.5, 1.4, 1.1, 0.95, 0.9,
                  0.85, 0.85, 0.85, 0.9, 1.0, 1.2, 1.4, 1.45, 1.4, 1.25, 1.0, 0.8])
HEATING_PROFILE = _HEAT / _HEAT.mean()


@dataclass(frozen=True)
class Clock:
    hours: np.ndarray  # UTC hours since 1970-01-01
    local_hour: np.ndarray
    local_weekday: np.ndarray  # Monday = 0
    year_phase: np.ndarray  # radians, 0 at 1 January
    month: np.ndarray  # 0..11, from the year phase (smoothly interpolated tables)
    sin_elevation: np.ndarray  # sine of the solar elevation
    solar_hour: np.ndarray  # local mean solar time, hours


def make_clock(hours: np.ndarray, latitude: float, longitude: float, timezone: str) -> Clock:
    local = pd.DatetimeIndex(pd.to_datetime(hours * HOUR_NS, utc=True)).tz_convert(timezone)
    days = hours / 24.0
    year_frac = np.mod(days, YEAR_DAYS) / YEAR_DAYS
    phase = 2 * np.pi * year_frac
    decl = np.deg2rad(23.44) * np.sin(2 * np.pi * (np.mod(days, YEAR_DAYS) - 80.0) / YEAR_DAYS)
    solar_hour = np.mod(np.mod(hours, 24) + longitude / 15.0, 24.0)
    hour_angle = np.deg2rad(15.0 * (solar_hour - 12.0))
    lat = np.deg2rad(latitude)
    sin_elev = np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)
    return Clock(
        hours=hours,
        local_hour=local.hour.to_numpy(),
        local_weekday=local.day_of_week.to_numpy(),
        year_phase=phase,
        month=year_frac * 12.0,
        sin_elevation=sin_elev,
        solar_hour=solar_hour,
    )


def monthly(table: Sequence[float], month: np.ndarray) -> np.ndarray:
    """A 12-value monthly table, linearly interpolated between mid-months (periodic)."""
    values = np.asarray(table, dtype=np.float64)
    pos = month - 0.5
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    return values[lo % 12] * (1 - frac) + values[(lo + 1) % 12] * frac


# ------------------------------------------------------------------ the generator


@dataclass(frozen=True)
class Drift:
    """An injected change from ``start_hour`` (UTC hours since epoch) on."""

    kind: str  # emission_shift | sensor_recalibration
    start_hour: int
    variable: str
    factor: float
    locations: frozenset[str] | None = None

    def applies_to(self, location_id: str) -> bool:
        return self.locations is None or location_id in self.locations


# Weather variability: (period h, weight) of hashed value noise.
CLOUD_SCALES = ((5, 0.5), (13, 0.8), (41, 0.4))
WIND_SCALES = ((6, 0.6), (17, 0.8), (53, 0.4))  # eddies of the wind vector
GUST_SCALES = ((4, 0.6), (11, 0.8))  # wind speed only
# Ventilation (wind speed x mixing height, m2/s) at which local emissions give their
# reference contribution; concentration scales as (reference / ventilation) ** exponent.
REFERENCE_VENTILATION = 1800.0
ACCUMULATION_TAU_H = 2.0  # e-folding time of local pollution after emission, hours
DILUTION_EXPONENT = 0.7  # local (primary) pollution
REGIONAL_EXPONENT = 0.3  # regional background, mixed over a larger volume
# Unexplained variability (log scale): (period h, weight) of hashed value noise, one part
# shared by all pollutants, one part each; sigma per pollutant.
COMMON_NOISE_SCALES = ((4, 0.6), (11, 0.8), (29, 0.4), (89, 0.2))
OWN_NOISE_SCALES = ((3, 0.6), (7, 0.8), (19, 0.5), (61, 0.2))
NOISE_SIGMA = {"pm2_5": 0.22, "coarse": 0.3, "nox": 0.22, "o3": 0.18, "co": 0.18, "so2": 0.3}


@dataclass
class _Noise:
    seed: int
    location_id: str
    hours: np.ndarray

    def key(self, stream: str) -> int:
        return stream_key(self.seed, self.location_id, stream)

    def smooth(self, stream: str, scales: Sequence[tuple[int, float]]) -> np.ndarray:
        return multiscale_noise(self.key(stream), self.hours, scales)

    def white(self, stream: str) -> np.ndarray:
        return hash_normal(self.key(stream), self.hours)

    def uniform(self, stream: str) -> np.ndarray:
        return hash_uniform(self.key(stream), self.hours)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _drift_factor(drifts: Sequence[Drift], kind: str, variable: str, hours: np.ndarray):
    factor = np.ones(len(hours))
    for d in drifts:
        if d.kind == kind and d.variable == variable:
            factor = np.where(hours >= d.start_hour, factor * d.factor, factor)
    return factor


def _weather(p: SiteProfile, clock: Clock, noise: _Noise) -> dict[str, np.ndarray]:
    month = clock.month
    wet = monthly(p.wetness, month)

    # pressure: synoptic systems drifting over days, a small semidiurnal tide
    synoptic = noise.smooth("synoptic", [(29, 0.35), (71, 0.7), (163, 0.6)])
    pressure_anom = p.pressure_variability * synoptic
    slp = 1013.0 + pressure_anom + 0.6 * np.cos(4 * np.pi * (clock.solar_hour - 10.0) / 24.0)

    # clouds: low pressure and wet seasons are cloudier
    cloud_driver = (
        1.1 * noise.smooth("cloud", CLOUD_SCALES)
        - 0.9 * synoptic
        + 1.2 * wet
    )
    cloud = np.clip(100.0 * (1.3 * _sigmoid(1.5 * cloud_driver) - 0.15), 0.0, 100.0)

    # precipitation: intermittent showers where a fast rain cell meets a cloudy, low-pressure sky
    rain_driver = 0.75 * cloud_driver + 0.9 * noise.smooth("rain", [(3, 0.7), (7, 0.7)])
    excess = np.maximum(rain_driver - p.rain_threshold, 0.0)
    intensity = np.exp(0.5 * noise.white("rain_intensity"))
    precip = np.where(cloud > 60.0, 1.2 * excess**1.4 * intensity, 0.0)
    precip = np.where(precip < 0.05, 0.0, np.minimum(precip, 80.0))

    # temperature: seasonal by latitude, diurnal (smaller under clouds), synoptic anomalies
    season = np.cos(clock.year_phase - 2 * np.pi * p.t_peak_doy / YEAR_DAYS)
    t_anom = 2.6 * noise.smooth("temperature", [(23, 0.4), (67, 0.8), (191, 0.6)])
    t_anom += 0.18 * pressure_anom * (season * 0.8 + 0.2)  # highs: warm summers, cold winters
    daily_mean = p.t_mean + p.t_seasonal_amp * season + t_anom
    diurnal_amp = p.t_diurnal_amp * (1 + 0.2 * season) * (1.0 - 0.6 * cloud / 100.0)
    h = clock.solar_hour
    shape = np.cos(2 * np.pi * (h - 15.0) / 24.0) + 0.25 * np.cos(4 * np.pi * (h - 13.0) / 24.0)
    rain_cooling = 1.5 * np.minimum(precip, 4.0) / 4.0
    temperature = daily_mean + diurnal_amp * shape - rain_cooling

    # humidity: the dewpoint follows the daily mean, so RH falls in the afternoon
    depression = p.dewpoint_depression * np.exp(
        0.35 * noise.smooth("moisture", [(13, 0.6), (53, 0.8)]) - 0.7 * wet
        - 0.6 * (cloud / 100.0 - 0.5) + 0.05 * (daily_mean - p.t_mean)  # warm air is drier
    )
    depression = np.where(precip > 0, 0.25 * depression, depression)
    dewpoint = np.minimum(daily_mean - depression, temperature)
    magnus = 17.625, 243.04
    rh = 100.0 * np.exp(
        magnus[0] * dewpoint / (magnus[1] + dewpoint)
        - magnus[0] * temperature / (magnus[1] + temperature)
    )
    rh = np.clip(rh, 3.0, 100.0)

    surface_pressure = slp * np.exp(-p.elevation_m / (29.27 * (temperature + 273.15)))

    return {
        "pressure_anom": pressure_anom,
        "cloud": cloud,
        "precipitation": precip,
        "temperature": temperature,
        "daily_mean_t": daily_mean,
        "rh": rh,
        "surface_pressure": surface_pressure,
        "wet": wet,
        "cloud_driver": cloud_driver,
        "rain_driver": rain_driver,
    }


def generate(
    location_id: str,
    latitude: float,
    longitude: float,
    timezone: str,
    start_hour: int,
    end_hour: int,
    *,
    seed: int,
    gap_rate: float = 0.0,
    spike_rate: float = 0.0,
    drifts: Sequence[Drift] = (),
    profile: SiteProfile | None = None,
    simulation: Simulation | None = None,
) -> dict[str, np.ndarray]:
    """Canonical value columns for one location, UTC hours [start_hour, end_hour).

    ``start_hour``/``end_hour`` count hours since 1970-01-01T00Z. Returns measured
    values (rounded like real instruments, with gaps as NaN and spikes as
    impossible values) keyed by canonical column name. ``simulation``: the location's
    :func:`simulate` of a window that holds this one (the same values, not computed again).
    """
    if end_hour - start_hour <= 0:
        return {col: np.empty(0) for col in VALUE_COLUMNS}
    drifts = [d for d in drifts if d.applies_to(location_id)]
    if simulation is None:
        hours, true, _, noise = _simulate(location_id, latitude, longitude, timezone,
                                          start_hour, end_hour, seed, drifts, profile)
    else:
        simulation.check(location_id, seed, start_hour, end_hour, drifts)
        hours, true, _ = simulation.part(start_hour - PAD_HOURS, end_hour)
        noise = _Noise(seed, location_id, hours)
    keep = slice(PAD_HOURS, None)
    measured = _measure({k: v[keep] for k, v in true.items()}, noise, drifts, hours[keep])
    _gaps_and_spikes(measured, noise, gap_rate, spike_rate, hours)
    return measured


@dataclass(frozen=True)
class Simulation:
    """One location's simulated true values over UTC hours ``hours`` (the first
    :data:`PAD_HOURS` a warm-up), made once and shared by the observations and the weather
    forecasts of the same window (:func:`generate`, :func:`generate_forecasts`).

    Every value depends only on (seed, location, hour): a part of a longer simulation is the
    same floats as a simulation of that part alone, as long as :data:`PAD_HOURS` of it
    precede the hours used. Drifts change pollutants only, so the weather serves the
    forecasts whatever the drifts were.
    """

    location_id: str
    seed: int
    drifts: tuple[Drift, ...]
    hours: np.ndarray
    true: dict[str, np.ndarray]
    weather: dict[str, np.ndarray]

    def check(self, location_id: str, seed: int, start_hour: int, end_hour: int,
              drifts: Sequence[Drift] | None = None) -> None:
        """Refuse a simulation of another location, seed or drift, or one that does not hold
        [start_hour, end_hour) with its warm-up (``drifts`` None: weather only)."""
        if (location_id, seed) != (self.location_id, self.seed) or (
                drifts is not None and tuple(drifts) != self.drifts):
            raise ValueError(f"a simulation of {self.location_id!r} (seed {self.seed}) given "
                             f"for {location_id!r} (seed {seed}) or other drifts")
        if start_hour - PAD_HOURS < int(self.hours[0]) or end_hour - 1 > int(self.hours[-1]):
            raise ValueError(f"a simulation of hours {int(self.hours[0])}..{int(self.hours[-1])}"
                             f" does not hold {start_hour - PAD_HOURS}..{end_hour - 1}")

    def part(self, start_hour: int, end_hour: int
             ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(hours, true values, weather drivers) of hours [start_hour, end_hour)."""
        cut = slice(start_hour - int(self.hours[0]), end_hour - int(self.hours[0]))
        return (self.hours[cut], {k: v[cut] for k, v in self.true.items()},
                {k: v[cut] for k, v in self.weather.items()})


def simulate(location_id: str, latitude: float, longitude: float, timezone: str,
             start_hour: int, end_hour: int, *, seed: int, drifts: Sequence[Drift] = (),
             profile: SiteProfile | None = None) -> Simulation:
    """The location's true values of UTC hours [start_hour, end_hour), with their warm-up."""
    drifts = tuple(d for d in drifts if d.applies_to(location_id))
    hours, true, weather, _ = _simulate(location_id, latitude, longitude, timezone, start_hour,
                                        end_hour, seed, drifts, profile)
    return Simulation(location_id, seed, drifts, hours, true, weather)


def _simulate(location_id: str, latitude: float, longitude: float, timezone: str,
              start_hour: int, end_hour: int, seed: int, drifts: Sequence[Drift],
              profile: SiteProfile | None,
              ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], _Noise]:
    """The true (unmeasured) values of hours [start_hour - PAD_HOURS, end_hour).

    Returns (hours, true values by canonical name, the weather's internal drivers, noise).
    """
    p = profile or site_profile(location_id, latitude, longitude)
    hours = np.arange(start_hour - PAD_HOURS, end_hour, dtype=np.int64)
    clock = make_clock(hours, latitude, longitude, timezone)
    noise = _Noise(seed, location_id, hours)
    w = _weather(p, clock, noise)
    cloud, precip, temperature, rh = w["cloud"], w["precipitation"], w["temperature"], w["rh"]

    # sunshine reaching the ground, and its lagged effect (mixing layer growth, photochemistry)
    sun = np.maximum(clock.sin_elevation, 0.0)
    radiation = sun**1.15 * (1.0 - 0.75 * (cloud / 100.0) ** 3.4)
    mixing = causal_filter(radiation, exp_kernel(2.0, 8))
    photo = causal_filter(radiation, exp_kernel(3.0, 10))

    # pollution episodes: hashed start days, a 12 h rise and a multi-day decay
    episodes = _episodes(p, noise, clock)

    # wind: a vector of prevailing flow plus autocorrelated eddies; stagnant during episodes
    dir_p = np.deg2rad(p.prevailing_dir)
    fx = p.prevailing_strength * np.sin(dir_p) + 0.75 * noise.smooth(
        "wind_x", WIND_SCALES)
    fy = p.prevailing_strength * np.cos(dir_p) + 0.75 * noise.smooth(
        "wind_y", WIND_SCALES)
    if p.sea_breeze:
        dir_s = np.deg2rad(p.sea_breeze_dir)
        fx = fx + p.sea_breeze * mixing * 1.6 * np.sin(dir_s)
        fy = fy + p.sea_breeze * mixing * 1.6 * np.cos(dir_s)
    wind_dir = np.mod(np.rad2deg(np.arctan2(fx, fy)), 360.0)
    gust = np.exp(0.3 * noise.smooth("wind_speed", GUST_SCALES) - 0.045)
    storm = 1.0 + 0.05 * np.maximum(-w["pressure_anom"], 0.0)
    wind_speed = (
        p.wind_mean * 0.85 * np.hypot(fx, fy) * gust * storm * (0.8 + 0.5 * mixing)
        / (1.0 + 0.35 * episodes)
    )
    wind_speed = np.clip(wind_speed + 0.2, 0.0, 60.0)

    # boundary layer: deep when the sun has heated the ground, shallow on calm clear nights
    mixing_height = 90.0 + 1500.0 * mixing * (1 - 0.3 * cloud / 100.0) + 75.0 * wind_speed \
        + 220.0 * (cloud / 100.0) * (1 - mixing)
    ventilation = np.maximum(wind_speed, 0.4) * mixing_height
    dilution = np.clip((REFERENCE_VENTILATION / ventilation) ** DILUTION_EXPONENT, 0.12, 7.0)
    regional = np.clip((REFERENCE_VENTILATION / ventilation) ** REGIONAL_EXPONENT, 0.5, 2.0)

    # activity: traffic on the local clock, heating below a base temperature, steady industry
    traffic = TRAFFIC[clock.local_weekday, clock.local_hour]
    daily_t = causal_filter(temperature, np.full(24, 1.0 / 24.0))
    heating = np.clip(p.heating_base_t - daily_t, 0.0, 30.0) / 10.0 * HEATING_PROFILE[
        clock.local_hour]
    industry = np.where(clock.local_weekday < 5, 1.0, 0.75)
    sector = np.exp(4.0 * (np.cos(np.deg2rad(wind_dir - p.industry_dir)) - 1.0))
    plume = 0.25 + 3.0 * sector  # an industrial area upwind adds a lot; elsewhere little

    accumulate = exp_kernel(ACCUMULATION_TAU_H, 24)
    rain_memory = causal_filter(precip, exp_kernel(8.0, 48, normalise=False))
    washout = 0.3 + 0.7 * np.exp(-0.3 * rain_memory)
    hygroscopic = 1.0 + 0.4 * (np.minimum(rh, 99.0) / 100.0) ** 6
    # cold air: +1 one seasonal amplitude below the annual mean (nitrate, inversions)
    cold = np.clip((p.t_mean - daily_t) / max(p.t_seasonal_amp, 1.0), -1.0, 1.5)
    episode_gain = 1.0 + episodes

    def local(em: Emissions, variable: str) -> np.ndarray:
        shift = _drift_factor(drifts, "emission_shift", variable, hours)
        emitted = (
            em.traffic * traffic
            + em.heating * heating
            + em.industry * industry * plume
        ) * shift
        return causal_filter(emitted * dilution, accumulate)

    # shared unexplained variability (e.g. unresolved transport) plus each pollutant's own
    common = noise.smooth("pollution_common", COMMON_NOISE_SCALES)

    def unexplained(name: str, sigma: float) -> np.ndarray:
        own = noise.smooth(f"unexplained_{name}", OWN_NOISE_SCALES)
        z = 0.6 * common + 0.8 * own
        return np.exp(sigma * p.noise * z - 0.5 * (sigma * p.noise) ** 2)

    # PM2.5: local primary + regional secondary background, episodes, washout, humidity growth
    pm_bg = p.pm2_5.background * (1 + p.background_cold_gain * cold) * regional \
        * (1 + 0.15 * noise.smooth("pm_background", [(53, 0.7), (149, 0.7)]))
    pm25 = (local(p.pm2_5, "pm2_5") + pm_bg) * episode_gain * washout * hygroscopic \
        * unexplained("pm2_5", NOISE_SIGMA["pm2_5"])

    # PM10: PM2.5 plus coarse road dust and wind-blown dust / sea salt, washed out strongly
    dry = np.exp(-0.5 * rain_memory) * (1.0 - rh / 100.0) ** 0.5
    coarse_shift = _drift_factor(drifts, "emission_shift", "pm10", hours)
    coarse = (
        causal_filter(p.coarse_traffic * traffic * dilution, accumulate) * coarse_shift
        + p.coarse_wind * np.maximum(wind_speed - 4.0, 0.0) ** 2.5 * (0.3 + dry) * coarse_shift
        + p.coarse_background * regional
    ) * (1 + 0.5 * episodes) * washout**1.5 * unexplained("coarse", NOISE_SIGMA["coarse"])
    pm10 = pm25 + coarse

    # NOx -> NO2 and O3: titration converts O3 to NO2, sunlight makes O3 in the afternoon
    nox = (local(p.nox, "no2") + p.nox.background * regional) * (1 + 0.3 * episodes) \
        * unexplained("nox", NOISE_SIGMA["nox"])
    o3_shift = _drift_factor(drifts, "emission_shift", "o3", hours)
    spring = 1 + 0.15 * np.cos(clock.year_phase - 2 * np.pi * (110 if latitude >= 0 else 290)
                               / YEAR_DAYS)
    temp_gain = np.exp(np.clip(temperature - 25.0, -20.0, 8.0) / 10.0)
    deposition = 0.5 + 0.5 * np.minimum(mixing_height / 600.0, 1.0)  # stable nights lose O3
    ox = (
        p.o3_background * spring * deposition * washout**0.3
        + p.o3_production * o3_shift * photo * temp_gain * (1 + 0.3 * episodes)
    ) * unexplained("o3", NOISE_SIGMA["o3"])
    no = 0.85 * nox
    reacted = 0.9 * no * ox / (no + ox + 1e-9) * (1.0 - 0.4 * photo)
    o3 = np.maximum(ox - reacted * 48.0 / 46.0, 0.0)
    no2 = 0.15 * nox + reacted

    # CO and SO2: traffic and heating; SO2 mostly from the industrial sector
    co = (local(p.co, "co") + p.co.background * (1 + 0.2 * cold)) * (1 + 0.5 * episodes) \
        * unexplained("co", NOISE_SIGMA["co"])
    so2 = (local(p.so2, "so2") + p.so2.background * regional) \
        * (1 + 0.3 * episodes) * unexplained("so2", NOISE_SIGMA["so2"])

    true = {
        "temperature_2m": temperature,
        "relative_humidity_2m": rh,
        "wind_speed_10m": wind_speed,
        "wind_direction_10m": wind_dir,
        "surface_pressure": w["surface_pressure"],
        "precipitation": precip,
        "cloud_cover": cloud,
        "pm2_5": pm25,
        "pm10": pm10,
        "no2": no2,
        "o3": o3,
        "so2": so2,
        "co": co,
    }
    return hours, true, w, noise



# ------------------------------------------------------------------ weather forecasts

FORECAST_EVERY_H = 6  # a forecast run every 6 hours (00, 06, 12, 18 UTC), known at its issue hour
FORECAST_MAX_LEAD_H = 48  # each run forecasts the 48 hours after its issue hour
# Forecast error: standard deviation at lead 0 and its growth per day of lead, in the
# variable's unit (wind speed: log scale, i.e. relative; cloud cover and precipitation: in
# the units of the generator's cloud and rain drivers). Sized like station verification of
# global weather models at 1-2 days (docs/data.md), not tuned to the pipeline's skill.
FORECAST_ERROR = {
    "temperature_2m": (1.0, 0.6),
    "relative_humidity_2m": (6.0, 3.0),
    "wind_speed_10m": (0.25, 0.10),
    "wind_direction_10m": (20.0, 15.0),
    "surface_pressure": (0.5, 0.9),
    "cloud_cover": (0.45, 0.2),
    "precipitation": (0.5, 0.25),
}
# errors of one run are smooth along valid time (a misplaced front, a wrong inversion)
FORECAST_ERROR_SCALES = ((7, 0.6), (29, 0.8))
_ISSUE_STRIDE = np.int64(1 << 24)  # separates the knots of different runs in the hash index


def forecast_issues(start_hour: int, end_hour: int, every: int = FORECAST_EVERY_H) -> np.ndarray:
    """Issue hours of the runs in [start_hour, end_hour): every ``every`` hours from 00 UTC."""
    first = -(-int(start_hour) // every) * every
    return np.arange(first, int(end_hour), every, dtype=np.int64)


def forecast_window_end(start_hour: int, end_hour: int,
                        max_lead: int = FORECAST_MAX_LEAD_H) -> int:
    """The end of the hours the forecast runs issued in [start_hour, end_hour) reach: with
    ``end_hour`` itself, the window one :class:`Simulation` needs for both products."""
    issues = forecast_issues(start_hour, end_hour)
    return max(int(end_hour), int(issues[-1]) + max_lead + 1) if len(issues) else int(end_hour)


def _run_noise(key: int, issue: np.ndarray, valid: np.ndarray, period: int) -> np.ndarray:
    """Value noise along valid time with knots of its own for every run (unit variance)."""
    x = valid + (key % period)
    knot = x // period
    w = _catmull_rom_weights(period)[x - knot * period]
    run = issue // FORECAST_EVERY_H
    # the leads of a run share its knots: hash each run's knot span once (a table of runs x
    # knots), not four knots per row; the values are the same hashes of the same indices
    runs, row_run = np.unique(run, return_inverse=True)
    first = np.full(len(runs), np.iinfo(np.int64).max)
    last = np.full(len(runs), np.iinfo(np.int64).min)
    np.minimum.at(first, row_run, knot)
    np.maximum.at(last, row_run, knot)
    width = int((last - first).max()) + 4
    table = hash_normal(key, (runs * _ISSUE_STRIDE + first - 1)[:, None]
                        + np.arange(width, dtype=np.int64)).reshape(len(runs), width)
    at = knot - first[row_run]  # position of the row's knot in its run's span (from 1)
    return sum(w[:, j] * table[row_run, at + j] for j in range(4))


def _run_error(key: int, issue: np.ndarray, valid: np.ndarray) -> np.ndarray:
    total = np.zeros(len(valid))
    for period, weight in FORECAST_ERROR_SCALES:
        total += weight * _run_noise(stream_key(key, period), issue, valid, period)
    return total / np.sqrt(sum(w * w for _, w in FORECAST_ERROR_SCALES))


def generate_forecasts(
    location_id: str,
    latitude: float,
    longitude: float,
    timezone: str,
    start_hour: int,
    end_hour: int,
    *,
    seed: int,
    profile: SiteProfile | None = None,
    max_lead: int = FORECAST_MAX_LEAD_H,
    simulation: Simulation | None = None,
) -> dict[str, np.ndarray]:
    """Weather forecasts of the runs issued in UTC hours [start_hour, end_hour).

    One row per run and lead 1..``max_lead``: ``issue`` and ``time`` (the valid hour), both
    hours since 1970-01-01T00Z, and the seven weather variables. A forecast is the true
    weather of its valid hour plus an error that grows with the lead time and is smooth
    within a run; it never looks at the measured values (instrument noise, gaps and spikes
    are the observations' own) and never changes them. Like the observations, a value
    depends only on (seed, location, issue hour, valid hour), never on the window.
    """
    p = profile or site_profile(location_id, latitude, longitude)
    issues = forecast_issues(start_hour, end_hour)
    if not len(issues):
        empty = np.empty(0, dtype=np.int64)
        return {"issue": empty, "time": empty, **{v: np.empty(0) for v in WEATHER}}
    first, end = int(issues[0]) + 1, int(issues[-1]) + max_lead + 1
    if simulation is None:
        hours, true, w, _ = _simulate(location_id, latitude, longitude, timezone, first, end,
                                      seed, (), p)
    else:  # the weather only: the same whatever drifts the simulation's pollutants carry
        simulation.check(location_id, seed, first, end)
        hours, true, w = simulation.part(first - PAD_HOURS, end)
    issue = np.repeat(issues, max_lead)
    lead = np.tile(np.arange(1, max_lead + 1, dtype=np.int64), len(issues))
    valid = issue + lead
    at = valid - hours[0]
    days = lead / 24.0

    def error(variable: str) -> np.ndarray:
        start, per_day = FORECAST_ERROR[variable]
        key = stream_key(seed, location_id, "forecast_error", variable)
        return (start + per_day * days) * _run_error(key, issue, valid)

    speed = true["wind_speed_10m"][at]
    calm = np.where(speed < 2.0, 2.0, 1.0)  # the direction of a light wind is hardly forecast
    cloud_error = error("cloud_cover")
    cloud_driver = w["cloud_driver"][at] + cloud_error
    cloud = np.clip(100.0 * (1.3 * _sigmoid(1.5 * cloud_driver) - 0.15), 0.0, 100.0)
    rain_driver = w["rain_driver"][at] + 0.75 * cloud_error + error("precipitation")
    excess = np.maximum(rain_driver - p.rain_threshold, 0.0)
    precip = np.where(cloud > 60.0, 1.2 * excess**1.4, 0.0)
    values = {
        "temperature_2m": true["temperature_2m"][at] + error("temperature_2m"),
        "relative_humidity_2m": np.clip(
            true["relative_humidity_2m"][at] + error("relative_humidity_2m"), 3.0, 100.0),
        "wind_speed_10m": speed * np.exp(error("wind_speed_10m")),
        "wind_direction_10m": np.mod(true["wind_direction_10m"][at]
                                     + calm * error("wind_direction_10m"), 360.0),
        "surface_pressure": true["surface_pressure"][at] + error("surface_pressure"),
        "precipitation": np.where(precip < 0.05, 0.0, np.minimum(precip, 80.0)),
        "cloud_cover": cloud,
    }
    out = {"issue": issue, "time": valid}
    for name in WEATHER:
        var = VARIABLES[name]
        value = values[name]
        if name == "wind_direction_10m":
            out[name] = np.mod(np.round(value), 360.0)
        else:
            out[name] = np.round(np.clip(value, var.low, var.high), _ROUNDING[name])
    return out

def _episodes(p: SiteProfile, noise: _Noise, clock: Clock) -> np.ndarray:
    """Sum of episode shapes started on hashed days (rate by month), amplitude hashed."""
    hours = clock.hours
    day = hours // 24
    start_draw = hash_uniform(noise.key("episode_start"), day)
    start_hour = np.floor(hash_uniform(noise.key("episode_hour"), day) * 24).astype(np.int64)
    amplitude = p.episode_scale * np.exp(
        0.5 * hash_normal(noise.key("episode_amplitude"), day) - 0.125)
    rate = monthly(p.episode_rate, clock.month)
    starts = (hours - day * 24 == start_hour) & (start_draw < rate)
    impulses = np.where(starts, amplitude, 0.0)
    lag = np.arange(7 * 24, dtype=np.float64)
    shape = np.where(lag < 12, np.sin(np.pi * lag / 24.0) ** 2, np.exp(-(lag - 12) / 40.0))
    stacked = causal_filter(impulses, shape)
    return 2.0 * np.tanh(stacked / 2.0)  # overlapping episodes saturate, as air masses do


_ROUNDING = {
    "temperature_2m": 1, "relative_humidity_2m": 0, "wind_speed_10m": 1,
    "wind_direction_10m": 0, "surface_pressure": 1, "precipitation": 1, "cloud_cover": 0,
    "pm2_5": 1, "pm10": 1, "no2": 1, "o3": 1, "so2": 1, "co": 0,
}
# Instrument noise: (relative, absolute) standard deviation of white measurement error.
_INSTRUMENT = {
    "pm2_5": (0.12, 2.0), "pm10": (0.12, 3.0), "no2": (0.05, 1.5), "o3": (0.04, 2.0),
    "so2": (0.08, 0.5), "co": (0.04, 15.0), "temperature_2m": (0.0, 0.15),
    "relative_humidity_2m": (0.0, 1.5), "wind_speed_10m": (0.05, 0.1),
    "surface_pressure": (0.0, 0.1),
}


def _measure(true: dict[str, np.ndarray], noise: _Noise, drifts: Sequence[Drift],
             hours: np.ndarray) -> dict[str, np.ndarray]:
    """Instrument noise, recalibration drift, physical limits and instrument rounding."""
    out = {}
    sub = _Noise(noise.seed, noise.location_id, hours)
    for name, value in true.items():
        var = VARIABLES[name]
        if name in _INSTRUMENT:
            rel, absolute = _INSTRUMENT[name]
            value = value * (1.0 + rel * sub.white(f"instrument_rel_{name}")) \
                + absolute * sub.white(f"instrument_abs_{name}")
        value = value * _drift_factor(drifts, "sensor_recalibration", name, hours)
        if name == "wind_direction_10m":
            value = np.mod(np.round(value), 360.0)
        else:
            value = np.round(np.clip(value, var.low, var.high), _ROUNDING[name])
        out[name] = value
    if "pm10" in out:  # an instrument pair: PM10 never reads below PM2.5
        out["pm10"] = np.maximum(out["pm10"], out["pm2_5"])
    return out


STATION_GAP_SHARE = 0.3  # of the gap rate: whole-station outages; the rest per sensor
STATION_GAP_MEAN_H = 12
SENSOR_GAP_MEAN_H = 6
SPIKE_POLLUTANT_SHARE = 0.8


def _runs(start_draw: np.ndarray, length_draw: np.ndarray, hours: np.ndarray, share: float,
          mean_hours: int) -> np.ndarray:
    """Covered hours of runs that start at hashed hours with lengths 1..2*mean-1.

    The start probability makes the expected covered share equal ``share``.
    """
    if share <= 0:
        return np.zeros(len(hours), dtype=bool)
    p_start = -np.log1p(-share) / mean_hours
    length = 1 + np.floor(length_draw * (2 * mean_hours - 1)).astype(np.int64)
    ends = np.where(start_draw < p_start, hours + length, np.iinfo(np.int64).min)
    return np.maximum.accumulate(ends) > hours


def _gaps_and_spikes(measured: dict[str, np.ndarray], noise: _Noise, gap_rate: float,
                     spike_rate: float, padded_hours: np.ndarray) -> None:
    """Sensor gaps (NaN in runs of hours) and spikes (impossible values), in place."""
    keep = slice(PAD_HOURS, None)
    hours = padded_hours[keep]
    if gap_rate > 0:
        station_share = 1 - (1 - gap_rate) ** STATION_GAP_SHARE
        sensor_share = 1 - (1 - gap_rate) ** (1 - STATION_GAP_SHARE)
        station = _runs(noise.uniform("gap_station"), noise.uniform("gap_station_len"),
                        padded_hours, station_share, STATION_GAP_MEAN_H)[keep]
        for name in VALUE_COLUMNS:
            sensor = _runs(noise.uniform(f"gap_{name}"), noise.uniform(f"gap_{name}_len"),
                           padded_hours, sensor_share, SENSOR_GAP_MEAN_H)[keep]
            measured[name] = np.where(station | sensor, np.nan, measured[name])
    if spike_rate > 0:
        sub = _Noise(noise.seed, noise.location_id, hours)
        spiking = sub.uniform("spike") < spike_rate
        pick = sub.uniform("spike_variable")
        pollutant = sub.uniform("spike_group") < SPIKE_POLLUTANT_SHARE
        kind = sub.uniform("spike_kind")
        for group, names in ((True, POLLUTANTS), (False, WEATHER)):
            index = np.minimum((pick * len(names)).astype(np.int64), len(names) - 1)
            for i, name in enumerate(names):
                hit = spiking & (pollutant == group) & (index == i)
                if hit.any():
                    measured[name] = np.where(hit, _impossible(name, measured[name], kind),
                                              measured[name])


def _impossible(name: str, value: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Values a faulty sensor emits: -999, a 9999-style sentinel, or a negative reading."""
    var = VARIABLES[name]
    sentinel = next(s for s in (9999.0, 99999.0, 999999.0) if s > var.high)
    negative = -np.round(np.abs(np.nan_to_num(value, nan=10.0)) + 1.0, 1)
    if var.low < 0:  # a negative reading is possible (temperature): use sentinels only
        return np.where(kind < 0.5, -999.0, sentinel)
    return np.where(kind < 0.35, -999.0, np.where(kind < 0.7, sentinel, negative))
