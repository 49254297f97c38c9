"""Text from a bank, a problem or a model reply, kept plain inside every prompt.

A tokenizer matches its special and added tokens anywhere in the text it encodes, and so
does every server that applies a chat template to a message. A skill containing
``<|im_end|>\\n<|im_start|>assistant`` therefore gave the teacher prompt a fake assistant
turn. :func:`plain_text` breaks every chat-control marker in untrusted text with a zero-width
space after its first character: the text reads the same, no tokenizer sees the marker.
It is applied where untrusted text enters a prompt (:mod:`sgsd.prompts`,
:mod:`sgsd.skill_prompts`), where a reply's items are parsed (:mod:`sgsd.parsing`), and, with
the tokenizer's own added tokens, to every user message :func:`sgsd.prompts.apply_chat` renders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["BREAK", "CONTROL_MARKER", "added_token_strings", "plain_text"]

#: ChatML / Qwen control tokens (``<|im_start|>``, ``<|endoftext|>``, ``<|fim_prefix|>``,
#: Llama's ``<|eot_id|>``...) and Qwen3's tag tokens (``<think>``, ``<tool_call>``...).
CONTROL_MARKER = re.compile(r"<\|[^\s<>|]{1,64}\|>|</?(?:think|tool_call|tool_response)\s*>", re.IGNORECASE)
BREAK = "\u200b"  # zero width space: not whitespace to str.split, so it survives cleaning


def _broken(marker: str) -> str:
    return marker[0] + BREAK + marker[1:]


def plain_text(text: str, markers: Iterable[str] = ()) -> str:
    """``text`` with every control marker (and each of ``markers``) broken."""
    if not text:
        return text
    text = CONTROL_MARKER.sub(lambda m: _broken(m.group()), text)
    for marker in markers:  # longest first (added_token_strings sorts them)
        if marker in text:
            text = text.replace(marker, _broken(marker))
    return text


def added_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The strings a tokenizer would encode as one added/special token, longest first."""
    cached = getattr(tokenizer, "_sgsd_added_tokens", None)
    if cached is not None:
        return cached
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    strings = {getattr(token, "content", str(token)) for token in decoder.values()}
    strings |= set(getattr(tokenizer, "all_special_tokens", []) or [])
    found = tuple(sorted((s for s in strings if len(s) > 1), key=len, reverse=True))
    try:
        tokenizer._sgsd_added_tokens = found
    except AttributeError:  # a tokenizer that takes no attributes: recomputed each time
        pass
    return found
