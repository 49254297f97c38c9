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

**Domains.** The paper's Tab. 7-10 are worded for math (``domain="math"``, the default,
byte-for-byte the text above). ``domain="agent"`` words them for multi-turn agent
episodes (a task message, a turn-by-turn transcript and an outcome instead of a problem and
a completion); the task list, the output schema and the closing lines are the same, so
:mod:`sgsd.parsing` reads both. See ``docs/agent-prompts.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sgsd.plain_text import plain_text

__all__ = [
    "COLLECTION_FIELDS",
    "DOMAINS",
    "Domain",
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
Domain = Literal["math", "agent"]

#: The wordings of Tab. 7-10: the paper's (math) and the multi-turn agent one.
DOMAINS: tuple[str, ...] = ("math", "agent")

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


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return domain


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


# The same two prompts for ONE multi-turn agent episode (domain="agent"): the memory holds
# the task message, the episode transcript and its outcome; the skills must be strategies
# for tasks of this kind, not one level's moves. Items 1, 4 and 5 are the paper's.
_AGENT_SKILL_EXTRACTION_INTRO = (
    "You are an expert at distilling multi-turn agent behaviour into concise, reusable skills "
    "for a reinforcement-learning agent.\n\n"
    "You will be given ONE successful episode memory of an agent at a multi-turn task. The memory "
    "contains the task (the environment's rules, the action format and the initial state), the episode "
    "transcript (the agent's replies and the environment's observations, turn by turn), and its outcome.\n\n"
    "Your task:\n"
    "1. Derive 1-3 GENERAL skills that likely contributed to the success.\n"
    "2. Each skill must be a general strategy for tasks of this kind, reusable on other levels and "
    "initial states; do not restate this episode's moves.\n"
    "3. Phrase each skill as an actionable principle; avoid level-specific positions, coordinates, move "
    "sequences, or one-off details unless they express a general method.\n"
    "4. Merge overlapping ideas inside this response; do not output near-duplicate skills.\n"
    "5. Use only evidence grounded in the provided memory.\n\n"
    "Successful memory:\n\n"
)

_AGENT_MISTAKE_EXTRACTION_INTRO = (
    "You are an expert at analyzing failed multi-turn agent behaviour and turning failures into concise, "
    "reusable cautionary skills for a reinforcement-learning agent.\n\n"
    "You will be given ONE failed episode memory of an agent at a multi-turn task. The memory contains "
    "the task (the environment's rules, the action format and the initial state), the episode transcript "
    "(the agent's replies and the environment's observations, turn by turn), and its outcome.\n\n"
    "Your task:\n"
    "1. Derive 1-3 COMMON mistakes that explain the failure.\n"
    "2. Each item must describe a general failure mode (such as invalid actions, repeated loops, or moves "
    "into a state the task cannot be solved from), why it happens, and how to avoid it in future episodes.\n"
    "3. Make every item broadly reusable across tasks of this kind; avoid level-specific positions, "
    "coordinates, or move sequences.\n"
    "4. Merge overlapping ideas inside this response; do not output near-duplicate mistakes.\n"
    "5. Use only evidence grounded in the provided memory.\n\n"
    "Failed memory:\n\n"
)

_EXTRACTION_INTROS = {
    ("math", "general_skills"): _SKILL_EXTRACTION_INTRO,
    ("math", "common_mistakes"): _MISTAKE_EXTRACTION_INTRO,
    ("agent", "general_skills"): _AGENT_SKILL_EXTRACTION_INTRO,
    ("agent", "common_mistakes"): _AGENT_MISTAKE_EXTRACTION_INTRO,
}


def _closing(kind: str, with_schema: bool) -> str:
    text = "\n\nReturn ONLY valid JSON with key " + kind + "."
    if with_schema:
        text += "\n" + output_schema_line(kind)
    return text


def skill_extraction_prompt(memory: Mapping[str, Any], *, with_schema: bool = True, domain: str = "math") -> str:
    """Tab. 7: up to three general skills from one successful memory record."""
    return (_EXTRACTION_INTROS[_check_domain(domain), "general_skills"] + memory_json(memory)
            + _closing("general_skills", with_schema))


def mistake_extraction_prompt(memory: Mapping[str, Any], *, with_schema: bool = True, domain: str = "math") -> str:
    """Tab. 8: up to three common mistakes from one failed memory record."""
    return (_EXTRACTION_INTROS[_check_domain(domain), "common_mistakes"] + memory_json(memory)
            + _closing("common_mistakes", with_schema))


def extraction_prompt(memory: Mapping[str, Any], kind: str, *, with_schema: bool = True, domain: str = "math") -> str:
    """Tab. 7 for ``general_skills`` (successes), Tab. 8 for ``common_mistakes`` (failures);
    ``domain`` (:data:`DOMAINS`) picks the paper's math wording or the agent-episode one."""
    _check_kind(kind)
    if kind == "general_skills":
        return skill_extraction_prompt(memory, with_schema=with_schema, domain=domain)
    return mistake_extraction_prompt(memory, with_schema=with_schema, domain=domain)


# -------------------------------------------------------------- Tab. 9 / 10
#: Tab. 9-10's only domain words: whose items are merged, and what they must not name.
_MERGE_SUBJECT = {"math": "math", "agent": "multi-turn agent"}
_MERGE_NO_SPECIFICS = {
    "math": "6. Do not mention specific problems, source memories, or dataset names.\n\n",
    "agent": "6. Do not mention specific tasks, levels, move sequences, source memories, or dataset names.\n\n",
}


def _merge_intro(what: str, lesson: str, bank: str, given: str, n: int, pattern: str, one: str,
                 domain: str = "math") -> str:
    _check_domain(domain)
    return (
        "You are an expert at consolidating independently-generated " + _MERGE_SUBJECT[domain] + " " + what
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
        + _MERGE_NO_SPECIFICS[domain]
    )


def skill_merge_prompt(
    items: Sequence[Any], *, group_size: int = 32, with_schema: bool = True, domain: str = "math"
) -> str:
    """Tab. 9: merge one group of general-skill candidates (``group_size`` = the "up to 32")."""
    intro = _merge_intro("skills", "skills", "skill bank", "general skills", group_size, "pattern", "skill",
                         domain)
    return (intro + "General skills to merge:\n\n" + items_json(items, "general_skills")
            + _closing("general_skills", with_schema))


def mistake_merge_prompt(
    items: Sequence[Any], *, group_size: int = 32, with_schema: bool = True, domain: str = "math"
) -> str:
    """Tab. 10: merge one group of common-mistake candidates."""
    intro = _merge_intro("failure lessons", "mistakes", "caution bank", "common-mistake items", group_size,
                         "failure pattern", "mistake item", domain)
    return (intro + "Common mistakes to merge:\n\n" + items_json(items, "common_mistakes")
            + _closing("common_mistakes", with_schema))


def merge_prompt(
    items: Sequence[Any], kind: str, *, group_size: int = 32, with_schema: bool = True, domain: str = "math"
) -> str:
    """Tab. 9 for ``general_skills``, Tab. 10 for ``common_mistakes``; ``domain`` as in
    :func:`extraction_prompt`."""
    _check_kind(kind)
    if kind == "general_skills":
        return skill_merge_prompt(items, group_size=group_size, with_schema=with_schema, domain=domain)
    return mistake_merge_prompt(items, group_size=group_size, with_schema=with_schema, domain=domain)
