"""LLM clients for skill extraction and merging (one interface, several backends).

Every backend module imports its heavy library (torch/transformers, vllm, httpx) inside
its functions, so importing this package stays cheap.
"""

from sgsd.llm.base import Completion, GenerationSettings, LLMClient, LLMStats, Prompt, as_messages
from sgsd.llm.factory import make_client
from sgsd.llm.openai_client import OpenAICompatibleClient
from sgsd.llm.scripted import ScriptedClient
from sgsd.llm.transformers_client import TransformersClient
from sgsd.llm.vllm_client import VLLMClient

__all__ = [
    "Completion",
    "GenerationSettings",
    "LLMClient",
    "LLMStats",
    "OpenAICompatibleClient",
    "Prompt",
    "ScriptedClient",
    "TransformersClient",
    "VLLMClient",
    "as_messages",
    "make_client",
]
