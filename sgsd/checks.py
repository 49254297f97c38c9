"""Range checks of settings, each held once: by the object that owns the value.

A failed check raises :class:`SettingError`, a ``ValueError`` that names the field
(``group_size must be >= 2, got 1``) and keeps the field, the rule and the value, so a
caller that knows the value by another name words the same check with that name
(:func:`raising`): the CLI with its flag (``--group-size must be >= 2, got 1``), the recipe
config with its key (``sgsd.top_k=0 is out of range: must be >= 1``), a config that holds
another object's value with its own field (``skills_top_k``, ``merge_group_size``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["SettingError", "check", "check_int", "raising"]


class SettingError(ValueError):
    """``{name} must be {rule}, got {value!r}``; :meth:`named` says the same of another name."""

    def __init__(self, name: str, rule: str, value: Any) -> None:
        self.name, self.rule, self.value = name, rule, value
        super().__init__(self.named(name))

    def named(self, name: str) -> str:
        return f"{name} must be {self.rule}, got {self.value!r}"

    def __reduce__(self):  # crosses process boundaries (Ray workers) intact
        return type(self), (self.name, self.rule, self.value)


def check(name: str, value: Any, ok: bool, rule: str) -> None:
    if not ok:
        raise SettingError(name, rule, value)


def check_int(name: str, value: Any, low: int) -> None:
    """``value`` is an integer (a bool is not) and at least ``low``."""
    check(name, value, isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer")
    check(name, value, value >= low, f">= {low}")


@contextmanager
def raising(error: Callable[[str], Exception], message: Callable[[SettingError], str] = str) -> Iterator[None]:
    """Inside, a :class:`SettingError` becomes ``error(message(exc))``: the caller's type and words."""
    try:
        yield
    except SettingError as exc:
        raise error(message(exc)) from None
