"""The HiVG model: open_clip backbone, bridge, HiLoRA, VL encoder and heads (plain PyTorch).

Entry points: hivg.model.build.build_model(config), hivg.model.lora.apply_stage / merge_lora,
hivg.model.convert.load_clip_state_dict.
"""
