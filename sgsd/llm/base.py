"""The one interface every skill writer implements.

The cold-start builder, the hierarchical merger and the online updater only ever call
:meth:`LLMClient.generate` with a batch of chat prompts. A client never raises for a
single failed request: it returns a :class:`Completion` with ``text=None`` and the error,
and counts it in :attr:`LLMClient.stats`, so one bad request cannot crash a training run.

A prompt (:data:`Prompt`) is a string, one user message, or a whole conversation: a
sequence of ``{"role": "user" | "assistant" | "system", "content": str}`` messages (a
multi-turn episode's history). :func:`as_messages` turns either into the message list
every backend sends; a malformed conversation is the caller's bug, refused with a
``ValueError`` naming the prompt and message, before anything is generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable

from sgsd.checks import check, check_int

__all__ = ["ROLES", "Completion", "GenerationSettings", "LLMClient", "LLMStats", "Prompt", "as_messages",
           "check_prompts"]

# A string (one user message) or a conversation of chat messages, oldest first.
Prompt = Union[str, Sequence[Mapping[str, str]]]
ROLES = ("system", "user", "assistant")


def as_messages(prompt: Prompt, where: str = "prompt") -> list[dict[str, str]]:
    """The chat messages of ``prompt``: a string is one user message; a conversation is
    copied (its messages hold exactly ``role`` and ``content``).

    Raises:
        ValueError: an empty conversation, a message that is not a mapping, a role not in
            :data:`ROLES`, content that is not a string, or keys other than those two;
            the message names ``where`` and the message's position.
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (bytes, Mapping)) or not isinstance(prompt, Sequence):
        raise ValueError(f"{where}: a prompt is a string or a sequence of chat messages, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError(f"{where}: an empty conversation has nothing to answer")
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            raise ValueError(f"{where}: message {i} is a {type(message).__name__}, not a "
                             "{'role': ..., 'content': ...} mapping")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise ValueError(f"{where}: message {i} has key(s) {extra}; a chat message holds only role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}: message {i} has role {role!r}; roles: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{where}: message {i} ({role}) has content of type {type(content).__name__}, "
                             "not a string")
        messages.append({"role": role, "content": content})
    return messages


def check_prompts(prompts: Iterable[Prompt]) -> list[Prompt]:
    """``prompts`` as a list, each checked by :func:`as_messages` (``ValueError`` naming the
    first bad one; a lone string, which would be read as one prompt per character, too)."""
    if isinstance(prompts, (str, bytes)):
        raise ValueError("prompts is a single string: pass a list of prompts")
    prompts = list(prompts)
    for i, prompt in enumerate(prompts):
        as_messages(prompt, f"prompt {i}")
    return prompts


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings of one batch (backends map them to their own names).

    Out-of-range sampling values are refused here, for every caller (a
    :class:`sgsd.checks.SettingError` naming the field).
    """

    max_new_tokens: int = 2048
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = -1
    enable_thinking: bool = False
    timeout_s: float = 300.0  # per request
    max_retries: int = 2  # per request, on transient errors only
    # transformers: batch b of a call is seeded with seed + b; vLLM: request i of a call with
    # seed + i, so duplicate prompts in one call still get different samples; OpenAI: as given.
    seed: int | None = None

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, 1)
        check("temperature", self.temperature, self.temperature >= 0, ">= 0")
        check("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]")
        check("top_k", self.top_k, self.top_k == -1 or self.top_k >= 1, "-1 (off) or >= 1")
        check("timeout_s", self.timeout_s, isinstance(self.timeout_s, (int, float)) and 0 <= self.timeout_s < float("inf"),
              "0 (no limit) or a finite number of seconds")
        check_int("max_retries", self.max_retries, 0)


@dataclass(frozen=True)
class Completion:
    """One reply: ``text`` is None when the request failed for good (see ``error``).

    ``num_tokens`` (new tokens, eos included) and ``finish_reason`` (``"stop"``: the model
    ended its reply; ``"length"``: cut at ``max_new_tokens`` or the model's context) are
    filled by the backends that know them (transformers, vLLM) and None elsewhere; they
    are bookkeeping and do not take part in ``==``.
    """

    text: str | None
    error: str | None = None
    attempts: int = 1
    num_tokens: int | None = field(default=None, compare=False)
    finish_reason: str | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.text is not None


@dataclass
class LLMStats:
    """Running counts of one client (reported in bank metadata and training metrics)."""

    requests: int = 0
    failures: int = 0
    retries: int = 0
    timeouts: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def record_failure(self, kind: str) -> None:
        self.failures += 1
        self.errors[kind] = self.errors.get(kind, 0) + 1


@runtime_checkable
class LLMClient(Protocol):
    """``generate(prompts)`` -> one :class:`Completion` per prompt, in order.

    Each prompt is a :data:`Prompt`: a string (one user message) or a conversation of
    chat messages, answered with the next assistant turn. The client applies the model's
    chat template (generation prompt added, ``settings.enable_thinking`` passed) where
    the backend needs it; an OpenAI-compatible server gets the messages as given.
    A malformed conversation raises ``ValueError`` (see :func:`as_messages`).
    """

    name: str
    stats: LLMStats

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings | None = None) -> list[Completion]: ...
