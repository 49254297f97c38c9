"""Extraction of skill JSON from replies shaped like real model output."""

from __future__ import annotations

import json

import pytest

from sgsd.parsing import (
    FIELD_MAX_CHARS,
    extract_json_object,
    parse_items,
    repair_backslashes,
    strip_thinking,
)

SKILL = {"title": "Telescoping", "principle": "Rewrite terms as differences.", "when_to_apply": "Sums of fractions."}
MISTAKE = {"description": "Sign slip", "why_it_happens": "Rushing.", "how_to_avoid": "Recheck signs."}


def _obj(kind: str, items: list) -> str:
    return json.dumps({kind: items}, indent=2)


THINKING = ("<think>\nThe user wants JSON. A draft: {\"general_skills\": [{\"title\": \"draft\"}]}. "
            "For example \\boxed{\\frac{1}{2}} and a set {1, 2, {3}} and {x | x > 0}.\n</think>\n\n")


def test_thinking_block_with_boxed_and_braces_before_the_json():
    reply = THINKING + "Here is the result:\n" + _obj("general_skills", [SKILL]) + "\nHope this helps {:}"
    parsed = parse_items(reply, "general_skills")
    assert parsed.items == [SKILL] and parsed.dropped == 0 and parsed.error is None and not parsed.truncated


@pytest.mark.parametrize("reply", [
    "I think the skills are... {\"general_skills\": [] } wait, no.</think>",  # only the closing tag, no answer
    "<think>\nLet me draft: {\"general_skills\": [" + json.dumps(SKILL) + "]}\nHmm, and then",  # never closed
    "",
    "Sorry, I can't help with that.",
    "}{ ]] {{{ \\boxed{3} [[ \"general_skills\" }",
])
def test_thinking_only_empty_and_garbage_replies_give_nothing(reply):
    assert extract_json_object(reply, "general_skills") is None
    parsed = parse_items(reply, "general_skills")
    assert parsed.items == [] and parsed.error is not None


def test_closing_tag_only_reply_keeps_the_answer_after_it():
    # The chat template opened <think>; the reply carries only its end.
    reply = "so {a} and {b} merge ... {\"general_skills\": [{\"title\": \"draft\"}]}</think>\n" + _obj(
        "general_skills", [SKILL])
    assert parse_items(reply, "general_skills").items == [SKILL]


def test_strip_thinking_rules():
    assert strip_thinking("<think>a</think>b<think>c</think>d") == "d"
    assert strip_thinking("a</think>b") == "b"
    assert strip_thinking("answer <think>unfinished") == "answer "
    assert strip_thinking("no tags {x}") == "no tags {x}"


def test_restated_objects_prefer_the_last_complete_one():
    first = _obj("general_skills", [SKILL, {**SKILL, "title": "Other"}])
    second = _obj("general_skills", [{**SKILL, "title": "Final"}])
    reply = "First attempt:\n" + first + "\nActually, merging further:\n" + second + "\nDone."
    assert [i["title"] for i in parse_items(reply, "general_skills").items] == ["Final"]


def test_code_fences_and_commentary():
    reply = "Sure! Below is the JSON.\n```json\n" + _obj("common_mistakes", [MISTAKE]) + "\n```\nLet me know."
    assert parse_items(reply, "common_mistakes").items == [MISTAKE]


def test_latex_backslashes_inside_strings_are_repaired():
    # What a model writes: LaTeX with single backslashes. \f, \b, \n, \t, \r would otherwise be
    # valid escapes silently turning into control characters; \s, \l, \( are invalid JSON.
    reply = ('{"general_skills": [{"title": "Use \\frac{a}{b} and \\boxed{x}", '
             '"principle": "If $a \\neq b$, $x \\times y$, \\theta, \\text{odd}, \\right), \\sqrt{2}, '
             '\\(x\\), \\{1\\}", "when_to_apply": "Line one\\nThen \\tStep, \\u00e9, and an escaped \\\\alpha"}]}')
    item = parse_items(reply, "general_skills").items[0]
    assert item["title"] == "Use \\frac{a}{b} and \\boxed{x}"
    assert item["principle"] == ("If $a \\neq b$, $x \\times y$, \\theta, \\text{odd}, \\right), \\sqrt{2}, "
                                 "\\(x\\), \\{1\\}")
    # \n before a plain word is a real newline (collapsed to a space); \u00e9 stays unicode.
    assert item["when_to_apply"] == "Line one Then Step, é, and an escaped \\alpha"


def test_repair_backslashes_leaves_valid_json_alone():
    valid = json.dumps({"a": "x\\y \"q\" \n\t / \u00e9 \\frac"})
    assert repair_backslashes(valid) == valid
    assert json.loads(repair_backslashes('"\\frac \\beta \\rho \\nabla \\tau"')) == "\\frac \\beta \\rho \\nabla \\tau"


def test_truncated_json_recovers_the_complete_items():
    full = _obj("common_mistakes", [MISTAKE, {**MISTAKE, "description": "Second"}, {**MISTAKE, "description": "3"}])
    cut = full[: full.index('"3"') + 2]  # generation stopped inside the third item
    parsed = parse_items(THINKING + "```json\n" + cut, "common_mistakes")
    assert parsed.truncated and parsed.error is None
    assert [i["description"] for i in parsed.items] == ["Sign slip", "Second"]
    # cut right after "[": nothing to recover
    assert parse_items('{"common_mistakes": [\n  {"descr', "common_mistakes").error is not None


def test_trailing_commas_are_tolerated():
    reply = '{"general_skills": [' + json.dumps(SKILL) + ', ' + json.dumps(SKILL) + ',\n],\n}'
    parsed = parse_items(reply, "general_skills")
    assert parsed.items == [SKILL, SKILL] and not parsed.truncated


def test_a_comma_inside_a_string_before_a_bracket_is_kept():
    item = {**SKILL, "principle": "keep this, ] and this, }"}
    assert parse_items(_obj("general_skills", [item]), "general_skills").items == [item]


def test_wrong_key_is_none():
    reply = _obj("skills", [SKILL]) + "\n" + _obj("common_mistakes", [MISTAKE])
    assert extract_json_object(reply, "general_skills") is None
    assert parse_items(reply, "general_skills").error == "no JSON object with key 'general_skills' in the reply"
    assert extract_json_object(reply, "common_mistakes") == {"common_mistakes": [MISTAKE]}


def test_object_nested_in_a_wrapper_is_found():
    reply = json.dumps({"response": {"general_skills": [SKILL]}, "note": "x"})
    assert parse_items(reply, "general_skills").items == [SKILL]


def test_fields_of_the_wrong_type_missing_or_empty_are_dropped_and_counted():
    items = [
        SKILL,
        {**SKILL, "title": 3},
        {**SKILL, "principle": ["a", "b"]},
        {"title": "no principle", "when_to_apply": "x"},
        {**SKILL, "when_to_apply": "   "},
        "a bare string",
        None,
        {**SKILL, "title": "  Extra keys  ", "skill_id": "gen_9", "score": 1},
    ]
    parsed = parse_items(_obj("general_skills", items), "general_skills")
    assert parsed.items == [SKILL, {**SKILL, "title": "Extra keys"}]
    assert parsed.dropped == 6 and parsed.error is None


def test_overlong_fields_are_capped_at_a_word_boundary():
    long = ("word " * 400).strip()
    parsed = parse_items(_obj("general_skills", [{**SKILL, "title": long, "principle": long}]), "general_skills")
    item = parsed.items[0]
    assert len(item["title"]) <= FIELD_MAX_CHARS["title"] + 3 and item["title"].endswith("word...")
    assert len(item["principle"]) <= 1003


def test_empty_list_and_non_list_value():
    parsed = parse_items('{"general_skills": []}', "general_skills")
    assert parsed.items == [] and parsed.dropped == 0 and parsed.error is None
    parsed = parse_items('{"general_skills": {"title": "x"}}', "general_skills")
    assert parsed.items == [] and "not a list" in parsed.error


def test_none_reply_and_unknown_kind():
    assert parse_items(None, "common_mistakes").error == "no reply"
    with pytest.raises(ValueError, match="unknown collection"):
        parse_items("{}", "skills")


def test_many_braces_stay_fast():
    # Thousands of LaTeX braces and a long restated answer: the scan must not go quadratic.
    noise = "\\frac{a}{b} {x} " * 3000
    reply = noise + _obj("general_skills", [SKILL] * 200) + noise
    assert len(parse_items(reply, "general_skills").items) == 200


@pytest.mark.parametrize("reply", [
    "[" * 1000,  # ~1,000 nested lists crashed merge and build with a RecursionError
    '{"general_skills": ' + "[" * 1000 + "]" * 1000 + "}",
    "<think>x</think>" + "{" * 5000,
    _obj("general_skills", [SKILL]) + " " * 1_000_001,  # longer than any reply the writers produce
])
def test_deeply_nested_or_huge_replies_are_a_counted_parse_failure_not_a_crash(reply):
    parsed = parse_items(reply, "general_skills")
    assert parsed.items == [] and not parsed.ok and "nested deeper than 64 levels" in parsed.error
    assert extract_json_object(reply, "general_skills") is None


def test_moderate_nesting_still_parses():
    nested = {"general_skills": [SKILL], "extra": [[[[["deep but fine"]]]]]}
    assert parse_items(json.dumps(nested), "general_skills").items == [SKILL]
