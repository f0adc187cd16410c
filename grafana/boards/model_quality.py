"""How good are the models? Holdout and realised skill against persistence, MAE,
interval coverage, the champion and its history."""

from __future__ import annotations

from grafana_foundation_sdk.models import units

from grafana.board import Board, Query, thresholds, value_map
from grafana.parts import (
    MERGE,
    PROMOTIONS,
    REFUSALS,
    ROLLBACKS,
    UGM3,
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
    alert_thresholds,
    rule_threshold,
)

TH = 'target=~"$target",horizon=~"$horizon"'


def build() -> Board:
    b = board("aq-model-quality", "Air quality: model quality",
              "How good are the models? Holdout and realised skill against persistence by "
              "target x horizon over time, MAE with units, interval coverage, the champion and "
              "its history (promotions and rollbacks as annotations).",
              query_variable("target", "Target", "aq_model_skill"),
              query_variable("horizon", "Horizon (h)", "aq_model_skill", numeric=True),
              annotations=(PROMOTIONS, ROLLBACKS, REFUSALS))
    skill_doc = ("1 - MAE / MAE of persistence ('the value stays as it is now'): above 0 the "
                 "model beats persistence.")
    b.row("Holdout: the candidate on the last evaluation.holdout_days")
    b.add("timeseries", "Holdout skill by target x horizon",
          [Query(f"aq_model_skill{{{TH}}}", "{{target}} {{horizon}} h")], w=12, h=9,
          unit=units.PercentUnit, custom=series_style("line"), options=series_options("table"),
          thresholds=alert_thresholds("ModelSkillBelowPersistence"),
          alert="ModelSkillBelowPersistence", links=alert_links("ModelSkillBelowPersistence"),
          description=f"{skill_doc} Each evaluation sets a new value; the line is where "
                      "ModelSkillBelowPersistence fires and the gate refuses.")
    b.add("timeseries", "Holdout MAE: candidate vs persistence",
          [Query(f"aq_model_mae{{{TH}}}", "{{target}} {{horizon}} h model"),
           Query(f"aq_model_persistence_mae{{{TH}}}", "{{target}} {{horizon}} h persistence")],
          w=12, h=9, unit=UGM3, min_value=0, custom=series_style(),
          options=series_options("table"),
          overrides=[{"matcher": {"id": "byRegexp", "options": ".* persistence$"},
                      "properties": [{"id": "custom.lineStyle",
                                      "value": {"fill": "dash", "dash": [10, 10]}}]}],
          description="Mean absolute error on the holdout, the model (solid) and the "
                      "persistence baseline (dashed) on the same rows.")
    b.add("bargauge", "AQI category accuracy",
          [Query(f"aq_model_aqi_category_accuracy{{{TH}}}", "{{target}} {{horizon}} h",
                 instant=True)], w=12, unit=units.PercentUnit, min_value=0, max_value=1,
          thresholds=thresholds("red", (0.5, "orange"), (0.8, "green")), options=bar_options(),
          description="Share of holdout hours whose forecast AQI category is the observed one.")
    b.add("timeseries", "Interval coverage (nominal 80 %)",
          [Query(f"aq_model_interval_coverage{{{TH}}}", "{{target}} {{horizon}} h",
                 empty_ok="always")], w=12, unit=units.PercentUnit, min_value=0, max_value=1,
          custom=series_style("line"), options=series_options(),
          thresholds=thresholds("red", (0.78, "green"), (0.82, "orange")),
          hint="Empty for a champion trained before models carried an 80 % interval (no "
               "'intervals' in its metadata): the next promoted model has one.",
          description="Share of holdout observations inside the 80 % interval; 78-82 % is on "
                      "target, lower means the interval is too narrow.")

    b.row("Realised: issued forecasts against what was then observed")
    matured = ("No forecast has matured yet: a forecast is scored once its hour has been "
               "observed, so the first scores come h hours after the first batch.")
    b.add("timeseries", "Realised skill",
          [Query(f"aq_realised_skill{{{TH}}}", "{{target}} {{horizon}} h")], w=12, h=9,
          unit=units.PercentUnit, custom=series_style("line"), options=series_options("table"),
          thresholds=alert_thresholds("RealisedAccuracyDegraded"), hint=matured,
          alert="RealisedAccuracyDegraded", links=alert_links("RealisedAccuracyDegraded"),
          description=f"{skill_doc} Over all scored forecasts of the champion(s); "
                      "RealisedAccuracyDegraded fires below 0 with at least 24 scored.")
    b.add("timeseries", "Realised MAE vs holdout MAE",
          [Query(f"aq_realised_mae{{{TH}}}", "{{target}} {{horizon}} h realised"),
           Query(f"aq_model_mae{{{TH}}}", "{{target}} {{horizon}} h holdout")], w=12, h=9,
          unit=UGM3, min_value=0, custom=series_style(), options=series_options("table"),
          hint=matured,
          overrides=[{"matcher": {"id": "byRegexp", "options": ".* holdout$"},
                      "properties": [{"id": "custom.lineStyle",
                                      "value": {"fill": "dash", "dash": [10, 10]}}]}],
          description="Error of issued forecasts (solid) next to what the holdout promised "
                      "(dashed): a widening gap is the model ageing.")
    b.add("bargauge", "Forecasts scored",
          [Query(f"aq_realised_forecasts_scored{{{TH}}}", "{{target}} {{horizon}} h",
                 instant=True)], w=12, options=bar_options(), hint=matured,
          thresholds=thresholds("text", (rule_threshold("RealisedAccuracyDegraded", 1)[1],
                                         "green")),
          description="Scored forecasts per target x horizon; below 24 the realised skill is "
                      "too noisy to alert on (RealisedAccuracyDegraded needs 24).")
    b.add("timeseries", "Realised interval coverage (nominal 80 %)",
          [Query(f"aq_realised_interval_coverage{{{TH}}}", "{{target}} {{horizon}} h",
                 empty_ok="always")], w=12, unit=units.PercentUnit, min_value=0, max_value=1,
          custom=series_style("line"), options=series_options(),
          thresholds=thresholds("red", (0.78, "green"), (0.82, "orange")),
          hint=f"{matured} Forecasts of a champion without an 80 % interval (trained before "
               "models carried one) are not counted.",
          description="Share of later observations inside the issued forecasts' 80 % interval.")

    b.row("Champion")
    b.add("table", "Champion",
          [Query("aq:champion_info", instant=True, table=True),
           Query("aq:champion_created_timestamp_seconds * 1000", instant=True, table=True),
           Query("max by (job, action) (aq_champion_switched_timestamp_seconds) * 1000",
                 instant=True, table=True)], w=12, h=5,
          transformations=[MERGE, organize({"version": "version", "Value #B": "trained",
                                            "Value #C": "champion since", "action": "by"},
                                           ("Time", "job", "instance", "Value #A"))],
          overrides=[by_name("trained", ("unit", units.DatetimeISO)),
                     by_name("champion since", ("unit", units.DatetimeISO))],
          options=table_options(),
          description="The model serving forecasts now, when it was trained, since when it is "
                      "champion and which step made it so (promote or rollback).")
    b.add("stat", "Champion age", [Query("aq:champion_age_seconds", "age")], w=6, h=5,
          unit=units.DurationSeconds, thresholds=alert_thresholds("ChampionNotRefreshed"),
          options=stat_options("value"), alert="ChampionNotRefreshed",
          links=alert_links("ChampionNotRefreshed"),
          description="Since the champion was trained; ChampionNotRefreshed fires at 7 days.")
    b.add("stat", "Last promotion gate", [Query("aq_promotion_promoted", "gate")], w=6, h=5,
          mappings=value_map(("1", "promoted", "green"), ("0", "refused", "orange")),
          options=stat_options("value"),
          description="Did the last candidate pass the gate (beats persistence everywhere, no "
                      "regression against the champion)? Reasons: reports/promotion.json.")
    b.add("state-timeline", "Champion history", [Query("aq:champion_info", "{{version}}")],
          w=24, h=6, options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                              "alignValue": "left",
                              "legend": {"showLegend": False, "displayMode": "list",
                                         "placement": "bottom", "calcs": []},
                              "tooltip": {"mode": "single", "sort": "none"}},
          mappings=value_map(("1", "champion", "green")),
          description="Which version was champion when; promotions and rollbacks are also "
                      "marked on every time series.")
    return b
