"""The one range-check mechanism (sgsd.checks): a refusal names the field, keeps what a caller
needs to word it with its own name, and survives pickling (Ray ships exceptions between processes)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from sgsd.checks import SettingError, check, check_int, raising


def test_a_refusal_names_the_field_the_rule_and_the_value():
    with pytest.raises(SettingError) as info:
        check("temperature", -1.0, False, ">= 0")
    exc = info.value
    assert isinstance(exc, ValueError) and str(exc) == "temperature must be >= 0, got -1.0"
    assert (exc.name, exc.rule, exc.value) == ("temperature", ">= 0", -1.0)
    assert exc.named("--temperature") == "--temperature must be >= 0, got -1.0"
    again = pickle.loads(pickle.dumps(exc))
    assert (type(again), str(again), again.name) == (SettingError, str(exc), "temperature")
    check("temperature", 0.5, True, ">= 0")  # a value in range passes silently


@pytest.mark.parametrize("value, message", [
    (1, "group_size must be >= 2, got 1"),
    (2.5, "group_size must be an integer, got 2.5"),
    (True, "group_size must be an integer, got True"),
    ("3", "group_size must be an integer, got '3'"),
])
def test_check_int_refuses_non_integers_and_small_ones(value, message):
    with pytest.raises(SettingError) as info:
        check_int("group_size", value, 2)
    assert str(info.value) == message


def test_check_int_takes_numpy_integers():
    check_int("top_k", np.int64(3), 1)


def test_raising_rewords_a_refusal_with_the_callers_type_and_name():
    class Mine(Exception):
        pass

    with pytest.raises(Mine, match=r"^--top-k must be >= 1, got 0$"):
        with raising(Mine, lambda exc: exc.named("--top-k")):
            check_int("top_k", 0, 1)
    with pytest.raises(Mine, match=r"^top_k must be >= 1, got 0$"):
        with raising(Mine):
            check_int("top_k", 0, 1)
    with pytest.raises(KeyError):  # only refusals are reworded
        with raising(Mine):
            raise KeyError("other")
