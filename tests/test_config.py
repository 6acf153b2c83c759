"""Config: round trips, overrides, and one-line errors naming the key (table-driven)."""
import pytest
import yaml

from hivg.config import Config, ConfigError, load_config, load_preset, preset_names


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
    ("hilora.stages.stage1.rank=0", "hilora.stages[stage1].rank: expected a LoRA rank >= 1"),
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
    with pytest.raises(ConfigError, match=r"bad.yaml: model.brige: unknown key"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown"):
        load_preset("hivg-x99")
