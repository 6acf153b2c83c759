"""Small builders shared by the model tests (imported as `helpers`: pytest puts tests/ on the path)."""
from __future__ import annotations

import torch

SOT, EOT = 49406, 49407  # open_clip's start / end of text token ids


def make_tokens(batch: int, length: int = 24, seed: int = 0) -> torch.Tensor:
    """Random phrases of random length: SOT, words, EOT, zero padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        n = int(torch.randint(1, length - 2, (1,), generator=g))
        tokens[b, 0] = SOT
        tokens[b, 1:1 + n] = torch.randint(1, 49000, (n,), generator=g)
        tokens[b, 1 + n] = EOT
    return tokens
