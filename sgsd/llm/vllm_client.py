"""vLLM offline engine as the skill writer (a separate model on its own GPUs).

``vllm.LLM`` owns the GPU memory it is given for the life of the client, so this backend
suits a standalone bank build (cold start, merging) rather than a writer living next to
the trainer; there, the policy's own rollout server or an OpenAI-compatible server fit
better. vllm is a GPU-only dependency (the ``gpu`` extra) and is imported in
``__init__``, so the module itself imports anywhere.

API used, the same in vLLM's 0.9-era and its recent renderer-based ``LLM`` (read from the
sources; the pinned 0.24 could not be run here): ``LLM(model=..., tensor_parallel_size=...,
gpu_memory_utilization=..., max_model_len=..., **engine_args)``;
``LLM.chat(conversations, sampling_params=..., use_tqdm=..., chat_template_kwargs={...})``
(each conversation a list of ``{"role", "content"}`` messages, rendered with the
tokenizer's chat template and the assistant turn opened; ``sampling_params`` one object,
or a list with one per conversation) returning one
``RequestOutput`` per conversation, the reply in ``outputs[0].text``, its tokens in
``outputs[0].token_ids`` and ``outputs[0].finish_reason`` ("stop" / "length" / "abort");
``SamplingParams(n, max_tokens, temperature, top_p, top_k, seed)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sgsd.llm.base import Completion, GenerationSettings, LLMStats, Prompt, as_messages, check_prompts

__all__ = ["VLLM_INSTALL_HINT", "VLLMClient", "sampling_params_kwargs"]

logger = logging.getLogger(__name__)

VLLM_INSTALL_HINT = (
    "The 'vllm' skill-writer backend needs vLLM, which is GPU-only and not installed here. "
    "Install the GPU extra: pip install 'sgsd-verl[gpu]' (or use the 'transformers' or 'openai' backend)."
)


def sampling_params_kwargs(settings: GenerationSettings) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for ``settings``.

    Temperature 0 is vLLM's greedy mode (top-p/top-k are then meaningless and left out).
    ``top_k`` is only sent when it filters: vLLM's "off" value changed from -1 to 0 over
    releases, so leaving it unset is the one spelling every version reads as "off".
    vLLM has no per-request wall-clock limit, so ``timeout_s`` has no counterpart here.
    """
    kwargs: dict[str, Any] = {"n": 1, "max_tokens": settings.max_new_tokens}
    if settings.temperature <= 0:
        kwargs["temperature"] = 0.0
    else:
        kwargs["temperature"] = float(settings.temperature)
        kwargs["top_p"] = float(settings.top_p)
        if settings.top_k > 0:
            kwargs["top_k"] = int(settings.top_k)
    if settings.seed is not None:
        kwargs["seed"] = int(settings.seed)
    return kwargs


class VLLMClient:
    """An :class:`~sgsd.llm.base.LLMClient` over an in-process ``vllm.LLM`` engine.

    Args:
        model: hub id or local checkpoint directory.
        tensor_parallel_size, gpu_memory_utilization, max_model_len: the engine arguments
            of the same names (``max_model_len=None``: the model's own limit).
        show_progress: vLLM's own tqdm bar over the requests of a call.
        **engine_kwargs: any further ``vllm.LLM`` / ``EngineArgs`` argument
            (``dtype``, ``enforce_eager``, ``seed``, ...).

    Raises:
        ImportError: vllm is not installed (the message names the ``gpu`` extra).
    """

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.8,
        max_model_len: int | None = None,
        *,
        show_progress: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(VLLM_INSTALL_HINT) from exc

        self.name = f"vllm:{model}"
        self.stats = LLMStats()
        self.model = model
        self.show_progress = show_progress
        self._sampling_params_cls = vllm.SamplingParams
        if max_model_len is not None:
            engine_kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            **engine_kwargs,
        )

    def __repr__(self) -> str:
        return f"VLLMClient(name={self.name!r})"

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings | None = None) -> list[Completion]:
        """One :class:`Completion` per prompt, in order; never raises for failed requests.

        Each prompt goes to ``LLM.chat`` as a conversation (a string as one user message).
        The whole call goes to the engine at once (it schedules and batches by itself).
        If the engine rejects the call (e.g. one prompt longer than ``max_model_len``),
        each prompt is retried alone so only the bad ones fail. A malformed conversation
        raises ``ValueError`` before anything is sent.
        """
        settings = settings or GenerationSettings()
        prompts = check_prompts(prompts)
        self.stats.requests += len(prompts)
        if not prompts:
            return []
        params = self._sampling_params(settings, len(prompts))
        try:
            return self._chat(prompts, params, settings, attempts=1)
        except Exception as exc:  # noqa: BLE001 - a bad call must not end a training run
            if len(prompts) == 1:
                return [self._failed(exc, attempts=1)]
            logger.warning("%s: batch of %d failed (%s: %s); retrying one by one",
                           self.name, len(prompts), type(exc).__name__, exc)
        completions = []
        for i, prompt in enumerate(prompts):
            self.stats.retries += 1
            try:
                one = params[i:i + 1] if isinstance(params, list) else params
                completions.extend(self._chat([prompt], one, settings, attempts=2))
            except Exception as exc:  # noqa: BLE001
                completions.append(self._failed(exc, attempts=2))
        return completions

    def _sampling_params(self, settings: GenerationSettings, count: int) -> Any:
        """One ``SamplingParams`` for the call; with a seed, one per request (seed + i):
        vLLM seeds each request alone, so one shared seed would make duplicate prompts
        (several samples of one problem) return identical replies."""
        kwargs = sampling_params_kwargs(settings)
        if settings.seed is None:
            return self._sampling_params_cls(**kwargs)
        return [self._sampling_params_cls(**{**kwargs, "seed": int(settings.seed) + i}) for i in range(count)]

    def _chat(self, prompts: list[Prompt], params: Any, settings: GenerationSettings,
              attempts: int) -> list[Completion]:
        conversations = [as_messages(prompt) for prompt in prompts]
        outputs = self.llm.chat(
            conversations,
            sampling_params=params,
            use_tqdm=self.show_progress and len(prompts) > 1,
            # The tokenizer's chat template renders each conversation; Qwen3's reads this flag.
            chat_template_kwargs={"enable_thinking": settings.enable_thinking},
        )
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [self._completion(output, attempts) for output in outputs]

    def _completion(self, output: Any, attempts: int) -> Completion:
        samples = getattr(output, "outputs", None) or []
        if not samples:
            self.stats.record_failure("empty")
            return Completion(text=None, error="empty: vLLM returned no sample", attempts=attempts)
        sample = samples[0]
        if getattr(sample, "finish_reason", None) == "abort":
            self.stats.record_failure("abort")
            return Completion(text=None, error="abort: request aborted by the engine", attempts=attempts)
        # finish_reason "length" keeps its text: a truncated reply may still hold the JSON.
        token_ids = getattr(sample, "token_ids", None)
        return Completion(text=sample.text, attempts=attempts,
                          num_tokens=None if token_ids is None else len(token_ids),
                          finish_reason=getattr(sample, "finish_reason", None))

    def _failed(self, exc: BaseException, attempts: int) -> Completion:
        kind = type(exc).__name__
        self.stats.record_failure(kind)
        return Completion(text=None, error=f"{kind}: {exc}", attempts=attempts)
