"""HiLoRA: LoRA adapters per stage on the attention of the CLIP towers and the bridge.

Decision: our own LoRA on the fused in_proj (hivg.model.adapters + hivg.model.attention),
not peft's nn.MultiheadAttention path. Evidence (peft 0.21.2, torch 2.14, a 16-wide 2-head
nn.MultiheadAttention, r=4, alpha=8, random non-zero A and B):
- `target_modules=["out_proj"]` alone: peft wraps the Linear, yet the output is unchanged and
  backward fails ("element 0 of tensors does not require grad"): MHA reads out_proj.weight
  directly, so the adapter is a silent no-op.
- `target_modules=["attn"]` (the MHA itself): peft merges the delta into the weights on every
  forward and unmerges after, so lora_dropout=0.9 changes nothing (three train-mode forwards
  and an eval forward are identical); the merge/unmerge round trip also rewrites the frozen
  base weight (drift 3e-8 after 200 fp32 forwards, 2e-3 after 50 forwards with bf16 weights);
  and the base in_proj_weight gets no gradient even with requires_grad=True.
- The out_proj delta is applied twice: the unmerged forward equals a hand-built reference
  with W_out + 2 (alpha/r) B A (max diff 2e-7) and differs from W_out + (alpha/r) B A by 0.96;
  merge_and_unload() leaves out_proj.weight = W + 2 (alpha/r) B A (off by 0.50). In_proj merges
  correctly.
- peft renames the base weights (`attn.base_layer.in_proj_weight`,
  `attn.base_layer.out_proj.base_layer.weight`), so open_clip checkpoints no longer load as they
  are, and a module's base keys change when a later stage first gives it an adapter.
- peft's MHA adapter is one rank-r delta on the fused (3d, d) in_proj (q, k, v share A), not
  the released setup's separate rank-r LoRA on q_proj, k_proj and v_proj.
Our Attention keeps nn.MultiheadAttention's keys (`in_proj_weight`, `out_proj.weight`), adds
adapters under `attn.lora.<name>.{q,k,v,out}.{A,B}`, applies each delta as its own branch with
its own dropout (base weights never touched in forward), supports any number of adapters, and
merges exactly W + (alpha/r) B A (tests check this by hand, and against peft itself on
nn.Linear and on HF-style q/k/v/out projections: tests/test_lora_peft_oracle.py; peft is a
test dependency only).

Stages and policies (hilora.stages, hilora.policy):
- Every stage: CLIP base weights frozen; everything outside CLIP (bridge, fusion, VL encoder,
  heads) trainable, as in the released code.
- Stage k with LoRA creates adapters on the attention of vision layers in k's `vision_layers`
  range, text layers in its `text_layers` range, and the bridge's cross-attention when
  `bridge_lora` (vision layers the model does not run are skipped: with the contrastive loss
  off, layers after the last tap).
- paper: the adapter is named after the stage (`lora.stage2`); only stage k's adapters train,
  earlier stages' adapters stay in the model, frozen.
- released: one adapter per module (`lora.hilora`), created by the first stage that covers
  the module and re-used after; every adapter trains (earlier ranges and all text LoRA stay
  trainable); the current stage's dropout applies to all. Its rank and alpha are fixed by the
  stage that created it (a later stage asking for another rank is a ConfigError).

State dicts: the adapters present after apply_stage(model, hilora, k) are a pure function of
(config, k) — apply_stage(k) creates the adapters of every LoRA stage <= k that are missing and
never re-initialises one that exists. So a state dict saved during stage k loads with
strict=True into build_model(config) followed by apply_stage(model, hilora, k); the trainer's
order "load stage k-1's best weights, then apply_stage(k)" needs no non-strict loading. New
adapters start with B = 0, so the model's function is unchanged at a stage's start.
"""
from __future__ import annotations

from typing import Iterator

from torch import nn

from hivg.config import ConfigError, HiLoRAConfig, StageConfig
from hivg.model import backbone as bb
from hivg.model.attention import Attention

RELEASED_ADAPTER = "hilora"


def attention_modules(model: nn.Module) -> Iterator[tuple[str, Attention]]:
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            yield name, module


def lora_targets(model: nn.Module, stage: StageConfig) -> list[tuple[str, Attention]]:
    """(name, attention) pairs that a stage puts adapters on."""
    out = []
    if stage.vision_layers is not None:
        first, last = stage.vision_layers
        for i, block in enumerate(bb.vision_blocks(model.clip)):
            if first <= i <= last and i < model.vision_depth:
                out.append((f"clip.visual.transformer.resblocks.{i}.attn", block.attn))
    if stage.text_layers is not None:
        first, last = stage.text_layers
        for i, block in enumerate(bb.text_blocks(model.clip)):
            if first <= i <= last:
                out.append((f"clip.transformer.resblocks.{i}.attn", block.attn))
    if stage.bridge_lora:
        out += [(f"bridge.{i}.cross_attn", layer.cross_attn) for i, layer in model.bridge.items()]
    return out


def apply_stage(model: nn.Module, hilora: HiLoRAConfig, stage_index: int) -> None:
    """Prepare `model` (a HiVG) for stage `stage_index`: create missing adapters of every LoRA
    stage up to it, and set requires_grad per the policy. Idempotent; see the module docstring."""
    stages = hilora.stages
    if not 0 <= stage_index < len(stages):
        raise ConfigError(f"hilora.stages: expected a stage index < {len(stages)}, got {stage_index}")
    paper = hilora.policy == "paper"
    names = [s.name for s in stages]
    if paper:
        for s in stages:
            if "." in s.name or not s.name:
                raise ConfigError(f"hilora.stages.{s.name}.name: expected a name without '.' "
                                  f"(it names the stage's adapters), got {s.name!r}")
        later = set(names[stage_index + 1:])
        for mod_name, attn in attention_modules(model):
            if later & set(attn.lora):
                raise ValueError(f"{mod_name} has adapters of a later stage "
                                 f"({sorted(later & set(attn.lora))}); stages apply in order")

    for s in stages[:stage_index + 1]:
        if not s.has_lora:
            continue
        adapter = s.name if paper else RELEASED_ADAPTER
        for mod_name, attn in lora_targets(model, s):
            if adapter not in attn.lora:
                attn.add_adapter(adapter, s.rank, s.alpha, s.dropout)
            elif not paper and (attn.lora[adapter].rank, attn.lora[adapter].alpha) != (s.rank, s.alpha):
                raise ConfigError(
                    f"hilora.stages.{s.name}.rank: the released policy re-uses one adapter per "
                    f"module; {mod_name} already has rank {attn.lora[adapter].rank}, alpha "
                    f"{attn.lora[adapter].alpha}, got rank {s.rank}, alpha {s.alpha}")

    current = stages[stage_index]
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("clip.") and ".lora." not in name)
    for _, attn in attention_modules(model):
        for adapter_name, adapter in attn.lora.items():
            adapter.requires_grad_(adapter_name == current.name if paper else True)
            if not paper:
                adapter.set_dropout(current.dropout)


def adapters(model: nn.Module) -> dict[str, list[str]]:
    """Attention module name -> its adapter names (modules without adapters left out)."""
    return {name: list(attn.lora) for name, attn in attention_modules(model) if len(attn.lora)}


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weights (W += alpha/r * B A) and remove the adapters:
    the state dict is then the plain architecture's (loads strictly into build_model(config))."""
    for _, attn in attention_modules(model):
        attn.merge_adapters()


def trainable_parameter_groups(model: nn.Module) -> list[dict]:
    """Trainable parameters split into `lora` (adapters) and `model` (everything else that
    trains), for per-group optimiser settings; empty groups are left out."""
    groups = {"lora": [], "model": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["lora" if ".lora." in name else "model"].append(p)
    return [{"name": k, "params": v} for k, v in groups.items() if v]
