"""Prompts: the paper's templates, brace-safe templating, chat formats, guidance truncation."""

from __future__ import annotations

import pytest

from sgsd.bank import CommonMistake, GeneralSkill
from sgsd.datasets import BENCHMARKS, benchmark_path, load_problems
from sgsd.prompts import (
    ANSWER_INSTRUCTION,
    EMPTY_THINK,
    GUIDANCE_HEADER,
    ChatFormat,
    answer_teacher_prompt,
    apply_chat,
    skill_student_prompt,
    student_prompt,
    teacher_prompt,
    teacher_prompt_ids,
)

SKILL = GeneralSkill("gen_001", "Translate Constraints to Algebra", "Convert stated constraints into algebraic relations.",
                     "When variables are governed by explicit conditions.")
MISTAKE = CommonMistake("err_001", "Skipping the constraint model.", "The solver starts computing too early.",
                        "Restate the configuration before deriving equations.")


def test_student_prompt_is_exactly_the_papers():
    assert student_prompt("What is $1+1$?") == (
        "Problem: What is $1+1$?\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    )


def test_teacher_prompt_layout_fig_6():
    expected = (
        GUIDANCE_HEADER + "\n\n"
        "### General Principles\n"
        "- Translate Constraints to Algebra: Convert stated constraints into algebraic relations.\n"
        "  _Apply when: When variables are governed by explicit conditions._\n\n"
        "### Mistakes to Avoid\n"
        "- Don't: Skipping the constraint model.\n"
        "  Instead: Restate the configuration before deriving equations.\n\n"
        "Problem: Find $x$.\n\n" + ANSWER_INSTRUCTION
    )
    assert teacher_prompt("Find $x$.", SKILL, MISTAKE) == expected
    # the student never sees guidance; the teacher's prompt ends with the student's prompt
    assert expected.endswith(student_prompt("Find $x$."))


def test_answer_and_skill_variants():
    with_answer = teacher_prompt("Find $x$.", SKILL, MISTAKE, reference_answer="\\frac{1}{2}")
    assert "### Reference Answer\nThe verified final answer is: \\frac{1}{2}" in with_answer
    assert with_answer.index("### Reference Answer") < with_answer.index("Problem:")
    opsd = answer_teacher_prompt("Find $x$.", "42")
    assert "### General Principles" not in opsd and "42" in opsd
    student = skill_student_prompt("Find $x$.", [SKILL, SKILL], [MISTAKE])
    assert student.count("- Translate Constraints") == 2 and student.count("- Don't:") == 1


@pytest.mark.parametrize("name", BENCHMARKS)
def test_braces_and_placeholders_in_user_text_are_inert(name, shipped_bank):
    """Every shipped problem x shipped skills: the text appears verbatim, nothing substituted."""
    problems = load_problems(benchmark_path(name))
    for i, p in enumerate(problems):
        skill = shipped_bank.general_skills[i % len(shipped_bank.general_skills)]
        mistake = shipped_bank.common_mistakes[i % len(shipped_bank.common_mistakes)]
        text = teacher_prompt(p.problem, skill, mistake)
        assert p.problem.strip() in text and skill.principle in text and mistake.how_to_avoid in text
    hostile = "Let {problem} be {0} and {skill.title} %s %(x)d \\boxed{\\frac{a}{b}} }{ {{"
    evil_skill = GeneralSkill("gen_x", "{problem}", "{0} %s {{", "}")
    text = teacher_prompt(hostile, evil_skill, MISTAKE)
    assert "Problem: " + hostile + "\n\n" in text
    assert "- {problem}: {0} %s {{\n  _Apply when: }_" in text


def test_chat_formats_thinking_on_off_and_prefill(tiny_tokenizer):
    user = student_prompt("Compute \\frac{1}{2} + {x}.")
    off = apply_chat(tiny_tokenizer, user, ChatFormat(enable_thinking=False))
    on = apply_chat(tiny_tokenizer, user, ChatFormat(enable_thinking=True))
    prefilled = apply_chat(tiny_tokenizer, user, ChatFormat(enable_thinking=True, prefill_empty_think=True))
    assert off.endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    assert on.endswith("<|im_start|>assistant\n") and EMPTY_THINK not in on
    assert prefilled == on + EMPTY_THINK
    # prefilling a template that already closed the think block adds nothing
    assert apply_chat(tiny_tokenizer, user, ChatFormat(enable_thinking=False, prefill_empty_think=True)) == off
    assert user in on
    system = apply_chat(tiny_tokenizer, user, ChatFormat(enable_thinking=False, system_prompt="Be brief."))
    assert system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_tokenizer_without_chat_template_is_a_clear_error(tiny_tokenizer):
    import copy

    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        apply_chat(plain, "x", ChatFormat(enable_thinking=False))


def test_over_long_teacher_prompt_is_truncated_in_its_guidance_only(tiny_tokenizer, shipped_bank):
    fmt = ChatFormat(enable_thinking=True)
    problem = load_problems(benchmark_path("aime24"))[0].problem
    long_skill = GeneralSkill("gen_long", "A long skill", "apply the method carefully " * 200, "always")
    from sgsd.prompts import guidance_block, with_guidance

    guidance = guidance_block([long_skill], [shipped_bank.common_mistakes[0]])
    full_ids, truncated = teacher_prompt_ids(tiny_tokenizer, guidance, problem, fmt)
    assert not truncated
    budget = len(full_ids) // 3
    ids, truncated = teacher_prompt_ids(tiny_tokenizer, guidance, problem, fmt, max_tokens=budget)
    assert truncated and len(ids) <= budget
    text = tiny_tokenizer.decode(ids)
    assert text.endswith(apply_chat(tiny_tokenizer, "", fmt).split("<|im_end|>")[-1])  # generation prompt intact
    assert student_prompt(problem) in text  # the problem and instruction are whole
    assert GUIDANCE_HEADER in text  # the guidance keeps its start
    # it fits without truncation: returned unchanged
    exact = teacher_prompt_ids(tiny_tokenizer, guidance, problem, fmt, max_tokens=len(full_ids))
    assert exact == (full_ids, False)
    expected_full = tiny_tokenizer.encode(apply_chat(tiny_tokenizer, with_guidance(guidance, problem), fmt),
                                          add_special_tokens=False)
    assert full_ids == expected_full
    # a budget below the bare problem cannot be met without cutting the problem
    with pytest.raises(ValueError, match="problem cannot be truncated"):
        teacher_prompt_ids(tiny_tokenizer, guidance, problem, fmt, max_tokens=10)
