"""The vLLM skill writer (``sgsd.llm.VLLMClient``). vLLM cannot run on CPU: the client is checked
through its pure settings mapping, its import error, and a stand-in ``vllm`` module that records
how the engine is driven."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from sgsd.llm import Completion, GenerationSettings, make_client
from sgsd.llm.vllm_client import VLLMClient, sampling_params_kwargs

# ----------------------------------------------------------------------------- vLLM

def test_sampling_params_kwargs() -> None:
    assert sampling_params_kwargs(GenerationSettings(temperature=0.0, max_new_tokens=64)) == {
        "n": 1, "max_tokens": 64, "temperature": 0.0}
    assert sampling_params_kwargs(GenerationSettings(temperature=0.6, top_p=0.95, top_k=-1, seed=3)) == {
        "n": 1, "max_tokens": 2048, "temperature": 0.6, "top_p": 0.95, "seed": 3}
    assert sampling_params_kwargs(GenerationSettings(top_k=20))["top_k"] == 20


def test_vllm_missing_names_the_gpu_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail, installed or not
    with pytest.raises(ImportError, match=r"pip install 'sgsd-verl\[gpu\]'"):
        VLLMClient("Qwen/Qwen3-1.7B")
    with pytest.raises(ImportError, match="gpu"):
        make_client("vllm:Qwen/Qwen3-1.7B")


class _FakeVLLM:
    """Stand-in for the ``vllm`` module: records engine arguments and chat calls."""

    def __init__(self, fail_batches: bool = False) -> None:
        self.module = types.ModuleType("vllm")
        self.inits: list[dict] = []
        self.chats: list[dict] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs: Any) -> None:
                fake.inits.append(kwargs)

            def chat(self, messages: list, sampling_params: Any = None, use_tqdm: bool = True,
                     chat_template_kwargs: dict | None = None) -> list:
                params = ([p.kwargs for p in sampling_params] if isinstance(sampling_params, list)
                          else sampling_params.kwargs)
                fake.chats.append({"messages": messages, "params": params,
                                   "chat_template_kwargs": chat_template_kwargs})
                if fail_batches and len(messages) > 1:
                    raise ValueError("prompt longer than max_model_len")
                outs = []
                for conv in messages:
                    text = conv[0]["content"]
                    if "too long" in text:
                        raise ValueError("prompt longer than max_model_len")
                    reason = "abort" if "abort" in text else "stop"
                    sample = types.SimpleNamespace(text=f"reply to {text}", finish_reason=reason,
                                                   token_ids=list(range(len(text))))
                    outs.append(types.SimpleNamespace(outputs=[sample]))
                return outs

        self.module.LLM = LLM
        self.module.SamplingParams = SamplingParams


def test_vllm_client_drives_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    client = VLLMClient("Qwen/Qwen3-1.7B", tensor_parallel_size=2, max_model_len=4096, enforce_eager=True)
    assert fake.inits == [{"model": "Qwen/Qwen3-1.7B", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8,
                           "max_model_len": 4096, "enforce_eager": True}]
    out = client.generate(["a", "b abort"], GenerationSettings(temperature=0.0, max_new_tokens=32))
    assert out[0] == Completion(text="reply to a")
    assert not out[1].ok and out[1].error.startswith("abort")
    (call,) = fake.chats
    assert call["messages"] == [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b abort"}]]
    assert call["params"] == {"n": 1, "max_tokens": 32, "temperature": 0.0}
    assert call["chat_template_kwargs"] == {"enable_thinking": False}
    assert client.stats.requests == 2 and client.stats.errors == {"abort": 1}


def test_vllm_chats_a_conversation_as_its_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    client = VLLMClient("m")
    conversation = ({"role": "user", "content": "board 1"}, {"role": "assistant", "content": "up"},
                    {"role": "user", "content": "board 2"})
    out = client.generate([conversation, "b"], GenerationSettings(enable_thinking=True))
    assert [c.text for c in out] == ["reply to board 1", "reply to b"]  # the stand-in answers the first message
    (call,) = fake.chats
    assert call["messages"] == [[dict(m) for m in conversation], [{"role": "user", "content": "b"}]]
    with pytest.raises(ValueError, match="prompt 1: an empty conversation"):
        client.generate(["a", []])
    assert len(fake.chats) == 1


def test_vllm_seeds_each_request_apart_and_reports_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """One shared seed would make repeated prompts (n samples of a problem) identical."""
    fake = _FakeVLLM(fail_batches=True)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    client = VLLMClient("m")
    out = client.generate(["same", "same", "too long"], GenerationSettings(temperature=1.0, seed=10))
    assert [p["seed"] for p in fake.chats[0]["params"]] == [10, 11, 12]
    # retried one by one, each request keeps its own seed
    assert [chat["params"][0]["seed"] for chat in fake.chats[1:]] == [10, 11, 12]
    assert [(c.num_tokens, c.finish_reason) for c in out[:2]] == [(4, "stop"), (4, "stop")]
    assert out[2].error == "ValueError: prompt longer than max_model_len"
    client.generate(["a"], GenerationSettings(temperature=1.0))
    assert "seed" not in fake.chats[-1]["params"]  # unseeded: one SamplingParams, no seed


def test_vllm_rejected_batch_is_retried_prompt_by_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeVLLM(fail_batches=True)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    client = VLLMClient("m")
    out = client.generate(["a", "too long", "c"], GenerationSettings(enable_thinking=True))
    assert [c.text for c in out] == ["reply to a", None, "reply to c"]
    assert out[1].error == "ValueError: prompt longer than max_model_len" and out[1].attempts == 2
    assert client.stats.retries == 3 and client.stats.errors == {"ValueError": 1}
    assert fake.chats[0]["chat_template_kwargs"] == {"enable_thinking": True}


