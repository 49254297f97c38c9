"""Bounded JSON reading (sgsd/bounded_json.py): nesting is refused with a JSONDecodeError at
the offending bracket, brackets inside strings do not count."""

from __future__ import annotations

import json

import pytest

from sgsd.bounded_json import MAX_DEPTH, loads, nesting_error, too_deep


def test_nesting_beyond_the_bound_is_a_json_decode_error_at_its_position():
    text = '{"a": ' + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "}"
    with pytest.raises(json.JSONDecodeError) as refused:
        loads(text)
    assert refused.value.pos == len('{"a": ') + MAX_DEPTH - 1 and "nested deeper than 64 levels" in refused.value.msg
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None  # exactly the bound is fine


def test_brackets_inside_strings_do_not_count_in_a_document_but_do_in_free_text():
    text = json.dumps({"title": "[" * 500 + '\\" still a string'})
    assert nesting_error(text) is None and loads(text)["title"].startswith("[[")
    assert nesting_error(text, strings=False) is not None and too_deep(text)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant):
    with pytest.raises(json.JSONDecodeError, match=f"{constant} is not a JSON number"):
        loads('{"answer": ' + constant + "}")
