"""The local transformers skill writer (``sgsd.llm.TransformersClient``) on a locally built tiny Qwen3:
batching, greedy determinism, budgets, chat rendering, failure handling, seeded sampling."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sgsd.llm import Completion, GenerationSettings, LLMClient, TransformersClient
from sgsd.llm.transformers_client import generate_kwargs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=8)
PROMPTS = ["Solve $x + 1 = 2$.", "What is $2 + 2$? Explain briefly, step by step.", "hi"]
THINK_OFF_SUFFIX = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
# A tiny corpus keeps the BPE step short; a wide init makes the random model's next token
# depend clearly on its context, so greedy outputs are stable under padding round-off.
SMALL_CORPUS = [
    "Let $x = \\frac{1}{2}$. Then $2x = 1$, so the answer is $\\boxed{1}$.\n\nDone.",
    "We have $a^2 + b^2 = c^2$.\n\nTherefore $c = 5$ and the answer is $\\boxed{5}$.",
] * 20


# ----------------------------------------------------------------------------- transformers

@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """A tiny model gains nothing from intra-op threads, and on a busy 2-core machine their
    spin-waiting makes each generate call 10-20x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sgsd.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("llm_tiny"), texts=SMALL_CORPUS, initializer_range=0.5)


@pytest.fixture(scope="module")
def hf_client(tiny_dir: Path) -> TransformersClient:
    return TransformersClient(str(tiny_dir), batch_size=2, show_progress=False)


@pytest.fixture()
def fresh(hf_client: TransformersClient) -> Iterator[TransformersClient]:
    """The shared client with zeroed stats (tests below count failures)."""
    from sgsd.llm.base import LLMStats

    hf_client.stats = LLMStats()
    yield hf_client


def _spy_generate(client: TransformersClient, monkeypatch: pytest.MonkeyPatch,
                  before: Callable[[dict], None] | None = None) -> list[tuple[Any, Any]]:
    """Wrap the model's real ``generate``; record (input_ids, output) of each call."""
    real = client.model.generate
    calls: list[tuple[Any, Any]] = []

    def spy(**kwargs: Any) -> Any:
        if before is not None:
            before(kwargs)
        out = real(**kwargs)
        calls.append((kwargs["input_ids"], out))
        return out

    monkeypatch.setattr(client.model, "generate", spy)
    return calls


def test_transformers_client_is_an_llm_client(hf_client: TransformersClient) -> None:
    assert isinstance(hf_client, LLMClient)
    assert hf_client.name.startswith("transformers:")


def test_batch_returns_one_text_per_prompt(fresh: TransformersClient) -> None:
    out = fresh.generate(PROMPTS, GREEDY)
    assert len(out) == 3
    assert all(isinstance(c, Completion) and isinstance(c.text, str) and c.error is None for c in out)
    assert fresh.stats.requests == 3 and fresh.stats.failures == 0


def test_greedy_is_deterministic_and_independent_of_batching(fresh: TransformersClient) -> None:
    batched = [c.text for c in fresh.generate(PROMPTS, GREEDY)]  # batches of 2 + 1, padded
    alone = [fresh.generate([p], GREEDY)[0].text for p in PROMPTS]
    assert batched == [c.text for c in fresh.generate(PROMPTS, GREEDY)]
    # Left padding + attention mask: a prompt's reply does not depend on its batch mates.
    assert batched == alone
    assert len(set(batched)) > 1  # the model really reads its prompt


def test_max_new_tokens_respected(fresh: TransformersClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_generate(fresh, monkeypatch)
    out = fresh.generate(PROMPTS, GenerationSettings(temperature=0.0, max_new_tokens=5))
    replies = [c.text for c in out]
    pad = fresh.tokenizer.pad_token_id
    decoded = []
    for input_ids, output in calls:
        new = output[:, input_ids.shape[1]:]
        assert new.shape[1] <= 5
        for row in new.tolist():
            assert len([t for t in row if t != pad]) <= 5
            decoded.append(fresh.tokenizer.decode(row, skip_special_tokens=True))
    assert replies == decoded  # only the new tokens are decoded, specials skipped
    assert max(new_len for new_len in (o.shape[1] - i.shape[1] for i, o in calls)) == 5


def test_completions_report_tokens_and_finish_reason(fresh: TransformersClient,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_generate(fresh, monkeypatch)
    out = fresh.generate(PROMPTS, GenerationSettings(temperature=0.0, max_new_tokens=6))
    eos = fresh._eos_ids
    rows = [row for input_ids, output in calls for row in output[:, input_ids.shape[1]:].tolist()]
    for completion, row in zip(out, rows):
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        assert completion.num_tokens == (len(row) if stop is None else stop + 1)
        assert completion.finish_reason == ("length" if stop is None else "stop")
    assert any(c.finish_reason == "length" for c in out)


def test_max_new_tokens_is_capped_by_the_model_context(fresh: TransformersClient,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_generate(fresh, monkeypatch)
    prompt_len = len(fresh.tokenizer(fresh.render_prompts(["hi"])[0], add_special_tokens=False).input_ids)
    monkeypatch.setattr(fresh.model.config, "max_position_embeddings", prompt_len + 3)
    (capped,) = fresh.generate(["hi"], GenerationSettings(temperature=0.0, max_new_tokens=50))
    assert calls[-1][1].shape[1] <= prompt_len + 3 and capped.ok and capped.num_tokens <= 3
    monkeypatch.setattr(fresh.model.config, "max_position_embeddings", prompt_len)
    (full,) = fresh.generate(["hi"], GenerationSettings(temperature=0.0, max_new_tokens=50))
    assert not full.ok and "fills the model's context" in full.error


def test_render_prompts_applies_chat_template_with_enable_thinking(fresh: TransformersClient) -> None:
    off = fresh.render_prompts(["What is 1+1?"], enable_thinking=False)[0]
    on = fresh.render_prompts(["What is 1+1?"], enable_thinking=True)[0]
    assert off == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n" + THINK_OFF_SUFFIX
    assert on == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Solve $x + 1 = 2$."},
                {"role": "assistant", "content": "x = 1"}, {"role": "user", "content": "And $2x = 4$?"}]


def test_render_prompts_renders_a_conversation_turn_by_turn(fresh: TransformersClient) -> None:
    rendered = fresh.render_prompts([CONVERSATION], enable_thinking=False)[0]
    assert rendered == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSolve $x + 1 = 2$.<|im_end|>\n"
                        "<|im_start|>assistant\nx = 1<|im_end|>\n<|im_start|>user\nAnd $2x = 4$?<|im_end|>\n"
                        + THINK_OFF_SUFFIX)
    # a one-message conversation is the string prompt
    assert fresh.render_prompts([[{"role": "user", "content": "hi"}]], True) == fresh.render_prompts(["hi"], True)


def test_generate_answers_conversations_next_to_strings(fresh: TransformersClient,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_generate(fresh, monkeypatch)
    prompts = [CONVERSATION, "hi", [{"role": "user", "content": "hi"}]]
    out = fresh.generate(prompts, GREEDY)  # batches [conversation, "hi"] and [the same "hi" as a conversation]
    fed = [fresh.tokenizer.decode(row, skip_special_tokens=False).replace(fresh.tokenizer.pad_token, "")
           for input_ids, _ in calls for row in input_ids.tolist()]
    assert fed == fresh.render_prompts(prompts)
    assert all(c.ok for c in out) and out[1].text == out[2].text
    # the whole history is read: the last user message alone gets another reply
    alone = fresh.generate([CONVERSATION[-1]["content"]], GREEDY)[0].text
    assert out[0].text != alone


@pytest.mark.parametrize("prompt, message", [
    ([], "prompt 1: an empty conversation"),
    ([{"role": "tool", "content": "x"}], "prompt 1: message 0 has role 'tool'"),
    ([{"role": "user", "content": 3}], "prompt 1: message 0 \\(user\\) has content of type int"),
    ([{"role": "user", "content": "x", "name": "me"}], r"prompt 1: message 0 has key\(s\) \['name'\]"),
    ({"role": "user", "content": "x"}, "prompt 1: a prompt is a string or a sequence of chat messages, got dict"),
])
def test_a_malformed_conversation_is_refused_before_generating(fresh: TransformersClient, prompt: Any,
                                                               message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fresh.generate(["hi", prompt], GREEDY)
    assert fresh.stats.requests == 0
    with pytest.raises(ValueError, match="a single string"):
        fresh.generate("hi", GREEDY)


def test_a_conversation_needs_a_chat_template(fresh: TransformersClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fresh.tokenizer, "chat_template", None)
    assert fresh.render_prompts(["hi"]) == ["hi"]  # a base model: string prompts as they are
    with pytest.raises(ValueError, match="no chat template"):
        fresh.generate(["hi", CONVERSATION], GREEDY)


@pytest.mark.parametrize("thinking", [False, True])
def test_generate_feeds_the_rendered_prompts(fresh: TransformersClient, monkeypatch: pytest.MonkeyPatch,
                                             thinking: bool) -> None:
    calls = _spy_generate(fresh, monkeypatch)
    fresh.generate(PROMPTS, GenerationSettings(temperature=0.0, max_new_tokens=2, enable_thinking=thinking))
    fed = [fresh.tokenizer.decode(row, skip_special_tokens=False).replace(fresh.tokenizer.pad_token, "")
           for input_ids, _ in calls for row in input_ids.tolist()]
    assert fed == fresh.render_prompts(PROMPTS, enable_thinking=thinking)
    assert all(text.endswith(THINK_OFF_SUFFIX) != thinking for text in fed)
    first_row = calls[0][0][0].tolist()  # the shorter prompt of batch one: pads on the left
    assert first_row[0] == fresh.tokenizer.pad_token_id and first_row[-1] != fresh.tokenizer.pad_token_id


def test_failed_batch_yields_failed_completions(fresh: TransformersClient, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fresh.model.generate
    seen = []

    def flaky(**kwargs: Any) -> Any:
        seen.append(kwargs["input_ids"].shape[0])
        if len(seen) == 2:
            raise RuntimeError("device fell over")
        return real(**kwargs)

    monkeypatch.setattr(fresh.model, "generate", flaky)
    out = fresh.generate(PROMPTS, GREEDY)  # batches [2, 1]; the second raises
    assert [c.ok for c in out] == [True, True, False]
    assert out[2].error == "RuntimeError: device fell over"
    assert fresh.stats.failures == 1 and fresh.stats.errors == {"RuntimeError": 1}


def test_prompt_the_template_rejects_fails_only_its_batch(fresh: TransformersClient,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = fresh.tokenizer.apply_chat_template

    def picky(messages: list, **kwargs: Any) -> Any:
        if messages[0]["content"] == "hi":
            raise ValueError("template cannot render this")
        return real(messages, **kwargs)

    monkeypatch.setattr(fresh.tokenizer, "apply_chat_template", picky)
    out = fresh.generate(PROMPTS, GREEDY)  # "hi" is alone in the second batch
    assert [c.ok for c in out] == [True, True, False]
    assert fresh.stats.errors == {"ValueError": 1}


def test_out_of_memory_splits_the_batch(fresh: TransformersClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def too_big(kwargs: dict) -> None:
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    _spy_generate(fresh, monkeypatch, before=too_big)
    out = fresh.generate(PROMPTS, GREEDY)
    expected = [fresh.generate([p], GREEDY)[0].text for p in PROMPTS]
    assert [c.text for c in out] == expected
    assert [c.attempts for c in out] == [2, 2, 1]
    assert fresh.stats.retries == 2 and fresh.stats.failures == 0


def test_wall_clock_budget_fails_unfinished_replies(fresh: TransformersClient) -> None:
    settings = GenerationSettings(temperature=0.0, max_new_tokens=3000, timeout_s=0.05)
    started = time.monotonic()
    out = fresh.generate(PROMPTS[:2], settings)
    assert time.monotonic() - started < 5.0  # max_time cut generation far short of 3000 tokens
    assert [c.ok for c in out] == [False, False]
    assert all(c.error.startswith("timeout") for c in out)
    assert fresh.stats.timeouts == 2 and fresh.stats.errors == {"timeout": 2}


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(fresh: TransformersClient) -> None:
    import torch

    settings = GenerationSettings(temperature=1.0, top_k=-1, max_new_tokens=8, seed=7)
    state = torch.random.get_rng_state()
    first = [c.text for c in fresh.generate(PROMPTS, settings)]
    assert torch.equal(state, torch.random.get_rng_state())
    assert first == [c.text for c in fresh.generate(PROMPTS, settings)]


def test_generate_kwargs_mapping() -> None:
    greedy = generate_kwargs(GenerationSettings(temperature=0.0, max_new_tokens=16, timeout_s=9))
    assert greedy == {"max_new_tokens": 16, "max_time": 9.0, "do_sample": False,
                      "temperature": None, "top_p": None, "top_k": None}
    sampled = generate_kwargs(GenerationSettings(temperature=0.7, top_p=0.9, top_k=-1))
    assert sampled["do_sample"] and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9
    assert sampled["top_k"] == 0  # "off" must be explicit, or a checkpoint's top_k=20 applies
    assert generate_kwargs(GenerationSettings(top_k=20))["top_k"] == 20


