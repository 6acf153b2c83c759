"""Studies you can trust: a trial is its config without paths or placement (its identity);
a finished trial is reused only under the same identity, a changed one is said and set
aside; earlier study files are kept. Run folders are written with the project's own writers;
no Ray, no training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

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
