"""JSON reading with bounds on nesting and size, for every file a user hands in and every
model reply the project parses.

Python's ``json`` recurses once per nesting level and raises ``RecursionError`` (not a
``JSONDecodeError``) about 1,000 levels down, so ~1,000 ``[`` in a bank file, a problem file
or a writer's reply became a traceback. :func:`loads` refuses nesting deeper than
:data:`MAX_DEPTH` with a ``json.JSONDecodeError`` at the offending bracket, so every caller's
existing "invalid JSON at line L column C" handling words it. Files read whole are also
bounded in size (:data:`MAX_FILE_BYTES`; callers check it with their own error type).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_REPLY_CHARS", "json_chars", "lone_surrogate", "loads", "nesting_error",
           "too_deep"]

#: Deepest nesting accepted: a bank is 3 levels deep, a verl row 4; 64 leaves room for any
#: real document and stays far from Python's recursion limit.
MAX_DEPTH = 64
#: Largest JSON / JSONL file read into memory at once (a 10,000-item bank is ~10 MB).
MAX_FILE_BYTES = 1 << 30
#: Longest model reply parsed for JSON (a 2,048-token reply is ~10 kB).
MAX_REPLY_CHARS = 1_000_000


def json_chars(text: str) -> Iterator[tuple[int, str, bool]]:
    """``(position, char, inside a JSON string)`` for every character of ``text``, following
    JSON's string rules (a quote opens and closes, a backslash escapes the next char)."""
    in_string = escaped = False
    for pos, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False  # the closing quote still belongs to the string
            yield pos, ch, True
        elif ch == '"':
            in_string = True
            yield pos, ch, True
        else:
            yield pos, ch, False


def nesting_error(text: str, *, strings: bool = True, max_depth: int = MAX_DEPTH) -> int | None:
    """Position of the first ``[``/``{`` nested deeper than ``max_depth``, else ``None``.

    ``strings=True`` follows JSON's string rules (brackets inside strings do not count): exact
    for a JSON document. ``strings=False`` counts every bracket: conservative, for free text
    (a model reply) whose quotes need not pair up.
    """
    depth = 0
    chars = json_chars(text) if strings else ((pos, ch, False) for pos, ch in enumerate(text))
    for pos, ch, in_string in chars:
        if in_string:
            continue
        if ch in "[{":
            depth += 1
            if depth > max_depth:
                return pos
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return None


def too_deep(text: str) -> bool:
    """Free text (a model reply) too deeply bracketed, or too long, to parse safely."""
    return len(text) > MAX_REPLY_CHARS or nesting_error(text, strings=False) is not None


def loads(text: str, *, allow_nan: bool = False) -> Any:
    """``json.loads`` that refuses nesting deeper than :data:`MAX_DEPTH` and, unless
    ``allow_nan`` (verl's metrics logs write them), the non-JSON constants ``NaN`` /
    ``Infinity`` Python's json accepts (both as ``JSONDecodeError``)."""
    pos = nesting_error(text)
    if pos is not None:
        raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", text, pos)

    def refuse(name: str):
        raise json.JSONDecodeError(f"{name} is not a JSON number", text, max(text.find(name), 0))

    return json.loads(text) if allow_nan else json.loads(text, parse_constant=refuse)


def lone_surrogate(text: str) -> str | None:
    """A JSON ``\\ud800`` escape decodes to half a UTF-16 pair, a str that cannot be encoded
    (printing or tokenising it raised); the offending character as ``\\uXXXX``, else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"\\u{ord(text[exc.start]):04x}"
    return None
