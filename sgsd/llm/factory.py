"""Build an LLM client from a short spec (CLI flags, config values).

String form: ``BACKEND:TARGET[?KEY=VALUE&KEY=VALUE...]``

- ``transformers:PATH`` -- a local ``transformers`` model, e.g.
  ``transformers:/ckpt/qwen3-1.7b?device=cuda&dtype=bfloat16&batch_size=4``
- ``vllm:MODEL`` -- the vLLM offline engine, e.g.
  ``vllm:Qwen/Qwen3-1.7B?tensor_parallel_size=2&max_model_len=8192``
  (any further key goes to ``vllm.LLM``, e.g. ``enforce_eager=true``)
- ``openai:URL#MODEL`` -- an OpenAI-compatible server, ``#`` separating the API root from
  the served model name, e.g. ``openai:http://127.0.0.1:8000/v1#Qwen/Qwen3-1.7B?concurrency=16``
- ``scripted:TEXT`` -- answers every prompt with ``TEXT`` verbatim (dry runs; no options)

Option values are read as ``true``/``false``, ``none``, integers, floats, else strings; a
key the backend does not take is an error naming the ones it does.

Mapping form (YAML/JSON config): ``{"backend": "openai", "base_url": ..., "model": ...,
"concurrency": 16}`` -- ``backend`` plus the client's constructor arguments.

The SGSD config's default writer, ``policy``, is the trainer's own rollout engine; the
trainer builds that client itself, so it is not a spec for this function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from sgsd.llm.base import LLMClient
from sgsd.llm.openai_client import OpenAICompatibleClient
from sgsd.llm.scripted import ScriptedClient
from sgsd.llm.transformers_client import TransformersClient
from sgsd.llm.vllm_client import VLLMClient

__all__ = ["BACKENDS", "make_client", "parse_spec"]

# backend -> (client class, name of the constructor argument the TARGET fills)
BACKENDS: dict[str, tuple[Callable[..., LLMClient], str]] = {
    "transformers": (TransformersClient, "model_name_or_path"),
    "vllm": (VLLMClient, "model"),
    "openai": (OpenAICompatibleClient, "base_url"),
    "scripted": (ScriptedClient, "replies"),
}


def make_client(spec: str | Mapping[str, Any]) -> LLMClient:
    """A client for ``spec`` (see the module docstring for the syntax).

    Raises:
        ValueError: unknown backend, malformed spec, or an option the backend does not take.
        ImportError: the backend's library is missing (vllm outside the ``gpu`` extra).
    """
    backend, kwargs = parse_spec(spec)
    cls, _ = BACKENDS[backend]
    _check_options(backend, cls, kwargs)
    return cls(**kwargs)


def parse_spec(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(backend, constructor kwargs)`` for a string or mapping spec, without building anything."""
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        backend = str(kwargs.pop("backend", ""))
        _check_backend(backend, spec)
        return backend, kwargs
    if not isinstance(spec, str):
        raise TypeError(f"an LLM client spec is a string or a mapping, got {type(spec).__name__}")

    backend, sep, target = spec.partition(":")
    backend = backend.strip().lower()
    if not sep and backend != "policy":
        raise ValueError(f"LLM client spec {spec!r} has no backend: write BACKEND:TARGET, backends: {_valid()}")
    _check_backend(backend, spec)
    if backend == "scripted":
        # Everything after the colon is the reply, "?" and "#" included.
        return backend, {"replies": lambda _prompt, text=target: text}

    target, _, query = target.partition("?")
    kwargs = {key: _coerce(value) for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False)}
    if backend == "openai":
        base_url, hash_sep, model = target.partition("#")
        if not hash_sep or not base_url or not model:
            raise ValueError(f"openai spec {spec!r} must be openai:BASE_URL#MODEL, "
                             "e.g. openai:http://127.0.0.1:8000/v1#Qwen/Qwen3-1.7B")
        kwargs.update(base_url=base_url, model=model)
    else:
        if not target:
            raise ValueError(f"{backend} spec {spec!r} names no model: write {backend}:MODEL")
        kwargs[BACKENDS[backend][1]] = target
    return backend, kwargs


def _check_backend(backend: str, spec: Any) -> None:
    if backend == "policy":
        raise ValueError("the 'policy' writer is the trainer's own rollout engine and is built by the trainer; "
                         f"make_client takes one of: {_valid()}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown LLM backend {backend!r} in spec {spec!r}; valid backends: {_valid()}")


def _check_options(backend: str, cls: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Reject options the constructor does not take (a typo must not pass silently) or lacks."""
    params = inspect.signature(cls).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [] if open_ended else sorted(set(kwargs) - set(params))  # vllm: extras are engine args
    if unknown:
        raise ValueError(f"{backend} client takes no option(s) {unknown}; valid: {sorted(params)}")
    missing = sorted(name for name, p in params.items()
                     if p.default is inspect.Parameter.empty and name not in kwargs
                     and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD))
    if missing:
        raise ValueError(f"{backend} client needs {missing}")


def _coerce(value: str) -> Any:
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value


def _valid() -> str:
    return ", ".join(sorted(BACKENDS))
