"""What is forecast, and how did earlier forecasts do? The last batch per location with
its interval, the forecast h hours ahead against the observations, AQI category bands."""

from __future__ import annotations

from grafana_foundation_sdk.models import units

from grafana.board import Board, Query, thresholds, value_map
from grafana.parts import (
    MERGE,
    PROMOTIONS,
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
    POLLUTANTS,
    alert_rules,
    alert_thresholds,
    aqi_steps,
    concentration_overrides,
    params,
)


def build() -> Board:
    b = board("aq-forecasts", "Air quality: forecasts",
              "What is forecast, and how did earlier forecasts do against what was observed? "
              "Per location: the last batch with its interval, the forecast h hours ahead "
              "against the observations as they arrive, AQI category bands.",
              # every configured location, those withheld this run too (they say why)
              query_variable("location", "Location", "aq_forecast_degraded"),
              query_variable("target", "Target", "aq_forecast_value", multi=False),
              query_variable("horizon", "Horizon (h)", "aq_forecast_value", multi=False,
                             numeric=True,
                             description="Hours ahead, for the forecast-against-observation "
                                         "panels"),
              annotations=(PROMOTIONS, ROLLBACKS))
    where = 'location=~"$location",target="$target"'
    limits = params()["forecast"]
    b.row("All locations")
    b.add("bargauge", "Highest forecast AQI in the next 24 h",
          [Query(f"aq_forecast_max_aqi_24h{{{where}}}", "{{location}}", instant=True)],
          w=12, h=9, min_value=0, max_value=500, thresholds=aqi_steps(), options=bar_options(),
          alert="ForecastAQIUnhealthy", links=alert_links("ForecastAQIUnhealthy"),
          description="US AQI of the highest forecast within 24 h, in EPA category colours "
                      "(Good, Moderate, Unhealthy for sensitive groups, Unhealthy, Very "
                      "unhealthy, Hazardous); ForecastAQIUnhealthy fires above 150.")
    b.add("table", "Latest observation and forecast by location",
          [Query(f"max by (location) (aq_observation_value{{{where}}})", instant=True,
                 table=True),
           Query(f'max by (location) (aq_forecast_value{{{where},horizon="$horizon"}})',
                 instant=True, table=True),
           Query(f"max by (location) (time() - aq_observation_timestamp_seconds{{{where}}})",
                 instant=True, table=True),
           Query('max by (location) (aq_forecast_issue_timestamp_seconds{location=~"$location"})'
                 " * 1000", instant=True, table=True),
           Query(f"max by (location) (aq_forecast_hours_since_observation{{{where}}})",
                 instant=True, table=True)],
          w=12, h=9, transformations=[MERGE, organize({
              "Value #A": "observed", "Value #B": "forecast $horizon h ahead",
              "Value #C": "observation age", "Value #D": "issued from",
              "Value #E": "h since observed at issue"})],
          overrides=[by_name("observed", ("unit", UGM3)),
                     by_name("forecast $horizon h ahead", ("unit", UGM3)),
                     by_name("observation age", ("unit", units.DurationSeconds)),
                     by_name("issued from", ("unit", units.DatetimeISO)),
                     by_name("h since observed at issue", ("unit", units.Hours),
                             ("thresholds", thresholds(
                                 "green", (limits["max_hours_since_observation"], "red"))),
                             ("custom.cellOptions", {"type": "color-text"}))],
          options=table_options("location"),
          description="Per location: the newest observation, the last batch's forecast "
                      "$horizon h ahead, how old the observation is, the hour the batch "
                      "forecast from and how old the target's observation was then (red beyond "
                      "forecast.max_hours_since_observation: no forecast).")

    b.row("$location", repeat="location")
    one = 'location="$location",target="$target"'
    interval_hint = ("No forecast for $location this run (see 'Forecast this run'), or a "
                     "champion trained before models carried an 80 % interval: the band "
                     "appears with the next promoted model.")
    b.add("stat", "Latest observation", [Query(f"aq_observation_value{{{one}}}", "{{target}}")],
          w=4, h=4, unit=UGM3, overrides=concentration_overrides("^%s$"),
          options=stat_options("value"),
          description="Newest stored observation, coloured by its AQI category.")
    b.add("stat", "Observation age",
          [Query(f"time() - aq_observation_timestamp_seconds{{{one}}}", "{{target}}")],
          w=4, h=4, unit=units.DurationSeconds,
          thresholds=alert_thresholds("IngestionFreshnessLag"), options=stat_options("value"),
          alert="IngestionFreshnessLag", links=alert_links("IngestionFreshnessLag"),
          description="How old the newest observation is; red beyond IngestionFreshnessLag's "
                      "threshold.")
    b.add("stat", "Max AQI next 24 h", [Query(f"aq_forecast_max_aqi_24h{{{one}}}", "AQI")],
          w=4, h=4, min_value=0, max_value=500, thresholds=aqi_steps(),
          options=stat_options("value"), alert="ForecastAQIUnhealthy",
          links=alert_links("ForecastAQIUnhealthy"),
          description="Highest forecast US AQI within the next 24 h.")
    b.add("stat", "Forecast issued from",
          [Query('aq_forecast_issue_timestamp_seconds{location="$location"} * 1000', "issued")],
          w=4, h=4, unit=units.DatetimeISO, options=stat_options("value", "none"),
          description="The hour of the newest input the last batch forecast from.")
    b.add("stat", "Input completeness",
          [Query('aq_forecast_input_completeness{location="$location"}', "inputs")], w=4, h=4,
          unit=units.PercentUnit,
          thresholds=thresholds("red", (limits["min_input_completeness"], "green")),
          options=stat_options("value"),
          description="Share of the champion's features present in the latest input row; "
                      "below forecast.min_input_completeness (params.yaml) the location gets "
                      "no forecast.")
    b.add("stat", "Forecast this run",
          [Query('aq_forecast_degraded{location="$location"}', "forecast")], w=4, h=4,
          mappings=value_map(("0", "issued", "green"), ("1", "withheld", "orange")),
          options=stat_options("value"), alert="ForecastWithheld",
          links=alert_links("ForecastWithheld"),
          description="Withheld when the inputs were too incomplete or the target's last "
                      "observation too old (forecast in params.yaml): no forecast, no AQI alert; "
                      "the predict task log says why. ForecastWithheld fires once a location "
                      f"has been withheld for {alert_rules()['ForecastWithheld']['for']}.")
    b.add("timeseries", "Forecast $horizon h ahead against the observation",
          [Query(f"aq_observation_value{{{one}}}", "{{target}} observed"),
           Query(f'aq_forecast_value{{{one},horizon="$horizon"}} offset ${{horizon}}h',
                 "{{target}} forecast"),
           Query(f'aq_forecast_lower{{{one},horizon="$horizon"}} offset ${{horizon}}h',
                 "{{target}} lower", empty_ok="always"),
           Query(f'aq_forecast_upper{{{one},horizon="$horizon"}} offset ${{horizon}}h',
                 "{{target}} upper", empty_ok="always")],
          w=16, h=10, unit=UGM3, min_value=0, custom=series_style("area"),
          options=series_options(), hint=interval_hint,
          overrides=[*concentration_overrides("^%s .*"),
                     {"matcher": {"id": "byRegexp", "options": ".* forecast$"},
                      "properties": [{"id": "custom.lineWidth", "value": 2}]},
                     *({"matcher": {"id": "byName", "options": f"{target} upper"},
                        "properties": [{"id": "custom.fillBelowTo", "value": f"{target} lower"},
                                       {"id": "custom.lineWidth", "value": 0},
                                       {"id": "custom.fillOpacity", "value": 20}]}
                       for target in POLLUTANTS),
                     {"matcher": {"id": "byRegexp", "options": ".* lower$"},
                      "properties": [{"id": "custom.lineWidth", "value": 0}]}],
          description="At each moment: the newest observation, and what the forecast issued "
                      "$horizon h earlier said for it (PromQL offset), with its 80 % interval. "
                      "Both lag the clock by the ingestion delay. Background: AQI category "
                      "bands of the pollutant in ug/m3.")
    b.add("table", "Last batch by horizon",
          [Query(f"max by (horizon) (aq_forecast_value{{{one}}})", instant=True, table=True),
           Query(f"max by (horizon) (aq_forecast_lower{{{one}}})", instant=True, table=True,
                 empty_ok="always"),
           Query(f"max by (horizon) (aq_forecast_upper{{{one}}})", instant=True, table=True,
                 empty_ok="always")],
          w=8, h=10, hint=interval_hint,
          transformations=[MERGE,
                           {"id": "convertFieldType", "options": {"conversions": [
                               {"targetField": "horizon", "destinationType": "number"}],
                               "fields": {}}},
                           organize({"horizon": "hours ahead", "Value #A": "forecast",
                                     "Value #B": "80 % low", "Value #C": "80 % high"})],
          overrides=[by_name("forecast", ("unit", UGM3)), by_name("80 % low", ("unit", UGM3)),
                     by_name("80 % high", ("unit", UGM3))],
          options=table_options("hours ahead"),
          description="The last batch for $location: every horizon with its 80 % interval "
                      "(when the model gives one).")
    return b
