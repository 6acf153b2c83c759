"""Study reports (hivg.analysis) on fake but complete study folders: the layout
run_study leaves (results.json, study.yaml, trial folders with config.yaml, summary.json,
metrics.jsonl and predictions written by the trainer's own writer). No Ray, no training."""
from __future__ import annotations

import csv
import io
import json
import math
import runpy
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from hivg import analysis as rp
from hivg.orchestration import study_report
from hivg.train.metrics import write_predictions

REPO = Path(__file__).resolve().parents[1]
STAGES = (("stage0", 4), ("stage1", 2), ("stage2", 2), ("stage3", 2))
SPLITS = {"refcoco": ("val", "testA", "testB"), "refcoco+": ("val", "testA", "testB"),
          "refcocog-umd": ("val", "test"), "referit": ("val", "test"),
          "flickr30k": ("val", "test"), "synthetic": ("val", "test")}


# ------------------------------------------------------------------------- fake studies
def _hits(kind: str, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A variant's hits derived from the baseline's (so pairs are correlated, as in life)."""
    hits = base.copy()
    if kind == "same":
        return hits
    if kind == "better":   # 40% of the baseline's misses become hits
        flip = ~hits & (rng.random(hits.size) < 0.4)
        hits[flip] = True
    elif kind == "worse":  # 30% of its hits become misses
        flip = hits & (rng.random(hits.size) < 0.3)
        hits[flip] = False
    return hits


def _metrics(offset: float, epochs: tuple[tuple[str, int], ...] = STAGES,
             stop_at: int | None = None) -> list[dict]:
    rows, g = [], 0
    for k, (stage, n) in enumerate(epochs):
        for e in range(0, n + 1):
            if e > 0:
                g += 1
            if stop_at is not None and g > stop_at:
                return rows
            acc = min(0.95, max(0.0, 0.2 + 0.5 * (1 - math.exp(-g / 3)) + offset))
            row = {"stage": stage, "stage_index": k, "epoch": e, "global_epoch": g,
                   "val/acc50": acc, "lr": 1e-4}
            if e > 0:
                row.update({"train/loss": 3.0 - acc, "time/epoch_s": 60.0})
            rows.append(row)
    return rows


def _write_trial(study_dir: Path, *, variant: str, dataset: str, seed: int, preset: str,
                 hits: dict[str, np.ndarray] | None, metrics: list[dict], device: str,
                 wall: float, world: int, config_extra: dict | None = None,
                 energy: float | None = None) -> dict:
    run_dir = study_dir / "trials" / f"{variant}_{dataset}_seed{seed}"
    run_dir.mkdir(parents=True)
    config = {"model": {"clip": "x", "weights": "/weights/ViT-B-16-openai.pt",
                        "bridge": {"vision_layers": [0, 3, 7, 11]}},
              "hilora": {"stages": [{"name": s, "epochs": n, "rank": 32} for s, n in STAGES]},
              "optim": {"weight_decay": 1e-4},
              "data": {"dataset": dataset, "val_split": "val"},
              "seed": seed, "variant": variant, "preset": preset}
    for key, value in (config_extra or {}).items():
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node[p] if not isinstance(node, list) else \
                next(s for s in node if s["name"] == p)
        node[last] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if hits is None:  # stopped early: no summary, no predictions
        return {}
    for split, h in hits.items():
        n = h.size
        result = SimpleNamespace(indices=list(range(n)), boxes=np.zeros((n, 4), np.float32),
                                 iou=np.where(h, 0.8, 0.1).astype(np.float32), hits=h)
        rows = {"id": [f"{dataset}/{split}/{i}" for i in range(n)],
                "expr_type": ["attribute"] * n}
        write_predictions(run_dir / "predictions" / f"{split}.parquet", result, rows)
    accs = {s: float(h.mean()) for s, h in hits.items()}
    summary = {"name": run_dir.name, **{f"{s}/acc50": a for s, a in accs.items()},
               "splits": {s: {"acc50": a, "count": int(hits[s].size)} for s, a in accs.items()},
               "best": {"stage": "stage3", "stage_index": 3, "epoch": 2,
                        "val/acc50": accs["val"]},
               "epochs_trained": metrics[-1]["global_epoch"], "wall_time_s": wall,
               "starting_weights": "/weights/ViT-B-16-openai.pt", "dataset": dataset,
               "world_size": world, "device": device}
    if energy is not None:
        summary["energy_kwh"] = energy
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return {"variant": variant, "dataset": dataset, "seed": seed, "val/acc50": accs["val"],
            "test/acc50": accs.get("test"), "wall_time_s": wall,
            "epochs": summary["epochs_trained"], "run_dir": str(run_dir), "accs": accs}


VARIANTS = {"baseline": "base", "no-bridge": "worse", "bridge-fixed": "same", "better": "better"}


def make_variants_study(storage: Path, name: str = "abl", preset: str = "hivg-b16",
                        datasets: tuple[str, ...] = ("refcoco", "referit"),
                        seeds: tuple[int, ...] = (13, 14, 15), n: int = 400,
                        device: str = "cuda", energy: bool = False) -> dict:
    """A variants study; returns {(variant, dataset, split): [acc per seed]} for checking."""
    study_dir = storage / name
    study_dir.mkdir(parents=True)
    spec = {"name": name, "base": preset, "datasets": list(datasets), "seeds": list(seeds),
            "resources": {"workers": 2, "cpus_per_worker": 8, "gpus_per_worker": 1},
            "variants": {v: {} for v in VARIANTS}}
    (study_dir / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    trials, accs = [], {}
    for di, dataset in enumerate(datasets):
        for seed in seeds:
            rng = np.random.default_rng([di, seed])
            base = {s: rng.random(n) < 0.55 + 0.05 * (seed % 3) for s in SPLITS[dataset]}
            for vi, (variant, kind) in enumerate(VARIANTS.items()):
                hits = {s: _hits(kind, h, np.random.default_rng([di, seed, vi, j]))
                        for j, (s, h) in enumerate(base.items())}
                offset = {"base": 0, "worse": -0.1, "same": 0, "better": 0.08}[kind]
                row = _write_trial(study_dir, variant=variant, dataset=dataset, seed=seed,
                                   preset=preset, hits=hits, metrics=_metrics(offset),
                                   device=device, wall=1800.0 + 60 * vi, world=2,
                                   energy=0.5 if energy else None)
                for s, a in row.pop("accs").items():
                    accs.setdefault((variant, dataset, s), []).append(a)
                trials.append(row)
    rows = [{"variant": v, "dataset": d, "seeds": len(seeds)} for v in VARIANTS for d in datasets]
    (study_dir / "results.json").write_text(json.dumps(
        {"study": name, "kind": "variants", "metric": "val/acc50", "rows": rows,
         "trials": trials, "failed_trials": [], "wall_time_s": 100.0}))
    return accs


SPACE = {"hilora.stages.stage1.rank": {"choice": [4, 8, 16, 32]},
         "optim.weight_decay": {"loguniform": [1.0e-5, 1.0e-2]},
         "model.bridge.vision_layers": {"choice": [[0, 3, 7, 11], [11], [5, 8, 11]]},
         "hilora.num_stages": {"choice": [2, 3, 4]}}


def make_space_study(storage: Path, name: str = "space", n_trials: int = 10) -> dict:
    study_dir = storage / name
    study_dir.mkdir(parents=True)
    spec = {"name": name, "base": "tiny", "datasets": ["synthetic"], "seeds": [13],
            "resources": {"workers": 0, "cpus_per_worker": 1, "gpus_per_worker": 0},
            "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 3},
            "space": SPACE}
    (study_dir / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    rng = np.random.default_rng(7)
    trials, quality = [], {}
    for i in range(n_trials):
        variant = f"t{i:03d}"
        q = float(rng.uniform(-0.15, 0.15))
        stages = int(rng.choice([2, 3, 4]))
        extra = {"hilora.stages.stage1.rank": int(rng.choice([4, 8, 16, 32])),
                 "optim.weight_decay": float(10 ** rng.uniform(-5, -2)),
                 "model.bridge.vision_layers": [[0, 3, 7, 11], [11], [5, 8, 11]][i % 3]}
        stopped = i % 4 == 3
        epochs = STAGES[:stages]
        metrics = _metrics(q, epochs, stop_at=3 if stopped else None)
        hits = None
        if not stopped:
            hits = {s: np.random.default_rng([i, j]).random(200) < 0.5 + q
                    for j, s in enumerate(SPLITS["synthetic"])}
        row = _write_trial(study_dir, variant=variant, dataset="synthetic", seed=13,
                           preset="tiny", hits=hits, metrics=metrics, device="cpu",
                           wall=30.0, world=1, config_extra=extra)
        if stages < 4:  # hilora.num_stages keeps the first N stages
            cfg_path = study_dir / "trials" / f"{variant}_synthetic_seed13" / "config.yaml"
            cfg = yaml.safe_load(cfg_path.read_text())
            cfg["hilora"]["stages"] = cfg["hilora"]["stages"][:stages]
            cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        if row:
            row.pop("accs")
            trials.append(row)
            quality[variant] = row["val/acc50"]
    (study_dir / "results.json").write_text(json.dumps(
        {"study": name, "kind": "space", "metric": "val/acc50", "rows": [], "trials": trials,
         "failed_trials": [], "wall_time_s": 100.0}))
    return quality


# ------------------------------------------------------------------------- McNemar
@pytest.mark.parametrize("b, c, expected", [
    (0, 0, 1.0),                           # no discordant pairs
    (3, 3, 1.0),                           # balanced
    (1, 0, 1.0),                           # 2 * 1/2, capped at 1
    (5, 0, 2 / 32),                        # 2 * (1/2)^5
    (0, 5, 2 / 32),                        # symmetric
    (1, 4, 2 * (1 + 5) / 32),              # 2 * P[X <= 1], X ~ Bin(5, 1/2)
    (6, 1, 2 * (1 + 7) / 128),
    (10, 2, 2 * (1 + 12 + 66) / 4096),
    (0, 20, 2 / 2 ** 20),
])
def test_mcnemar_hand_computed(b, c, expected):
    assert rp.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("b, c", [(7, 2), (2, 7), (15, 30), (40, 41), (120, 80), (500, 560),
                                  (3000, 3300), (5200, 4900), (7000, 6500), (9000, 9400)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    """scipy's two-sided binomtest on the discordant pairs is the exact McNemar test; the
    last three cases (n > 10000) take the log-space path."""
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(c, b + c, 0.5, alternative="two-sided").pvalue
    assert rp.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


# ------------------------------------------------------------------------- bootstrap
def test_bootstrap_known_delta_and_identical():
    rng = np.random.default_rng(0)
    a = rng.random(2000) < 0.6
    b = a.copy()
    b[np.flatnonzero(~a)[:200]] = True               # exactly +10 points
    delta, low, high = rp.paired_bootstrap(a, b, seed=1)
    assert delta == pytest.approx(0.10)
    assert low < 0.10 < high and low > 0              # contains the truth, excludes 0
    assert rp.paired_bootstrap(a, a.copy()) == (0.0, 0.0, 0.0)   # identical: [0, 0]


def test_bootstrap_contains_population_delta():
    """Independent runs of accuracy 0.6 and 0.7: the interval covers the true +0.1."""
    rng = np.random.default_rng(3)
    a, b = rng.random(3000) < 0.6, rng.random(3000) < 0.7
    _, low, high = rp.paired_bootstrap(a, b, seed=0)
    assert low < 0.1 < high and low > 0


def test_bootstrap_equals_explicit_resampling():
    """The multinomial shortcut is the ordinary resampling: same interval as drawing index
    vectors (per pair, and per expression group with several seeds) up to Monte-Carlo noise."""
    rng = np.random.default_rng(5)
    n = 300
    a = rng.random(2 * n) < 0.5
    b = np.where(rng.random(2 * n) < 0.8, a, ~a)
    groups = np.tile(np.arange(n), 2)                 # two seeds of the same expressions
    for g in (None, groups):
        codes = np.arange(2 * n) if g is None else g
        ids = np.unique(codes)
        members = [np.flatnonzero(codes == i) for i in ids]
        draws = np.random.default_rng(9).integers(0, ids.size, size=(4000, ids.size))
        d = b.astype(int) - a.astype(int)
        sums = np.array([d[m].sum() for m in members])
        cnts = np.array([m.size for m in members])
        explicit = sums[draws].sum(1) / cnts[draws].sum(1)
        lo, hi = np.quantile(explicit, [0.025, 0.975])
        _, low, high = rp.paired_bootstrap(a, b, g, n_boot=4000, seed=2)
        assert low == pytest.approx(lo, abs=0.008) and high == pytest.approx(hi, abs=0.008)


# ------------------------------------------------------------------------- the table
@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    storage = tmp_path_factory.mktemp("report-storage")
    accs = make_variants_study(storage)
    out = rp.write_report(storage, "abl")
    return SimpleNamespace(storage=storage, accs=accs, out=out,
                           study=rp.load_study_results(storage, "abl"))


def test_table_mean_std_and_deltas_by_hand(ablation):
    table = rp.compute_table(ablation.study, n_boot=200)
    assert [v for v, _ in table.rows] == list(VARIANTS)          # baseline first
    assert table.columns == [("refcoco", "val"), ("refcoco", "testA"), ("refcoco", "testB"),
                             ("referit", "val"), ("referit", "test")]
    for variant, cells in table.rows:
        for (dataset, split), cell in cells.items():
            values = ablation.accs[(variant, dataset, split)]
            assert cell.mean == pytest.approx(statistics.fmean(values))
            assert cell.std == pytest.approx(statistics.stdev(values))
            base = statistics.fmean(ablation.accs[("baseline", dataset, split)])
            if variant == "baseline":
                assert cell.delta is None and cell.stat is None
            else:
                assert cell.delta == pytest.approx(statistics.fmean(values) - base)
                # same expressions and seeds on both sides: the paired delta is the same
                assert cell.stat.delta == pytest.approx(cell.delta)
                assert cell.stat.pairs == 3 * 400
    md = rp.to_markdown(table)
    v = ablation.accs[("no-bridge", "refcoco", "testA")]
    b = ablation.accs[("baseline", "refcoco", "testA")]
    text = (f"{100 * statistics.fmean(v):.2f} ± {100 * statistics.stdev(v):.2f} "
            f"({100 * (statistics.fmean(v) - statistics.fmean(b)):+.2f})")
    assert text in md


def test_significance_marks(ablation):
    table = rp.compute_table(ablation.study)
    rows = dict(table.rows)
    for column in table.columns:
        same, better, worse = (rows[v][column] for v in ("bridge-fixed", "better", "no-bridge"))
        assert same.stat.delta == 0 and not same.stat.significant and same.stat.p_value == 1.0
        assert (same.stat.ci_low, same.stat.ci_high) == (0.0, 0.0)
        assert better.stat.significant and better.stat.ci_low > 0
        assert better.stat.p_value < 1e-6 and better.stat.only_baseline == 0
        assert worse.stat.significant and worse.stat.ci_high < 0 and worse.stat.only_variant == 0
    md = rp.to_markdown(table)
    line = next(l for l in md.splitlines() if l.startswith("| bridge-fixed |"))
    assert line.count("(+0.00)†") == len(table.columns)
    line = next(l for l in md.splitlines() if l.startswith("| better |"))
    assert "†" not in line
    assert "includes 0 (not significant)" in md


def test_files_written(ablation):
    out = ablation.out
    assert out == ablation.storage / "abl" / "report"
    report = (out / "report.md").read_text()
    for section in ("## Accuracy", "## Paired statistics", "## Cost", "## Plots"):
        assert section in report
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    ours = [r for r in rows if not r["variant"].startswith("published")]
    assert len(ours) == len(VARIANTS) * 5
    r = next(r for r in ours if (r["variant"], r["dataset"], r["split"]) ==
             ("better", "referit", "test"))
    assert r["significant"] == "true" and float(r["ci_low_pct"]) > 0
    assert float(r["acc50_mean_pct"]) == pytest.approx(
        100 * statistics.fmean(ablation.accs[("better", "referit", "test")]), abs=1e-3)
    tex = (out / "table.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\multicolumn{3}{c}{refcoco}",
                  r"\cmidrule(lr){2-4}", r"$^\dagger$", r"\pm", "no-bridge"):
        assert token in tex
    assert tex.count(r"\\") >= len(VARIANTS) + 4


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 15_000, path
    with Image.open(path) as im:
        assert im.width >= 500 and im.height >= 300
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.std() > 10  # not a blank canvas


def test_plots_written(ablation):
    for name in ("bars.png", "learning_curves.png", "pareto.png"):
        _assert_png(ablation.out / name)
        assert f"]({name})" in (ablation.out / "report.md").read_text()
    assert not (ablation.out / "history.png").exists()  # only for search spaces


def test_cost_hours_and_energy(ablation, tmp_path):
    rows = rp.compute_cost(ablation.study)
    base = rows[0]
    # 6 runs x 1800 s x 2 workers x 1 GPU each
    assert (base.variant, base.unit, base.runs) == ("baseline", "GPU", 6)
    assert base.device_hours == pytest.approx(6 * 1800 / 3600 * 2)
    assert base.energy_kwh is None
    assert "| - |" in rp.cost_markdown(rows)
    make_variants_study(tmp_path, name="e", datasets=("referit",), seeds=(1,), n=50,
                        device="cpu", energy=True)
    rows = rp.compute_cost(rp.load_study_results(tmp_path, "e"))
    assert rows[0].unit == "CPU" and rows[0].energy_kwh == pytest.approx(0.5)
    assert rows[0].device_hours == pytest.approx(1800 / 3600 * 2 * 8)   # 8 CPUs per worker
    assert rows[0].acc_per_hour == pytest.approx(100 * rows[0].acc / rows[0].device_hours)


# ------------------------------------------------------------------------- published
def test_published_row_for_hivg_b16_on_real_data(ablation):
    table = rp.compute_table(ablation.study, n_boot=50)
    md = rp.to_markdown(table)
    paper = next(l for l in md.splitlines() if l.startswith("| published HiVG-B/16 (paper) |"))
    assert paper.split(" | ")[1:] == ["87.32", "89.86", "83.27", "-", "75.22 |"]
    gap = next(l for l in md.splitlines() if l.startswith("| baseline - paper |"))
    ours = statistics.fmean(ablation.accs[("baseline", "refcoco", "val")])
    assert f"{100 * ours - 87.32:+.2f}" in gap
    assert "clip_b_ml_cascade_maskrcnn_model_224" in md and "ViT-B-16-openai.pt" in md
    tex = rp.to_latex(table)
    assert "published HiVG-B/16 (paper) & $87.32$" in tex
    rows = list(csv.DictReader(io.StringIO(rp.to_csv(table))))
    paper = next(r for r in rows if r["variant"].startswith("published") and
                 (r["dataset"], r["split"]) == ("refcoco", "val"))
    assert float(paper["acc50_mean_pct"]) == 87.32
    assert float(paper["delta_pct"]) == pytest.approx(100 * ours - 87.32, abs=1e-3)


@pytest.mark.parametrize("preset, datasets, label", [
    ("hivg-l14", ("refcoco",), "HiVG-L/14"),
    ("hivg-b16", ("synthetic",), None),      # not a paper dataset
    ("tiny", ("refcoco",), None),            # not a paper model
])
def test_published_row_only_where_it_applies(tmp_path, preset, datasets, label):
    make_variants_study(tmp_path, name="s", preset=preset, datasets=datasets, seeds=(1, 2),
                        n=30)
    table = rp.compute_table(rp.load_study_results(tmp_path, "s"), n_boot=20)
    md = rp.to_markdown(table)
    if label is None:
        assert table.published is None and "published" not in md.lower()
    else:
        assert f"| published {label} (paper) | 88.14 | 91.09 | 83.71 |" in md


def test_published_data_matches_design():
    data = rp.load_published()
    assert data["hivg-b16"]["single"]["refcocog-umd"] == {"val": 78.29, "test": 78.79}
    assert data["hivg-l14"]["single"]["flickr30k"] == {"test": 82.16}
    assert data["hivg-b16"]["mixup"]["refcoco+"]["testB"] == 76.68


# ------------------------------------------------------------------------- search spaces
def test_space_study_report(tmp_path):
    quality = make_space_study(tmp_path)
    study = rp.load_study_results(tmp_path, "space")
    assert len(study.all_trials) == 10 and len(study.trials) == 8   # t003, t007 stopped
    scores = [quality[v] for v in study.variants]
    assert scores == sorted(scores, reverse=True)                  # best on val first
    assert study.all_trials[0].config_value("hilora.num_stages") in (2, 3, 4)
    out = rp.write_report(tmp_path, "space", n_boot=100)
    for name in ("bars.png", "learning_curves.png", "pareto.png", "parallel_coordinates.png",
                 "history.png"):
        _assert_png(out / name)
    report = (out / "report.md").read_text()
    assert "## Trials" in report and report.count("| stopped |") == 2
    assert "best trial on val/acc50" in report


# ------------------------------------------------------------------------- MLflow, CLI
def test_log_report_to_tracker(ablation):
    calls = []
    tracker = SimpleNamespace(log_artifact=lambda path, artifact_path=None:
                              calls.append((Path(path), artifact_path)))
    study_report.log_report(tracker, ablation.out)
    assert calls == [(ablation.out, "report")]


def test_pipeline(ablation, capsys, monkeypatch):
    script = str(REPO / "pipelines" / "report.py")
    monkeypatch.setattr("sys.argv", [script, "abl", "--storage", str(ablation.storage),
                                     "--no-mlflow", "--no-plots"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name="__main__")
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "| baseline |" in out and str(ablation.storage / "abl" / "report") in out

    monkeypatch.setattr("sys.argv", [script, "nope", "--storage", str(ablation.storage)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "nope" in err


def test_pipeline_takes_the_study_file(ablation, capsys, monkeypatch):
    """The study file as the positional argument, as ablate.py and sweep.py take it: its
    `name:` names the study under --storage."""
    script = str(REPO / "pipelines" / "report.py")
    monkeypatch.setattr("sys.argv", [script, str(ablation.storage / "abl" / "study.yaml"),
                                     "--storage", str(ablation.storage), "--no-mlflow",
                                     "--no-plots", "--n-boot", "200"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name="__main__")
    assert e.value.code == 0
    assert str(ablation.storage / "abl" / "report") in capsys.readouterr().out


def test_report_after_study_only_warns(tmp_path):
    lines = []
    assert study_report.report_after_study({"study": "nope"}, tmp_path, log=lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("warning: no report")
    assert "pipelines/report.py nope" in lines[0]


def test_log_report_to_mlflow_parent_run(ablation, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from hivg.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = MlflowTracker.start(uri, "abl", run_name="study/abl", tags={"study": "abl"},
                                 run_key="study:abl",
                                 artifact_location=(tmp_path / "artifacts").as_uri())
    parent.end("FINISHED")
    assert study_report.log_report_to_study_run(ablation.out, uri, "abl") == parent.run_id
    names = {Path(f.path).name for f in MlflowClient(uri).list_artifacts(parent.run_id, "report")}
    assert {"report.md", "table.csv", "table.tex", "bars.png", "pareto.png"} <= names
    assert study_report.study_name_of_run(uri, parent.run_id) == "abl"
    assert study_report.log_report_to_study_run(ablation.out, uri, "other") is None
