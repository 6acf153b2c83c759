"""Tokenisation with open_clip's BPE tokenizer (its vocabulary ships with the package:
nothing is downloaded). Phrases longer than the context are truncated with the end token
kept, as open_clip does."""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from torch import Tensor


@lru_cache(maxsize=None)
def get_tokenizer(context_length: int = 77):
    """One tokenizer per context length per process (building it parses the BPE merges)."""
    # Imported here: open_clip takes seconds to import and only tokenising needs it.
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def tokenize(phrases: str | Sequence[str], context_length: int = 77) -> Tensor:
    """int64 (N, context_length) token ids, zero-padded; a single string gives N = 1."""
    texts = [phrases] if isinstance(phrases, str) else list(phrases)
    return get_tokenizer(context_length)(texts, context_length=context_length)
