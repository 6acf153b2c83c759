"""Speed profiles: `reference` (the released recipe's settings) and `fast`, resolved in one place.

`Config.profile` picks the profile; `resolve_profile(config, device_type)` turns it into the
concrete settings and `apply_profile(config, device_type)` returns the config the model must
be built from (the attention implementation is a model constructor argument).

| setting                 | reference | fast                  | auto on cuda | auto on cpu          |
|-------------------------|-----------|-----------------------|--------------|----------------------|
| autocast dtype          | fp32      | bf16 (cuda; cpu too)  | bf16         | fp32                 |
| TF32 matmuls            | off       | on (cuda)             | on           | n/a (False)          |
| attention               | eager     | sdpa                  | model.attention | model.attention  |
| fused AdamW             | no        | yes on cuda only      | yes          | no                   |
| DDP find_unused_params  | yes       | no                    | no           | no                   |
| pinned memory           | no        | yes on cuda only      | yes          | no                   |

`auto` is `fast` on a GPU and today's behaviour on CPU (fp32, plain AdamW). Under `auto` the
attention is `model.attention` as configured (default sdpa) on either device; `fast` forces
sdpa and `reference` forces eager. An explicit `precision` (fp32 | bf16) always wins over
the profile's autocast dtype; `precision: auto` follows the profile. `fast` on CPU autocasts to bf16 only because it
was asked for explicitly (CPU bf16 is mainly for equivalence tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from hivg.config import Config


@dataclass(frozen=True)
class ResolvedProfile:
    name: Literal["reference", "fast"]   # the profile after `auto` is resolved
    amp_dtype: Optional[str]              # "bfloat16" or None (fp32, no autocast)
    attention: Literal["eager", "sdpa"]
    fused_adamw: bool
    find_unused: bool                     # DDP find_unused_parameters
    tf32: bool                            # allow TF32 matmuls / cuDNN convs (CUDA only)
    pin_memory: bool

    @property
    def torch_amp_dtype(self):
        """torch.bfloat16 or None (torch is imported lazily: stage keys need no torch)."""
        import torch
        return None if self.amp_dtype is None else getattr(torch, self.amp_dtype)


def resolve_profile(config: Config, device_type: str) -> ResolvedProfile:
    """The settings for `config.profile` on a device of type `device_type` ("cpu" | "cuda")."""
    cuda = device_type == "cuda"
    profile = config.profile
    amp = autocast_dtype(config.precision, profile, device_type)
    if profile == "auto":
        # fast on a GPU, but an explicitly configured model.attention is kept; on CPU
        # today's behaviour: fp32, the configured attention, plain AdamW
        return ResolvedProfile("fast", amp, config.model.attention, fused_adamw=cuda,
                               find_unused=False, tf32=cuda, pin_memory=cuda)
    if profile == "reference":
        return ResolvedProfile("reference", amp, "eager", fused_adamw=False, find_unused=True,
                               tf32=False, pin_memory=False)
    return ResolvedProfile("fast", amp, "sdpa", fused_adamw=cuda, find_unused=False, tf32=cuda,
                           pin_memory=cuda)


def autocast_dtype(precision: str, profile: str, device_type: str) -> Optional[str]:
    """"bfloat16" or None (fp32): an explicit precision wins; `auto` follows the profile
    (reference: fp32; fast: bf16; auto: bf16 on a GPU, fp32 on CPU)."""
    if precision == "bf16":
        return "bfloat16"
    if precision == "fp32" or profile == "reference":
        return None
    return "bfloat16" if profile == "fast" or device_type == "cuda" else None


def apply_profile(config: Config, device_type: str) -> Config:
    """The config to build the model from: `model.attention` set to the profile's choice.
    Also sets the process-wide TF32 switches on CUDA (off for reference, on for fast)."""
    resolved = resolve_profile(config, device_type)
    if device_type == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = resolved.tf32
        torch.backends.cudnn.allow_tf32 = resolved.tf32
    if config.model.attention == resolved.attention:
        return config
    return config.replace({"model.attention": resolved.attention})
