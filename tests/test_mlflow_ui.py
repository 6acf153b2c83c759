"""The MLflow UI, for real: a real `mlflow server` (SQLite store, served artifacts) holding a
small study-like experiment, looked at in headless Debian Chromium through Selenium.

No Ray: the runs are made with hivg's own MlflowTracker the way a study makes them (a parent
run, child runs nested under it by `mlflow.parentRunId`, params, a `val/acc50` history).

HIVG_SAVE_SCREENSHOT=1 also copies the compare view's screenshot to docs/mlflow-compare.png.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hivg.tracking import MlflowTracker
from tools.browser import (CHROMEDRIVER, CHROMIUM, COMPARE_WINDOW_SIZE,
                                   chromium_driver, compare_runs_url, expand_parent_run,
                                   experiment_url, hide_mlflow_assistant, page_text,
                                   save_screenshot, wait_for_text, widen_run_name_column)
from mlflow_server import running_mlflow_server

REPO = Path(__file__).resolve().parents[1]
DOCS_SCREENSHOT = REPO / "docs" / "mlflow-compare.png"
RENDER_TIMEOUT_S = 60.0

PARENT = "study/demo"
# name -> (params, val/acc50 at steps 0..3). The finals have at most 3 decimals, so the UI
# shows them digit for digit both in its metrics table (3 decimals) and on the plot's axis.
CHILDREN = {
    "tiny/synthetic/baseline/seed13": ({"variant": "baseline", "bridge": "on"},
                                       (0.15, 0.30, 0.40, 0.45)),
    "tiny/synthetic/no-bridge/seed13": ({"variant": "no-bridge", "bridge": "off"},
                                        (0.15, 0.25, 0.30, 0.35)),
}
COMMON_PARAMS = {"preset": "tiny", "dataset": "synthetic", "seed": 13, "stage0.epochs": 4}


def _make_study(url: str) -> tuple[str, list[str]]:
    """The experiment "demo": a parent run and two FINISHED child runs; (experiment id,
    child run ids in CHILDREN's order)."""
    parent = MlflowTracker.start(url, "demo", PARENT, tags={"hivg.study": "demo"})
    parent.log_params({"study": "demo", "variants": "baseline,no-bridge", "seeds": "13"})
    children = []
    for name, (params, history) in CHILDREN.items():
        child = MlflowTracker.start(url, "demo", name, parent_run_id=parent.run_id,
                                    tags={"hivg.study": "demo"})
        child.log_params({**COMMON_PARAMS, **params})
        for step, acc in enumerate(history):
            child.log_metrics({"val/acc50": acc, "train/loss": 2.0 - 2 * acc}, step=step)
        child.end("FINISHED")
        children.append(child)
    parent.end("FINISHED")
    experiment_id = parent.client.get_run(parent.run_id).info.experiment_id
    return experiment_id, [c.run_id for c in children]


@pytest.mark.slow
def test_experiment_and_compare_view_in_headless_chromium(tmp_path):
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.isfile(path):
            pytest.skip(f"the MLflow UI test drives Debian's Chromium: {path} is missing "
                        f"(apt-get install {package})")
    names = list(CHILDREN)
    finals = [f"{history[-1]:g}" for _, history in CHILDREN.values()]
    with running_mlflow_server(tmp_path / "mlflow") as server:
        experiment_id, run_ids = _make_study(server.url)
        # The server holds what the UI is about to show.
        got = server.get("/api/2.0/mlflow/metrics/get-history", run_id=run_ids[0],
                         metric_key="val/acc50")
        assert [m["value"] for m in got["metrics"]] == list(CHILDREN[names[0]][1])

        driver = chromium_driver(tmp_path / "chromium-profile")
        try:
            # The experiment's runs table: the parent, with both children unfolded under it.
            driver.get(experiment_url(server.url, experiment_id))
            wait_for_text(driver, [PARENT], RENDER_TIMEOUT_S)
            hide_mlflow_assistant(driver)
            expand_parent_run(driver, PARENT)
            wait_for_text(driver, names, RENDER_TIMEOUT_S)
            widen_run_name_column(driver)
            save_screenshot(driver, tmp_path / "mlflow-experiment.png")

            # The compare view of the two children: names, the metric and both final values.
            driver.set_window_size(*COMPARE_WINDOW_SIZE)
            driver.get(compare_runs_url(server.url, run_ids, [experiment_id]))
            text = wait_for_text(driver, ["Comparing 2 Runs", *names, "val/acc50", *finals],
                                 RENDER_TIMEOUT_S)
            hide_mlflow_assistant(driver, timeout=2.0)
            # Columns follow the order of the run ids in the URL.
            assert f"Run Name:\n{names[0]}\n{names[1]}" in text, text
            assert "Run ID:" in text and all(run_id in text for run_id in run_ids)
            shot = save_screenshot(driver, tmp_path / "mlflow-compare.png")
            assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
            assert names[0] in page_text(driver)  # still there after the charts settled
        finally:
            driver.quit()
    if os.environ.get("HIVG_SAVE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)
