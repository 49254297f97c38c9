"""PolicyWriterClient's contract with verl's LLMServerClient, on the real tiny tokenizer.

The happy path through verl's real rollout server runs in test_bank_evolution_e2e.py;
here a stand-in server exercises what is hard to provoke there: what each request
carries, concurrency bounds, timeouts with retries, server errors, over-long prompts,
and calls from inside a running event loop.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from recipe.sgsd.policy_writer import PolicyWriterClient, sampling_params
from sgsd.llm.base import GenerationSettings, LLMClient
from sgsd.prompts import ChatFormat, apply_chat


class StandInServer:
    """``async generate(request_id, *, prompt_ids, sampling_params)`` like verl's client."""

    def __init__(self, tokenizer, reply="a \\boxed{1} reply", delay=0.0, fail_first=0, error=None):
        self.tokenizer, self.reply, self.delay = tokenizer, reply, delay
        self.fail_first, self.error = fail_first, error
        self.calls: list[dict] = []
        self.in_flight = self.max_in_flight = 0

    async def generate(self, request_id, *, prompt_ids, sampling_params):
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids),
                           "sampling_params": dict(sampling_params)})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if len(self.calls) <= self.fail_first:
                await asyncio.sleep(10)  # longer than the test's timeout
            await asyncio.sleep(self.delay)
            if self.error is not None:
                raise self.error
            return SimpleNamespace(token_ids=self.tokenizer.encode(self.reply, add_special_tokens=False))
        finally:
            self.in_flight -= 1


def test_requests_carry_the_chat_rendered_prompt_and_the_sampling_settings(tiny_tokenizer):
    server = StandInServer(tiny_tokenizer)
    client = PolicyWriterClient(server, tiny_tokenizer)
    assert isinstance(client, LLMClient)
    settings = GenerationSettings(max_new_tokens=77, temperature=0.6, top_p=0.9, top_k=20, enable_thinking=True)
    out = client.generate(["Extract skills {from} \\frac{a}{b}", "second"], settings)
    assert [c.text for c in out] == ["a \\boxed{1} reply"] * 2
    expected = tiny_tokenizer.encode(apply_chat(tiny_tokenizer, "Extract skills {from} \\frac{a}{b}",
                                                ChatFormat(enable_thinking=True)), add_special_tokens=False)
    assert server.calls[0]["prompt_ids"] == expected
    assert server.calls[0]["sampling_params"] == {"max_tokens": 77, "temperature": 0.6, "top_p": 0.9,
                                                  "logprobs": False, "top_k": 20}
    assert len({c["request_id"] for c in server.calls}) == 2  # no sticky sessions between prompts
    assert client.stats.requests == 2 and client.stats.failures == 0


def test_concurrency_is_bounded(tiny_tokenizer):
    server = StandInServer(tiny_tokenizer, delay=0.02)
    out = PolicyWriterClient(server, tiny_tokenizer, max_concurrency=3).generate([f"p{i}" for i in range(10)])
    assert all(c.ok for c in out) and server.max_in_flight == 3


def test_timeouts_are_retried_then_counted(tiny_tokenizer):
    server = StandInServer(tiny_tokenizer, fail_first=1)
    client = PolicyWriterClient(server, tiny_tokenizer)
    out = client.generate(["p"], GenerationSettings(timeout_s=0.2, max_retries=1))
    assert out[0].ok and out[0].attempts == 2 and client.stats.retries == 1 and client.stats.timeouts == 1
    server = StandInServer(tiny_tokenizer, fail_first=5)
    client = PolicyWriterClient(server, tiny_tokenizer)
    out = client.generate(["p"], GenerationSettings(timeout_s=0.1, max_retries=1))
    assert not out[0].ok and out[0].error.startswith("timeout") and client.stats.errors == {"timeout": 1}


def test_server_errors_and_long_prompts_fail_only_their_request(tiny_tokenizer):
    server = StandInServer(tiny_tokenizer, error=ValueError("Prompt length (9000) leaves no room"))
    client = PolicyWriterClient(server, tiny_tokenizer)
    out = client.generate(["p", "q"])
    assert [c.ok for c in out] == [False, False] and "no room" in out[0].error
    assert client.stats.errors == {"ValueError": 2} and len(server.calls) == 2  # not retried
    server = StandInServer(tiny_tokenizer)
    client = PolicyWriterClient(server, tiny_tokenizer, context_length=60)
    out = client.generate(["short", "long " * 200], GenerationSettings(max_new_tokens=8))
    assert out[0].ok and not out[1].ok and out[1].error.startswith("prompt_too_long")
    assert len(server.calls) == 1  # the long one never reached the server


def test_the_reply_budget_counts_against_the_context(tiny_tokenizer):
    """vLLM clamps max_tokens to what the context leaves: a prompt that fits alone but not
    with its reply budget is refused up front, not answered with a truncated reply."""
    prompt = "word " * 10
    length = len(tiny_tokenizer.encode(apply_chat(tiny_tokenizer, prompt, ChatFormat(enable_thinking=False)),
                                       add_special_tokens=False))
    server = StandInServer(tiny_tokenizer)
    client = PolicyWriterClient(server, tiny_tokenizer, context_length=length + 16)
    fits, too_long = (client.generate([prompt], GenerationSettings(max_new_tokens=n))[0] for n in (16, 17))
    assert fits.ok and not too_long.ok and "max_new_tokens 17" in too_long.error and len(server.calls) == 1


def test_works_when_called_from_inside_an_event_loop(tiny_tokenizer):
    server = StandInServer(tiny_tokenizer)
    client = PolicyWriterClient(server, tiny_tokenizer)

    async def inside():
        return client.generate(["p"])

    assert asyncio.run(inside())[0].ok


def test_sampling_params_mapping():
    assert sampling_params(GenerationSettings(max_new_tokens=5, temperature=0.0, top_k=-1, seed=3)) == {
        "max_tokens": 5, "temperature": 0.0, "top_p": 0.95, "logprobs": False, "seed": 3}
    with pytest.raises(ValueError, match="max_concurrency"):
        PolicyWriterClient(None, None, max_concurrency=0)
