"""Study files (search_spaces/*.yaml): shipped files load, bad files fail in one line naming
the file, the key and what was expected, conditional sampling, grid points, variant trials."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from hivg.config import Config
from hivg.errors import UserError
from hivg.orchestration.search_space import (NUM_STAGES, Domain, Study, apply_trial,
                                             config_for, decode_params, grid_points, load_study,
                                             sample_space, variant_trials)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))
FIVE = ["refcoco", "refcoco+", "refcocog-umd", "referit", "flickr30k"]


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ----------------------------------------------------------------------------- shipped files


def test_the_shipped_files_exist():
    names = {p.name for p in SHIPPED}
    assert {"hilora_ranks.yaml", "bridge_layers.yaml", "stage_schedules.yaml",
            "hivg_components.yaml", "demo.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_file_loads_and_names_its_command(path):
    study = load_study(path)
    first = path.read_text().splitlines()[0]
    pipeline = "sweep" if study.kind == "space" else "ablate"
    assert first == f"# python pipelines/{pipeline}.py search_spaces/{path.name}"
    assert study.text == path.read_text()
    assert study.metric.startswith("val/")
    if study.kind == "variants":
        assert study.scheduler is None and study.num_samples is None
        for trial in variant_trials(study):
            config_for(study, trial.overrides, trial.dataset, trial.seed, trial.variant)
    else:
        assert study.num_samples >= 1


def test_demo_is_eight_short_trials_on_the_tiny_model():
    study = load_study(REPO / "search_spaces" / "demo.yaml")
    trials = variant_trials(study)
    assert len(trials) == 8 and study.datasets == ["synthetic"] and study.seeds == [13, 14]
    assert study.base.preset == "tiny" and study.base.data.max_train_samples == 2500
    assert [s.epochs for s in study.base.hilora.stages] == [3, 1]
    assert study.base.loss.align_ce > 0  # the baseline trains the dense head's choice
    assert study.resources.workers == 0  # trials train in their own process
    no_aux = config_for(study, study.variants["no-aux-losses"], "synthetic", 13, "no-aux-losses")
    assert no_aux.model.box_head == "reg" and not no_aux.loss.use_align


def test_components_vanilla_lora_is_one_stage_over_all_layers():
    study = load_study(REPO / "search_spaces" / "hivg_components.yaml")
    assert study.datasets == FIVE and study.baseline == "baseline"
    hierarchy = study.base.hilora.stages
    vanilla = apply_trial(study, study.variants["vanilla-lora"]).hilora.stages
    assert [s.name for s in vanilla] == ["stage0", "stage1"]
    assert vanilla[1].vision_layers == [0, 11] and vanilla[1].text_layers == [0, 11]
    assert vanilla[1].epochs == sum(s.epochs for s in hierarchy if s.has_lora)


# ----------------------------------------------------------------------------- bad files


GOOD_SPACE = textwrap.dedent("""\
    base: tiny
    datasets: [synthetic]
    space:
      hilora.stages.stage1.rank: {choice: [4, 8]}
""")

BAD = [
    # (id, file body, fragments expected in the one-line message)
    ("unknown top-level key", GOOD_SPACE + "epochs: 3\n",
     ["epochs: unknown key", "expected one of"]),
    ("unknown config key", """\
        base: tiny
        space:
          optim.weight_decayy: {choice: [0.1]}
     """, ["space.optim.weight_decayy: unknown key", "weight_decay"]),
    ("unknown stage", """\
        base: hivg-b16
        space:
          hilora.stages.stage9.rank: {choice: [4]}
     """, ["space.hilora.stages.stage9.rank: unknown key",
           "the base has stages stage0, stage1, stage2, stage3"]),
    ("wrong value type", """\
        base: tiny
        space:
          model.bridge.enabled: {choice: [true, maybe]}
     """, ["space.model.bridge.enabled", "'maybe'", "expected true or false"]),
    ("float domain on an int key", """\
        base: tiny
        space:
          hilora.stages.stage0.epochs: {uniform: [1, 4]}
     """, ["space.hilora.stages.stage0.epochs", "expected an integer", "int: [low, high]"]),
    ("rank 0 in a choice", """\
        base: tiny
        space:
          hilora.stages.stage1.rank: {choice: [4, 0]}
     """, ["space.hilora.stages.stage1.rank", "value 0", "LoRA rank >= 1"]),
    ("loguniform low 0", """\
        base: tiny
        space:
          optim.weight_decay: {loguniform: [0, 1]}
     """, ["space.optim.weight_decay: loguniform bounds must be 0 < low < high, got [0, 1]"]),
    ("layer beyond the encoder", """\
        base: tiny
        space:
          model.bridge.vision_layers: {grid: [[0, 3], [0, 4]]}
     """, ["space.model.bridge.vision_layers", "[0, 4]", "layers < 4"]),
    ("not a domain", """\
        base: tiny
        space:
          optim.weight_decay: 0.1
     """, ["space.optim.weight_decay: expected one domain", "overrides:"]),
    ("unknown dataset", GOOD_SPACE.replace("[synthetic]", "[synthetic, coco]"),
     ["datasets: unknown dataset 'coco'", "refcocog-umd"]),
    ("test metric", GOOD_SPACE + "metric: test/acc50\n",
     ["metric: expected a validation metric starting with 'val/'", "'test/acc50'"]),
    ("val metric the trainer does not report", GOOD_SPACE + "metric: val/loss\n",
     ["metric: expected a validation metric", "reports every epoch (val/acc50", "'val/loss'"]),
    ("bad mode", GOOD_SPACE + "mode: maximise\n", ["mode: expected max or min"]),
    ("both space and variants", GOOD_SPACE + "variants: {baseline: {}}\n",
     ["space/variants: expected exactly one", "got both"]),
    ("neither space nor variants", "base: tiny\n", ["space/variants", "got neither"]),
    ("num_stages 9 in a space", """\
        base: hivg-b16
        space:
          hilora.num_stages: {choice: [2, 9]}
     """, ["space.hilora.num_stages: expected integers in 1..4", "9"]),
    ("num_stages 9 in a variant", """\
        base: hivg-b16
        variants:
          baseline: {}
          short: {hilora.num_stages: 9}
     """, ["variants.short.hilora.num_stages: expected an integer in 1..4", "9"]),
    ("stage key dropped by a variant's num_stages", """\
        base: hivg-b16
        variants:
          baseline: {}
          short: {hilora.num_stages: 2, hilora.stages.stage3.rank: 4}
     """, ["variants.short.hilora.stages.stage3.rank: unknown key",
           "hilora.num_stages=2 keeps stages stage0, stage1"]),
    ("stage key that never applies", """\
        base: hivg-b16
        space:
          hilora.num_stages: {choice: [2, 3]}
          hilora.stages.stage3.rank: {choice: [4, 8]}
     """, ["space.hilora.stages.stage3.rank: never applies", "at most 3"]),
    ("invalid variant", """\
        base: tiny
        variants:
          baseline: {}
          no-align: {loss.align_focal: 0, loss.align_dice: 0}
     """, ["variants.no-align", "model.box_head: expected reg"]),
    ("seeds not integers", GOOD_SPACE + "seeds: [13, x]\n", ["seeds: expected", "integers"]),
    ("negative resources", GOOD_SPACE + "resources: {workers: -1}\n",
     ["resources.workers: expected an integer >= 0"]),
    ("reserved key", """\
        base: tiny
        space:
          data.dataset: {choice: [synthetic]}
     """, ["space.data.dataset: set per trial by the study", "use datasets:"]),
    ("unknown base", "base: hivg-xl\nvariants: {baseline: {}}\n",
     ["base: expected a preset name", "hivg-b16", "'hivg-xl'"]),
    ("scheduler on variants", "base: tiny\nvariants: {baseline: {}}\nscheduler: asha\n",
     ["scheduler: expected none for variants"]),
    ("bad override", "base: tiny\noverrides: {optim.nope: 1}\nvariants: {baseline: {}}\n",
     ["overrides.optim.nope: unknown key"]),
]


@pytest.mark.parametrize("body, fragments", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_file_is_one_user_error_naming_file_key_and_expectation(tmp_path, body, fragments):
    path = write(tmp_path, body, "bad.yaml")
    with pytest.raises(UserError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message
    assert re.match(rf"{re.escape(str(path))}(:\d+:\d+)?: ", message), message
    for fragment in fragments:
        assert fragment in message, message


POSITIONS = [
    # (id, file body, the message's start after the file name: line:col and key)
    ("unknown top-level key", "base: tiny\nvariants: {baseline: {}}\n\nepochs: 3\n",
     "4:1: epochs: unknown key"),
    ("space key", """\
        base: tiny
        space:
          hilora.stages.stage0.lr: {loguniform: [1.0e-5, 1.0e-3]}
          optim.weight_decayy: {choice: [0.1]}
     """, "4:3: space.optim.weight_decayy: unknown key"),
    ("variant key", """\
        base: tiny
        variants:
          baseline: {}
          no-bridge: {model.bridge.enabledd: false}
     """, "4:15: variants.no-bridge.model.bridge.enabledd: unknown key"),
    ("override key", "base: tiny\noverrides:\n  optim.nope: 1\nvariants: {baseline: {}}\n",
     "3:3: overrides.optim.nope: unknown key"),
    ("seeds", "base: tiny\nseeds: [13, x]\nvariants: {baseline: {}}\n",
     "2:1: seeds: expected"),
]


@pytest.mark.parametrize("body, start", [p[1:] for p in POSITIONS], ids=[p[0] for p in POSITIONS])
def test_a_bad_key_in_valid_yaml_is_named_with_its_line_and_column(tmp_path, body, start):
    path = write(tmp_path, body, "bad.yaml")
    with pytest.raises(UserError) as info:
        load_study(path)
    assert str(info.value).startswith(f"{path}:{start}"), str(info.value)


# ----------------------------------------------------------------------------- sampling


CONDITIONAL = """\
    base: hivg-b16
    datasets: [refcoco]
    space:
      hilora.num_stages: {choice: [1, 2, 3, 4]}
      hilora.stages.stage1.rank: {choice: [4, 8, 16]}
      hilora.stages.stage2.vision_layers: {choice: [[0, 7], [0, 9]]}
      hilora.stages.stage3.lr: {loguniform: [1.0e-5, 1.0e-4]}
      hilora.stages.stage0.epochs: {int: [20, 60]}
      model.bridge.vision_layers: {grid: [[0, 3, 7, 11], [3, 7, 11], [11]]}
      optim.weight_decay: {uniform: [0.0, 0.01]}
"""


def test_sample_space_with_optuna_suggests_only_existing_stages_and_valid_configs(tmp_path):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(write(tmp_path, CONDITIONAL))
    names = [s.name for s in study.base.hilora.stages]
    searcher = optuna.create_study(direction="maximize",
                                   sampler=optuna.samplers.TPESampler(seed=0))
    seen_counts = set()
    for i in range(50):
        trial = searcher.ask()
        point = sample_space(study, trial)
        n = point[NUM_STAGES]
        seen_counts.add(n)
        assert list(point)[0] == NUM_STAGES
        for key in point:
            if key.startswith("hilora.stages."):
                assert names.index(key.split(".")[2]) < n, (key, n)
        assert set(trial.params) == set(point)
        expected_keys = {k for k in study.space
                         if not k.startswith("hilora.stages.") or names.index(k.split(".")[2]) < n}
        assert set(point) == expected_keys
        config = apply_trial(study, point)
        assert isinstance(config, Config) and len(config.hilora.stages) == n
        assert isinstance(config.model.bridge.vision_layers, list)
        assert decode_params(study, trial.params) == point
        searcher.tell(trial, float(i % 7))
    assert seen_counts == {1, 2, 3, 4}


class ScriptedTrial:
    """Answers every suggestion with the last choice (or the upper bound)."""

    def __init__(self):
        self.asked = []

    def suggest_categorical(self, name, choices):
        self.asked.append(name)
        return choices[-1]

    def suggest_float(self, name, low, high, log=False):
        self.asked.append(name)
        return high

    def suggest_int(self, name, low, high):
        self.asked.append(name)
        return high


def test_list_valued_choices_round_trip_through_categorical_encoding(tmp_path):
    study = load_study(write(tmp_path, CONDITIONAL))
    domain = study.space["model.bridge.vision_layers"]
    encoded = domain.categorical()
    assert all(isinstance(c, str) for c in encoded)
    assert [domain.decode(c) for c in encoded] == domain.values
    assert Domain("choice", values=[4, 8]).categorical() == [4, 8]  # primitives pass unchanged
    trial = ScriptedTrial()
    point = sample_space(study, trial)
    assert trial.asked == list(study.space)  # stable order: num_stages first, then file order
    assert point["model.bridge.vision_layers"] == [11]
    assert point["hilora.stages.stage2.vision_layers"] == [0, 9]
    config = apply_trial(study, point)
    assert config.model.bridge.vision_layers == [11]
    assert config.hilora.stages[3].lr == pytest.approx(1e-4)


def test_apply_trial_and_config_for_do_not_touch_the_base(tmp_path):
    study = load_study(write(tmp_path, CONDITIONAL))
    before = study.base.to_dict()
    config = config_for(study, {NUM_STAGES: 2, "hilora.stages.stage1.rank": 4}, "referit", 7,
                        "short")
    assert (config.data.dataset, config.seed, config.variant) == ("referit", 7, "short")
    assert [s.name for s in config.hilora.stages] == ["stage0", "stage1"]
    assert config.hilora.stages[1].rank == 4
    config.data.max_train_samples = 5
    assert study.base.to_dict() == before


# ----------------------------------------------------------------------------- grid points


def test_grid_points_enumerate_the_product_honouring_num_stages(tmp_path):
    study = load_study(write(tmp_path, """\
        base: hivg-b16
        space:
          hilora.num_stages: {grid: [2, 3]}
          hilora.stages.stage1.rank: {grid: [8, 16]}
          hilora.stages.stage2.rank: {choice: [8, 16, 32]}
          hilora.stages.stage0.epochs: {int: [1, 2]}
          model.bridge.vision_layers: {grid: [[0, 3, 7, 11], [11]]}
    """))
    points = grid_points(study)
    # num_stages 2: stage1.rank x epochs x layers = 2*2*2; num_stages 3: also stage2.rank (x3).
    assert len(points) == 8 + 24
    assert len({str(sorted(p.items())) for p in points}) == len(points)
    assert all("hilora.stages.stage2.rank" not in p for p in points if p[NUM_STAGES] == 2)
    assert all("hilora.stages.stage2.rank" in p for p in points if p[NUM_STAGES] == 3)
    assert points[0] == {NUM_STAGES: 2, "hilora.stages.stage1.rank": 8,
                         "hilora.stages.stage0.epochs": 1,
                         "model.bridge.vision_layers": [0, 3, 7, 11]}
    for p in points:
        apply_trial(study, p)


def test_grid_points_refuse_continuous_domains(tmp_path):
    path = write(tmp_path, """\
        base: tiny
        space:
          optim.weight_decay: {loguniform: [1.0e-5, 1.0e-2]}
    """)
    study = load_study(path)
    with pytest.raises(UserError, match=r"space\.optim\.weight_decay: a loguniform domain has no "
                                        r"grid points"):
        grid_points(study)


# ----------------------------------------------------------------------------- variants & defaults


def test_variant_trials_are_variants_by_datasets_by_seeds_baseline_first(tmp_path):
    study = load_study(write(tmp_path, """\
        base: tiny
        datasets: all
        seeds: [1, 2]
        variants:
          reference: {}
          no-bridge: {model.bridge.enabled: false}
    """))
    trials = variant_trials(study)
    assert study.kind == "variants" and study.baseline == "reference"
    assert len(trials) == 2 * 5 * 2
    assert [t.key for t in trials[:3]] == ["reference/refcoco/seed1", "reference/refcoco/seed2",
                                          "reference/refcoco+/seed1"]
    assert trials[10].key == "no-bridge/refcoco/seed1"
    assert trials[10].overrides == {"model.bridge.enabled": False}
    config = config_for(study, trials[10].overrides, trials[10].dataset, trials[10].seed,
                        trials[10].variant)
    assert not config.model.bridge.enabled and config.variant == "no-bridge"


def test_defaults_and_base_path_relative_to_the_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("preset: tiny\noptim: {weight_decay: 0.5}\n")
    study = load_study(write(tmp_path, """\
        base: configs/mine.yaml
        overrides: {hilora.num_stages: 2}
        space:
          hilora.stages.stage1.rank: {choice: [4, 8]}
    """, "my-study.yaml"))
    assert isinstance(study, Study) and study.kind == "space"
    assert study.name == "my-study"
    assert study.base.optim.weight_decay == 0.5 and len(study.base.hilora.stages) == 2
    assert (study.metric, study.mode, study.seeds, study.num_samples) == ("val/acc50", "max",
                                                                           [13], 10)
    assert study.datasets == ["synthetic"]
    assert study.scheduler == {"type": "asha", "grace_period": 1, "reduction_factor": 3}
    assert (study.resources.workers, study.resources.cpus_per_worker,
            study.resources.gpus_per_worker) == (1, 1.0, 0.0)
    none = load_study(write(tmp_path, GOOD_SPACE + "scheduler: none\n"))
    assert none.scheduler is None
