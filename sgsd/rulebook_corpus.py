"""The rulebook model's pretraining corpus: the task in every prompt format the methods render.

Each :class:`Example` is one user message (or SDAR's raw prefix before the chat) and the reply a
model that knows the task *partly* would write, built by the project's own prompt code so the
formats are exactly what the trainer renders (:mod:`sgsd.task_model` has the table of kinds). The
student's rule for an operation is drawn from its prior (:attr:`sgsd.rulebook.Family.known`, then
its typical error); a reply under guidance follows the first rule the guidance states for the
problem's operation, else that prior.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

from sgsd import rulebook
from sgsd.bank import CommonMistake, GeneralSkill
from sgsd.datasets import Problem

__all__ = ["CORPUS_MIX", "Example", "corpus_example", "guided_rule", "pretraining_corpus", "prior_rule"]

#: kind -> share of the corpus
CORPUS_MIX: dict[str, float] = {"plain": 0.34, "pair": 0.28, "list": 0.09, "sdar": 0.07, "skill_sd": 0.07,
                                "answer": 0.08, "summary": 0.07}


@dataclass(frozen=True)
class Example:
    """One corpus example: the chat messages' user content (or a raw prefix before the chat, SDAR),
    whether the chat template's thinking is on, and the assistant's reply."""

    kind: str
    user: str
    reply: str
    enable_thinking: bool
    prefix: str = ""  # text before the chat template's first token (SDAR's privileged prefix)


def prior_rule(family: rulebook.Family, rng: random.Random) -> str:
    """The rule an unguided student picks for ``family`` (:attr:`Family.known`, then its confusion)."""
    u = rng.random()
    if u < family.known:
        return family.rule
    if u < family.known + (1 - family.known) * rulebook.CONFUSION_SHARE:
        return family.confused_with
    others = [r for r in rulebook.RULES if r not in (family.rule, family.confused_with)]
    return rng.choice(others)


def guided_rule(family: rulebook.Family, texts: Sequence[str], rng: random.Random) -> str:
    """The first rule ``texts`` state for ``family`` (in order), else the student's prior."""
    head = f"{family.name} means: "
    for text in texts:
        at = text.find(head)
        if at >= 0:
            rule = rulebook.rule_used(text[at:], family.name)
            if rule is not None:
                return rule
    return prior_rule(family, rng)


@functools.cache
def _bank():
    """The rulebook bank, built (and validated) once for the whole corpus, not once an example."""
    return rulebook.rulebook_bank()


def _items(family: rulebook.Family, rng: random.Random, count: int) -> tuple[list[GeneralSkill], list[CommonMistake]]:
    """``count`` skills and ``count`` mistakes as retrieval would bring them: the family's own
    (right or misleading) first more often than not, other families' items mixed in."""
    bank = _bank()
    own_s = [s for s in bank.general_skills if f"_{family.name}_" in s.skill_id]
    own_m = [m for m in bank.common_mistakes if f"_{family.name}_" in m.mistake_id]
    other_s = [s for s in bank.general_skills if f"_{family.name}_" not in s.skill_id]
    other_m = [m for m in bank.common_mistakes if f"_{family.name}_" not in m.mistake_id]

    def draw(own, other):
        picked = []
        pool_own, pool_other = rng.sample(own, len(own)), rng.sample(other, len(other))
        for _ in range(count):
            if pool_own and (rng.random() < 0.7 or not pool_other):
                picked.append(pool_own.pop())
            else:
                picked.append(pool_other.pop())
        return picked

    return draw(own_s, other_s), draw(own_m, other_m)


def corpus_example(kind: str, problem: Problem, rng: random.Random) -> Example:
    """One example of ``kind`` (:data:`CORPUS_MIX`) for a rulebook ``problem``."""
    from sgsd.prompts import answer_teacher_prompt, guidance_block, skill_student_prompt, student_prompt, teacher_prompt
    from sgsd.skill_sources import Skill, TrajectorySummary, summary_prompt
    from sgsd.records import RolloutRecord
    from sgsd.teacher_contexts import sdar_prefix, skill_sd_guidance

    family = rulebook.family_of(problem.problem)
    digits = list(problem.problem.rsplit(" ", 1)[1].rstrip("?"))
    think = rng.random() < 0.5

    def solved(rule: str) -> str:
        return rulebook.solution_text(family.name, digits, rule)

    if kind == "plain":
        return Example(kind, student_prompt(problem.problem), solved(prior_rule(family, rng)), rng.random() < 0.2)
    if kind == "pair":
        (skill,), (mistake,) = _items(family, rng, 1)
        rule = guided_rule(family, [skill.principle, mistake.how_to_avoid], rng)
        return Example(kind, teacher_prompt(problem.problem, skill, mistake), solved(rule), think)
    if kind == "list":
        skills, mistakes = _items(family, rng, rng.randint(2, 4))
        texts = [s.principle for s in skills] + [m.how_to_avoid for m in mistakes]
        if rng.random() < 0.3:  # OPSD+Skill's teacher: the answer too
            block = guidance_block(skills, mistakes, reference_answer=problem.answer)
            user = block + "\n\n" + student_prompt(problem.problem)
            return Example(kind, user, solved(family.rule), think)
        return Example(kind, skill_student_prompt(problem.problem, skills, mistakes),
                       solved(guided_rule(family, texts, rng)), think)
    if kind == "sdar":
        files = rulebook.rulebook_skill_files()
        own = [f for f in files if f["name"] == family.name]
        u = rng.random()
        chosen = own if u < 0.5 else files if u < 0.75 else [rng.choice(files)]
        text = "\n\n".join(f["text"] for f in chosen)
        return Example(kind, student_prompt(problem.problem), solved(guided_rule(family, [text], rng)), think,
                       prefix=sdar_prefix(text))
    if kind == "skill_sd":
        notes = []
        for _ in range(rng.randint(1, 3)):
            used = prior_rule(family, rng)
            ok = used == family.rule
            notes.append(Skill("note", TrajectorySummary("note", problem.problem, *_summary_fields(family, used, ok),
                                                         success=ok).text))
        texts = [n.text for n in notes if "Golden workflow" in n.text]
        user = skill_sd_guidance(notes) + "\n\n" + student_prompt(problem.problem)
        return Example(kind, user, solved(guided_rule(family, texts, rng)), think)
    if kind == "answer":
        return Example(kind, answer_teacher_prompt(problem.problem, problem.answer), solved(family.rule), think)
    if kind == "summary":
        used = prior_rule(family, rng)
        ok = used == family.rule
        record = RolloutRecord(problem.problem, solved(used), 1.0 if ok else 0.0)
        fields = dict(zip(("success_analysis", "mistake_analysis", "golden_workflow"),
                          _summary_fields(family, used, ok)))
        return Example(kind, summary_prompt(record), json.dumps(fields), rng.random() < 0.5)
    raise ValueError(f"unknown corpus kind {kind!r}: one of {', '.join(CORPUS_MIX)}")


def _summary_fields(family: rulebook.Family, used: str, success: bool) -> tuple[str, str, str]:
    """A skill note of one attempt: a success names the rule it used as the workflow; a failure
    names the rule that failed and leaves the workflow empty (the writer knows no better rule)."""
    said = rulebook.statement(family.name, used)
    if success:
        return f"Stating the rule first worked: {said}", "", f"1. {said} 2. Apply it to the list. 3. Box the digits."
    return "", f"The attempt used the wrong rule for {family.name}: {rulebook.RULES[used].wording}.", ""


def pretraining_corpus(count: int, seed: int = 0) -> list[Example]:
    """``count`` examples of the train split's problems, kinds drawn by :data:`CORPUS_MIX`."""
    rng = random.Random(f"corpus:{seed}")
    pool = rulebook.problems("train", 12_000, seed=seed)
    kinds, weights = zip(*CORPUS_MIX.items())
    return [corpus_example(rng.choices(kinds, weights)[0], rng.choice(pool), rng) for _ in range(count)]
