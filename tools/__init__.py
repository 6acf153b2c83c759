"""Developer tooling around the library, not part of it (not installed with `hivg`): a local
MLflow server and headless Chromium for the MLflow UI test and screenshots, and process
helpers the tests share. Run from the repository root:

    python -m tools.screenshot_mlflow --tracking-uri sqlite:///runs/mlflow.db --experiment hivg --out docs/mlflow-compare.png

    processes          free_port, stop_process_group
    mlflow_server      `mlflow server` on 127.0.0.1 in its own process group
    browser            headless Chromium (Selenium) looking at the MLflow UI
    screenshot_mlflow  the compare view of two runs as a PNG
"""
