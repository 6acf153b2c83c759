"""Headless Chromium (Debian's `chromium` + `chromedriver`, driven by Selenium) looking at the
MLflow UI: the UI test (tests/test_mlflow_ui.py) and tools/screenshot_mlflow.py use it.

Selenium is imported inside the functions only (it is a test extra).

    reason = browser_missing()            # None when Chromium, chromedriver and Selenium exist
    driver = chromium_driver(tmp / "chrome-profile")
    try:
        driver.get(compare_runs_url(url, [run_a, run_b], [experiment_id]))
        wait_for_text(driver, ["tiny/synthetic/baseline/seed13", "val/acc50"], timeout=60)
        hide_mlflow_assistant(driver)
        save_screenshot(driver, "compare.png")
    finally:
        driver.quit()

The MLflow UI helpers (URLs, the assistant panel, nested runs) are written against the UI
that MLflow 3 serves (checked with 3.17).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW_SIZE = (1600, 1000)
# Tall enough that the compare view shows the plot, run names, params and metrics at once.
COMPARE_WINDOW_SIZE = (1600, 1800)
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage")
# Without it MLflow 3 may open an experiment on its GenAI pages (traces) instead of its runs.
WORKFLOW = "machine_learning"


# -- the browser ----------------------------------------------------------------------------
def browser_missing(chromium: str = CHROMIUM, chromedriver: str = CHROMEDRIVER) -> str | None:
    """Why a headless browser cannot run here (one line), or None when it can."""
    for path, package in ((chromium, "chromium"), (chromedriver, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found (apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'selenium>=4.20')"
    return None


def chromium_driver(user_data_dir: str | Path, window_size: tuple[int, int] = WINDOW_SIZE,
                    chromium: str = CHROMIUM, chromedriver: str = CHROMEDRIVER) -> Any:
    """A headless `webdriver.Chrome` on Debian's Chromium with a fresh profile in
    `user_data_dir` (created if missing; give it an empty folder). The caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    user_data_dir = Path(user_data_dir)
    user_data_dir.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--window-size={window_size[0]},{window_size[1]}")
    options.add_argument(f"--user-data-dir={user_data_dir}")
    # chromedriver's log goes beside the profile, not into the working directory.
    service = Service(chromedriver, log_output=str(user_data_dir / "chromedriver.log"))
    return webdriver.Chrome(options=options, service=service)


def page_text(driver: Any) -> str:
    """The visible text of the page's <body> ("" while there is none yet)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:  # no body yet, or React replaced it between the two calls
        return ""


def wait_for_text(driver: Any, texts: Iterable[str], timeout: float = 60.0,
                  poll: float = 0.5) -> str:
    """Poll the page's visible text until it holds every one of `texts`; return that text.

    Raises TimeoutError naming what is still missing, with the URL and the page's last text.
    """
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    texts = list(texts)
    seen = {"text": ""}

    def all_there(d: Any) -> bool:
        seen["text"] = page_text(d)
        return all(t in seen["text"] for t in texts)

    try:
        WebDriverWait(driver, timeout, poll_frequency=poll).until(all_there)
    except TimeoutException:
        missing = [t for t in texts if t not in seen["text"]]
        raise TimeoutError(f"{driver.current_url}: still missing {missing} after {timeout:g} s;"
                           f" the page's text was:\n{seen['text'][:3000]}") from None
    return seen["text"]


def save_screenshot(driver: Any, path: str | Path, settle: float = 1.5) -> Path:
    """The window as a PNG at `path` (folders created), after `settle` seconds for charts to
    finish drawing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    time.sleep(settle)
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"chromium could not write the screenshot {path}")
    return path


# -- the MLflow UI --------------------------------------------------------------------------
def experiment_url(base_url: str, experiment_id: str) -> str:
    """The runs table of one experiment.

    Not the bare `#/experiments/{id}`: MLflow 3 sends an experiment without an
    `mlflow.experimentKind` tag to its GenAI overview from there; `/runs` with
    `workflowType=machine_learning` is the "Model training" runs table.
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType={WORKFLOW}"


def compare_runs_url(base_url: str, run_ids: Iterable[str],
                     experiment_ids: Iterable[str]) -> str:
    """The compare view of `run_ids`.

    The UI builds it in `Routes.getCompareRunPageRoute`:
    `#/compare-runs?runs=<JSON list of run ids>&experiments=<JSON list of experiment ids>`;
    here the JSON is URL-encoded, and `workflowType` keeps the sidebar on "Model training".
    """
    runs = quote(json.dumps(list(run_ids)), safe="")
    experiments = quote(json.dumps(list(experiment_ids)), safe="")
    return (f"{base_url.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"
            f"&workflowType={WORKFLOW}")


def hide_mlflow_assistant(driver: Any, timeout: float = 5.0) -> bool:
    """Close the "MLflow Assistant" side panel (it takes a quarter of the window) when it
    shows within `timeout` seconds; the profile remembers it. True when it was closed."""
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    close = (By.XPATH, "//*[text()='MLflow Assistant']/ancestor::*"
                       "[.//button[@aria-label='Close']][1]//button[@aria-label='Close']")
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(
            ec.element_to_be_clickable(close)).click()
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(
            ec.invisibility_of_element_located(close))
        return True
    except (TimeoutException, WebDriverException):
        return False


def expand_parent_run(driver: Any, run_name: str, timeout: float = 30.0) -> None:
    """Unfold the child runs nested under the parent run `run_name` in the runs table
    (the table shows only the parent until then)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    expander = (By.XPATH, f"//*[text()={_xpath_literal(run_name)}]/ancestor::*[@role='row'][1]"
                          "//button[contains(@data-component-id, 'runnamecellrenderer')]")
    WebDriverWait(driver, timeout, poll_frequency=0.25).until(
        ec.element_to_be_clickable(expander)).click()


def widen_run_name_column(driver: Any, pixels: int = 200) -> bool:
    """Drag the runs table's "Run Name" column wider so long names are not cut off.
    Cosmetic: False when the column's resize handle is not found."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    try:
        handle = driver.find_element(By.CSS_SELECTOR, ".ag-header-cell[col-id='attributes."
                                                      "`Run Name`'] .ag-header-cell-resize")
        ActionChains(driver).click_and_hold(handle).move_by_offset(pixels, 0).release().perform()
        return True
    except WebDriverException:
        return False


def _xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"
