"""The xdist scheduling of `make test`: units, longest first, costs that name real files."""

from __future__ import annotations

from tests.conftest import REPO
from tests.scheduling import (
    COSTS_FILE,
    costs_from_junit,
    load_costs,
    longest_first,
    scheduling_unit,
)


def test_a_file_is_a_unit_unless_its_directory_shares_a_session_fixture():
    assert scheduling_unit("tests/dags/test_handover.py::test_x") == "tests/dags/test_handover.py"
    assert scheduling_unit("tests/serving/test_proxy.py::test_y[2]") == \
        "tests/serving/test_proxy.py"
    assert scheduling_unit("tests/mlops/test_tracking.py::test_z") == "tests/mlops"
    assert scheduling_unit("tests/integration/test_grafana.py::t") == "tests/integration"
    assert scheduling_unit("tests/test_config.py::t") == "tests/test_config.py"


def test_the_dearest_units_start_first_and_unknown_ones_count_per_test():
    queue = {"a.py": {"1": False}, "b.py": {str(i): False for i in range(30)},
             "c.py": {"1": False}, "d.py": {"1": False, "2": False}}
    ordered = longest_first(queue, {"c.py": 300.0, "a.py": 0.5})
    assert list(ordered) == ["c.py", "b.py", "d.py", "a.py"]
    assert ordered["b.py"] is queue["b.py"]  # the same work, only reordered


def test_costs_are_read_from_a_junit_report(tmp_path):
    report = tmp_path / "run.xml"
    report.write_text(
        '<testsuites><testsuite>'
        '<testcase classname="tests.dags.test_handover" name="a" time="100.5"/>'
        '<testcase classname="tests.dags.test_handover" name="b" time="20"/>'
        '<testcase classname="tests.mlops.test_tracking" name="c" time="30"/>'
        '<testcase classname="tests.mlops.test_mlserver" name="d" time="12"/>'
        '<testcase classname="tests.core.test_x.TestThing" name="e" time="6"/>'
        '<testcase classname="tests.core.test_y" name="f" time="1"/>'
        '</testsuite></testsuites>')
    assert costs_from_junit(report) == {"tests/dags/test_handover.py": 120.5,
                                        "tests/mlops": 42.0, "tests/core/test_x.py": 6.0}


def test_the_committed_costs_name_units_that_exist():
    costs = load_costs(COSTS_FILE)
    assert costs, f"{COSTS_FILE} is empty"
    missing = [unit for unit in costs if not (REPO / unit).exists()]
    assert not missing, f"{COSTS_FILE.name} names units that are gone: {missing} " \
                        "(refresh: python -m tests.scheduling report.xml)"


def test_the_xdist_internals_the_order_relies_on_are_still_there():
    """tests/scheduling.py reorders LoadScopeScheduling's queue before its first pop: an xdist
    that pops elsewhere or renames the hooks would silently lose the order, so fail here."""
    import inspect

    from xdist.scheduler import LoadScopeScheduling

    assert "self.workqueue.popitem(last=False)" in inspect.getsource(
        LoadScopeScheduling._assign_work_unit)
    assert "_split_scope(nodeid)" in inspect.getsource(LoadScopeScheduling.schedule)


def test_a_broken_costs_file_is_named_with_the_way_to_refresh_it(tmp_path):
    import pytest

    broken = tmp_path / "unit_costs.json"
    for text in ("{not json", '["a list"]', '{"tests/x.py": "soon"}'):
        broken.write_text(text)
        with pytest.raises(ValueError, match="unit_costs.json.*python -m tests.scheduling"):
            load_costs(broken)
    assert load_costs(tmp_path / "absent.json") == {}
