"""docs/metrics.md documents exactly the metrics of CATALOGUE, with their types and labels."""

from __future__ import annotations

from pipeline.io.metrics import CATALOGUE
from tests.metrics_doc import PIPELINE_SECTION, SCRAPED_SECTION, documented_metrics

PUSH_LABELS = ("job", "step")  # the grouping key every pushed metric carries


def test_doc_table_lists_every_catalogue_metric_and_nothing_else():
    documented = {n for n, m in documented_metrics().items() if m.section == PIPELINE_SECTION}
    assert documented - set(CATALOGUE) == set(), "documented but not in CATALOGUE"
    assert set(CATALOGUE) - documented == set(), "in CATALOGUE but not documented"


def test_doc_types_and_labels_match_the_catalogue():
    docs = documented_metrics()
    for name, spec in CATALOGUE.items():
        assert docs[name].kind == spec.kind, name
        assert docs[name].labels == PUSH_LABELS + spec.labels, name


def test_scraped_metrics_are_not_pipeline_metrics():
    scraped = {n for n, m in documented_metrics().items() if m.section == SCRAPED_SECTION}
    assert "up" in scraped
    assert not scraped & set(CATALOGUE)


def test_catalogue_names_follow_prometheus_conventions():
    for name, spec in CATALOGUE.items():
        assert name.startswith("aq_"), name
        assert "step" not in spec.labels, f"{name}: `step` is the grouping key, not a label"
        assert not {"run_id", "timestamp", "time"} & set(spec.labels), f"{name}: unbounded label"
        if spec.kind == "info":
            assert name.endswith("_info"), name
