"""Every dashboard through grafana-foundation-sdk's typed models (pinned to Grafana 10.4, the
docker-compose image): what they would drop is a key Grafana would not read."""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana.board import Json


def typed_round_trip(dashboard: Json) -> Json:
    """The dashboard as grafana-foundation-sdk's models read and write it."""
    register_default_plugins()
    model = Dashboard.from_json(dashboard)
    return json.loads(json.dumps(model, cls=JSONEncoder))


def lost_in(original: Any, typed: Any, path: str = "") -> list[str]:
    """Paths of keys or values of ``original`` that ``typed`` does not carry unchanged."""
    if isinstance(original, dict) and isinstance(typed, dict):
        return [p for k, v in original.items()
                for p in ([f"{path}/{k}"] if k not in typed else lost_in(v, typed[k],
                                                                          f"{path}/{k}"))]
    if isinstance(original, list) and isinstance(typed, list) and len(original) == len(typed):
        return [p for i, (a, b) in enumerate(zip(original, typed, strict=True))
                for p in lost_in(a, b, f"{path}[{i}]")]
    return [] if original == typed else [path or "/"]
