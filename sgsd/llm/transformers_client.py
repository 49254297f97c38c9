"""Local ``transformers`` generation: the skill writer on the machine that runs the code.

Used for CPU demos, tests on the tiny Qwen3, and small GPU jobs where starting a vLLM
engine is not worth it. Prompts are rendered with the tokenizer's chat template (a string
as one user message, a conversation as its messages; the assistant turn opened,
``enable_thinking`` passed to the template), batched with left padding so every row's new
tokens start at the same column, and decoded without special tokens.

torch and transformers are imported inside the methods: ``import sgsd.llm`` stays light.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sgsd.llm.base import Completion, GenerationSettings, LLMStats, Prompt, as_messages, check_prompts

__all__ = ["TransformersClient", "generate_kwargs"]

logger = logging.getLogger(__name__)


def generate_kwargs(settings: GenerationSettings) -> dict[str, Any]:
    """Map :class:`GenerationSettings` to ``model.generate`` keyword arguments.

    Every sampling knob is passed explicitly, because a checkpoint's own
    ``generation_config.json`` (Qwen3 ships ``top_k=20, temperature=0.6``) would
    otherwise silently override what the caller asked for.
    """
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens}
    if settings.timeout_s and settings.timeout_s > 0:
        # transformers stops the whole batch once this many seconds have passed.
        kwargs["max_time"] = float(settings.timeout_s)
    if settings.temperature <= 0:
        # Greedy. Unset the sampling knobs so a checkpoint's defaults do not warn or leak in.
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(
            do_sample=True,
            temperature=float(settings.temperature),
            top_p=float(settings.top_p),
            top_k=int(settings.top_k) if settings.top_k > 0 else 0,  # 0 = no top-k filter
        )
    return kwargs


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class TransformersClient:
    """An :class:`~sgsd.llm.base.LLMClient` over a local ``AutoModelForCausalLM``.

    Args:
        model_name_or_path: checkpoint directory (or hub id where the hub is reachable).
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: ``"auto"`` (the checkpoint's), a name such as ``"bfloat16"`` or a ``torch.dtype``.
        batch_size: prompts per ``generate`` call; a batch that runs out of memory is
            split in halves and retried, down to single prompts.
        tokenizer, model: already loaded objects (e.g. the policy in a CPU run); when given,
            nothing is loaded from ``model_name_or_path``, which then only names the client.
        show_progress: a tqdm bar over batches when there is more than one.
    """

    def __init__(
        self,
        model_name_or_path: str,
        device: str = "cpu",
        dtype: Any = "auto",
        batch_size: int = 8,
        tokenizer: Any = None,
        model: Any = None,
        *,
        show_progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"transformers:{model_name_or_path}"
        self.stats = LLMStats()
        self.batch_size = batch_size
        self.device = device
        self.show_progress = show_progress
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_name_or_path)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=_resolve_dtype(dtype))
            model = model.to(device)
        self.model = model.eval()
        if self.tokenizer.pad_token_id is None:
            # Batching needs a pad id; the attention mask hides it, so eos is a safe stand-in.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._eos_ids = _eos_ids(self.model, self.tokenizer)

    def __repr__(self) -> str:
        return f"TransformersClient(name={self.name!r}, device={self.device!r}, batch_size={self.batch_size})"

    def render_prompts(self, prompts: Sequence[Prompt], enable_thinking: bool = False) -> list[str]:
        """The exact text fed to the model: each prompt's messages (a string: one user turn)
        through the chat template, the assistant turn opened.

        A tokenizer without a chat template (a base model) gets a string prompt unchanged;
        a conversation then has no rendering and raises ``ValueError``.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            self._check_renderable(prompts)
            return list(prompts)
        return [
            self.tokenizer.apply_chat_template(
                as_messages(prompt),
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=enable_thinking,
            )
            for prompt in prompts
        ]

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings | None = None) -> list[Completion]:
        """One :class:`Completion` per prompt, in order; never raises for a failed batch.

        Raises ``ValueError`` before generating for a malformed conversation, or for a
        conversation when the tokenizer has no chat template (the caller's bug).
        """
        from tqdm.auto import tqdm

        settings = settings or GenerationSettings()
        prompts = check_prompts(prompts)
        if not getattr(self.tokenizer, "chat_template", None):
            self._check_renderable(prompts)
        self.stats.requests += len(prompts)
        starts = range(0, len(prompts), self.batch_size)
        bar = tqdm(starts, desc=f"generate ({self.name})", unit="batch",
                   disable=not self.show_progress or len(starts) <= 1)
        completions: list[Completion] = []
        for batch_index, start in enumerate(bar):
            batch = prompts[start:start + self.batch_size]
            completions.extend(self._generate_batch(batch, settings, batch_index))
        return completions

    def _check_renderable(self, prompts: Sequence[Prompt]) -> None:
        """Without a chat template only string prompts have a rendering."""
        if any(not isinstance(prompt, str) for prompt in prompts):
            raise ValueError(f"{self.name}: the tokenizer has no chat template, so a conversation prompt "
                             "cannot be rendered; use a chat model or string prompts")

    def _generate_batch(self, prompts: list[Prompt], settings: GenerationSettings, batch_index: int,
                        attempts: int = 1) -> list[Completion]:
        """Generate one batch; OOM splits it in halves, any other error fails it whole."""
        try:
            return self._run_generate(prompts, settings, batch_index, attempts)
        except Exception as exc:  # noqa: BLE001 - one bad batch must not end a training run
            if _is_oom(exc):
                _free_cuda_cache()
                if len(prompts) > 1:
                    # Shorter batches need less KV cache: retry each half before giving up.
                    half = len(prompts) // 2
                    self.stats.retries += 2
                    logger.warning("%s: out of memory on %d prompts, retrying in halves", self.name, len(prompts))
                    return (self._generate_batch(prompts[:half], settings, batch_index, attempts + 1)
                            + self._generate_batch(prompts[half:], settings, batch_index, attempts + 1))
                kind = "oom"
            else:
                kind = type(exc).__name__
            logger.warning("%s: batch of %d failed: %s: %s", self.name, len(prompts), kind, exc)
            for _ in prompts:
                self.stats.record_failure(kind)
            return [Completion(text=None, error=f"{kind}: {exc}", attempts=attempts) for _ in prompts]

    def _run_generate(self, prompts: list[Prompt], settings: GenerationSettings, batch_index: int,
                      attempts: int) -> list[Completion]:
        import torch

        texts = self.render_prompts(prompts, settings.enable_thinking)
        # Left padding: every row's prompt ends at the same column, so the new tokens of
        # all rows start at ``input_len`` and generation continues right after the prompt.
        # The chat template already holds the control tokens: add none.
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=False, return_token_type_ids=False)
        enc = {key: value.to(self.model.device) for key, value in enc.items()}
        input_len = enc["input_ids"].shape[1]
        kwargs = generate_kwargs(settings)
        kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        context = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(context, int) and input_len + kwargs["max_new_tokens"] > context:
            # Positions past the context are never trained: stop there, as vLLM does.
            if input_len >= context:
                raise ValueError(f"prompt of {input_len} tokens fills the model's context of {context}")
            kwargs["max_new_tokens"] = context - input_len

        started = time.monotonic()
        with torch.inference_mode(), _seeded(settings.seed, batch_index, self.model.device):
            output = self.model.generate(**enc, **kwargs)
        timed_out = "max_time" in kwargs and time.monotonic() - started >= kwargs["max_time"]

        completions = []
        for row in output[:, input_len:].tolist():
            stop = next((i for i, token in enumerate(row) if token in self._eos_ids), None)
            finished = stop is not None or len(row) >= kwargs["max_new_tokens"]
            if timed_out and not finished:
                # Cut off by the wall-clock budget: a half-written reply is not a reply.
                self.stats.timeouts += 1
                self.stats.record_failure("timeout")
                completions.append(Completion(text=None, error=f"timeout after {settings.timeout_s}s",
                                              attempts=attempts))
                continue
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            completions.append(Completion(text=text, attempts=attempts,
                                          num_tokens=len(row) if stop is None else stop + 1,
                                          finish_reason="length" if stop is None else "stop"))
        return completions


def _resolve_dtype(dtype: Any) -> Any:
    """``"bfloat16"`` -> ``torch.bfloat16``; ``"auto"`` and dtypes pass through."""
    if isinstance(dtype, str) and dtype != "auto":
        import torch

        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        return resolved
    return dtype


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a reply: the generation config's eos ids plus the tokenizer's."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def _seeded(seed: int | None, batch_index: int, device: Any) -> Iterator[None]:
    """Seed torch for one batch without touching the caller's random state.

    ``seed + batch_index`` keeps batches different from one another while a whole call
    stays reproducible. No seed: the global random state is used as is.
    """
    if seed is None:
        yield
        return
    import torch

    devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + batch_index)
        yield
