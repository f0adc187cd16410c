"""The MLflow UI in a real browser (Debian's chromium driven by Playwright): after the
make-run-style pipeline it lists the runs of every step, a run shows its metrics, and the
model registry page shows the champion alias on the served version."""

from __future__ import annotations

import shutil

import pytest

pytestmark = [pytest.mark.mlops, pytest.mark.slow, pytest.mark.service,
              pytest.mark.browser]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def test_mlflow_ui_shows_the_runs_their_metrics_and_the_champion_alias(tracked, mlflow,
                                                                       tmp_path):
    from playwright.sync_api import sync_playwright

    if shutil.which("chromium") is None:
        pytest.fail("chromium not installed: run `make setup` (scripts/setup.sh installs it)")
    experiment = mlflow.api("GET", "experiments/get-by-name",
                            params={"experiment_name": "aq-forecast"})["experiment"]
    version = tracked.first  # the runs of the pipeline (other tests may promote more)
    evaluate = next(r for r in mlflow.runs() if r["info"]["run_name"] == f"evaluate {version}")
    champion = mlflow.alias("champion")
    base = f"{mlflow.url}/#/experiments/{experiment['experiment_id']}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            # the runs (the link make run prints opens the model-training view)
            page.goto(f"{base}?workflowType=machine_learning", timeout=60_000)
            for step in ("train", "evaluate", "backtest", "promote"):
                page.get_by_text(f"{step} {version}").first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)
            # a run's metrics, by target / horizon
            page.goto(f"{base}/runs/{evaluate['info']['run_id']}", timeout=60_000)
            page.get_by_text("pm2_5/1/mae").first.wait_for(timeout=60_000)
            page.get_by_text("pm2_5/24/skill").first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
            # the registered model: the champion alias on the served version
            page.goto(f"{mlflow.url}/#/models/aq-forecast", timeout=60_000)
            row = page.locator("[role=row], tr").filter(
                has_text=f"Version {champion['version']}").filter(has_text="champion")
            row.first.wait_for(timeout=60_000)
            assert {"key": "aq.version", "value": tracked.champion()} in champion["tags"]
            page.screenshot(path=str(tmp_path / "model.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
            raise
        finally:
            browser.close()
