"""Prompts that build and maintain the skill bank (paper App. C.2-C.4, Tab. 6-10).

* :func:`memory_generation_prompt` - Tab. 6, sampling a cold-start memory for a problem;
* :func:`skill_extraction_prompt` - Tab. 7, general skills from ONE successful memory;
* :func:`mistake_extraction_prompt` - Tab. 8, common mistakes from ONE failed memory;
* :func:`skill_merge_prompt` / :func:`mistake_merge_prompt` - Tab. 9 / Tab. 10, one
  group of the hierarchical merge (Alg. 3); :func:`merge_prompt` picks by collection.

The wording is the paper's. Every template is assembled by concatenation, never with
``str.format``/``%``: problems, completions and skill texts are full of LaTeX braces
(``\\boxed{}``, ``\\frac{a}{b}``) and may even contain ``{problem}``-like text, which
must reach the model unchanged and must not be able to inject into the template.

One addition to the paper's text, on by default (``with_schema=True``): after the
paper's closing line "Return ONLY valid JSON with key ..." a second line shows the
item fields. Tab. 7-8 never name the fields although Alg. 2 (lines 10 and 13)
requires them, and :mod:`sgsd.parsing` drops items without them; ``with_schema=False``
renders the paper's text alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sgsd.plain_text import plain_text

__all__ = [
    "COLLECTION_FIELDS",
    "Kind",
    "extraction_prompt",
    "items_json",
    "memory_generation_prompt",
    "memory_json",
    "merge_prompt",
    "mistake_extraction_prompt",
    "mistake_merge_prompt",
    "output_schema_line",
    "skill_extraction_prompt",
    "skill_merge_prompt",
]

Kind = Literal["general_skills", "common_mistakes"]

#: The text fields a model writes for each collection (paper Tab. 5, Alg. 2).
COLLECTION_FIELDS: dict[str, tuple[str, ...]] = {
    "general_skills": ("title", "principle", "when_to_apply"),
    "common_mistakes": ("description", "why_it_happens", "how_to_avoid"),
}


def _check_kind(kind: str) -> tuple[str, ...]:
    try:
        return COLLECTION_FIELDS[kind]
    except KeyError:
        raise ValueError(f"unknown collection {kind!r}; expected one of {tuple(COLLECTION_FIELDS)}") from None


def memory_json(memory: Mapping[str, Any]) -> str:
    """A memory record as the pretty-printed JSON the extraction prompts embed (plain text:
    a control marker in a problem or completion is broken, :mod:`sgsd.plain_text`)."""
    return plain_text(json.dumps(dict(memory), indent=2, ensure_ascii=False))


def _text_fields(item: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return {name: item[name] for name in fields if name in item}
    return {name: getattr(item, name) for name in fields if hasattr(item, name)}


def items_json(items: Sequence[Any], kind: str) -> str:
    """The items of one merge group (mappings or bank items) as a JSON list of their text fields.

    Ids and bookkeeping keys are left out on purpose: the merge prompt asks the model
    not to mention source memories, and ids invite it to copy or cite them.
    """
    fields = _check_kind(kind)
    return plain_text(json.dumps([_text_fields(item, fields) for item in items], indent=2, ensure_ascii=False))


def output_schema_line(kind: str) -> str:
    """The one-line output format appended after the paper's closing sentence."""
    fields = _check_kind(kind)
    example = {kind: [{name: "..." for name in fields}]}
    return "Use exactly this form: " + json.dumps(example, ensure_ascii=False)


# --------------------------------------------------------------------- Tab. 6
MEMORY_GENERATION_HEADER = (
    "You are a careful mathematical problem-solving agent. Solve the following problem step by step. "
    "Keep the reasoning coherent and self-contained, and end with a single final answer enclosed in "
    "\\boxed{}."
)


def memory_generation_prompt(problem: str) -> str:
    """Tab. 6: the prompt a cold-start memory's completion is sampled from."""
    return MEMORY_GENERATION_HEADER + "\n\nProblem: " + plain_text(problem.strip())


# --------------------------------------------------------------- Tab. 7 / 8
_SKILL_EXTRACTION_INTRO = (
    "You are an expert at distilling mathematical reasoning behavior into concise, reusable skills "
    "for a reinforcement-learning agent.\n\n"
    "You will be given ONE successful math problem-solving memory. The memory contains the original "
    "problem, a compact reasoning trajectory, and a summarized raw attempt.\n\n"
    "Your task:\n"
    "1. Derive 1-3 GENERAL skills that likely contributed to the success.\n"
    "2. Each skill must be broadly reusable across algebra, geometry, number theory, combinatorics, "
    "and olympiad-style reasoning.\n"
    "3. Phrase each skill as an actionable principle; avoid task-specific constants, entity names, or "
    "one-off details unless they express a general method.\n"
    "4. Merge overlapping ideas inside this response; do not output near-duplicate skills.\n"
    "5. Use only evidence grounded in the provided memory.\n\n"
    "Successful memory:\n\n"
)

_MISTAKE_EXTRACTION_INTRO = (
    "You are an expert at analyzing failed mathematical reasoning and turning failures into concise, "
    "reusable cautionary skills for a reinforcement-learning agent.\n\n"
    "You will be given ONE failed math problem-solving memory. The memory contains the original "
    "problem, summarized failure evidence, and the raw final attempt.\n\n"
    "Your task:\n"
    "1. Derive 1-3 COMMON mistakes that explain the failure.\n"
    "2. Each item must describe a general failure mode, why it happens, and how to avoid it in future "
    "math reasoning.\n"
    "3. Make every item broadly reusable across algebra, geometry, number theory, combinatorics, and "
    "olympiad-style reasoning.\n"
    "4. Merge overlapping ideas inside this response; do not output near-duplicate mistakes.\n"
    "5. Use only evidence grounded in the provided memory.\n\n"
    "Failed memory:\n\n"
)


def _closing(kind: str, with_schema: bool) -> str:
    text = "\n\nReturn ONLY valid JSON with key " + kind + "."
    if with_schema:
        text += "\n" + output_schema_line(kind)
    return text


def skill_extraction_prompt(memory: Mapping[str, Any], *, with_schema: bool = True) -> str:
    """Tab. 7: up to three general skills from one successful memory record."""
    return _SKILL_EXTRACTION_INTRO + memory_json(memory) + _closing("general_skills", with_schema)


def mistake_extraction_prompt(memory: Mapping[str, Any], *, with_schema: bool = True) -> str:
    """Tab. 8: up to three common mistakes from one failed memory record."""
    return _MISTAKE_EXTRACTION_INTRO + memory_json(memory) + _closing("common_mistakes", with_schema)


def extraction_prompt(memory: Mapping[str, Any], kind: str, *, with_schema: bool = True) -> str:
    """Tab. 7 for ``general_skills`` (successes), Tab. 8 for ``common_mistakes`` (failures)."""
    _check_kind(kind)
    if kind == "general_skills":
        return skill_extraction_prompt(memory, with_schema=with_schema)
    return mistake_extraction_prompt(memory, with_schema=with_schema)


# -------------------------------------------------------------- Tab. 9 / 10
def _merge_intro(what: str, lesson: str, bank: str, given: str, n: int, pattern: str, one: str) -> str:
    return (
        "You are an expert at consolidating independently-generated math " + what
        + " into a compact, non-redundant " + bank + ".\n\n"
        "You will be given up to " + str(n) + " " + given + " extracted from different memories. "
        "Some are duplicates, some partially overlap, and some are unique.\n\n"
        "Your task:\n"
        "1. Merge semantically duplicate or strongly overlapping " + lesson + ".\n"
        "2. Preserve all unique insights.\n"
        "3. Prefer the most general, transferable wording.\n"
        "4. Treat recurrence as evidence that the " + pattern + " is systematic and synthesize one "
        "stronger " + one + ".\n"
        "5. Do not force a fixed final count.\n"
        "6. Do not mention specific problems, source memories, or dataset names.\n\n"
    )


def skill_merge_prompt(
    items: Sequence[Any], *, group_size: int = 32, with_schema: bool = True
) -> str:
    """Tab. 9: merge one group of general-skill candidates (``group_size`` = the "up to 32")."""
    intro = _merge_intro("skills", "skills", "skill bank", "general skills", group_size, "pattern", "skill")
    return (intro + "General skills to merge:\n\n" + items_json(items, "general_skills")
            + _closing("general_skills", with_schema))


def mistake_merge_prompt(
    items: Sequence[Any], *, group_size: int = 32, with_schema: bool = True
) -> str:
    """Tab. 10: merge one group of common-mistake candidates."""
    intro = _merge_intro("failure lessons", "mistakes", "caution bank", "common-mistake items", group_size,
                         "failure pattern", "mistake item")
    return (intro + "Common mistakes to merge:\n\n" + items_json(items, "common_mistakes")
            + _closing("common_mistakes", with_schema))


def merge_prompt(
    items: Sequence[Any], kind: str, *, group_size: int = 32, with_schema: bool = True
) -> str:
    """Tab. 9 for ``general_skills``, Tab. 10 for ``common_mistakes``."""
    _check_kind(kind)
    if kind == "general_skills":
        return skill_merge_prompt(items, group_size=group_size, with_schema=with_schema)
    return mistake_merge_prompt(items, group_size=group_size, with_schema=with_schema)
