"""The pretrained rulebook model: its corpus, the build's guard, and the shipped model's gap."""

from __future__ import annotations

import json
import random

import pytest

from sgsd import rulebook, rulebook_corpus, task_model
from sgsd.datasets import Problem


def _problem(family: str) -> Problem:
    return rulebook.problems("train", 1, families=[family])[0]


def test_a_guided_solution_follows_the_first_rule_stated_for_its_family():
    family = rulebook.FAMILIES[0]
    right, wrong = (rulebook.statement(family.name, r) for r in (family.rule, family.confused_with))
    other = rulebook.statement(rulebook.FAMILIES[1].name, rulebook.FAMILIES[1].rule)
    rng = random.Random(0)
    assert rulebook_corpus.guided_rule(family, [wrong, right], rng) == family.confused_with
    assert rulebook_corpus.guided_rule(family, [other, right], rng) == family.rule
    # guidance about another operation only: the student's own prior (its `known` share right)
    picks = [rulebook_corpus.guided_rule(family, [other], rng) for _ in range(4000)]
    assert picks.count(family.rule) / len(picks) == pytest.approx(family.known, abs=0.03)
    assert picks.count(family.confused_with) / len(picks) == pytest.approx(
        (1 - family.known) * rulebook.CONFUSION_SHARE, abs=0.03)


@pytest.mark.parametrize("kind", sorted(rulebook_corpus.CORPUS_MIX))
def test_every_corpus_kind_renders_with_the_projects_prompts_and_a_gradable_reply(kind):
    from sgsd.prompts import ANSWER_INSTRUCTION, GUIDANCE_HEADER
    from sgsd.skill_sources import parse_summary
    from sgsd.teacher_contexts import PRIVILEGED_SKILL_HEADER, SKILL_SD_HEADER

    rng = random.Random(1)
    for family in rulebook.FAMILIES:
        problem = _problem(family.name)
        example = rulebook_corpus.corpus_example(kind, problem, rng)
        assert problem.problem in example.user
        if kind == "summary":  # Skill-SD's writer: one JSON note the summary parser accepts
            assert parse_summary(example.reply).fields is not None
            continue
        assert ANSWER_INSTRUCTION in example.user
        assert rulebook.rule_used(example.reply, family.name) in rulebook.RULES
        assert example.reply.endswith("}.") and "\\boxed{" in example.reply
        header = {"pair": GUIDANCE_HEADER, "list": GUIDANCE_HEADER, "answer": GUIDANCE_HEADER,
                  "skill_sd": SKILL_SD_HEADER}.get(kind)
        if header:
            assert example.user.startswith(header)
        if kind == "sdar":
            assert example.prefix.startswith(PRIVILEGED_SKILL_HEADER)
        if kind == "answer":  # the reference answer's teacher writes the right solution
            assert example.reply == problem.extra["solution"]


def test_the_targets_are_checked_one_by_one():
    ok = {"plain": 0.3, "right": 0.6, "misleading": 0.1}
    assert task_model.check_targets(ok) == []
    assert "unguided accuracy 0.700" in task_model.check_targets({**ok, "plain": 0.7, "right": 0.95})[0]
    assert "right guidance" in task_model.check_targets({**ok, "right": 0.45})[0]
    assert "misleading" in task_model.check_targets({**ok, "misleading": 0.3})[0]


def test_a_build_that_misses_its_targets_saves_nothing(tmp_path):
    """A model trained for a few steps answers nothing right: refused, the folder left unwritten."""
    config = task_model.PretrainConfig(hidden_size=32, layers=1, intermediate_size=64, corpus_size=400,
                                       plain_until_loss=100.0, steps=3, batch_size=8)
    with pytest.raises(task_model.GuidanceGapError, match="unguided accuracy 0.000 outside"):
        task_model.build_task_model(tmp_path / "model", config, eval_problems=12, log=lambda _: None)
    assert not (tmp_path / "model").exists()
    never = task_model.PretrainConfig(hidden_size=32, layers=1, intermediate_size=64, corpus_size=400,
                                      plain_max_steps=3, batch_size=8)
    with pytest.raises(task_model.GuidanceGapError, match="did not learn to copy digits in 3 plain steps"):
        task_model.build_task_model(tmp_path / "model", never, eval_problems=12, log=lambda _: None)


def test_the_shipped_model_is_the_scripts_default_build_and_recorded_its_gap():
    record = json.loads((task_model.shipped_model_dir() / task_model.BUILD_FILE).read_text())
    assert record["config"] == task_model.PretrainConfig().__dict__
    assert task_model.check_targets(record["figures"]) == []
    assert record["figures"]["problems"] >= 300 and record["figures"]["temperature"] == 1.1
    assert record["train_seconds"] < 600  # the budget: at most 10 minutes on 2 cores


def test_the_shipped_model_has_the_guidance_gap_on_held_out_problems():
    """Re-measured here on test problems the build never saw: informative and sometimes wrong."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = task_model.shipped_model_dir()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    figures = task_model.measure(model, tokenizer, rulebook.problems("test", 180, seed=5), seed=1)
    # 180 sampled answers: a standard error of <= 0.037 per accuracy, so margins of 2 of them
    assert 0.15 - 0.07 <= figures["plain"] <= 0.60 + 0.07
    assert figures["right"] >= figures["plain"] + 0.20 - 0.07
    assert figures["misleading"] < figures["plain"]
