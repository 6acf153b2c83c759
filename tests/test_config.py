"""Config: round trips, overrides, and one-line errors naming the key (table-driven)."""
from pathlib import Path

import pytest
import yaml

from hivg.config import (NUM_STAGES, Config, ConfigError, UnknownKeyError, check_key,
                         field_help, get_value, load_config, load_preset, preset_names,
                         stage_position)


@pytest.mark.parametrize("name", ["tiny", "hivg-b16", "hivg-l14"])
def test_presets_round_trip_through_yaml(name, tmp_path):
    config = load_preset(name)
    assert config.preset == name
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config
    assert Config.from_dict(config.to_dict()) == config


def test_preset_list_names_the_shipped_presets():
    assert {"tiny", "hivg-b16", "hivg-l14"} <= set(preset_names())


def test_overrides_set_nested_values_and_stage_items_by_name_or_index():
    c = load_preset("tiny").replace(["optim.weight_decay=0.01", "hilora.stages.stage1.rank=4",
                                     "hilora.stages.0.lr=3e-4", "model.bridge.vision_layers=[1,3]"])
    assert c.optim.weight_decay == 0.01
    assert c.hilora.stages[1].rank == 4
    assert c.hilora.stages[0].lr == pytest.approx(3e-4)
    assert c.model.bridge.vision_layers == [1, 3]


@pytest.mark.parametrize("override, message", [
    ("optim.nope=1", "optim.nope: unknown key"),
    ("nope.deeper=1", "nope: unknown key"),
    ("seed=abc", "seed: expected an integer, got 'abc'"),
    ("hilora.stages.stage1.rank=0", "hilora.stages.stage1.rank: expected a LoRA rank >= 1"),
    ("hilora.stages.stage1.vision_layers=[3,1]", "vision_layers: expected a non-empty range"),
    ("hilora.stages.stage9.rank=2", "hilora.stages.stage9: no list item 'stage9'"),
    ("hilora.policy=mine", "hilora.policy: expected one of 'paper' | 'released'"),
    ("model.bridge.vision_layers=[]", "model.bridge.vision_layers: expected at least one layer"),
    ("model.bridge.text_levels=[0]", "model.bridge.text_levels: expected 1-based"),
    ("model.bridge.enabled=maybe", "model.bridge.enabled: expected true or false"),
    ("loss.giou=-1", "loss.giou: expected a weight >= 0"),
    ("loss.align_ce=-0.5", "loss.align_ce: expected a weight >= 0"),
    ("loss.l1=0", None),  # allowed alone: giou still trains the box
    ("data.max_train_samples=0", "data.max_train_samples: expected None or an integer >= 1"),
    ("device=tpu", "device: expected auto, cpu, cuda or cuda:N"),
])
def test_bad_overrides_fail_with_one_line_naming_the_key(override, message):
    config = load_preset("tiny")
    if message is None:
        config.replace([override])
        return
    with pytest.raises(ConfigError) as err:
        config.replace([override])
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_box_losses_cannot_both_be_off():
    with pytest.raises(ConfigError, match="loss.l1"):
        load_preset("tiny").replace(["loss.l1=0", "loss.giou=0"])


def test_config_file_starts_from_a_preset_and_reports_its_path(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"preset": "hivg-b16", "seed": 7, "optim": {"weight_decay": 0.0}}))
    c = load_config(good)
    assert c.seed == 7 and c.optim.weight_decay == 0.0
    assert c.model.bridge.vision_layers == [0, 3, 7, 11]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"preset": "tiny", "model": {"brige": {}}}))
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: model.brige: unknown key"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown"):
        load_preset("hivg-x99")


def test_num_stages_keeps_the_first_stages_before_the_other_keys():
    tiny = load_preset("tiny")
    short = tiny.replace({"hilora.stages.stage1.rank": 4, NUM_STAGES: 2})
    assert [s.name for s in short.hilora.stages] == ["stage0", "stage1"]
    assert short.hilora.stages[1].rank == 4
    assert get_value(short.to_dict(), NUM_STAGES) == 2
    with pytest.raises(ConfigError, match=r"hilora.stages.stage2: no list item 'stage2' "
                                          r"\(expected an index < 2 or one of stage0, stage1\)"):
        tiny.replace(["hilora.num_stages=2", "hilora.stages.stage2.rank=4"])
    for bad in (0, 4, True, "2"):
        with pytest.raises(ConfigError, match=r"hilora.num_stages: expected an integer in 1..3"):
            tiny.replace({NUM_STAGES: bad})


def test_one_key_grammar_for_checking_reading_and_positions():
    tiny = load_preset("tiny")
    check_key(tiny, "hilora.stages.stage1.rank")
    check_key(tiny, NUM_STAGES)
    with pytest.raises(UnknownKeyError) as err:
        check_key(tiny, "hilora.stages.stage7.rank")
    assert (err.value.walked, err.value.list_name, err.value.choices) == \
        ("hilora.stages.stage7", "stages", ["stage0", "stage1", "stage2"])
    with pytest.raises(UnknownKeyError, match=r"model.clip.x: unknown key \(model.clip is a "
                                              r"value, not a mapping\)"):
        check_key(tiny, "model.clip.x")
    tree = tiny.to_dict()
    assert get_value(tree, "hilora.stages.1.rank") == get_value(tree, "hilora.stages.stage1.rank")
    assert (stage_position(tiny, "hilora.stages.stage2.lr"), stage_position(tiny, "hilora.stages.0"),
            stage_position(tiny, "optim.weight_decay")) == (2, 0, None)


def test_keys_print_as_a_user_types_them():
    tiny = load_preset("tiny")
    with pytest.raises(ConfigError, match=r"^model.bridge.vision_layers.1: expected an integer"):
        tiny.replace(["model.bridge.vision_layers=[0, x]"])
    stages = tiny.to_dict()["hilora"]["stages"]
    stages[2]["epochs"] = "many"
    with pytest.raises(ConfigError, match=r"^hilora.stages.stage2.epochs: expected an integer"):
        Config.from_dict({**tiny.to_dict(), "hilora": {"stages": stages}})
    with pytest.raises(ConfigError, match=r"hilora.stages.a.b.name: expected a name without"):
        tiny.replace({"hilora.stages.stage0.name": "a.b"})


def test_every_key_carries_its_help():
    helps = field_help()
    assert "hilora.stages.NAME.rank" in helps and "model.bridge.vision_layers" in helps
    assert all(text.strip() for text in helps.values()), [k for k, t in helps.items() if not t]


def test_presets_are_the_one_source_of_a_models_values(tmp_path):
    """The fields a preset decides have no default: a config without a preset names them."""
    bare = tmp_path / "bare.yaml"
    bare.write_text("seed: 3\n")
    with pytest.raises(ConfigError, match=r"bare.yaml: model: missing .*preset: NAME"):
        load_config(bare)
    tiny = load_preset("tiny").to_dict()
    del tiny["model"]["bridge"]["vision_layers"]
    with pytest.raises(ConfigError, match=r"^model.bridge.vision_layers: missing"):
        Config.from_dict(tiny)


def test_the_config_reference_in_docs_is_current():
    from tools.config_reference import reference

    repo = Path(__file__).resolve().parents[1]
    assert (repo / "docs" / "config.md").read_text() == reference(), \
        "regenerate: python -m tools.config_reference > docs/config.md"


@pytest.mark.parametrize("body, start", [
    ("preset: tiny\noptim:\n  lrr: 0.1\n", "3:3: optim.lrr: unknown key"),
    ("preset: tiny\nhilora:\n  stages:\n  - name: stage0\n    epochz: 1\n",
     "5:5: hilora.stages.stage0.epochz: unknown key"),
    ("preset: tiny\nseed: abc\n", "2:1: seed: expected an integer"),
])
def test_a_config_file_error_names_the_line_and_column_of_its_key(tmp_path, body, start):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:{start}"), str(err.value)
