"""A real local HTTP server that stands in for the internet in tests and the benchmark.

It binds 127.0.0.1 on a free port, replays scripted responses per path (status,
headers, body, delay) and, when no script is left, answers from a route
handler that builds the providers' documented response shapes:

* Open-Meteo (air-quality, forecast, archive, previous runs with ``<variable>_previous_day<N>``):
  one object per location, or a
  JSON array when ``latitude``/``longitude`` list several; ``hourly_units``;
  ``timeformat=unixtime|iso8601``; ``start_date``/``end_date``.
* OpenWeatherMap Air Pollution (current, ``/forecast``, ``/history``):
  ``coord`` plus ``list[].dt``, ``list[].main.aqi``, ``list[].components`` in ug/m3.

Values are a deterministic function of (variable, latitude, time) so tests can
assert exactly what lands on disk: :func:`truth`.

Hostile modes (a :class:`Reply` field each) lie the way broken or malicious
servers do: ``trickle_s`` sends the body one byte at a time, ``trickle_headers_s``
the header lines too, ``endless`` streams a body that never ends (no
Content-Length); deep JSON, off-hour times and echoed keys are bodies
(:func:`deep_json`). Every mode is bounded server-side (``HOSTILE_MAX_S``).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd

# ------------------------------------------------------------------ server


# no hostile reply runs longer than this, whatever the client does
HOSTILE_MAX_S = 60.0


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str/bytes -> sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (timeouts)
    trickle_s: float = 0.0  # > 0: send the body one byte per trickle_s seconds
    trickle_headers_s: float = 0.0  # > 0: send the header block one byte at a time too
    endless: bool = False  # stream the body (repeated) forever, without Content-Length


def deep_json(depth: int = 200_000) -> bytes:
    """Valid JSON nested ``depth`` arrays deep (Python's json raises RecursionError)."""
    return b"[" * depth + b"]" * depth


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    at: float


Handler = Callable[[Seen], Reply]


class ReplayServer:
    """Scripted replies per path, then route handlers; records every request."""

    def __init__(self) -> None:
        self._scripts: dict[str, list[Reply]] = {}
        self._routes: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self.requests: list[Seen] = []
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out as two writes on a kept-alive connection: with Nagle's
            # algorithm the body waits for the client's delayed ACK (~40 ms a request, as no
            # provider's server does: they set TCP_NODELAY)
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                seen = Seen(parts.path, query, time.monotonic())
                reply = server._reply_for(seen)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                body = reply.body
                if isinstance(body, (dict, list)):
                    payload = json.dumps(body).encode()
                    content_type = "application/json; charset=utf-8"
                elif isinstance(body, str):
                    payload, content_type = body.encode(), "text/plain; charset=utf-8"
                else:
                    payload, content_type = body or b"", "application/octet-stream"
                try:
                    if reply.trickle_headers_s or reply.trickle_s or reply.endless:
                        self._hostile(reply, payload, content_type)
                        return
                    self.send_response(reply.status)
                    headers = {"Content-Type": content_type, **reply.headers}
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def _hostile(self, reply: Reply, payload: bytes, content_type: str) -> None:
                stop_at = time.monotonic() + HOSTILE_MAX_S
                self.close_connection = True
                lines = [f"HTTP/1.1 {reply.status} OK", f"Content-Type: {content_type}",
                         *(f"{k}: {v}" for k, v in reply.headers.items())]
                if not reply.endless:
                    lines.append(f"Content-Length: {len(payload)}")
                head = ("\r\n".join(lines) + "\r\n\r\n").encode()
                if reply.trickle_headers_s:
                    for i in range(len(head)):
                        if time.monotonic() > stop_at:
                            return
                        self.wfile.write(head[i:i + 1])
                        self.wfile.flush()
                        time.sleep(reply.trickle_headers_s)
                else:
                    self.wfile.write(head)
                    self.wfile.flush()
                if reply.endless:
                    block = (payload or b"x") * max(1, 65536 // max(1, len(payload or b"x")))
                    while time.monotonic() < stop_at:
                        self.wfile.write(block)
                elif reply.trickle_s:
                    for i in range(len(payload)):
                        if time.monotonic() > stop_at:
                            return
                        self.wfile.write(payload[i:i + 1])
                        self.wfile.flush()
                        time.sleep(reply.trickle_s)
                else:
                    self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> ReplayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def script(self, path: str, *replies: Reply) -> None:
        """Serve ``replies`` in order to requests for ``path``, before any route handler."""
        with self._lock:
            self._scripts.setdefault(path, []).extend(replies)

    def route(self, path: str, handler: Handler) -> None:
        with self._lock:
            self._routes[path] = handler

    def requests_to(self, path: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _reply_for(self, seen: Seen) -> Reply:
        with self._lock:
            self.requests.append(seen)
            script = self._scripts.get(seen.path)
            if script:
                return script.pop(0)
            handler = self._routes.get(seen.path)
        if handler is None:
            return Reply(404, {"error": True, "reason": f"no route {seen.path}"})
        return handler(seen)


@contextlib.contextmanager
def refusing_url(path: str = "/"):
    """A URL on 127.0.0.1 whose port is held (bound, never listening): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}{path}"


# ------------------------------------------------------------------ deterministic values

# plausible values in the units each provider documents
_BASE = {
    "temperature_2m": (10.0, 8.0),
    "relative_humidity_2m": (60.0, 25.0),
    "wind_speed_10m": (4.0, 3.0),  # m/s
    "wind_direction_10m": (180.0, 170.0),
    "surface_pressure": (1000.0, 15.0),
    "precipitation": (0.5, 0.5),
    "cloud_cover": (50.0, 45.0),
    "pm2_5": (15.0, 10.0),
    "pm10": (25.0, 15.0),
    "nitrogen_dioxide": (30.0, 20.0),
    "ozone": (60.0, 40.0),
    "sulphur_dioxide": (5.0, 4.0),
    "carbon_monoxide": (250.0, 100.0),
}
OWM_COMPONENTS = {"co": "carbon_monoxide", "no2": "nitrogen_dioxide", "o3": "ozone",
                  "so2": "sulphur_dioxide", "pm2_5": "pm2_5", "pm10": "pm10"}


def base_variable(variable: str) -> tuple[str, int]:
    """(variable, N) of an Open-Meteo previous-runs name ``<variable>_previous_day<N>``."""
    name, sep, day = variable.rpartition("_previous_day")
    return (name, int(day)) if sep and day.isdigit() else (variable, 0)


def truth(variable: str, latitude: float, unix_s: int) -> float:
    """The value the fake providers serve (Open-Meteo names; m/s, ug/m3, hPa...).

    A previous-runs value (``_previous_day<N>``) is the same plus a forecast error of
    N percent of the amplitude (what was forecast N days before the hour).
    """
    variable, day = base_variable(variable)
    mean, amplitude = _BASE[variable]
    hour = unix_s // 3600
    phase = (hour % 24) / 24 * 2 * math.pi + latitude / 10
    return round(mean + amplitude * (math.sin(phase) + 0.01 * day), 3)


def hours(start_date: str, end_date: str) -> list[int]:
    """Unix seconds of every UTC hour from start_date 00:00 to end_date 23:00."""
    first = pd.Timestamp(start_date, tz="UTC")
    last = pd.Timestamp(end_date, tz="UTC") + pd.Timedelta(hours=23)
    return [int(t.timestamp()) for t in pd.date_range(first, last, freq="h")]


# ------------------------------------------------------------------ Open-Meteo shapes

OPEN_METEO_UNITS = {
    "temperature_2m": "°C",
    "relative_humidity_2m": "%",
    "wind_speed_10m": "km/h",  # unless wind_speed_unit=ms
    "wind_direction_10m": "°",
    "surface_pressure": "hPa",
    "precipitation": "mm",
    "cloud_cover": "%",
    "pm2_5": "μg/m³",
    "pm10": "μg/m³",
    "nitrogen_dioxide": "μg/m³",
    "ozone": "μg/m³",
    "sulphur_dioxide": "μg/m³",
    "carbon_monoxide": "μg/m³",
    "european_aqi": "EAQI",
    "us_aqi": "USAQI",
}


def open_meteo_location(latitude: float, longitude: float, variables: list[str], times: list[int],
                        *, timeformat: str = "unixtime", wind_speed_unit: str = "kmh",
                        values: Callable[[str, float, int], float | None] = truth) -> dict:
    """One location's answer, as the Open-Meteo APIs document it."""
    units = {"time": timeformat}
    hourly: dict[str, list] = {}
    if timeformat == "iso8601":
        hourly["time"] = [pd.Timestamp(t, unit="s").strftime("%Y-%m-%dT%H:%M") for t in times]
    else:
        hourly["time"] = list(times)
    for var in variables:
        base, _ = base_variable(var)
        unit = OPEN_METEO_UNITS.get(base, "")
        series = [values(var, latitude, t) for t in times]
        if base == "wind_speed_10m" and wind_speed_unit != "ms":
            series = [None if v is None else v * 3.6 for v in series]
        elif base == "wind_speed_10m":
            unit = "m/s"
        units[var] = unit
        hourly[var] = series
    return {
        "latitude": latitude,
        "longitude": longitude,
        "generationtime_ms": 0.2,
        "utc_offset_seconds": 0,
        "timezone": "GMT",
        "timezone_abbreviation": "GMT",
        "elevation": 38.0,
        "hourly_units": units,
        "hourly": hourly,
    }


def open_meteo_handler(values: Callable[[str, float, int], float | None] = truth) -> Handler:
    """Answers any Open-Meteo hourly request from its query, like the real API."""

    def handle(seen: Seen) -> Reply:
        q = seen.query
        try:
            lats = [float(x) for x in q["latitude"].split(",")]
            lons = [float(x) for x in q["longitude"].split(",")]
            variables = q["hourly"].split(",")
            times = hours(q["start_date"], q["end_date"])
        except (KeyError, ValueError) as exc:
            return Reply(400, {"error": True, "reason": f"Parameter error: {exc}"})
        if len(lats) != len(lons):
            return Reply(400, {"error": True,
                               "reason": "Parameter 'latitude' and 'longitude' must have the "
                                         "same number of elements"})
        items = [
            open_meteo_location(lat, lon, variables, times,
                                timeformat=q.get("timeformat", "iso8601"),
                                wind_speed_unit=q.get("wind_speed_unit", "kmh"), values=values)
            for lat, lon in zip(lats, lons, strict=True)
        ]
        return Reply(200, items[0] if len(items) == 1 else items)

    return handle


# ------------------------------------------------------------------ OpenWeatherMap shapes


def owm_item(latitude: float, unix_s: int, *, aqi: float | int = 2) -> dict:
    return {
        "dt": unix_s,
        "main": {"aqi": aqi},
        "components": {
            **{name: truth(var, latitude, unix_s) for name, var in OWM_COMPONENTS.items()},
            "no": 0.5,
            "nh3": 1.2,
        },
    }


def owm_body(latitude: float, longitude: float, times: list[int], *,
             coord_as_list: bool = False, aqi: float | int = 2) -> dict:
    coord = [longitude, latitude] if coord_as_list else {"lon": longitude, "lat": latitude}
    return {"coord": coord, "list": [owm_item(latitude, t, aqi=aqi) for t in times]}


def owm_handler(api_key: str, now: Callable[[], pd.Timestamp] | None = None) -> Handler:
    """current / forecast / history of the Air Pollution API, with the documented 401."""

    def handle(seen: Seen) -> Reply:
        q = seen.query
        if q.get("appid") != api_key:
            return Reply(401, {"cod": 401, "message": "Invalid API key. Please see "
                               "https://openweathermap.org/faq#error401 for more info."})
        lat, lon = float(q["lat"]), float(q["lon"])
        current = (now() if now else pd.Timestamp.now(tz="UTC")).floor("h")
        if seen.path.endswith("/history"):
            first = pd.Timestamp(int(q["start"]), unit="s", tz="UTC").ceil("h")
            last = pd.Timestamp(int(q["end"]), unit="s", tz="UTC")
            times = [int(t.timestamp()) for t in pd.date_range(first, last, freq="h")]
        elif seen.path.endswith("/forecast"):
            times = [int((current + pd.Timedelta(hours=h)).timestamp()) for h in range(1, 97)]
        else:
            times = [int(current.timestamp())]
        return Reply(200, owm_body(lat, lon, times))

    return handle
