"""Tests for the skill-writer LLM clients (``sgsd.llm``).

Real small components throughout: the transformers client runs a locally built tiny Qwen3,
the OpenAI-compatible client talks HTTP to a server started here on 127.0.0.1. vLLM cannot
run on CPU, so its client is checked through its pure settings mapping, its import error,
and a stand-in ``vllm`` module that records how the engine is driven.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sgsd.llm import (
    Completion,
    GenerationSettings,
    LLMClient,
    OpenAICompatibleClient,
    ScriptedClient,
    TransformersClient,
    make_client,
)
from sgsd.llm.factory import parse_spec
from sgsd.llm.transformers_client import generate_kwargs
from sgsd.llm.vllm_client import VLLMClient, sampling_params_kwargs

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


# ----------------------------------------------------------------------------- OpenAI-compatible

SECRET = "sk-test-9f8e7d6c5b4a-never-print-me"

# A server behaviour: (body, headers, attempt number of this prompt) -> (status, reply, delay, extra headers);
# ``reply`` is a JSON payload (dict) or raw text.
Behaviour = Callable[[dict, dict, int], tuple[int, Any, float, dict]]


def _ok(content: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}]}


def _echo(body: dict, headers: dict, attempt: int) -> tuple[int, Any, float, dict]:
    return 200, _ok("echo: " + body["messages"][0]["content"]), 0.0, {}


class _Server:
    """A threaded HTTP server on 127.0.0.1 serving ``POST /v1/chat/completions``."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = _echo
        self.requests: list[tuple[str, dict, dict]] = []  # (path, body, headers)
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server._lock:
                    server.requests.append((self.path, body, headers))
                    prompt = body["messages"][0]["content"]
                    server.attempts[prompt] = attempt = server.attempts.get(prompt, 0) + 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, reply, delay, extra = server.behaviour(body, headers, attempt)
                    time.sleep(delay)
                    data = (json.dumps(reply) if isinstance(reply, dict) else str(reply)).encode()
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **extra}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test): nothing to answer
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # a handler still sleeping must not hold up teardown
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture()
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SGSD_TEST_API_KEY", SECRET)
    return "SGSD_TEST_API_KEY"


def _client(server: _Server, api_key_env: str = "SGSD_TEST_NO_SUCH_KEY", **kwargs: Any) -> OpenAICompatibleClient:
    kwargs.setdefault("backoff_s", 0.01)
    return OpenAICompatibleClient(server.base_url, "Qwen/Qwen3-1.7B", api_key_env=api_key_env,
                                  show_progress=False, **kwargs)


def test_openai_request_shape_and_order(server: _Server, api_key: str) -> None:
    # Later prompts are answered sooner: replies must still come back in prompt order.
    server.behaviour = lambda body, headers, attempt: (
        200, _ok("echo: " + body["messages"][0]["content"]), 0.05 * (3 - int(body["messages"][0]["content"])), {})
    client = _client(server, api_key)
    settings = GenerationSettings(max_new_tokens=128, temperature=0.6, top_p=0.9, top_k=20, enable_thinking=True)
    out = client.generate(["0", "1", "2"], settings)
    assert [c.text for c in out] == ["echo: 0", "echo: 1", "echo: 2"]
    assert all(c.attempts == 1 for c in out)
    path, body, headers = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "Qwen/Qwen3-1.7B"
    assert body["messages"][0]["role"] == "user" and len(body["messages"]) == 1
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"]) == (128, 0.6, 0.9, 20)
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert client.stats.requests == 3 and client.stats.failures == 0


def test_openai_without_key_or_vllm_extras(server: _Server) -> None:
    client = _client(server, vllm_extras=False, extra_body={"min_p": 0.05})
    assert client.generate(["x"], GenerationSettings(top_k=20))[0].text == "echo: x"
    _, body, headers = server.requests[0]
    assert "authorization" not in headers
    assert "chat_template_kwargs" not in body and "top_k" not in body and body["min_p"] == 0.05


def test_openai_concurrency_bound(server: _Server) -> None:
    server.behaviour = lambda body, headers, attempt: (200, _ok("ok"), 0.1, {})
    out = _client(server, concurrency=3).generate([str(i) for i in range(12)], GenerationSettings())
    assert all(c.ok for c in out) and len(server.requests) == 12
    assert server.max_in_flight == 3  # never more, and the bound is actually used


@pytest.mark.parametrize("status", [500, 503, 429])
def test_openai_retries_transient_errors_then_succeeds(server: _Server, status: int) -> None:
    def flaky(body: dict, headers: dict, attempt: int) -> tuple[int, Any, float, dict]:
        if attempt <= 2:
            return status, {"error": "busy"}, 0.0, {"Retry-After": "0"}
        return _echo(body, headers, attempt)

    server.behaviour = flaky
    client = _client(server)
    out = client.generate(["a", "b"], GenerationSettings(max_retries=2))
    assert [c.text for c in out] == ["echo: a", "echo: b"]
    assert [c.attempts for c in out] == [3, 3]
    assert client.stats.retries == 4 and client.stats.failures == 0
    assert server.attempts == {"a": 3, "b": 3}


def test_openai_gives_up_after_max_retries(server: _Server) -> None:
    server.behaviour = lambda body, headers, attempt: (503, "overloaded", 0.0, {})
    client = _client(server)
    (out,) = client.generate(["a"], GenerationSettings(max_retries=2))
    assert not out.ok and out.attempts == 3 and out.error.startswith("http_503")
    assert server.attempts == {"a": 3}
    assert client.stats.retries == 2 and client.stats.errors == {"http_503": 1}


def test_openai_no_retry_on_400(server: _Server) -> None:
    server.behaviour = lambda body, headers, attempt: (400, {"error": "bad max_tokens"}, 0.0, {})
    client = _client(server)
    (out,) = client.generate(["a"], GenerationSettings(max_retries=3))
    assert not out.ok and out.attempts == 1 and "bad max_tokens" in out.error
    assert server.attempts == {"a": 1}
    assert client.stats.failures == 1 and client.stats.retries == 0 and client.stats.errors == {"http_400": 1}


def test_openai_timeout_is_a_counted_failure(server: _Server) -> None:
    server.behaviour = lambda body, headers, attempt: (200, _ok("late"), 1.5, {})
    client = _client(server)
    started = time.monotonic()
    (out,) = client.generate(["a"], GenerationSettings(timeout_s=0.2, max_retries=0))
    assert time.monotonic() - started < 1.2
    assert not out.ok and out.error.startswith("timeout")
    assert client.stats.timeouts == 1 and client.stats.errors == {"timeout": 1}


def test_openai_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAICompatibleClient(f"http://127.0.0.1:{port}", "m", backoff_s=0.01, show_progress=False)
    assert client.url == f"http://127.0.0.1:{port}/v1/chat/completions"
    (out,) = client.generate(["a"], GenerationSettings(max_retries=1, timeout_s=5))
    assert not out.ok and out.attempts == 2 and out.error.startswith("connection")
    assert client.stats.errors == {"connection": 1} and client.stats.retries == 1


def test_openai_bad_payload_fails_without_retry(server: _Server) -> None:
    server.behaviour = lambda body, headers, attempt: (200, "not json", 0.0, {})
    client = _client(server)
    (out,) = client.generate(["a"])
    assert not out.ok and out.error.startswith("bad_response") and server.attempts == {"a": 1}


def test_openai_api_key_never_leaks(server: _Server, api_key: str, caplog: pytest.LogCaptureFixture) -> None:
    # A hostile/buggy server echoes the Authorization header back in its error body.
    server.behaviour = lambda body, headers, attempt: (401, {"error": f"bad key {headers['authorization']}"}, 0.0, {})
    client = _client(server, api_key)
    with caplog.at_level("DEBUG"):
        (out,) = client.generate(["a"])
    assert server.requests[0][2]["authorization"] == f"Bearer {SECRET}"  # it was sent...
    assert not out.ok and "***" in out.error
    leaks = [repr(client), str(client), repr(vars(client)), repr(client.stats), out.error, repr(out), caplog.text]
    assert all(SECRET not in text for text in leaks)  # ...and shows up nowhere else


def test_openai_generate_inside_a_running_event_loop(server: _Server) -> None:
    client = _client(server)

    async def caller() -> list[Completion]:
        return client.generate(["a"])  # sync API called from async code

    assert [c.text for c in asyncio.run(caller())] == ["echo: a"]


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


def test_make_client_builds_each_backend(tiny_dir: Path, server: _Server) -> None:
    hf = make_client(f"transformers:{tiny_dir}?batch_size=2&show_progress=false")
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
