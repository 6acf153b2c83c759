"""Studies you can trust: a trial is its config without paths or placement (its identity);
a finished trial is reused only under the same identity, a changed one is said and set
aside; earlier study files are kept. Run folders are written with the project's own writers;
no Ray, no training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hivg.errors import UserError
from hivg.orchestration.search_space import config_for, load_study, variant_trials
from hivg.orchestration.tune import (SUPERSEDED, StudyOptions, finished_result,
                                     keep_earlier_study_file, safe_name,
                                     set_aside_changed_trials, trial_identity)
from hivg.run_folder import TRIALS, Identity, RunFolder

STUDY = """name: ident
base: tiny
datasets: [synthetic]
seeds: [13]
overrides:
  data.data_dir: {data_dir}
  model.weights: null
variants:
{variants}
"""


def write_study(path: Path, variants: str, data_dir: str = "/data/here") -> Path:
    path.write_text(STUDY.format(data_dir=data_dir, variants=variants))
    return path


def finish_trials(study, storage: Path) -> dict[str, RunFolder]:
    """Every trial of `study` as a finished run folder, identity and all (what a trial leaves
    behind when it has run)."""
    folders = {}
    for t in variant_trials(study):
        config = config_for(study, t.overrides, t.dataset, t.seed, t.variant)
        folder = RunFolder(storage / study.name / TRIALS / safe_name(t.key))
        folder.prepare(config.to_yaml(), resume=False)
        folder.metrics_path.write_text(json.dumps({"epoch": 1, "val/acc50": 0.5}) + "\n")
        folder.write_summary({"best": {"val/acc50": 0.5}, "epochs_trained": 1})
        folder.write_identity(trial_identity(config))
        folders[t.key] = folder
    return folders


@pytest.mark.parametrize("change, same, differing", [
    ({"data.data_dir": "/elsewhere/data"}, True, []),
    ({"data.num_workers": 7}, True, []),
    ({"device": "cuda:1"}, True, []),
    ({"model.weights": "/other/place/weights.pt"}, True, []),  # same file, another folder
    ({"model.weights": "/place/other-weights.pt"}, False, ["model.weights"]),
    ({"hilora.stages.stage0.lr": 1.0e-2}, False, ["hilora.stages.stage0.lr"]),
    ({"model.bridge.enabled": False, "seed": 14}, False, ["model.bridge.enabled", "seed"]),
])
def test_identity_leaves_out_paths_and_placement_and_names_what_differs(
        tmp_path, change, same, differing):
    study = load_study(write_study(tmp_path / "s.yaml", "  baseline: {}"))
    base = study.base.replace({"model.weights": "/place/weights.pt"})
    before, after = trial_identity(base), trial_identity(base.replace(change))
    assert (before.hash == after.hash) is same
    assert before.differences(after) == differing
    # Read back from config.yaml alone (a run from before identities): the same identity.
    folder = RunFolder(tmp_path / "run")
    folder.prepare(base.to_yaml(), resume=False)
    assert folder.read_identity() == before


def test_an_edited_study_sets_aside_only_its_changed_trials(tmp_path):
    storage = tmp_path / "storage"
    first = load_study(write_study(tmp_path / "v1.yaml", """  baseline: {}
  no-bridge: {model.bridge.enabled: false}
  lr: {hilora.stages.stage0.lr: 1.0e-3}"""))
    folders = finish_trials(first, storage)
    # Edited: no-bridge changed, lr removed, wide added; the data moved (placement only).
    second = load_study(write_study(tmp_path / "v2.yaml", """  baseline: {}
  no-bridge: {model.bridge.enabled: false, model.bridge.adaptive_weights: false}
  wide: {hilora.stages.stage1.rank: 16}""", data_dir="/data/moved"))
    lines: list[str] = []
    changed = set_aside_changed_trials(second, StudyOptions(), storage, None, "ident",
                                       lines.append)
    assert changed == ["no-bridge/synthetic/seed13"]
    assert lines == ["changed: no-bridge/synthetic/seed13 (config differs: "
                     "model.bridge.adaptive_weights)"]
    # Set aside, not deleted: its results are kept under superseded/.
    assert not folders["no-bridge/synthetic/seed13"].path.exists()
    aside = list((storage / "ident" / SUPERSEDED).iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("no-bridge_synthetic_seed13.")
    assert (aside[0] / "summary.json").is_file()
    # The removed variant keeps its folder; the unchanged one is reused as it is.
    assert folders["lr/synthetic/seed13"].summary_path.is_file()
    baseline = next(t for t in variant_trials(second) if t.variant == "baseline")
    identity = trial_identity(config_for(second, {}, baseline.dataset, baseline.seed,
                                         baseline.variant))
    assert finished_result(folders["baseline/synthetic/seed13"], second, identity) == \
        {"val/acc50": 0.5, "global_epoch": 1, "reused": 1}
    # Nothing changed any more: a second pass says nothing.
    assert set_aside_changed_trials(second, StudyOptions(), storage, None, "ident",
                                    lines.append) == [] and len(lines) == 1


def test_a_finished_trial_stored_under_another_identity_is_not_reused(tmp_path):
    study = load_study(write_study(tmp_path / "s.yaml", "  baseline: {}"))
    folder = finish_trials(study, tmp_path / "storage")["baseline/synthetic/seed13"]
    config = config_for(study, {}, "synthetic", 13, "baseline")
    assert finished_result(folder, study, trial_identity(config)) is not None
    folder.write_identity(Identity.of(config.replace({"optim.weight_decay": 0.5}).to_dict()))
    assert finished_result(folder, study, trial_identity(config)) is None


def test_earlier_study_files_are_kept_never_overwritten(tmp_path):
    study_dir = tmp_path / "ident"
    study_dir.mkdir()
    lines: list[str] = []
    # (the file as run, whether it counts as edited, the earlier versions kept afterwards)
    steps = [("v1\n", False, {}),
             ("v1\n", False, {}),
             ("v2\n", True, {"study.1.yaml": "v1\n"}),
             ("v3\n", True, {"study.1.yaml": "v1\n", "study.2.yaml": "v2\n"})]
    for text, edited, kept in steps:
        assert keep_earlier_study_file(study_dir, None, "ident", text, lines.append) is edited
        (study_dir / "study.yaml").write_text(text)  # as run_study then writes it
        assert {p.name: p.read_text() for p in study_dir.glob("study.*.yaml")} == kept
    assert lines == ["study file changed: the earlier version is kept as ident/study.1.yaml",
                     "study file changed: the earlier version is kept as ident/study.2.yaml"]


@pytest.mark.slow
def test_a_rerun_of_an_edited_study_trains_only_what_changed_or_is_new(
        local_ray, synthetic_storage, tmp_path):
    """A real study on Ray, edited and run again with --resume: the changed variant and the
    new one train, the unchanged one is reused, the removed one leaves the table."""
    from test_tune import SHORT

    def study_file(variants: str) -> Path:
        path = tmp_path / "e2e.yaml"
        path.write_text("name: e2e\nbase: tiny\ndatasets: [synthetic]\nseeds: [13]\n"
                        "resources: {workers: 0, cpus_per_worker: 1}\n"
                        + SHORT.format(e0=1).replace(
                            "overrides:\n",
                            f"overrides:\n  data.data_dir: {synthetic_storage / 'data'}\n")
                        + "variants:\n" + variants)
        return path

    from hivg.orchestration.tune import run_study

    storage = tmp_path / "storage"
    options = StudyOptions(name="e2e", workers_per_trial=0, mlflow=False)
    first = run_study(load_study(study_file("  baseline: {}\n  same: {loss.giou: 1.0}\n"
                                            "  gone: {optim.weight_decay: 0.01}\n")),
                      storage, options, log=lambda _m: None)
    assert [r["variant"] for r in first["rows"]] == ["baseline", "same", "gone"]
    trials = storage / "e2e" / TRIALS
    summaries = {v: (trials / f"{v}_synthetic_seed13" / "summary.json").read_bytes()
                 for v in ("baseline", "same")}
    assert json.loads((trials / "baseline_synthetic_seed13" / "identity.json").read_text())["hash"]

    lines: list[str] = []
    edited = load_study(study_file("  baseline: {optim.weight_decay: 0.001}\n"
                                   "  same: {loss.giou: 1.0}\n"
                                   "  new: {model.bridge.enabled: false}\n"))
    again = run_study(edited, storage, StudyOptions(name="e2e", workers_per_trial=0,
                                                    mlflow=False, resume=True),
                      log=lines.append)
    assert "changed: baseline/synthetic/seed13 (config differs: optim.weight_decay)" in lines
    assert any(m.startswith("study file changed: the earlier version is kept as "
                            "e2e/study.1.yaml") for m in lines)
    assert [r["variant"] for r in again["rows"]] == ["baseline", "same", "new"]
    assert [m for m in lines if m.startswith("changed:")] == \
        ["changed: baseline/synthetic/seed13 (config differs: optim.weight_decay)"]
    assert not again["failed_trials"]
    # The changed trial trained again (its old results set aside), the removed one stayed.
    assert (trials / "baseline_synthetic_seed13" / "summary.json").read_bytes() != \
        summaries["baseline"]
    assert (trials / "same_synthetic_seed13" / "summary.json").read_bytes() == \
        summaries["same"]  # reused, not retrained
    assert len(list((storage / "e2e" / SUPERSEDED).iterdir())) == 1
    assert (trials / "gone_synthetic_seed13" / "summary.json").is_file()
    assert "gone" not in (storage / "e2e" / "table.md").read_text()
    assert (storage / "e2e" / "study.1.yaml").read_text() != \
        (storage / "e2e" / "study.yaml").read_text()


def test_a_run_resumes_under_another_mirror_path_but_not_with_another_config(tmp_path):
    """config.yaml names this machine's data folder; another machine's resume (its mirror
    elsewhere) is the same run, a changed setting is not."""
    study = load_study(write_study(tmp_path / "s.yaml", "  a: {}", data_dir="/m1/data"))
    t = variant_trials(study)[0]
    config = config_for(study, t.overrides, t.dataset, t.seed, t.variant)
    folder = RunFolder(tmp_path / "run")
    folder.prepare(config.to_yaml(), resume=False)
    elsewhere = config.replace({"data.data_dir": "/m2/data"})
    folder.prepare(elsewhere.to_yaml(), resume=True)
    assert folder.config_path.read_text() == elsewhere.to_yaml()  # this machine's paths
    with pytest.raises(UserError, match="another config"):
        folder.prepare(config.replace({"hilora.stages.stage0.lr": 0.5}).to_yaml(), resume=True)


def test_identity_is_written_whole_and_a_torn_file_reads_as_the_configs(tmp_path):
    folder = RunFolder(tmp_path / "run")
    identity = Identity.of({"seed": 13, "optim": {"lr": 0.001}})
    folder.write_identity(identity)
    assert folder.read_identity() == identity
    assert [p.name for p in folder.path.iterdir()] == ["identity.json"]  # no .part left
    folder.identity_path.write_text("")  # a write a kill cut short (before writes were whole)
    assert folder.read_identity() is None  # no config.yaml either: not started
