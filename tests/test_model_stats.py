"""Model stats (pipelines/benchmark.py --model-stats) on the tiny preset."""
from hivg.config import load_preset
from hivg.model.build import build_model
from hivg.model.stats import format_stats, forward_macs, model_stats


def test_stats_count_parameters_per_stage_and_forward_macs():
    cfg = load_preset("tiny").replace({"model.weights": None})
    stats = model_stats(cfg, "tiny")
    assert [row.stage for row in stats.stages] == [s.name for s in cfg.hilora.stages]
    first, last = stats.stages[0], stats.stages[-1]
    assert first.total["paper"] == first.total["released"]
    assert last.total["paper"] > last.total["released"]  # paper keeps one adapter per stage
    macs = stats.macs
    assert macs["total"] == sum(macs[p] for p in ("clip", "bridge", "fusion", "vl_encoder", "heads"))
    assert stats.macs_last_stage_unmerged > macs["total"]  # unmerged LoRA branches cost extra
    table = format_stats([stats], {"tiny": 1.0})
    assert "| tiny | stage2 |" in table and f"{2 * macs['total'] / 1e9:.1f}" in table


def test_box_head_macs_match_a_hand_count():
    cfg = load_preset("tiny").replace({"model.weights": None}).replace({"model.attention": "eager", "loss.align_focal": 0,
                                       "loss.align_dice": 0, "loss.seg_focal": 0, "loss.seg_dice": 0, "model.box_head": "reg"})
    model = build_model(cfg)
    d = 128  # the tiny VL width; 3-layer MLP d -> d -> d -> 4 on the [REG] token
    assert forward_macs(model, 128, 24)["heads"] == d * d * 2 + d * 4
