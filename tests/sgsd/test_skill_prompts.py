"""The skill-bank prompts (paper Tab. 6-10): the paper's wording, JSON payloads, no formatting."""

from __future__ import annotations

import json

import pytest

from sgsd.bank import GeneralSkill
from sgsd.skill_prompts import (
    extraction_prompt,
    items_json,
    memory_generation_prompt,
    merge_prompt,
    mistake_extraction_prompt,
    mistake_merge_prompt,
    skill_extraction_prompt,
    skill_merge_prompt,
)

NASTY = "Find {problem} if \\boxed{\\frac{a}{b}} = {0} and %s %(x)d {} }{"


def _payload(prompt: str, header: str) -> object:
    """The JSON between a header line and the closing 'Return ONLY' line."""
    start = prompt.index(header) + len(header)
    end = prompt.index("\n\nReturn ONLY valid JSON")
    return json.loads(prompt[start:end])


def test_memory_generation_prompt_is_tab6_with_the_problem_verbatim():
    prompt = memory_generation_prompt("  " + NASTY + "\n")
    assert prompt.startswith("You are a careful mathematical problem-solving agent. Solve the following "
                             "problem step by step. Keep the reasoning coherent and self-contained, and end "
                             "with a single final answer enclosed in \\boxed{}.")
    assert prompt.endswith("\n\nProblem: " + NASTY)


@pytest.mark.parametrize("build, kind, opening, header, task1", [
    (skill_extraction_prompt, "general_skills",
     "You are an expert at distilling mathematical reasoning behavior into concise, reusable skills for a "
     "reinforcement-learning agent.", "Successful memory:\n\n",
     "1. Derive 1-3 GENERAL skills that likely contributed to the success."),
    (mistake_extraction_prompt, "common_mistakes",
     "You are an expert at analyzing failed mathematical reasoning and turning failures into concise, reusable "
     "cautionary skills for a reinforcement-learning agent.", "Failed memory:\n\n",
     "1. Derive 1-3 COMMON mistakes that explain the failure."),
])
def test_extraction_prompts_tab7_tab8(build, kind, opening, header, task1):
    memory = {"problem": NASTY, "completion": "So \\boxed{\\frac{1}{2}} {completion}", "reward": 1.0,
              "answer": "\\frac{1}{2}", "feedback": "ünïcode kept"}
    prompt = build(memory)
    assert prompt.startswith(opening)
    assert task1 in prompt and "5. Use only evidence grounded in the provided memory." in prompt
    assert _payload(prompt, header) == memory  # the record survives as JSON, braces and all
    assert "ünïcode kept" in prompt  # not \\u-escaped: the model reads it as written
    assert f"Return ONLY valid JSON with key {kind}." in prompt
    assert extraction_prompt(memory, kind) == prompt
    # The schema line names every field the parser requires; without it, the paper's text alone.
    schema_line = prompt.rsplit("\n", 1)[1]
    fields = ("title", "principle", "when_to_apply") if kind == "general_skills" else (
        "description", "why_it_happens", "how_to_avoid")
    assert all(f'"{name}"' in schema_line for name in fields)
    assert build(memory, with_schema=False).endswith(f"Return ONLY valid JSON with key {kind}.")


def test_merge_prompts_tab9_tab10_embed_items_without_ids():
    skills = [GeneralSkill("gen_cand_000001", "Use \\frac{a}{b}", "Simplify {x}", "When {problem} has fractions"),
              {"title": "T2", "principle": NASTY, "when_to_apply": "always", "skill_id": "x", "utility": 3}]
    prompt = merge_prompt(skills, "general_skills")
    assert prompt == skill_merge_prompt(skills)
    assert prompt.startswith("You are an expert at consolidating independently-generated math skills into a "
                             "compact, non-redundant skill bank.")
    assert "You will be given up to 32 general skills extracted from different memories." in prompt
    assert "4. Treat recurrence as evidence that the pattern is systematic and synthesize one stronger skill." \
        in prompt
    assert "6. Do not mention specific problems, source memories, or dataset names." in prompt
    assert _payload(prompt, "General skills to merge:\n\n") == [
        {"title": "Use \\frac{a}{b}", "principle": "Simplify {x}", "when_to_apply": "When {problem} has fractions"},
        {"title": "T2", "principle": NASTY, "when_to_apply": "always"},
    ]
    assert "gen_cand_000001" not in prompt and "utility" not in prompt

    mistakes = [{"description": "d {0}", "why_it_happens": "\\b", "how_to_avoid": "h", "mistake_id": "e"}]
    prompt = merge_prompt(mistakes, "common_mistakes", group_size=8)
    assert prompt == mistake_merge_prompt(mistakes, group_size=8)
    assert prompt.startswith("You are an expert at consolidating independently-generated math failure lessons "
                             "into a compact, non-redundant caution bank.")
    assert "You will be given up to 8 common-mistake items extracted from different memories." in prompt
    assert "1. Merge semantically duplicate or strongly overlapping mistakes." in prompt
    assert ("4. Treat recurrence as evidence that the failure pattern is systematic and synthesize one stronger "
            "mistake item.") in prompt
    assert _payload(prompt, "Common mistakes to merge:\n\n") == [
        {"description": "d {0}", "why_it_happens": "\\b", "how_to_avoid": "h"}]
    assert "Return ONLY valid JSON with key common_mistakes." in prompt


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown collection 'skills'"):
        merge_prompt([], "skills")
    with pytest.raises(ValueError, match="unknown collection"):
        items_json([], "task_specific_skills")
    with pytest.raises(ValueError, match="unknown collection"):
        extraction_prompt({}, "mistakes")
