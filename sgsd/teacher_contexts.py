"""What each method's teacher sees, as one pluggable piece.

A :class:`TeacherContext` turns a problem and its retrieved :class:`TeacherGuidance` into the
teacher's prompt ids, under the same contract as :func:`sgsd.prompts.teacher_prompt_ids`:
``prompt_ids(tokenizer, problem, guidance, fmt, max_tokens) -> (ids, truncated)``, at most
``max_tokens`` ids, where only the guidance is ever cut - never the problem, the instruction,
the chat scaffolding (and the response, which the teacher pass appends after these ids) -
and a ``ValueError`` when even the guidance-free prompt is over the budget. ``present``
says whether the guidance gives this context a teacher at all (a planner gives a problem
without one no teacher, alpha 0, as for SGSD's ``K_x < K``).

=========== ============================================== =====================================
name        teacher prompt                                 truncation
=========== ============================================== =====================================
``skills``  SGSD: one skill-mistake pair (+ the answer,    guidance block cut from its end
            Fig. 3d) before the student prompt, in the
            chat template (paper Fig. 6)
``answer``  OPSD: the reference answer before the student  as ``skills``
            prompt
``skill_sd`` Skill-SD: the retrieved trajectory summaries  as ``skills`` (the last summaries go
            before the plain task prompt, in the chat      first)
            template
``sdar``    SDAR: ``[Privileged Skill Information]\\n``    LEFT: the skill text is cut from its
            ``{skill text}\\n\\n`` + the chat-templated     start; the header and the whole
            student prompt                                 student prompt stay
=========== ============================================== =====================================

SDAR's text is the SDAR authors' (``build_teacher_batch`` in their ``rlsd_ray_trainer.py``):
the prefix goes before the chat template's first token, several skills are joined with a
blank line. Their code keeps the last ``max_prompt_length`` tokens of the whole string,
which cuts the header first and, for a long prompt, the problem too; here the header and
the problem are kept and only the skill text loses its start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sgsd.plain_text import added_token_strings, plain_text
from sgsd.prompts import ChatFormat, apply_chat, fit_guidance, guidance_block, teacher_prompt_ids
from sgsd.retrieval import TeacherPair
from sgsd.skill_sources import Skill

__all__ = [
    "PRIVILEGED_SKILL_HEADER",
    "SKILL_SD_HEADER",
    "TEACHER_CONTEXTS",
    "AnswerContext",
    "SDARContext",
    "SkillPairContext",
    "SkillSDContext",
    "TeacherContext",
    "TeacherGuidance",
    "sdar_prefix",
    "skill_sd_guidance",
    "teacher_context",
]

PRIVILEGED_SKILL_HEADER = "[Privileged Skill Information]"
SKILL_SD_HEADER = ("Skill notes summarised from earlier attempts at this problem (training-only guidance). "
                   "Use them as soft guidance and solve the problem yourself.")


@dataclass(frozen=True)
class TeacherGuidance:
    """What a teacher may be conditioned on for one problem; each context reads its part."""

    pair: TeacherPair | None = None  # skills: the retrieved skill-mistake pair
    reference_answer: str | None = None  # answer (and skills + answer, Fig. 3d)
    skills: tuple[Skill, ...] = ()  # skill_sd (summaries) / sdar (skill files)


@runtime_checkable
class TeacherContext(Protocol):
    name: str

    def present(self, guidance: TeacherGuidance) -> bool: ...

    def prompt_ids(self, tokenizer: Any, problem: str, guidance: TeacherGuidance, fmt: ChatFormat,
                   max_tokens: int | None = None) -> tuple[list[int], bool]: ...


def _require(context: TeacherContext, guidance: TeacherGuidance, needs: str) -> None:
    if not context.present(guidance):
        raise ValueError(f"the {context.name!r} teacher context needs {needs}; check present() before building")


class SkillPairContext:
    """SGSD's teacher k: one retrieved pair (and, with ``reference_answer``, the answer)."""

    name = "skills"

    def present(self, guidance: TeacherGuidance) -> bool:
        return guidance.pair is not None

    def prompt_ids(self, tokenizer, problem, guidance, fmt, max_tokens=None):
        _require(self, guidance, "a skill-mistake pair (guidance.pair)")
        block = guidance_block([guidance.pair.skill], [guidance.pair.mistake],
                               reference_answer=guidance.reference_answer)
        return teacher_prompt_ids(tokenizer, block, problem, fmt, max_tokens)


class AnswerContext:
    """OPSD's one teacher: the reference answer, no skills."""

    name = "answer"

    def present(self, guidance: TeacherGuidance) -> bool:
        return bool(guidance.reference_answer and guidance.reference_answer.strip())

    def prompt_ids(self, tokenizer, problem, guidance, fmt, max_tokens=None):
        _require(self, guidance, "a reference answer")
        block = guidance_block([], [], reference_answer=guidance.reference_answer)
        return teacher_prompt_ids(tokenizer, block, problem, fmt, max_tokens)


def skill_sd_guidance(skills: Sequence[Skill]) -> str:
    """Skill-SD's guidance block: a header, then each retrieved summary (blank-line separated)."""
    return "\n\n".join([SKILL_SD_HEADER, *(plain_text(s.text.strip()) for s in skills)])


class SkillSDContext:
    """Skill-SD: the retrieved trajectory summaries before the plain task prompt."""

    name = "skill_sd"

    def present(self, guidance: TeacherGuidance) -> bool:
        return bool(guidance.skills)

    def prompt_ids(self, tokenizer, problem, guidance, fmt, max_tokens=None):
        _require(self, guidance, "at least one retrieved skill (guidance.skills)")
        return teacher_prompt_ids(tokenizer, skill_sd_guidance(guidance.skills), problem, fmt, max_tokens)


def sdar_prefix(skill_text: str) -> str:
    """``[Privileged Skill Information]\\n{skill text}\\n\\n`` (the SDAR authors' exact prefix)."""
    return PRIVILEGED_SKILL_HEADER + "\n" + skill_text + "\n\n"


class SDARContext:
    """SDAR: the privileged-skill prefix before the chat-templated student prompt, left-truncated."""

    name = "sdar"

    def present(self, guidance: TeacherGuidance) -> bool:
        return bool(guidance.skills)

    def skill_text(self, tokenizer: Any, skills: Sequence[Skill]) -> str:
        # The prefix sits outside the chat message, so apply_chat's cleaning does not reach it.
        markers = added_token_strings(tokenizer)
        return "\n\n".join(plain_text(s.text.strip(), markers) for s in skills)

    def prompt_ids(self, tokenizer, problem, guidance, fmt, max_tokens=None):
        _require(self, guidance, "at least one skill (guidance.skills)")
        chat = apply_chat(tokenizer, fmt.student_message(problem), fmt)

        def render(text: str) -> list[int]:
            # no skill text left: no prefix at all (a bare header is no privileged information)
            return tokenizer.encode(sdar_prefix(text) + chat if text else chat, add_special_tokens=False)

        return fit_guidance(tokenizer, render, self.skill_text(tokenizer, guidance.skills), max_tokens, keep="tail")


TEACHER_CONTEXTS: dict[str, TeacherContext] = {
    c.name: c for c in (SkillPairContext(), AnswerContext(), SkillSDContext(), SDARContext())
}


def teacher_context(name: str) -> TeacherContext:
    """The context called ``name`` (a key of :data:`TEACHER_CONTEXTS`)."""
    try:
        return TEACHER_CONTEXTS[name]
    except KeyError:
        raise ValueError(f"unknown teacher context {name!r}; valid: {', '.join(TEACHER_CONTEXTS)}") from None
