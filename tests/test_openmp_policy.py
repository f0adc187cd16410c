"""`python -m pipeline` makes idle OpenMP threads sleep: spinning ones slowed training 2.5-5x."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.__main__ import quiet_openmp_waits
from tests.conftest import REPO


def test_steps_default_to_passive_waits(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    quiet_openmp_waits()
    assert os.environ["OMP_WAIT_POLICY"] == "passive"


def test_an_explicit_policy_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    quiet_openmp_waits()
    assert os.environ["OMP_WAIT_POLICY"] == "active"


@pytest.mark.process
def test_policy_is_set_before_a_step_loads_scikit_learn():
    """The OpenMP runtime reads the policy once, when scikit-learn first loads it."""
    code = (
        "import sys, pipeline.__main__ as m\n"
        "m.quiet_openmp_waits()\n"
        "assert 'sklearn' not in sys.modules, 'sklearn loaded before the policy was set'\n"
        "import os; print(os.environ['OMP_WAIT_POLICY'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "passive"
