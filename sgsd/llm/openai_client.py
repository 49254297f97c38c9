"""An OpenAI-compatible chat endpoint as the skill writer (a vLLM server or a hosted API).

Each prompt becomes one ``POST {base_url}/chat/completions``: a string as a single user
message, a conversation with its messages as given.
Requests run concurrently (at most ``concurrency`` in flight), each with its own deadline,
and transient failures (connection errors, timeouts, 429, 5xx) are retried with
exponential backoff; a 4xx other than 429 is the request's own fault and is not retried.

The API key is read from an environment variable when the client is built, kept in a
wrapper whose ``repr`` is masked, and scrubbed from every error text, so it can reach
neither logs, ``repr(client)``, ``stats`` nor a failed :class:`Completion`.

httpx (a dependency of ``huggingface-hub``, hence of ``transformers``) is imported inside
the methods.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from sgsd.llm.base import Completion, GenerationSettings, LLMStats, Prompt, as_messages, check_prompts

__all__ = ["OpenAICompatibleClient", "chat_completions_url"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 425, 429})  # request timeout, too early, rate limit; plus every 5xx


def chat_completions_url(base_url: str) -> str:
    """``http://h:8000/v1`` -> ``http://h:8000/v1/chat/completions``; a bare host gets ``/v1``."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if urlsplit(base).path in ("", "/"):
        base += "/v1"
    return base + "/chat/completions"


class _Secret:
    """A string that never shows itself in ``repr``/``str`` (so not in vars() dumps either)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('***')"

    __str__ = __repr__


class _Failure(Exception):
    """A request that failed; ``kind`` is the stats key, ``transient`` whether to retry."""

    def __init__(self, kind: str, message: str, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.transient = transient
        self.retry_after = retry_after


class OpenAICompatibleClient:
    """An :class:`~sgsd.llm.base.LLMClient` over ``/v1/chat/completions``.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (a bare host gets ``/v1``).
        model: the ``model`` field of every request (the server's served model name).
        api_key_env: environment variable holding the key, sent as ``Authorization: Bearer``;
            unset or empty: no header (a local vLLM server needs none).
        concurrency: most requests in flight at once.
        vllm_extras: send vLLM's extensions to the OpenAI schema (``top_k`` and
            ``chat_template_kwargs.enable_thinking``); turn off for hosted APIs that
            reject unknown fields.
        extra_body: more fields merged into every request body (e.g. ``{"min_p": 0.05}``).
        backoff_s, max_backoff_s: retry ``n`` waits ``backoff_s * 2**(n-1)`` seconds (with
            jitter), at most ``max_backoff_s``; a 429's ``Retry-After`` is honoured up to it.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        *,
        vllm_extras: bool = True,
        extra_body: Mapping[str, Any] | None = None,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        show_progress: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.name = f"openai:{base_url}#{model}"
        self.stats = LLMStats()
        self.base_url = base_url
        self.url = chat_completions_url(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.vllm_extras = vllm_extras
        self.extra_body = dict(extra_body or {})
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.show_progress = show_progress
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        self._api_key = _Secret(key) if key else None

    def __repr__(self) -> str:
        key_state = "set" if self._api_key else "unset"
        return (f"OpenAICompatibleClient(url={self.url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r} ({key_state}), concurrency={self.concurrency})")

    def request_body(self, prompt: Prompt, settings: GenerationSettings) -> dict[str, Any]:
        """The JSON body sent for one prompt (``ValueError`` for a malformed conversation)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": as_messages(prompt),
            "max_tokens": settings.max_new_tokens,
            "temperature": max(float(settings.temperature), 0.0),
            "top_p": float(settings.top_p),
            "n": 1,
            "stream": False,
        }
        if settings.seed is not None:
            body["seed"] = int(settings.seed)
        if self.vllm_extras:
            if settings.top_k > 0:
                body["top_k"] = int(settings.top_k)
            body["chat_template_kwargs"] = {"enable_thinking": bool(settings.enable_thinking)}
        body.update(self.extra_body)
        return body

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings | None = None) -> list[Completion]:
        """One :class:`Completion` per prompt, in order; never raises for failed requests
        (a malformed conversation raises ``ValueError`` before any request is sent).

        Safe to call from code that already runs an event loop (e.g. inside a Ray async
        actor): the requests then run on a loop in a helper thread.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(prompts, settings))
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.agenerate(prompts, settings)).result()

    async def agenerate(self, prompts: Sequence[Prompt],
                        settings: GenerationSettings | None = None) -> list[Completion]:
        """The coroutine behind :meth:`generate`, for callers with their own event loop."""
        import httpx
        from tqdm.auto import tqdm

        settings = settings or GenerationSettings()
        prompts = check_prompts(prompts)
        self.stats.requests += len(prompts)
        headers = {"Content-Type": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        semaphore = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        bar = tqdm(total=len(prompts), desc=f"generate ({self.model})", unit="req",
                   disable=not self.show_progress or len(prompts) <= self.concurrency)

        async with httpx.AsyncClient(headers=headers, limits=limits, timeout=settings.timeout_s) as http:
            async def one(prompt: Prompt) -> Completion:
                async with semaphore:
                    completion = await self._request_with_retries(http, prompt, settings)
                bar.update(1)
                return completion

            try:
                return list(await asyncio.gather(*(one(p) for p in prompts)))
            finally:
                bar.close()

    async def _request_with_retries(self, http: Any, prompt: Prompt, settings: GenerationSettings) -> Completion:
        body = self.request_body(prompt, settings)
        max_attempts = 1 + max(settings.max_retries, 0)
        for attempt in range(1, max_attempts + 1):
            result = await self._attempt(http, body, settings)
            if isinstance(result, str):
                return Completion(text=result, attempts=attempt)
            if result.kind == "timeout":
                self.stats.timeouts += 1  # every timed-out attempt, retried or not
            if not result.transient or attempt == max_attempts:
                self.stats.record_failure(result.kind)
                message = self._redact(f"{result.kind}: {result}")
                logger.warning("%s: request failed after %d attempt(s): %s", self.name, attempt, message)
                return Completion(text=None, error=message, attempts=attempt)
            self.stats.retries += 1
            await asyncio.sleep(self._backoff(attempt, result.retry_after))
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    async def _attempt(self, http: Any, body: dict[str, Any], settings: GenerationSettings) -> str | _Failure:
        """One try: the reply text, or the failure (anything unexpected is a permanent one)."""
        try:
            return await self._request_once(http, body, settings)
        except _Failure as failure:
            return failure
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed URL: fail the request, never raise
            return _Failure(type(exc).__name__, str(exc), transient=False)

    async def _request_once(self, http: Any, body: dict[str, Any], settings: GenerationSettings) -> str:
        """POST once and return the reply text, or raise :class:`_Failure`."""
        import httpx

        try:
            # httpx's timeout bounds each network phase; wait_for bounds the whole request,
            # so a server that trickles bytes cannot hold a slot forever.
            response = await asyncio.wait_for(http.post(self.url, json=body), timeout=settings.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
            raise _Failure("timeout", f"no reply within {settings.timeout_s}s", transient=True) from exc
        except httpx.TransportError as exc:  # connection refused/reset, DNS, protocol errors
            raise _Failure("connection", f"{type(exc).__name__}: {exc}", transient=True) from exc

        status = response.status_code
        if status >= 400:
            transient = status in _RETRY_STATUS or status >= 500
            raise _Failure(f"http_{status}", f"HTTP {status}: {response.text[:300]}", transient,
                           retry_after=_retry_after(response.headers.get("retry-after")))
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Failure("bad_response", f"unexpected reply: {response.text[:300]}", transient=False) from exc
        if not isinstance(content, str):
            # e.g. a reasoning parser put everything into reasoning_content and left no answer.
            raise _Failure("empty", "reply has no message content", transient=False)
        return content

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        delay *= random.uniform(0.5, 1.0)  # jitter: concurrent retries should not stampede together
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay

    def _redact(self, text: str) -> str:
        """Scrub the key from text that came from elsewhere (a server may echo headers)."""
        if self._api_key is not None:
            text = text.replace(self._api_key.reveal(), "***")
        return text


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the HTTP-date form is ignored)."""
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None
