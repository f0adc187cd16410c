"""How `make test` spreads the suite over pytest-xdist workers.

A *unit* goes to one worker whole, its tests in file order: a test file (its module fixtures
built once), or a directory whose tests share an expensive session fixture (the observed stack
run, the MLflow and MLServer servers). Units start longest first (measured seconds in
``tests/unit_costs.json``), so no long unit is left to run alone at the end while the other
workers idle: the suite's wall time is about the sum of the units over the workers, not the
longest chain of files that happen to share a directory.

Refresh the costs from a JUnit report of a whole run::

    .venv/bin/python -m pytest -m "not network" -n 2 --junitxml=/tmp/run.xml
    .venv/bin/python -m tests.scheduling /tmp/run.xml
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter, OrderedDict
from pathlib import Path

COSTS_FILE = Path(__file__).with_name("unit_costs.json")

# Directories whose tests share a session fixture too dear to build once per worker.
SHARED_FIXTURE_DIRS = frozenset({"integration", "mlops"})
UNKNOWN_TEST_SECONDS = 1.0  # a unit not in the costs file: this per test


def scheduling_unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in SHARED_FIXTURE_DIRS:
        return f"tests/{parts[1]}"
    return path


def load_costs(path: Path = COSTS_FILE) -> dict[str, float]:
    try:
        found = json.loads(path.read_text())
        return {str(k): float(v) for k, v in found.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a JSON object of unit -> seconds ({exc}); refresh it "
                         "with python -m tests.scheduling report.xml") from exc


def unit_cost(unit: str, tests: int, costs: dict[str, float]) -> float:
    return costs.get(unit, tests * UNKNOWN_TEST_SECONDS)


def longest_first(workqueue: dict[str, dict], costs: dict[str, float]) -> OrderedDict:
    """The same units, the dearest first (ties keep their order)."""
    return OrderedDict(sorted(workqueue.items(),
                              key=lambda item: -unit_cost(item[0], len(item[1]), costs)))


def costs_from_junit(report: Path) -> dict[str, float]:
    """Seconds per unit from a JUnit XML report (setup, call and teardown of each test)."""
    seconds: Counter[str] = Counter()
    for case in ET.parse(report).iter("testcase"):
        module = case.get("classname", "").split(".")
        while module and module[-1][:1].isupper():  # test classes: Test... inside the module
            module.pop()
        if not module:
            continue
        seconds[scheduling_unit("/".join(module) + ".py")] += float(case.get("time") or 0)
    return {unit: round(value, 1) for unit, value in seconds.most_common() if value >= 5}


def make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirstScheduling(LoadScopeScheduling):
        costs = load_costs()
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return scheduling_unit(nodeid)

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:  # the queue is complete at the first assignment
                self.workqueue = longest_first(self.workqueue, self.costs)
                self.ordered = True
            super()._assign_work_unit(node)

    return LongestFirstScheduling(config, log)


if __name__ == "__main__":
    found = costs_from_junit(Path(sys.argv[1]))
    COSTS_FILE.write_text(json.dumps(found, indent=1) + "\n")
    print(f"{len(found)} units, {sum(found.values()) / 60:.1f} worker-minutes -> {COSTS_FILE}")
