"""In-process fixtures of the teacher pass: the real tiny model as the policy, rollouts it
sampled from the student prompts of the CPU runs' data, and the SGSD config a CPU run
composes (recipe yaml + verl's defaults + the run's and a variant's overrides)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from recipe.sgsd.teacher_pass import Rollouts
from tests.tiny_policy import load_model, response_log_probs, sample_responses, student_prompt_ids

REWARDS = (1.0, 0.0, 1.0, 0.0)  # alternating outcomes: both polarity signs occur whatever is sampled


@dataclass
class TinyBatch:
    rows: list[dict]  # the verl parquet rows the rollouts were sampled from
    prompts: list[torch.Tensor]  # rendered student prompts
    rollouts: Rollouts


@pytest.fixture(scope="session")
def policy(run_model_dir):
    return load_model(run_model_dir)


@pytest.fixture(scope="session")
def run_tokenizer(run_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(run_model_dir)


@pytest.fixture(scope="session")
def tiny_batch(policy, run_tokenizer) -> TinyBatch:
    """Four rollouts of the real tiny model (sampled, 24 tokens at most, eos-terminated)."""
    from sgsd.datasets import load_problems, shipped_path
    from sgsd.verl_data import problem_text, to_verl_rows

    rows = to_verl_rows(load_problems(shipped_path("train", "math_train.jsonl"))[: len(REWARDS)], "math", "train")
    prompts = [student_prompt_ids(run_tokenizer, row) for row in rows]
    responses = sample_responses(policy, run_tokenizer, prompts, max_new_tokens=24, seed=0)
    rollouts = Rollouts(
        responses=responses, response_masks=[torch.ones(len(r)) for r in responses],
        log_probs=[response_log_probs(policy, p, r) for p, r in zip(prompts, responses)],
        rewards=torch.tensor(REWARDS), problems=[problem_text(r["extra_info"], r["prompt"]) for r in rows],
        answers=[r["reward_model"]["ground_truth"] for r in rows],
    )
    return TinyBatch(rows, prompts, rollouts)


@pytest.fixture(scope="session")
def run_config():
    """``run_config(*overrides, variant=None)``: the verl config a CPU run composes and
    ``main_sgsd`` prepares (``.sgsd`` is validated on the way)."""
    return compose_run_config


@pytest.fixture(scope="session")
def make_teacher_pass(run_tokenizer, encoder, shipped_bank):
    """``make_teacher_pass(config)``: the trainer's TeacherPass for a prepared verl config,
    over the shipped Qwen3-1.7B bank (what CPU runs use) or ``bank``."""
    from recipe.sgsd.teacher_pass import TeacherPass
    from sgsd.retrieval import SkillRetriever

    retrievers: dict = {}  # one per bank and setting: the bank's embeddings are computed once

    def make(config, bank=None) -> TeacherPass:
        cfg, bank = sgsd_config_of(config), bank or shipped_bank
        key = (id(bank), cfg.top_k, cfg.alpha_temperature)
        if key not in retrievers:
            retrievers[key] = (bank, SkillRetriever(encoder, bank, top_k=cfg.top_k, temperature=cfg.alpha_temperature))
        return TeacherPass(cfg, run_tokenizer, retrievers[key][1])

    return make


def compose_run_config(*overrides: str, variant: str | None = None):
    from hydra import compose, initialize_config_dir

    from recipe.sgsd.cpu.overrides import CPU_OVERRIDES
    from recipe.sgsd.cpu.run import ROOT, CPURun
    from recipe.sgsd.main_sgsd import prepare_config

    run = CPURun(ROOT / "unused", model_dir=ROOT / "unused", data_dir=ROOT / "unused", variant=variant,
                 extra=list(overrides))
    with initialize_config_dir(config_dir=str(ROOT / "recipe" / "sgsd" / "config"), version_base=None):
        return prepare_config(compose(config_name="sgsd_trainer", overrides=[*CPU_OVERRIDES, *run.overrides()]))


def sgsd_config_of(config):
    from omegaconf import OmegaConf

    from sgsd.config import SGSDConfig

    return SGSDConfig.from_mapping(OmegaConf.to_container(config.sgsd, resolve=True))
