"""Screenshot the MLflow UI's compare view of two (or more) runs in headless Chromium.

Starts `mlflow server` on 127.0.0.1 (a free port, its own process group, stopped by that
group's id) over an SQLite tracking store, opens the compare view of the runs and saves a
PNG. An http(s) tracking URI is a server already: it is used as it is.

    python -m tools.screenshot_mlflow --tracking-uri sqlite:///runs/mlflow.db \\
        --experiment hivg --out docs/mlflow-compare.png          # the first two child runs
    python -m tools.screenshot_mlflow --tracking-uri sqlite:///runs/mlflow.db \\
        --experiment hivg --runs tiny/synthetic/baseline/seed13-HASH6 tiny/synthetic/no-bridge/seed13-HASH6 \\
        --out compare.png
    python -m tools.screenshot_mlflow --tracking-uri sqlite:///runs/mlflow.db \\
        --experiment demo --variants baseline no-bridge --out docs/mlflow-compare.png

Needs Debian's chromium and chromium-driver (/usr/bin) and selenium (the test extra).
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from hivg.cli import run_main
from hivg.errors import UserError
from tools.browser import (browser_missing, chromium_driver, compare_runs_url,
                           hide_mlflow_assistant, save_screenshot, wait_for_text)
from tools.mlflow_server import mlflow_server

SERVER_START_S = 120.0
RENDER_TIMEOUT_S = 60.0
PARENT_TAG = "mlflow.parentRunId"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tracking-uri", required=True,
                   help="sqlite:///path/to/mlflow.db (served here), or an http(s) server")
    p.add_argument("--experiment", required=True, help="experiment name")
    p.add_argument("--runs", nargs="+", metavar="RUN_NAME",
                   help="run names to compare (default: the experiment's first two child runs)")
    p.add_argument("--variants", nargs="+", metavar="VARIANT",
                   help="compare these variants' child runs (their `variant` tag), each "
                        "run of the lowest seed")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--window", default="1600x1800",
                   help="browser window WIDTHxHEIGHT (default 1600x1800: plot, names, params "
                        "and metrics in one picture)")
    args = p.parse_args()

    missing = browser_missing()
    if missing:
        raise UserError(f"no headless browser: {missing}")
    window = _window(args.window)
    if args.runs is not None and len(args.runs) < 2:
        raise UserError("--runs: name at least two runs to compare")
    if args.variants is not None and (len(args.variants) < 2 or args.runs is not None):
        raise UserError("--variants: name at least two variants, and no --runs")
    uri = args.tracking_uri
    with tempfile.TemporaryDirectory(prefix="hivg-mlflow-ui-") as tmp:
        if uri.startswith(("http://", "https://")):
            server = contextlib.nullcontext(uri.rstrip("/"))
        elif uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            if not db.is_file():
                raise UserError(f"--tracking-uri {uri}: no such SQLite file {db}")
            # Absolute: the server runs in its own working folder.
            server = _mlflow_server(f"sqlite:///{db.resolve()}", Path(tmp))
        else:
            raise UserError(f"--tracking-uri {uri}: expected sqlite:///... or http(s)://...")
        with server as url:
            experiment_id, run_ids, names = _pick_runs(url, args.experiment, args.runs, uri,
                                                       args.variants)
            out = _screenshot(url, experiment_id, run_ids, names, Path(args.out), window,
                              Path(tmp) / "chromium-profile")
    print(f"compare view of {', '.join(names)}: {out}")
    return 0


def _window(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--window {text}: expected WIDTHxHEIGHT, e.g. 1600x1800") from None
    if w < 400 or h < 300:
        raise UserError(f"--window {text}: at least 400x300")
    return w, h


@contextlib.contextmanager
def _mlflow_server(backend_uri: str, workdir: Path) -> Iterator[str]:
    """`mlflow server` over `backend_uri` on 127.0.0.1; yields its URL."""
    with mlflow_server(backend_uri, workdir, timeout=SERVER_START_S) as (url, _process):
        yield url


def _pick_runs(url: str, experiment: str, names: list[str] | None, where: str,
               variants: list[str] | None = None) -> tuple[str, list[str], list[str]]:
    """(experiment id, run ids, run names): the named runs (the latest run of each name), the
    variants' child runs of their lowest seed, or the first two child runs by start time."""
    from mlflow import MlflowClient

    from hivg.tracking import redact

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"--experiment {experiment}: no such experiment in {redact(where)}")
    runs = client.search_runs([exp.experiment_id], max_results=5000,
                              order_by=["attributes.start_time ASC"])
    if variants is not None:
        picked = [_variant_run(runs, v, experiment) for v in variants]
    elif names is None:
        children = [r for r in runs if PARENT_TAG in r.data.tags]
        if len(children) < 2:
            raise UserError(f"experiment {experiment} has {len(children)} child run(s); "
                            f"name the runs to compare with --runs")
        picked = children[:2]
    else:
        by_name = {r.info.run_name: r for r in runs}  # start time ascending: the latest wins
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise UserError(f"--runs: no run named {unknown[0]!r} in experiment {experiment}")
        picked = [by_name[n] for n in names]
    return (exp.experiment_id, [r.info.run_id for r in picked],
            [r.info.run_name for r in picked])


def _variant_run(runs: list, variant: str, experiment: str):
    """The latest child run of `variant` among those of its lowest seed."""
    found = [r for r in runs if PARENT_TAG in r.data.tags and r.data.tags.get("variant") == variant]
    if not found:
        raise UserError(f"--variants: no child run of variant {variant!r} in experiment "
                        f"{experiment}")
    lowest = min(int(r.data.tags.get("seed", 0)) for r in found)
    return [r for r in found if int(r.data.tags.get("seed", 0)) == lowest][-1]


def _screenshot(url: str, experiment_id: str, run_ids: list[str], names: list[str],
                out: Path, window: tuple[int, int], profile: Path) -> Path:
    driver = chromium_driver(profile, window_size=window)
    try:
        driver.get(compare_runs_url(url, run_ids, [experiment_id]))
        try:
            wait_for_text(driver, names, RENDER_TIMEOUT_S)
        except TimeoutError as e:
            raise UserError(f"the MLflow UI did not show the compare view: "
                            f"{str(e).splitlines()[0]}") from None
        if hide_mlflow_assistant(driver):
            # The tables keep the width they had beside the panel; the profile now remembers
            # the panel closed, so a reload lays the page out over the whole window.
            driver.refresh()
            wait_for_text(driver, names, RENDER_TIMEOUT_S)
        return save_screenshot(driver, out, settle=2.0)
    finally:
        driver.quit()


if __name__ == "__main__":
    run_main(main)
