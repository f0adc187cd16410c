"""Do today's inputs look like the data the champion learnt from? PSI per feature, the
share drifted and the periods compared."""

from __future__ import annotations

from grafana_foundation_sdk.models import units

from grafana.board import Board, Query, thresholds, value_map
from grafana.parts import (
    MERGE,
    PROMOTIONS,
    ROLLBACKS,
    alert_links,
    bar_options,
    board,
    by_name,
    organize,
    query_variable,
    series_options,
    series_style,
    stat_options,
    table_options,
)
from grafana.sources import (
    drift_params,
)


def build() -> Board:
    psi_threshold = drift_params()["psi_threshold"]
    share_threshold = drift_params()["share_threshold"]
    b = board("aq-drift", "Air quality: drift",
              "Do today's inputs look like the data the champion learnt from? PSI per feature "
              "over the recent window against the champion's training rows of the same season, "
              "the share drifted and the periods compared.",
              query_variable("feature", "Feature", "aq_drift_psi"),
              annotations=(PROMOTIONS, ROLLBACKS))
    b.row("Now")
    b.add("stat", "Share of drifted features", [Query("aq_drift_share", "drifted")], w=4, h=6,
          unit=units.PercentUnit, thresholds=thresholds("green", (share_threshold, "red")),
          options=stat_options("value"), alert="DriftDetected",
          links=alert_links("DriftDetected"),
          description=f"Features with PSI above {psi_threshold} (drift.psi_threshold); "
                      f"DriftDetected above {share_threshold:.0%} (drift.share_threshold).")
    b.add("stat", "Drift detected", [Query("aq_drift_detected", "drift")], w=4, h=6,
          mappings=value_map(("0", "no drift", "green"), ("1", "drift", "red")),
          options=stat_options("value"), alert="DriftDetected",
          links=alert_links("DriftDetected"),
          description="The drift step's verdict (share above the threshold).")
    b.add("table", "Compared periods",
          [Query("aq_drift_period_start_timestamp_seconds * 1000", instant=True, table=True),
           Query("aq_drift_period_end_timestamp_seconds * 1000", instant=True, table=True)],
          w=10, h=6,
          transformations=[MERGE, organize({"Value #A": "from", "Value #B": "to"})],
          overrides=[by_name("from", ("unit", units.DatetimeISO)),
                     by_name("to", ("unit", units.DatetimeISO))],
          options=table_options("period"),
          description="training: the champion's training rows (the reference distribution); "
                      "recent: the window of drift.window_days that is compared.")
    b.add("table", "Reference months",
          [Query("aq_drift_reference_info", instant=True, table=True)], w=6, h=6,
          transformations=[organize({"months": "training months compared",
                                     "seasonal": "same season"}, ("Time", "job", "instance",
                                                                  "step", "Value"))],
          options=table_options(),
          description="The calendar months of the training data the recent window is compared "
                      "with: the same season (its months and their neighbours), or all when "
                      "training barely covers it.")
    b.add("bargauge", "PSI per feature",
          [Query('sort_desc(aq_drift_psi{feature=~"$feature"})', "{{feature}}", instant=True)],
          w=12, h=16, min_value=0, thresholds=thresholds("green", (psi_threshold, "red")),
          options=bar_options(),
          description=f"Population stability index of each feature, recent window vs the "
                      f"reference; red above drift.psi_threshold ({psi_threshold}).")
    b.add("timeseries", "PSI over time (10 largest)",
          [Query('topk(10, aq_drift_psi{feature=~"$feature"})', "{{feature}}")], w=12, h=8,
          min_value=0, custom=series_style("line"), options=series_options(),
          thresholds=thresholds("green", (psi_threshold, "red")),
          description="The ten largest PSIs at each moment; the line is drift.psi_threshold.")
    b.add("timeseries", "Share of drifted features over time",
          [Query("aq_drift_share", "drifted")], w=12, h=8, unit=units.PercentUnit,
          min_value=0, max_value=1, custom=series_style("line"), options=series_options(),
          thresholds=thresholds("green", (share_threshold, "red")),
          description="The line is drift.share_threshold: above it DriftDetected fires.")
    return b
