"""Robust extraction of the JSON a skill-writing model actually returns.

Replies of real models are rarely clean JSON: a ``<think>`` block full of ``\\boxed{}``
and braces comes first (sometimes only its closing tag, when the chat template opened
it), the object sits in a code fence between commentary, the model restates it, the
LaTeX inside strings is not escaped (``"\\frac"`` is an invalid JSON escape; ``"\\boxed"``
is a *valid* one that silently becomes a backspace), or generation stopped mid-list.
"First ``{`` to last ``}``" fails on all of these. :func:`extract_json_object` instead

1. drops thinking (:func:`strip_thinking`): everything up to the last ``</think>``, and
   everything from an unterminated ``<think>`` on - drafts inside thinking are never used;
2. repairs LaTeX backslashes (:func:`repair_backslashes`, rules below) and trailing
   commas outside strings;
3. tries ``json.JSONDecoder.raw_decode`` at every ``{`` and keeps the LAST complete
   object that has the expected top-level key (models restate their answer);
4. failing that, recovers the complete items of a truncated list by decoding them one
   at a time after the last ``"key": [``.

Backslash rules (applied to lone backslashes only; ``\\\\`` pairs are left alone):
``\\"`` and ``\\/`` stay escapes; ``\\u`` stays one only before four hex digits;
``\\b``, ``\\f``, ``\\r`` followed by a letter are LaTeX (``\\boxed``, ``\\frac``,
``\\right``): backspace, form feed and carriage return never belong in skill text;
``\\n`` and ``\\t`` followed by a letter are LaTeX only when the word is a known
command (``\\neq``, ``\\times``, ``\\text``), because ``"\\nThen"`` is a real newline;
every other lone backslash (``\\sqrt``, ``\\(``, ``\\{``) is doubled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sgsd.bounded_json import MAX_DEPTH, MAX_REPLY_CHARS, json_chars, too_deep
from sgsd.plain_text import plain_text
from sgsd.skill_prompts import COLLECTION_FIELDS

__all__ = [
    "FIELD_MAX_CHARS",
    "ParsedItems",
    "extract_json_object",
    "parse_items",
    "repair_backslashes",
    "strip_thinking",
]

#: Longest kept text per field; longer text is cut at a word boundary. The shipped
#: raw candidates peak at 100 (title) / 378 characters; far longer fields are runaway
#: generations that would bloat every teacher prompt they are retrieved into.
FIELD_MAX_CHARS: dict[str, int] = {"title": 200}
DEFAULT_MAX_CHARS = 1000

_DECODER = json.JSONDecoder()
_THINK_CLOSE = re.compile(r"</think\s*>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think\s*>", re.IGNORECASE)
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_WORD = re.compile(r"[A-Za-z]+")
_WS = re.compile(r"\s+")
_OBJECT_START = re.compile(r'\{\s*["}]')

# LaTeX commands starting with n/t that a model writes in skill text; "\n" or "\t"
# before any other word is taken as a real newline/tab escape.
_LATEX_N_T = frozenset(
    "ne neq neg nabla not notin ni nu nmid nleq ngeq nless ngtr nsubseteq nsupseteq nparallel "
    "newline noindent nolimits nonumber natural nearrow nwarrow nexists "
    "times theta tan tanh tau to text textbf textit textrm texttt textsf textstyle tfrac tbinom "
    "triangle triangleq top therefore tilde tiny tt textup tag".split()
)


def strip_thinking(text: str) -> str:
    """The reply without its reasoning: text after the last ``</think>``, cut at a later ``<think>``.

    A reply may carry only the closing tag (the chat template opened the block), and a
    reply cut off mid-thought has an opening tag and no close: then nothing after it is
    an answer.
    """
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[: opened.start()]
    return text


def _is_latex(text: str, after: int) -> bool:
    """Is the lone backslash whose escape letter is at ``after`` really a LaTeX command?"""
    letter = text[after]
    nxt = text[after + 1: after + 2]
    if not nxt.isalpha() or not nxt.isascii():
        return False
    if letter in "bfr":
        return True
    word = _WORD.match(text, after)
    return word is not None and word.group() in _LATEX_N_T


def repair_backslashes(text: str) -> str:
    """Double the lone backslashes that are LaTeX, not JSON escapes (rules in the module doc)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:  # a trailing lone backslash (truncated text): leave it, decoding fails anyway
            out.append(ch)
            break
        nxt = text[i + 1]
        if nxt in '"\\/':
            keep = True
        elif nxt == "u":
            keep = _HEX4.fullmatch(text, i + 2, i + 6) is not None
        elif nxt in "bfnrt":
            keep = not _is_latex(text, i + 1)
        else:
            keep = False
        out.append(ch + nxt if keep else "\\\\" + nxt)
        i += 2
    return "".join(out)


def _strip_trailing_commas(text: str) -> str:
    """Remove ``,`` directly before ``]``/``}`` outside JSON strings (a common model slip)."""
    out: list[str] = []
    for i, ch, in_string in json_chars(text):
        if not in_string and ch == ",":
            nxt = _skip_ws(text, i + 1)
            if text[nxt:nxt + 1] in ("]", "}"):
                continue
        out.append(ch)
    return "".join(out)


def _last_complete_object(text: str, key: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = None
    # Only a "{" followed by a quote or "}" can open a JSON object; skipping LaTeX groups
    # such as {a}, {x | x > 0} matters because every failed decode costs O(position)
    # (JSONDecodeError counts the lines before it), quadratic over a brace-heavy reply.
    match = _OBJECT_START.search(text)
    while match:
        pos = match.start()
        try:
            obj, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            obj, end = None, pos + 1
        if isinstance(obj, dict) and key in obj:
            found = obj
            # Skip the object's interior: its nested items cannot carry the top-level key.
            match = _OBJECT_START.search(text, end)
        else:
            # A failed or key-less object may still wrap the one we want: look inside.
            match = _OBJECT_START.search(text, pos + 1)
    return found


def _recover_truncated(text: str, key: str) -> dict[str, Any] | None:
    """Complete items of the last ``"key": [`` list that never closed (``None`` if no item)."""
    starts = list(re.finditer(r'"' + re.escape(key) + r'"\s*:\s*\[', text))
    for start in reversed(starts):
        items: list[Any] = []
        pos = start.end()
        while True:
            pos = _skip_ws(text, pos)
            if pos >= len(text) or text[pos] == "]":
                break
            try:
                item, pos = _DECODER.raw_decode(text, pos)
            except json.JSONDecodeError:
                break  # the cut-off item
            items.append(item)
            pos = _skip_ws(text, pos)
            if text[pos:pos + 1] != ",":
                break
            pos += 1
        if items:
            return {key: items}
    return None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _extract(text: str | None, key: str) -> tuple[dict[str, Any] | None, bool]:
    """``(object, truncated)``; see :func:`extract_json_object`."""
    if not text:
        return None, False
    body = _strip_trailing_commas(repair_backslashes(strip_thinking(text)))
    found = _last_complete_object(body, key)
    if found is not None:
        return found, False
    recovered = _recover_truncated(body, key)
    return recovered, recovered is not None


def extract_json_object(text: str | None, key: str) -> dict[str, Any] | None:
    """The JSON object in a model reply that carries top-level ``key``, or ``None``.

    Prefers the last complete such object; if there is none, a truncated one is rebuilt
    from its complete list items (``{key: [items...]}``). A reply whose objects carry only
    other keys, or with nothing outside its thinking, gives ``None``.
    """
    if text and too_deep(text):
        return None
    return _extract(text, key)[0]


@dataclass(frozen=True)
class ParsedItems:
    """Valid items of one reply, how many were dropped, and why the reply failed (if it did).

    ``error`` is ``None`` when a JSON object with the key was found, even if it held no
    valid item; ``truncated`` says the items were recovered from a cut-off list.
    """

    items: list[dict[str, str]]
    dropped: int = 0
    error: str | None = None
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def _clean_field(value: Any, name: str) -> str | None:
    if not isinstance(value, str):
        return None
    # One line per field: the teacher prompt renders each field inside a markdown bullet; a
    # chat-control marker a model wrote stays text (sgsd.plain_text).
    text = plain_text(_WS.sub(" ", value).strip())
    if not text:
        return None
    limit = FIELD_MAX_CHARS.get(name, DEFAULT_MAX_CHARS)
    if len(text) > limit:
        cut = text[:limit].rsplit(" ", 1)[0] or text[:limit]
        text = cut.rstrip(" ,;:") + "..."
    return text


def parse_items(text: str | None, kind: str) -> ParsedItems:
    """Validated items of ``kind`` (``general_skills`` or ``common_mistakes``) in a reply.

    Each item must be an object whose required fields are non-empty strings; they are
    whitespace-collapsed, stripped and capped (:data:`FIELD_MAX_CHARS`). Extra keys are
    ignored. Bad items are dropped and counted, never fatal.
    """
    if kind not in COLLECTION_FIELDS:
        raise ValueError(f"unknown collection {kind!r}; expected one of {tuple(COLLECTION_FIELDS)}")
    fields = COLLECTION_FIELDS[kind]
    if text is None:
        return ParsedItems([], error="no reply")
    if too_deep(text):  # json recurses per level: ~1,000 "[" raised RecursionError here
        return ParsedItems([], error=f"reply longer than {MAX_REPLY_CHARS} characters or nested deeper than "
                                     f"{MAX_DEPTH} levels")
    obj, truncated = _extract(text, kind)
    if obj is None:
        return ParsedItems([], error=f"no JSON object with key {kind!r} in the reply")
    raw = obj[kind]
    if not isinstance(raw, list):
        return ParsedItems([], error=f"{kind!r} is a {type(raw).__name__}, not a list")
    items: list[dict[str, str]] = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        cleaned = {name: _clean_field(entry.get(name), name) for name in fields}
        if all(v is not None for v in cleaned.values()):
            items.append(cleaned)  # type: ignore[arg-type]
    return ParsedItems(items, dropped=len(raw) - len(items), truncated=truncated)
