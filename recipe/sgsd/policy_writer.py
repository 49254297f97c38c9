"""The policy being trained as the skill writer (the paper's default, App. C.4).

:class:`PolicyWriterClient` is an :class:`sgsd.llm.LLMClient` over verl's own rollout
servers: ``trainer.get_llm_client()`` returns verl's ``LLMServerClient`` (load-balanced
over every rollout replica), whose ``generate(request_id, prompt_ids=..., sampling_params=...)``
is what verl's agent loop calls for rollouts. The skill updater's extraction and merge
prompts therefore run on the same engine, with the same weights, as the student's rollouts
— no second copy of the model.

The synchronous trainer calls the updater at the end of a step, right after verl's
``on_step_end`` has pushed the new weights to the replicas and woken them up, so the
writer is the policy of the step that just finished.

Per the :class:`~sgsd.llm.LLMClient` contract nothing raises for one request: a prompt
that does not fit the engine's context, a timeout, or a server error becomes a
``Completion(text=None, error=...)`` and is counted in :attr:`stats`. Timeouts are retried
up to ``settings.max_retries`` times; other errors are not (they would fail again).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from sgsd.llm.base import Completion, GenerationSettings, LLMStats
from sgsd.prompts import ChatFormat, apply_chat

__all__ = ["PolicyWriterClient", "sampling_params"]

logger = logging.getLogger(__name__)


def sampling_params(settings: GenerationSettings) -> dict[str, Any]:
    """verl rollout-server sampling parameters for one writer request."""
    params: dict[str, Any] = {
        "max_tokens": int(settings.max_new_tokens),
        "temperature": float(settings.temperature),
        "top_p": float(settings.top_p),
        "logprobs": False,
    }
    if settings.top_k > 0:
        params["top_k"] = int(settings.top_k)
    if settings.seed is not None:
        params["seed"] = int(settings.seed)
    return params


class PolicyWriterClient:
    """Skill-writer requests through verl's rollout servers.

    Args:
        server_client: verl's ``LLMServerClient`` (``trainer.get_llm_client()``), or anything
            with the same ``async generate(request_id, *, prompt_ids, sampling_params)``
            returning an object with ``token_ids``.
        tokenizer: the policy's tokenizer (chat template and decoding).
        context_length: the engine's context (``rollout.max_model_len``, else the model's
            ``max_position_embeddings``): a prompt whose tokens plus the request's
            ``max_new_tokens`` exceed it fails cleanly (``prompt_too_long``) instead of reaching
            the engine, which would clamp the reply to what is left and return a truncated,
            unparseable one; ``None`` leaves the check to the engine.
        max_concurrency: requests in flight at once (the replicas batch them).
    """

    name = "policy"

    def __init__(self, server_client: Any, tokenizer: Any, *, context_length: int | None = None,
                 max_concurrency: int = 64) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.server_client = server_client
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.max_concurrency = max_concurrency
        self.stats = LLMStats()

    def generate(self, prompts: Sequence[str], settings: GenerationSettings | None = None) -> list[Completion]:
        settings = settings or GenerationSettings()
        if not prompts:
            return []
        return _run_coroutine(self._generate_all(list(prompts), settings))

    # ------------------------------------------------------------------ internals
    async def _generate_all(self, prompts: list[str], settings: GenerationSettings) -> list[Completion]:
        gate = asyncio.Semaphore(self.max_concurrency)
        fmt = ChatFormat(enable_thinking=settings.enable_thinking)

        async def one(prompt: str) -> Completion:
            async with gate:
                return await self._generate_one(prompt, settings, fmt)

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def _generate_one(self, prompt: str, settings: GenerationSettings, fmt: ChatFormat) -> Completion:
        self.stats.requests += 1
        try:
            ids = self.tokenizer.encode(apply_chat(self.tokenizer, prompt, fmt), add_special_tokens=False)
        except Exception as exc:  # a broken template must not stop training
            return self._failed("render_error", exc, attempts=1)
        if self.context_length is not None and len(ids) + settings.max_new_tokens > self.context_length:
            return self._failed("prompt_too_long", f"{len(ids)} prompt tokens + max_new_tokens {settings.max_new_tokens} "
                                f"> context {self.context_length}", attempts=1)
        attempts = 0
        while True:
            attempts += 1
            try:
                output = await asyncio.wait_for(
                    self.server_client.generate(uuid.uuid4().hex, prompt_ids=ids,
                                                sampling_params=sampling_params(settings)),
                    timeout=settings.timeout_s if settings.timeout_s and settings.timeout_s > 0 else None,
                )
            except asyncio.TimeoutError as exc:
                self.stats.timeouts += 1
                if attempts <= settings.max_retries:
                    self.stats.retries += 1
                    continue
                return self._failed("timeout", exc, attempts)
            except Exception as exc:
                return self._failed(type(exc).__name__, exc, attempts)
            text = self.tokenizer.decode(list(output.token_ids), skip_special_tokens=True)
            return Completion(text=text, attempts=attempts)

    def _failed(self, kind: str, exc: Any, attempts: int) -> Completion:
        self.stats.record_failure(kind)
        message = f"{kind}: {exc}"
        logger.warning("skill writer request failed (%s)", message[:300])
        return Completion(text=None, error=message, attempts=attempts)


def _run_coroutine(coro):
    """Run ``coro`` to completion from synchronous code, whether or not a loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="sgsd-policy-writer", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
