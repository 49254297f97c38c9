"""The one interface every skill writer implements.

The cold-start builder, the hierarchical merger and the online updater only ever call
:meth:`LLMClient.generate` with a batch of chat prompts. A client never raises for a
single failed request: it returns a :class:`Completion` with ``text=None`` and the error,
and counts it in :attr:`LLMClient.stats`, so one bad request cannot crash a training run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sgsd.checks import check, check_int

__all__ = ["Completion", "GenerationSettings", "LLMClient", "LLMStats"]


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

    Each prompt is a user message; the client applies the model's chat template (with
    ``settings.enable_thinking``) where the backend needs it.
    """

    name: str
    stats: LLMStats

    def generate(self, prompts: Sequence[str], settings: GenerationSettings | None = None) -> list[Completion]: ...
