"""bench/project_scale.py's arithmetic on a tiny input: the laws it states are the laws it
computes (no process, no training)."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("project_scale", BENCH / "project_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["project_scale"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("project_scale", None)


def step(cpu: float, second: float | None = None, peak: float = 100) -> dict:
    out = {"cpu_s": cpu, "wall_s": cpu, "peak_mb": peak}
    if second is not None:
        out["cpu_s_at_second_size"] = second
    return out


INPUTS = {
    "reference": {"locations": 10, "years": 2, "raw_rows": 100_000, "feature_rows": 100_000},
    "second_size": {"locations": 5, "years": 2},
    "process_start_cpu_s": {"value": 2.0},
    "steps": {
        "ingest": step(42.0), "preprocess": step(22.0),
        # train: 2 s start + 1 µs... per row: 50,000 more rows cost 5 s -> 100 µs per row
        "train": step(2.0 + 10.0 + 40.0, second=2.0 + 5.0 + 40.0),
        "evaluate": step(12.0, 7.0), "promote": step(2.5), "predict": step(7.0, 4.5),
        "score": step(1.0), "drift": step(4.0, 3.0),
    },
    "celery": {"task_overhead_slot_s": 1.0, "batch_locations": 2, "ingest_batch_size": 5,
               "slots_per_worker": 2},
    "network": {"link_mb_s": 1.0},
}


def probe_size(locations: int) -> dict:
    return {
        "locations": locations, "months": 1, "rows_raw": 1000 * locations,
        "feature_rows": 1000 * locations,
        "steps": {"ingest": {"cpu_s": 2.0 + locations}, "preprocess": {"cpu_s": 2.0 + locations}},
        "train_scans": {"total_cpu_s": 1.0 + 0.001 * locations},
        "dvc": {"add": {"wall_s": 1.0 + 0.01 * locations},
                "push": {"wall_s": 1.0 + 0.02 * locations},
                "add_features": {"wall_s": 1.0 + 0.5 * locations}},
        "bytes": {"data": 100_000 * locations, "data_files": 2 * locations,
                  "features": 1_000_000 * locations, "features_per_row": 1000.0,
                  "shared_dirs": 10 + 3 * locations},
    }


PROBE = {"results": [probe_size(5), probe_size(20)]}


def rows(projection: dict) -> dict[str, dict]:
    return {r["name"]: r for r in projection["rows"]}


def test_a_linear_step_doubles_with_the_places_less_its_process_start(scale):
    small = rows(scale.project(INPUTS, PROBE, 20, 2, [1]))
    large = rows(scale.project(INPUTS, PROBE, 40, 2, [1]))
    for name in ("ingest", "preprocess", "evaluate", "predict", "drift"):
        assert large[name]["cpu_s"] - 2.0 == pytest.approx(2 * (small[name]["cpu_s"] - 2.0))
    # 20 places = 2x the reference's 10: (12 - 2) x 2 + 2
    assert small["evaluate"]["cpu_s"] == pytest.approx(22.0)


def test_history_scales_ingest_and_preprocess_not_the_holdout_steps(scale):
    two = rows(scale.project(INPUTS, PROBE, 10, 2, [1]))
    four = rows(scale.project(INPUTS, PROBE, 10, 4, [1]))
    assert four["preprocess"]["cpu_s"] - 2 == pytest.approx(2 * (two["preprocess"]["cpu_s"] - 2))
    for name in ("evaluate", "promote", "predict", "score", "drift"):
        assert four[name]["cpu_s"] == pytest.approx(two[name]["cpu_s"])


def test_train_fits_stay_constant_and_only_its_scan_grows(scale):
    rates = scale.derived(INPUTS, PROBE)
    assert rates["train_scan_cpu_s_per_row"] == pytest.approx(1e-4)  # 5 s / 50,000 rows
    assert rates["train_fits_cpu_s"] == pytest.approx(40.0)
    at10 = rows(scale.project(INPUTS, PROBE, 10, 2, [1]))["train"]["cpu_s"]
    at100 = rows(scale.project(INPUTS, PROBE, 100, 2, [1]))["train"]["cpu_s"]
    assert at10 == pytest.approx(52.0)  # the reference itself
    assert at100 - at10 == pytest.approx(1e-4 * 900_000)  # 10x the rows: only the scan grows
    fits = rows(scale.project(INPUTS, PROBE, 10, 2, [1], train_fits_cpu_s=80.0))["train"]
    assert fits["cpu_s"] == pytest.approx(52.0 + 40.0)


def test_the_serial_part_does_not_shrink_with_workers_and_the_mapped_part_does(scale):
    p = scale.project(INPUTS, PROBE, 200, 2, [1, 2, 4, 8])
    by = rows(p)
    for name in ("train", "evaluate", "promote", "score", "drift", "ingest"):
        walls = by[name]["wall_s"]
        assert walls[8] == pytest.approx(walls[1]), name
    for name in ("preprocess", "predict"):
        walls = by[name]["wall_s"]
        assert walls[1] > walls[2] > walls[4] > walls[8], name
    # train: one task, scan on one core, the fits on the host's two cores
    train = by["train"]
    assert train["wall_s"][1] == pytest.approx(train["cpu_s"] - 40.0 / 2)
    # DVC's one slot and the hourly ingestion tasks on the home host do not spread either
    for r in p["rows"]:
        if r["name"].startswith(("dvc:", "aq_ingest:")):
            assert r["wall_s"][8] == pytest.approx(r["wall_s"][1]), r["name"]
    # the nightly retrain falls towards its serial part, never below it (Amdahl)
    nightly = p["totals"]["nightly"]
    assert nightly[1] > nightly[2] > nightly[4] > nightly[8] > p["nightly_serial_s"]
    serial = sum(by[name]["wall_s"][1] for name in ("train", "evaluate", "promote")) + \
        by["dvc: commit preprocess (hash + cache copy)"]["wall_s"][1]
    assert p["nightly_serial_s"] == pytest.approx(serial)
    assert p["nightly_amdahl_ceiling"] == pytest.approx(nightly[1] / serial)
    assert nightly[8] - serial == pytest.approx(by["preprocess"]["wall_s"][8])


def test_the_mirror_moves_nothing_on_one_host_and_more_with_every_other(scale):
    p = scale.project(INPUTS, PROBE, 20, 2, [1, 2, 4])
    assert p["mirror"][1]["nightly_gb"] == 0
    assert p["mirror"][1]["first_pull_raw_gb"] == 0
    features = 1000.0 * 200_000  # bytes per feature row x rows at 20 places x 2 years
    # N=2: half the features pushed back by the other host, pulled by its two task slots
    assert p["mirror"][2]["nightly_s"] == pytest.approx((features / 2 + 2 * features) / 1e6)
    assert p["mirror"][4]["nightly_s"] > p["mirror"][2]["nightly_s"]


def test_dvc_and_ingestion_tasks_cost_per_file_and_per_task(scale):
    p = scale.project(INPUTS, PROBE, 20, 2, [1])
    by = rows(p)
    rates = p["rates"]
    assert rates["raw_files_per_location_month"] == pytest.approx(2.0)
    assert rates["dvc_add_s_per_file"] + rates["dvc_push_s_per_file"] == pytest.approx(0.015)
    # 20 places x 24 months x 2 files; each hour the 40 current month files
    assert by["dvc: data_version after the backfill"]["wall_s"][1] == pytest.approx(960 * 0.015)
    assert by["dvc: data_version each hour (month files changed)"]["wall_s"][1] == \
        pytest.approx(40 * 0.015)
    # 0.5 s per MB of features (1,000 B a row, 200,000 rows)
    assert by["dvc: commit preprocess (hash + cache copy)"]["wall_s"][1] == pytest.approx(100.0)
    # 20 places in aq_ingest tasks of 5: 4 tasks x 1 s on the home host's 2 slots
    assert by["aq_ingest: start-up of 4 tasks each hour"]["wall_s"][1] == pytest.approx(2.0)
    wider = rows(scale.project(INPUTS, PROBE, 20, 2, [1], ingest_batch_size=10))
    assert wider["aq_ingest: start-up of 2 tasks each hour"]["wall_s"][1] == pytest.approx(1.0)


def test_mapped_tasks_never_finish_faster_than_one_task(scale):
    assert scale.mapped_wall(100.0, 4, 1.0, 2) == pytest.approx(52.0)
    assert scale.mapped_wall(100.0, 4, 1.0, 100) == pytest.approx(26.0)  # one task: 25 + 1


def test_the_bottleneck_is_the_step_with_the_largest_wall_time(scale):
    inputs = copy.deepcopy(INPUTS)
    inputs["steps"]["evaluate"] = step(5000.0, 2500.0)
    p = scale.project(inputs, PROBE, 10, 2, [1, 8])
    assert p["bottleneck"] == {1: "evaluate", 8: "evaluate"}
    assert p["largest"] == {1: "evaluate", 8: "evaluate"}
    text = scale.markdown(p)
    assert "| evaluate |" in text
    assert "Largest step of the nightly retrain: N=1: evaluate; N=8: evaluate." in text


def test_the_committed_measurements_project_5000_places(scale, capsys):
    """The script runs on the repo's own results files (what docs/benchmarks.md quotes)."""
    assert scale.main(["--workers", "1,8"]) == 0
    out = capsys.readouterr().out
    assert "5,000 places × 2 years" in out
    assert "Largest step of the nightly retrain: N=1:" in out


def test_the_table_in_the_benchmarks_doc_is_what_the_script_prints(scale):
    """docs/benchmarks.md quotes the projection of the committed results files verbatim."""
    p = scale.project(scale.load(scale.RESULTS / "scale_inputs.json"),
                      scale.load(scale.RESULTS / "scale_probe.json"), 5000, 2.0, [1, 2, 4, 8])
    doc = (BENCH.parent / "docs" / "benchmarks.md").read_text()
    assert scale.markdown(p) in doc
