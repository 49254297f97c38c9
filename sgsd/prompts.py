"""Student and teacher prompts (paper App. C.1, Fig. 6) and the baselines' variants.

Every template is assembled by concatenation: problems and skills are full of LaTeX
braces (``\\boxed{}``, ``\\frac{a}{b}``) and may even contain ``{problem}``-like text, so
user text is never passed through ``str.format`` / ``%`` and can neither break nor
inject into a template.

Layout of a teacher prompt (one retrieved skill-mistake pair)::

    <GUIDANCE_HEADER>

    ### General Principles
    - <title>: <principle>
      _Apply when: <when_to_apply>_

    ### Mistakes to Avoid
    - Don't: <description>
      Instead: <how_to_avoid>

    Problem: <problem>

    Please reason step by step, and put your final answer within \\boxed{}.

The text above "Problem:" is the *guidance block*; it is the only part that may be
truncated when a teacher prompt exceeds its token budget (:func:`teacher_prompt_ids`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sgsd.bank import CommonMistake, GeneralSkill
from sgsd.plain_text import added_token_strings, plain_text

__all__ = [
    "ANSWER_INSTRUCTION",
    "EMPTY_THINK",
    "GUIDANCE_HEADER",
    "ChatFormat",
    "answer_teacher_prompt",
    "apply_chat",
    "fit_guidance",
    "guidance_block",
    "skill_student_prompt",
    "student_prompt",
    "teacher_prompt",
    "teacher_prompt_ids",
    "with_guidance",
]

ANSWER_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
GUIDANCE_HEADER = (
    "You may use the following retrieved math-reasoning guidance as soft guidance. "
    "Solve the current problem independently and do not quote it verbatim."
)
REFERENCE_HEADER = "### Reference Answer"
EMPTY_THINK = "<think>\n\n</think>\n\n"


def student_prompt(problem: str) -> str:
    """The plain prompt the student samples from (and is evaluated on)."""
    return "Problem: " + plain_text(problem.strip()) + "\n\n" + ANSWER_INSTRUCTION


def guidance_block(
    skills: Sequence[GeneralSkill],
    mistakes: Sequence[CommonMistake],
    *,
    reference_answer: str | None = None,
) -> str:
    """The privileged-information block: header, principles, mistakes, optional answer
    (every text of a bank item and the answer as plain text, :mod:`sgsd.plain_text`)."""
    parts = [GUIDANCE_HEADER]
    if skills:
        lines = ["### General Principles"]
        for s in skills:
            lines.append("- " + s.title + ": " + s.principle)
            lines.append("  _Apply when: " + s.when_to_apply + "_")
        parts.append("\n".join(lines))
    if mistakes:
        lines = ["### Mistakes to Avoid"]
        for m in mistakes:
            lines.append("- Don't: " + m.description)
            lines.append("  Instead: " + m.how_to_avoid)
        parts.append("\n".join(lines))
    parts = [parts[0], *(plain_text(p) for p in parts[1:])]  # the item texts, not our headers
    if reference_answer is not None:
        # OPSD-style answer PI (paper Sec. 4 baselines and Fig. 3d): the verified final
        # answer, never shown to the student.
        parts.append(REFERENCE_HEADER + "\nThe verified final answer is: " + plain_text(reference_answer.strip()))
    return "\n\n".join(parts)


def with_guidance(guidance: str, problem: str, verbatim: bool = False) -> str:
    """Guidance block followed by the student prompt (``verbatim``: by ``problem`` as it is, an
    agent episode's task message, :attr:`ChatFormat.verbatim_problem`)."""
    return guidance + "\n\n" + (problem if verbatim else student_prompt(problem))


def teacher_prompt(
    problem: str, skill: GeneralSkill, mistake: CommonMistake, *, reference_answer: str | None = None
) -> str:
    """Teacher k's user message (Fig. 6); ``reference_answer`` adds answer PI (Fig. 3d)."""
    return with_guidance(guidance_block([skill], [mistake], reference_answer=reference_answer), problem)


def answer_teacher_prompt(problem: str, reference_answer: str) -> str:
    """OPSD baseline teacher: the reference answer, no skills."""
    return with_guidance(guidance_block([], [], reference_answer=reference_answer), problem)


def skill_student_prompt(
    problem: str, skills: Sequence[GeneralSkill], mistakes: Sequence[CommonMistake]
) -> str:
    """GRPO+Skill / Base+Skill / OPSD+Skill: the retrieved skills shown to the student."""
    return with_guidance(guidance_block(skills, mistakes), problem)


@dataclass(frozen=True)
class ChatFormat:
    """How a user message becomes a generation prompt.

    ``enable_thinking`` is passed to the chat template (Qwen3 honours it; with False it
    appends an empty think block itself). ``verbatim_problem``: the problem is an agent
    episode's whole task message (:meth:`student_message`). ``prefill_empty_think`` appends
    :data:`EMPTY_THINK` when the template did not, so a thinking-on teacher sees the
    student's response right where a thinking-off student produced it.
    """

    enable_thinking: bool
    prefill_empty_think: bool = False
    system_prompt: str | None = None
    # The problem is the student's whole first user message (an agent episode's task, rules and
    # first observation: sgsd.envs), sent as it is: no "Problem:" wrapper, no answer instruction.
    verbatim_problem: bool = False

    def student_message(self, problem: str) -> str:
        """The user message the student saw for ``problem``."""
        return problem if self.verbatim_problem else student_prompt(problem)


def apply_chat(tokenizer: Any, user_content: str, fmt: ChatFormat) -> str:
    """Render ``user_content`` as a generation prompt with the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no chat "
            "template; SGSD prompts are chat prompts (set tokenizer.chat_template)"
        )
    messages = []
    if fmt.system_prompt:
        messages.append({"role": "system", "content": fmt.system_prompt})
    # the user message never carries one of this tokenizer's own control tokens
    messages.append({"role": "user", "content": plain_text(user_content, added_token_strings(tokenizer))})
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=fmt.enable_thinking
    )
    if fmt.prefill_empty_think and not text.endswith(EMPTY_THINK):
        text += EMPTY_THINK
    return text


def teacher_prompt_ids(
    tokenizer: Any,
    guidance: str,
    problem: str,
    fmt: ChatFormat,
    max_tokens: int | None = None,
) -> tuple[list[int], bool]:
    """Token ids of a chat-formatted teacher prompt, at most ``max_tokens`` long.

    When too long, only the guidance block is shortened (from its end, keeping its
    header first); the problem, the instruction and the chat scaffolding are never cut.
    Returns ``(ids, truncated)``. Raises ``ValueError`` if even an empty guidance block
    does not fit, since the problem itself would have to be cut.
    """

    def encode(g: str) -> list[int]:
        text = apply_chat(tokenizer, with_guidance(g, problem, fmt.verbatim_problem) if g
                          else fmt.student_message(problem), fmt)
        return tokenizer.encode(text, add_special_tokens=False)

    return fit_guidance(tokenizer, encode, guidance, max_tokens, keep="head")


def fit_guidance(
    tokenizer: Any,
    render: Callable[[str], list[int]],
    guidance: str,
    max_tokens: int | None,
    *,
    keep: str = "head",
) -> tuple[list[int], bool]:
    """``render(guidance)`` cut to ``max_tokens`` by shortening ``guidance`` alone.

    ``render(text)`` is the whole prompt's ids around a guidance text (``render("")``: the
    prompt without any guidance). ``keep="head"`` keeps the guidance's start (it is cut
    from its end, :func:`teacher_prompt_ids`); ``keep="tail"`` keeps its end (it is cut
    from its start: SDAR's left truncation, :mod:`sgsd.teacher_contexts`). Returns
    ``(ids, truncated)``; raises ``ValueError`` if ``render("")`` is over the budget.
    """
    if keep not in ("head", "tail"):
        raise ValueError(f"keep must be 'head' or 'tail', got {keep!r}")
    ids = render(guidance)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, False
    floor = render("")
    if len(floor) > max_tokens:
        raise ValueError(
            f"teacher prompt without any guidance is {len(floor)} tokens, over the budget of {max_tokens}: "
            "raise the teacher prompt length, the problem cannot be truncated"
        )
    guidance_ids = tokenizer.encode(guidance, add_special_tokens=False)
    # Token counts of a re-encoded slice can differ by a few from the slice, so shrink
    # the slice until the whole prompt fits (usually one or two rounds).
    count = max(len(guidance_ids) - (len(ids) - max_tokens), 0)
    while count > 0:
        if keep == "head":
            text = tokenizer.decode(guidance_ids[:count]).rstrip()
        else:  # a slice that starts inside a multi-byte character decodes to U+FFFD first
            text = tokenizer.decode(guidance_ids[-count:]).lstrip("\ufffd").lstrip()
        candidate = render(text)
        if len(candidate) <= max_tokens:
            return candidate, True
        count -= max(len(candidate) - max_tokens, 1)
    return floor, True
