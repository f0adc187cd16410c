"""tests/fixtures/frozen/ is what the steps make today, and loads as a real champion does.

The serving tests copy this frozen project instead of training one; if the steps start writing
something else (a registry bundle, feature or forecast columns), the slow test fails until
``.venv/bin/python -m tests.fixtures.make_frozen`` has been re-run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.io.registry import Registry
from pipeline.paths import ProjectPaths
from tests.fixtures import make_frozen
from tests.fixtures.make_frozen import FROZEN, MANIFEST

VERSION = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]+")


def manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def shape(root: Path) -> dict:
    """What must not drift: files (versions named by role), metadata keys, columns, params."""
    made = manifest(root)
    roles = {made["champion"]: "<champion>", made["other"]: "<other>"}
    paths = ProjectPaths(root)
    out: dict = {
        "files": sorted(VERSION.sub(lambda m: roles.get(m[0], "<version>"), f)
                        for f in made["files"]),
        "params": yaml.safe_load(paths.params.read_text()),
        "latest": dict(pd.read_parquet(paths.latest_predictions).dtypes.astype(str)),
    }
    for location in ("berlin", "delhi"):
        part = paths.features / f"location={location}" / "part.parquet"
        out[f"features {location}"] = dict(pd.read_parquet(part).dtypes.astype(str))
    for version, role in roles.items():
        meta = json.loads((paths.registry_dir / version / "metadata.json").read_text())
        out[f"metadata {role}"] = sorted(meta)
    return out


def test_the_frozen_champion_loads_through_the_registry_checks(tmp_path):
    """Its sha256 and types are verified like any champion's; the manifest says which it is."""
    made = manifest(FROZEN)
    paths = ProjectPaths(FROZEN)
    registry = Registry(paths)
    assert registry.champion_version() == made["champion"]
    champion = registry.load_champion()
    assert champion.metadata["version"] == made["champion"]
    assert set(champion.models) == {("pm2_5", h) for h in champion.metadata["horizons"]}
    assert registry.load(made["other"]).metadata["version"] == made["other"]
    on_disk = sorted(str(p.relative_to(FROZEN)) for p in FROZEN.rglob("*") if p.is_file())
    assert on_disk == sorted([*made["files"], MANIFEST])


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.train
def test_the_frozen_project_is_what_the_steps_make_today(tmp_path):
    fresh = tmp_path / "fresh"
    made = make_frozen.build(tmp_path / "project")
    make_frozen.keep(tmp_path / "project", fresh, made)
    assert shape(fresh) == shape(FROZEN), (
        "tests/fixtures/frozen is stale: run .venv/bin/python -m tests.fixtures.make_frozen")
