"""The token mask ``m_t`` of the SGSD objective (paper Sec. 2.4).

Support and loss are aggregated over "effective reasoning positions" only. Excluded
token classes, each switchable:

* ``special``       — the tokenizer's special ids (EOS, PAD, BOS, ...): EOS gets no
                      supervision, padding never counts;
* ``chat_template`` — added tokens shaped like ``<|...|>`` (``<|im_start|>``, ``<|im_end|>``...),
                      which some tokenizers do not flag as special;
* ``think``         — the thinking delimiters ``<think>`` and ``</think>``;
* ``newline``       — tokens whose text is whitespace containing a newline ("\\n", "\\n\\n"):
                      pure formatting, and a frequent source of large teacher-student gaps
                      right after a prompt boundary.

The builder classifies the vocabulary once into a boolean lookup table; building a mask
for a batch is then one gather.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["TokenMaskBuilder", "TokenMaskConfig"]

_TEMPLATE_TOKEN = re.compile(r"^<\|[^|]*\|>$")
_THINK_TOKENS = ("<think>", "</think>")


@dataclass(frozen=True)
class TokenMaskConfig:
    """Which token classes are removed from the objective (all on by default)."""

    special: bool = True
    chat_template: bool = True
    think: bool = True
    newline: bool = True


class TokenMaskBuilder:
    """Builds ``m_t`` for response token ids from a (Hugging Face) tokenizer."""

    def __init__(self, tokenizer: Any, config: TokenMaskConfig = TokenMaskConfig()) -> None:
        self.config = config
        self.excluded_ids: dict[str, frozenset[int]] = _classify(tokenizer)
        size = max(len(tokenizer), 1 + max((i for ids in self.excluded_ids.values() for i in ids), default=0))
        table = torch.zeros(size, dtype=torch.bool)
        for name, ids in self.excluded_ids.items():
            if getattr(config, name) and ids:
                table[list(ids)] = True
        self._excluded = table

    @property
    def excluded(self) -> frozenset[int]:
        """All token ids the current config removes."""
        return frozenset(torch.nonzero(self._excluded).flatten().tolist())

    def __call__(self, response_ids: torch.Tensor, response_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``m_t`` as a bool tensor shaped like ``response_ids`` (``[B, T]`` or ``[T]``).

        Ids outside the tokenizer's range (a model vocab padded past the tokenizer, as in
        Qwen3) are kept: they are ordinary, never-special rows.
        """
        table = self._excluded.to(response_ids.device)
        in_range = (response_ids >= 0) & (response_ids < table.numel())
        safe = torch.where(in_range, response_ids, torch.zeros_like(response_ids))
        excluded = table[safe] & in_range
        keep = ~excluded
        if response_mask is not None:
            keep = keep & response_mask.bool()
        return keep


def _classify(tokenizer: Any) -> dict[str, frozenset[int]]:
    """Token ids of each maskable class for this tokenizer."""
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    added: dict[str, int] = dict(tokenizer.get_added_vocab()) if hasattr(tokenizer, "get_added_vocab") else {}
    template = {i for tok, i in added.items() if _TEMPLATE_TOKEN.match(tok)}
    vocab = tokenizer.get_vocab()
    think = {vocab[t] for t in _THINK_TOKENS if t in vocab}
    # Decode every id once: byte-level BPE stores "\n" as "Ċ", so the surface form is the
    # only reliable test. ~1 s for a 150k vocabulary.
    ids = list(range(len(tokenizer)))
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    newline = {i for i, text in zip(ids, texts) if text and "\n" in text and not text.strip()}
    return {
        "special": frozenset(special),
        "chat_template": frozenset(template),
        "think": frozenset(think),
        "newline": frozenset(newline),
    }
