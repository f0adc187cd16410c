"""requirements.lock: every install (setup.sh, the image) gets the tested versions, hash-checked."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

EXTRAS = ("dev", "serving", "airflow", "stack")


def locked() -> dict[str, str]:
    text = (REPO / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", text, flags=re.MULTILINE))
    return {canonicalize_name(name): version for name, version in pins.items()}


def test_every_dependency_of_pyproject_is_pinned_within_its_range():
    """Fails when pyproject changed and `make lock` was not run."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in EXTRAS:
        wanted += project["optional-dependencies"][extra]
    pins = locked()
    problems = []
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name}: not in requirements.lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: locked {version} outside {req.specifier}")
    assert problems == [], "run `make lock`: " + "; ".join(problems)


def test_every_pin_carries_a_hash_and_installs_require_them():
    text = (REPO / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text.split("\n", 2)[2])
    assert len(blocks) == len(locked()) > 100
    assert all("--hash=sha256:" in block for block in blocks)
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "--require-hashes -r requirements.lock" in setup
    assert "--no-deps -e ." in setup
    assert "--require-hashes -r requirements.lock" in (REPO / "Dockerfile").read_text()
