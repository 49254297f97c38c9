"""The OpenAI-compatible skill writer (``sgsd.llm.OpenAICompatibleClient``) against a real HTTP
server on 127.0.0.1 (``tests/chat_server.py``): request shape, concurrency, retries, timeouts,
the API key never leaking."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from sgsd.llm import Completion, GenerationSettings, OpenAICompatibleClient
from tests.chat_server import ChatServer, echo, ok_reply

# ----------------------------------------------------------------------------- OpenAI-compatible

SECRET = "sk-test-9f8e7d6c5b4a-never-print-me"

@pytest.fixture()
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SGSD_TEST_API_KEY", SECRET)
    return "SGSD_TEST_API_KEY"


def _client(server: ChatServer, api_key_env: str = "SGSD_TEST_NO_SUCH_KEY", **kwargs: Any) -> OpenAICompatibleClient:
    kwargs.setdefault("backoff_s", 0.01)
    return OpenAICompatibleClient(server.base_url, "Qwen/Qwen3-1.7B", api_key_env=api_key_env,
                                  show_progress=False, **kwargs)


def test_openai_request_shape_and_order(server: ChatServer, api_key: str) -> None:
    # Later prompts are answered sooner: replies must still come back in prompt order.
    server.behaviour = lambda body, headers, attempt: (
        200, ok_reply("echo: " + body["messages"][0]["content"]), 0.05 * (3 - int(body["messages"][0]["content"])), {})
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


def test_openai_sends_a_conversation_as_given(server: ChatServer) -> None:
    server.behaviour = lambda body, headers, attempt: (
        200, ok_reply(f"{len(body['messages'])} messages, last: {body['messages'][-1]['content']}"), 0.0, {})
    conversation = [{"role": "system", "content": "rules"}, {"role": "user", "content": "board 1"},
                    {"role": "assistant", "content": "<answer>left</answer>"}, {"role": "user", "content": "board 2"}]
    out = _client(server).generate([conversation, "alone"])
    assert [c.text for c in out] == ["4 messages, last: board 2", "1 messages, last: alone"]
    sent = {body["messages"][-1]["content"]: body["messages"] for _, body, _ in server.requests}
    assert sent["board 2"] == conversation and sent["alone"] == [{"role": "user", "content": "alone"}]
    with pytest.raises(ValueError, match="prompt 0: message 1 has role 'tool'"):
        _client(server).generate([[{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]])
    assert len(server.requests) == 2  # the malformed call sent nothing


def test_openai_without_key_or_vllm_extras(server: ChatServer) -> None:
    client = _client(server, vllm_extras=False, extra_body={"min_p": 0.05})
    assert client.generate(["x"], GenerationSettings(top_k=20))[0].text == "echo: x"
    _, body, headers = server.requests[0]
    assert "authorization" not in headers
    assert "chat_template_kwargs" not in body and "top_k" not in body and body["min_p"] == 0.05


def test_openai_concurrency_bound(server: ChatServer) -> None:
    server.behaviour = lambda body, headers, attempt: (200, ok_reply("ok"), 0.1, {})
    out = _client(server, concurrency=3).generate([str(i) for i in range(12)], GenerationSettings())
    assert all(c.ok for c in out) and len(server.requests) == 12
    assert server.max_in_flight == 3  # never more, and the bound is actually used


@pytest.mark.parametrize("status", [500, 503, 429])
def test_openai_retries_transient_errors_then_succeeds(server: ChatServer, status: int) -> None:
    def flaky(body: dict, headers: dict, attempt: int) -> tuple[int, Any, float, dict]:
        if attempt <= 2:
            return status, {"error": "busy"}, 0.0, {"Retry-After": "0"}
        return echo(body, headers, attempt)

    server.behaviour = flaky
    client = _client(server)
    out = client.generate(["a", "b"], GenerationSettings(max_retries=2))
    assert [c.text for c in out] == ["echo: a", "echo: b"]
    assert [c.attempts for c in out] == [3, 3]
    assert client.stats.retries == 4 and client.stats.failures == 0
    assert server.attempts == {"a": 3, "b": 3}


def test_openai_gives_up_after_max_retries(server: ChatServer) -> None:
    server.behaviour = lambda body, headers, attempt: (503, "overloaded", 0.0, {})
    client = _client(server)
    (out,) = client.generate(["a"], GenerationSettings(max_retries=2))
    assert not out.ok and out.attempts == 3 and out.error.startswith("http_503")
    assert server.attempts == {"a": 3}
    assert client.stats.retries == 2 and client.stats.errors == {"http_503": 1}


def test_openai_no_retry_on_400(server: ChatServer) -> None:
    server.behaviour = lambda body, headers, attempt: (400, {"error": "bad max_tokens"}, 0.0, {})
    client = _client(server)
    (out,) = client.generate(["a"], GenerationSettings(max_retries=3))
    assert not out.ok and out.attempts == 1 and "bad max_tokens" in out.error
    assert server.attempts == {"a": 1}
    assert client.stats.failures == 1 and client.stats.retries == 0 and client.stats.errors == {"http_400": 1}


def test_openai_timeout_is_a_counted_failure(server: ChatServer) -> None:
    server.behaviour = lambda body, headers, attempt: (200, ok_reply("late"), 1.5, {})
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


def test_openai_bad_payload_fails_without_retry(server: ChatServer) -> None:
    server.behaviour = lambda body, headers, attempt: (200, "not json", 0.0, {})
    client = _client(server)
    (out,) = client.generate(["a"])
    assert not out.ok and out.error.startswith("bad_response") and server.attempts == {"a": 1}


def test_openai_api_key_never_leaks(server: ChatServer, api_key: str, caplog: pytest.LogCaptureFixture) -> None:
    # A hostile/buggy server echoes the Authorization header back in its error body.
    server.behaviour = lambda body, headers, attempt: (401, {"error": f"bad key {headers['authorization']}"}, 0.0, {})
    client = _client(server, api_key)
    with caplog.at_level("DEBUG"):
        (out,) = client.generate(["a"])
    assert server.requests[0][2]["authorization"] == f"Bearer {SECRET}"  # it was sent...
    assert not out.ok and "***" in out.error
    leaks = [repr(client), str(client), repr(vars(client)), repr(client.stats), out.error, repr(out), caplog.text]
    assert all(SECRET not in text for text in leaks)  # ...and shows up nowhere else


def test_openai_generate_inside_a_running_event_loop(server: ChatServer) -> None:
    client = _client(server)

    async def caller() -> list[Completion]:
        return client.generate(["a"])  # sync API called from async code

    assert [c.text for c in asyncio.run(caller())] == ["echo: a"]


