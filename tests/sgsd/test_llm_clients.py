"""The skill-writer client interface (``sgsd.llm``): the scripted client, the spec factory, and a
light package import. Each backend has its own file: test_llm_transformers.py, test_llm_vllm.py,
test_llm_openai.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sgsd.checks import SettingError
from sgsd.llm import (
    GenerationSettings,
    LLMClient,
    OpenAICompatibleClient,
    ScriptedClient,
    TransformersClient,
    make_client,
)
from sgsd.llm.factory import parse_spec
from tests.chat_server import ChatServer

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=8)


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),
    ({"max_new_tokens": 8.0}, "max_new_tokens must be an integer, got 8.0"),
    ({"temperature": -0.1}, "temperature must be >= 0, got -0.1"),
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    ({"top_k": 0}, "top_k must be -1 (off) or >= 1, got 0"),
    ({"top_k": -2}, "top_k must be -1 (off) or >= 1, got -2"),
])
def test_generation_settings_refuse_out_of_range_sampling(kwargs: dict, message: str) -> None:
    with pytest.raises(SettingError) as info:
        GenerationSettings(**kwargs)
    assert str(info.value) == message
    with pytest.raises(SettingError):  # a copy with a bad value is refused too
        dataclasses.replace(GREEDY, **kwargs)
    assert GenerationSettings(temperature=0.0, top_p=1.0, top_k=1, max_new_tokens=1).temperature == 0.0


# ----------------------------------------------------------------------------- scripted

def test_scripted_replies_in_order_with_failures() -> None:
    client = ScriptedClient(["one", None, TimeoutError("slow"), "four"])
    first = client.generate(["p1", "p2"], GREEDY)
    second = client.generate(["p3", "p4", "p5"])
    assert [c.text for c in first + second] == ["one", None, None, "four", None]
    assert second[0].error == "TimeoutError: slow" and second[2].error.startswith("exhausted")
    assert client.prompts == ["p1", "p2", "p3", "p4", "p5"]
    assert client.settings == [GREEDY, GenerationSettings()]
    assert client.stats.requests == 5 and client.stats.failures == 3
    assert client.stats.errors == {"scripted": 1, "TimeoutError": 1, "exhausted": 1}
    assert client.remaining == 0 and isinstance(client, LLMClient)


def test_scripted_function_replies() -> None:
    def reply(prompt: str) -> str | None:
        if prompt == "boom":
            raise RuntimeError("script error")
        return None if prompt == "fail" else prompt.upper()

    client = ScriptedClient(reply)
    out = client.generate(["a", "fail", "boom"])
    assert [c.text for c in out] == ["A", None, None]
    assert out[2].error == "RuntimeError: script error" and client.stats.failures == 2
    with pytest.raises(TypeError):
        ScriptedClient("a single string")


def test_scripted_conversations_are_recorded_as_they_were_asked() -> None:
    seen = []

    def reply(prompt: Any) -> str:
        seen.append(prompt)
        return f"turn {len(prompt) // 2 + 1}" if isinstance(prompt, list) else prompt.upper()

    client = ScriptedClient(reply)
    conversation = [{"role": "user", "content": "start"}]
    first = client.generate([conversation, "plain"])
    conversation += [{"role": "assistant", "content": first[0].text}, {"role": "user", "content": "next"}]
    second = client.generate([conversation])
    assert [c.text for c in first + second] == ["turn 1", "PLAIN", "turn 2"]
    # the first call's conversation is recorded as it was then, not as it grew afterwards
    assert client.prompts == [[{"role": "user", "content": "start"}], "plain", conversation]
    assert seen == client.prompts and client.prompts[2] is not conversation
    with pytest.raises(ValueError, match="prompt 0: message 1 has role 'robot'"):
        client.generate([[{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]])
    assert client.stats.requests == 3


def test_as_messages_reads_strings_and_conversations() -> None:
    from sgsd.llm import as_messages

    assert as_messages("hi") == [{"role": "user", "content": "hi"}]
    history = ({"role": "system", "content": "s"}, {"role": "user", "content": "u"})
    copied = as_messages(history)
    assert copied == [dict(m) for m in history] and copied[0] is not history[0]
    with pytest.raises(ValueError, match="turn 3: message 0 is a str"):
        as_messages(["not a message"], "turn 3")


# ----------------------------------------------------------------------------- factory

def test_parse_spec_forms() -> None:
    assert parse_spec("transformers:/ckpt/m?device=cuda&dtype=bfloat16&batch_size=4") == (
        "transformers", {"model_name_or_path": "/ckpt/m", "device": "cuda", "dtype": "bfloat16", "batch_size": 4})
    assert parse_spec("vllm:Qwen/Qwen3-1.7B?tensor_parallel_size=2&gpu_memory_utilization=0.5&enforce_eager=true"
                      "&max_model_len=none") == (
        "vllm", {"model": "Qwen/Qwen3-1.7B", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5,
                 "enforce_eager": True, "max_model_len": None})
    assert parse_spec("openai:http://host:8000/v1#Qwen/Qwen3-1.7B?concurrency=16") == (
        "openai", {"base_url": "http://host:8000/v1", "model": "Qwen/Qwen3-1.7B", "concurrency": 16})
    assert parse_spec({"backend": "openai", "base_url": "u", "model": "m"}) == ("openai", {"base_url": "u", "model": "m"})


def test_make_client_builds_each_backend(tiny_model_dir: Path, server: ChatServer) -> None:
    hf = make_client(f"transformers:{tiny_model_dir}?batch_size=2&show_progress=false")
    assert isinstance(hf, TransformersClient) and hf.batch_size == 2
    assert hf.generate(["hi"], GREEDY)[0].ok
    http = make_client(f"openai:{server.base_url}#served-name?concurrency=2&backoff_s=0.01")
    assert isinstance(http, OpenAICompatibleClient) and http.concurrency == 2
    assert http.generate(["x"])[0].text == "echo: x" and server.requests[0][1]["model"] == "served-name"
    scripted = make_client('scripted:{"skills": []}')
    assert scripted.generate(["a", "b"])[1].text == '{"skills": []}'
    assert isinstance(make_client({"backend": "scripted", "replies": ["r"]}), ScriptedClient)


@pytest.mark.parametrize("spec, message", [
    ("llama:/x", "valid backends: openai, scripted, transformers, vllm"),
    ({"backend": "nope"}, "valid backends: openai, scripted, transformers, vllm"),
    ("/path/without/backend", "no backend"),
    ("policy", "built by the trainer"),
    ("openai:http://host:8000/v1", "openai:BASE_URL#MODEL"),
    ("transformers:", "names no model"),
    ("transformers:/x?devise=cuda", r"no option\(s\) \['devise'\]"),
    ({"backend": "openai", "base_url": "u"}, r"needs \['model'\]"),
])
def test_make_client_rejects_bad_specs(spec: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_client(spec)


def test_llm_package_imports_light() -> None:
    code = ("import json, sys, sgsd.llm, sgsd.llm.factory\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'torch', 'transformers', 'vllm', 'httpx', 'verl', 'ray'})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
