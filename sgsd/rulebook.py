"""Rulebook: a synthetic task a tiny model learns on CPU, where privileged guidance genuinely helps.

Each problem names an invented operation on a number of four distinct digits::

    What is zorp of 3715?

Every operation (a *family*) rearranges the list by one fixed rule - ``zorp`` moves the first
digit to the end - and its short worked solution states that rule, applies it and boxes the
result::

    zorp means: move the first digit to the end.
    zorp of 3715 is \\boxed{7153}.

The rule is what the model must know: the six rules are distinct permutations, so for distinct
digits each rule gives a different answer and only the family's own rule is graded correct (by
the project's verifier, :mod:`sgsd.verifier`). What a skill would say is the rule itself, so the
guidance is in the bank's own format (:func:`rulebook_bank`): per family a general skill and a
common mistake stating the right rule, and a *misleading* skill and mistake stating a wrong one,
mixed into the same bank, which the outcome-validated polarity has to reject. SDAR's skill-file
teacher gets the right rules (:func:`rulebook_skill_files`), OPSD's answer teacher the reference
answer (each row's ground truth, with the worked solution in ``extra_info.solution``).

Problems are generated from a seed; train, validation and test splits are disjoint by
construction: each (family, list) problem belongs to exactly one split, chosen by the sha256 of
its statement (:func:`split_of`), so a split never depends on how many problems were drawn.

The pretrained model of :mod:`sgsd.task_model` learns this task from :func:`pretraining_corpus`:
the student's solutions pick the right rule with a per-family probability
(:attr:`Family.known`), and a solution written under guidance follows the first rule the
guidance states for the problem's family - so teachers with the right guidance are better than
the student, teachers with a misleading item worse, and a teacher shown another family's items no
better (the regime SGSD is designed for).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

from sgsd.bank import CommonMistake, GeneralSkill, SkillBank
from sgsd.datasets import Problem

__all__ = [
    "DATA_SOURCE",
    "DIGITS",
    "FAMILIES",
    "RULES",
    "SPLITS",
    "Family",
    "Rule",
    "answer_of",
    "family_of",
    "problem_text",
    "problems",
    "rulebook_bank",
    "rulebook_skill_files",
    "rule_used",
    "solution_text",
    "split_of",
    "write_guidance_files",
]

DATA_SOURCE = "rulebook"
DIGITS = "123456789"
LIST_LENGTH = 4
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Rule:
    """A rearrangement of four digits, as the worked solutions word it."""

    name: str
    wording: str  # completes "<family> means: ..."
    order: tuple[int, ...]  # the result is [digits[i] for i in order]

    def apply(self, digits: Sequence[str]) -> tuple[str, ...]:
        return tuple(digits[i] for i in self.order)


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("reverse", "write the digits in reverse order", (3, 2, 1, 0)),
    Rule("rotate_left", "move the first digit to the end", (1, 2, 3, 0)),
    Rule("rotate_right", "move the last digit to the front", (3, 0, 1, 2)),
    Rule("swap_ends", "swap the first and the last digit", (3, 1, 2, 0)),
    Rule("swap_pairs", "swap the first two digits and swap the last two digits", (1, 0, 3, 2)),
    Rule("swap_middle", "swap the two middle digits", (0, 2, 1, 3)),
)}


@dataclass(frozen=True)
class Family:
    """An invented operation: its name, its rule, the wrong rule its misleading items state, and
    how often the pretrained student picks its rule unguided (``known``; the rest of the mass goes
    to ``confused_with`` first - the family's typical error - then evenly to the other rules)."""

    name: str
    rule: str
    confused_with: str
    known: float


FAMILIES: tuple[Family, ...] = (
    Family("zorp", "rotate_left", "rotate_right", 0.55),
    Family("blick", "reverse", "swap_ends", 0.45),
    Family("frell", "swap_ends", "reverse", 0.3),
    Family("quon", "swap_pairs", "swap_middle", 0.2),
    Family("dax", "rotate_right", "rotate_left", 0.1),
    Family("wug", "swap_middle", "swap_pairs", 0.05),
)
_BY_NAME = {f.name: f for f in FAMILIES}
#: the share of a family's unknown mass its typical error takes (the rest is spread evenly)
CONFUSION_SHARE = 0.6


def problem_text(family: str, digits: Sequence[str]) -> str:
    return f"What is {family} of {''.join(digits)}?"


def family_of(problem: str) -> Family:
    """The family a problem statement names (``ValueError`` if it names none)."""
    words = problem.replace("?", " ").split()
    for word in words:
        if word in _BY_NAME:
            return _BY_NAME[word]
    raise ValueError(f"not a rulebook problem (names no operation of {', '.join(_BY_NAME)}): {problem[:80]!r}")


def statement(family: str, rule: str) -> str:
    """The rule sentence every piece of guidance and every worked solution shares."""
    return f"{family} means: {RULES[rule].wording}."


def solution_text(family: str, digits: Sequence[str], rule: str | None = None) -> str:
    """The worked solution of ``family`` applied to ``digits`` by ``rule`` (default: its own)."""
    rule = rule or _BY_NAME[family].rule
    result = RULES[rule].apply(digits)
    # "<family> of <digits>" repeats the problem's own words, so the digits are copied after the
    # same token as in the problem (what a small model's copying heads find first); the result
    # follows at fixed distances from them
    return f"{statement(family, rule)}\n{family} of {''.join(digits)} is \\boxed{{{''.join(result)}}}."


def answer_of(family: str, digits: Sequence[str]) -> str:
    return "".join(RULES[_BY_NAME[family].rule].apply(digits))


def rule_used(solution: str, family: str) -> str | None:
    """The rule a solution states for ``family`` (``None`` if it states no known rule)."""
    head = f"{family} means: "
    at = solution.find(head)
    if at < 0:
        return None
    rest = solution[at + len(head):]
    # longest wording first: "swap the first two ..." must not be read as a shorter rule's prefix
    for rule in sorted(RULES.values(), key=lambda r: -len(r.wording)):
        if rest.startswith(rule.wording + "."):
            return rule.name
    return None


def split_of(family: str, digits: Sequence[str]) -> str:
    """The one split a problem belongs to: 70% train, 10% val, 20% test by its statement's sha256."""
    bucket = int(hashlib.sha256(problem_text(family, digits).encode()).hexdigest()[:8], 16) % 10
    return "val" if bucket == 0 else "test" if bucket in (1, 2) else "train"


def _all_lists() -> list[tuple[str, ...]]:
    return list(permutations(DIGITS, LIST_LENGTH))


def problems(split: str, count: int, seed: int = 0, families: Sequence[str] | None = None) -> list[Problem]:
    """``count`` distinct problems of ``split``, the families in turn, the lists drawn by ``seed``.

    Every split holds ~300-2,100 problems of each family (3,024 numbers of four distinct digits);
    asking for more than a split holds is a ``ValueError``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    names = list(families) if families is not None else [f.name for f in FAMILIES]
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown or not names:
        raise ValueError(f"unknown families {unknown or names}: the rulebook has {', '.join(_BY_NAME)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = random.Random(f"rulebook:{split}:{seed}")
    pools = {}
    for name in names:
        pool = [d for d in _all_lists() if split_of(name, d) == split]
        rng.shuffle(pool)
        pools[name] = pool
    capacity = sum(len(p) for p in pools.values())
    if count > capacity:
        raise ValueError(f"the {split} split holds {capacity} problems of {', '.join(names)}; asked for {count}")
    out: list[Problem] = []
    cursor = dict.fromkeys(names, 0)
    while len(out) < count:
        for name in names:
            if len(out) == count:
                break
            if cursor[name] < len(pools[name]):
                digits = pools[name][cursor[name]]
                cursor[name] += 1
                out.append(Problem(problem_text(name, digits), answer_of(name, digits),
                                   {"solution": solution_text(name, digits), "family": name}))
    return out


def _skill(family: Family, rule: str, item_id: str) -> GeneralSkill:
    return GeneralSkill(item_id, f"The {family.name} operation", statement(family.name, rule),
                        f"A problem asks for {family.name} of a number.")


def _mistake(family: Family, rule: str, avoided: str, item_id: str) -> CommonMistake:
    return CommonMistake(item_id, f"Confusing {family.name} with another operation: {family.name} does not "
                                  f"{RULES[avoided].wording}.",
                         "The invented digit operations are easy to mix up.",
                         f"Remember that {statement(family.name, rule)}")


def rulebook_bank(misleading: bool = True) -> SkillBank:
    """Per family a right skill and a right mistake; with ``misleading`` (the default) also a
    misleading skill and mistake that state the family's typical error as its rule. Ids say
    which is which (``skill_<name>_right``, ``mistake_<name>_misleading``, ...) so a run's teachers can be read by id."""
    skills, mistakes = [], []
    for f in FAMILIES:
        skills.append(_skill(f, f.rule, f"skill_{f.name}_right"))
        mistakes.append(_mistake(f, f.rule, f.confused_with, f"mistake_{f.name}_right"))
        if misleading:
            skills.append(_skill(f, f.confused_with, f"skill_{f.name}_misleading"))
            mistakes.append(_mistake(f, f.confused_with, f.rule, f"mistake_{f.name}_misleading"))
    return SkillBank(general_skills=tuple(skills), common_mistakes=tuple(mistakes),
                     metadata={"source": "sgsd-verl: the rulebook task's guidance (sgsd/rulebook.py); "
                                         "right and misleading items per operation"})


def rulebook_skill_files() -> list[dict]:
    """SDAR's skill files for the rulebook: one skill per operation, keyed by its name."""
    return [{"name": f.name, "text": f"{statement(f.name, f.rule)} Apply it to the digits as given, then box "
                                     f"the result.", "keywords": [f.name]}
            for f in FAMILIES]


def write_guidance_files(data_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The shipped ``skill_banks/rulebook.json`` and ``skills/rulebook.json`` under ``data_dir``
    (``sgsd/data``), as :func:`rulebook_bank` and :func:`rulebook_skill_files` make them."""
    from sgsd.atomic import atomic_write_json

    root = Path(data_dir)
    bank = rulebook_bank().save(root / "skill_banks" / f"{DATA_SOURCE}.json")
    skills = atomic_write_json(root / "skills" / f"{DATA_SOURCE}.json", rulebook_skill_files())
    return bank, skills
