"""Every path the project reads or writes, in one place.

The project directory is ``$AQ_PROJECT_DIR`` when set (Airflow tasks and tests
set it), else the nearest parent of the working directory holding
``params.yaml`` (how ``dvc repro`` runs), else the checkout this package lives in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def find_project_dir(start: Path | None = None) -> Path:
    from pipeline.settings import ProjectSettings

    configured = ProjectSettings.from_env().project_dir
    if configured is not None:
        return configured.resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").is_file():
            return candidate
    return PACKAGE_ROOT


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @classmethod
    def discover(cls, start: Path | None = None) -> ProjectPaths:
        return cls(find_project_dir(start))

    # configuration
    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    # raw, immutable, tracked by data.dvc
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def ingest_quarantine_dir(self) -> Path:
        """Rows a source returned but the canonical schema refused (kept, with reasons)."""
        return self.data_dir / "quarantine"

    @property
    def ingest_state_dir(self) -> Path:
        """Backfill progress; outside data/ so it never changes the data hash."""
        return self.build_dir / "ingest_state"

    # DVC stage outputs: never inside data/
    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    @property
    def features(self) -> Path:
        """The feature table, one directory per location (``pipeline.io.feature_store``)."""
        return self.build_dir / "features"

    @property
    def quarantine(self) -> Path:
        return self.build_dir / "quarantine.parquet"

    @property
    def candidate_dir(self) -> Path:
        return self.build_dir / "candidate"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def quality_report(self) -> Path:
        return self.reports_dir / "quality.json"

    @property
    def evaluation_report(self) -> Path:
        return self.reports_dir / "evaluation.json"

    @property
    def promotion_report(self) -> Path:
        return self.reports_dir / "promotion.json"

    @property
    def forecast_report(self) -> Path:
        return self.reports_dir / "forecast.json"

    @property
    def accuracy_report(self) -> Path:
        return self.reports_dir / "realised_accuracy.json"

    @property
    def drift_report(self) -> Path:
        return self.reports_dir / "drift.json"

    @property
    def plots_dir(self) -> Path:
        return self.reports_dir / "plots"

    @property
    def backtest_dir(self) -> Path:
        """The backtest of params.yaml's ``backtest`` window (the DVC stage's outputs)."""
        return self.reports_dir / "backtest"

    @property
    def backtests_dir(self) -> Path:
        """Backtests run with their own window (e.g. from the Airflow form), one per run."""
        return self.root / "backtests"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    # model registry (stateful, outside DVC outputs)
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def registry_dir(self) -> Path:
        return self.models_dir / "registry"

    @property
    def champion_pointer(self) -> Path:
        return self.models_dir / "champion.json"

    @property
    def champion_history(self) -> Path:
        return self.models_dir / "champion_history.jsonl"

    # batch forecasts
    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def latest_predictions(self) -> Path:
        return self.predictions_dir / "latest.parquet"

    @property
    def accuracy_history(self) -> Path:
        return self.predictions_dir / "realised_accuracy.parquet"

    # MLflow runs waiting for the tracking server (pipeline/io/tracking.py); not a DVC output
    @property
    def tracking_queue(self) -> Path:
        return self.root / ".tracking" / "queue"

    # local services (monitoring stack, Airflow)
    @property
    def stack_dir(self) -> Path:
        return self.root / ".stack"

    @property
    def airflow_home(self) -> Path:
        return self.root / ".airflow"
