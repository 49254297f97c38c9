"""The skill bank: general skills (G) and common mistakes (E), as typed records.

File format (exactly what the original SGSD code released, paper Tab. 5)::

    {
      "general_skills":  [{"skill_id", "title", "principle", "when_to_apply"}, ...],
      "common_mistakes": [{"mistake_id", "description", "why_it_happens", "how_to_avoid"}, ...],
      "task_specific_skills": {},          # present in released banks, unused
      "metadata": {...}                    # provenance, per-layer merge statistics
    }

This project writes a superset: an item may carry ``"origin": "dynamic"`` (added by the
online updater; items without it are static cold-start entries that are never changed)
and any further keys are kept verbatim through load/save. One of them is checked: an
item's ``"utility"`` record (written by :mod:`sgsd.item_utility`) must map its known keys to
numbers >= 0 (:func:`check_utility_record`, the record's one validator).

Loading validates everything and raises :class:`BankError` with a message that names
the file, the collection, the entry index, its id and the field. Saving is atomic
(:mod:`sgsd.atomic`), so a failed save never leaves a half-written bank.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from sgsd import bounded_json
from sgsd.atomic import atomic_write_json

__all__ = [
    "BankError",
    "CommonMistake",
    "GeneralSkill",
    "Origin",
    "SkillBank",
    "UTILITY_KEY",
    "UTILITY_RECORD_KEYS",
    "check_utility_record",
    "snapshot_path",
]

# The per-item utility record (beyond the paper; accumulated by sgsd.item_utility): the
# alpha-weighted teacher categories of Tab. 2 and the number of uses, in each item's extra key.
UTILITY_KEY = "utility"
UTILITY_RECORD_KEYS = ("helpful", "warning", "over_suppressive", "misleading", "neutral", "uses")
#: Largest value a utility record holds (alpha-weighted teacher counts; a run adds < 1e9).
MAX_UTILITY = 1e15


def check_utility_record(raw: Any) -> None:
    """Raise ``ValueError`` (message starts with the offending key) unless ``raw`` is a
    utility record: a mapping of keys from :data:`UTILITY_RECORD_KEYS` (any subset; missing keys
    count 0) to numbers in [0, :data:`MAX_UTILITY`]."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"must be an object, got {type(raw).__name__}")
    for key, value in raw.items():
        if key not in UTILITY_RECORD_KEYS:
            raise ValueError(f"unknown key {key!r} (expected some of {UTILITY_RECORD_KEYS})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"'{key}' must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or not 0 <= value <= MAX_UTILITY:  # 1e308s summed to inf: a NaN score
            raise ValueError(f"'{key}' must be a number in [0, {MAX_UTILITY:g}], got {value!r}")


Origin = Literal["static", "dynamic"]
_ORIGINS = ("static", "dynamic")


class BankError(ValueError):
    """A skill bank file or object is invalid; the message names where and why."""


@dataclass(frozen=True)
class GeneralSkill:
    """Positive guidance: what to do (paper Sec. 2.1, ``g in G``)."""

    skill_id: str
    title: str
    principle: str
    when_to_apply: str
    origin: Origin = "static"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    ID_KEY: ClassVar[str] = "skill_id"
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = ("title", "principle", "when_to_apply")

    @property
    def item_id(self) -> str:
        return self.skill_id

    @property
    def retrieval_text(self) -> str:
        """The text embedded for retrieval: title, principle and when to apply."""
        return f"{self.title}: {self.principle} Apply when: {self.when_to_apply}"


@dataclass(frozen=True)
class CommonMistake:
    """Negative guidance: a failure mode to avoid (paper Sec. 2.1, ``e in E``)."""

    mistake_id: str
    description: str
    why_it_happens: str
    how_to_avoid: str
    origin: Origin = "static"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    ID_KEY: ClassVar[str] = "mistake_id"
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = ("description", "why_it_happens", "how_to_avoid")

    @property
    def item_id(self) -> str:
        return self.mistake_id

    @property
    def retrieval_text(self) -> str:
        """The text embedded for retrieval: description, why it happens, how to avoid."""
        return f"{self.description} Why: {self.why_it_happens} How to avoid: {self.how_to_avoid}"


BankItem = GeneralSkill | CommonMistake

_COLLECTIONS: dict[str, type[GeneralSkill] | type[CommonMistake]] = {
    "general_skills": GeneralSkill,
    "common_mistakes": CommonMistake,
}


def _parse_item(cls: type[GeneralSkill] | type[CommonMistake], raw: Any, where: str) -> BankItem:
    if not isinstance(raw, dict):
        raise BankError(f"{where}: must be a JSON object, got {type(raw).__name__}")
    id_key = cls.ID_KEY
    item_id = raw.get(id_key)
    if id_key not in raw:
        raise BankError(f"{where}: missing field '{id_key}'")
    if not isinstance(item_id, str) or not item_id.strip():
        raise BankError(f"{where}: field '{id_key}' must be a non-empty string, got {item_id!r}")
    where = f"{where} (id '{item_id}')"
    values: dict[str, str] = {}
    for name in cls.TEXT_FIELDS:
        if name not in raw:
            raise BankError(f"{where}: missing field '{name}'")
        value = raw[name]
        if not isinstance(value, str):
            raise BankError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise BankError(f"{where}: field '{name}' is empty")
        bad = bounded_json.lone_surrogate(value)
        if bad:
            raise BankError(f"{where}: field '{name}' holds a lone surrogate {bad}: not Unicode text")
        values[name] = value.strip()
    origin = raw.get("origin", "static")
    if origin not in _ORIGINS:
        raise BankError(f"{where}: field 'origin' must be one of {_ORIGINS}, got {origin!r}")
    if UTILITY_KEY in raw:
        try:
            check_utility_record(raw[UTILITY_KEY])
        except ValueError as exc:
            raise BankError(f"{where}: field '{UTILITY_KEY}': {exc}") from None
    known = {id_key, "origin", *cls.TEXT_FIELDS}
    extra = {k: v for k, v in raw.items() if k not in known}
    return cls(item_id.strip(), **values, origin=origin, extra=MappingProxyType(extra))


def _item_to_dict(item: BankItem) -> dict[str, Any]:
    out: dict[str, Any] = {item.ID_KEY: item.item_id}
    for name in item.TEXT_FIELDS:
        out[name] = getattr(item, name)
    if item.origin != "static":
        # Static items are written exactly in the released format.
        out["origin"] = item.origin
    out.update(item.extra)
    return out


@dataclass(frozen=True)
class SkillBank:
    """An immutable skill bank. Mutations return a new bank (``with_items``)."""

    general_skills: tuple[GeneralSkill, ...] = ()
    common_mistakes: tuple[CommonMistake, ...] = ()
    task_specific_skills: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for collection in ("general_skills", "common_mistakes"):
            for index, item in enumerate(getattr(self, collection)):
                if item.item_id in seen:
                    raise BankError(
                        f"{self.source}: {collection}[{index}]: duplicate id '{item.item_id}' "
                        f"(already used in {seen[item.item_id]})"
                    )
                seen[item.item_id] = f"{collection}[{index}]"

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>") -> SkillBank:
        """Validate and convert a parsed bank JSON object."""
        if not isinstance(data, dict):
            raise BankError(f"{source}: top level must be a JSON object, got {type(data).__name__}")
        parsed: dict[str, tuple[BankItem, ...]] = {}
        for collection, item_cls in _COLLECTIONS.items():
            if collection not in data:
                raise BankError(f"{source}: missing top-level key '{collection}'")
            raw_items = data[collection]
            if not isinstance(raw_items, list):
                raise BankError(
                    f"{source}: '{collection}' must be a list, got {type(raw_items).__name__}"
                )
            parsed[collection] = tuple(
                _parse_item(item_cls, raw, f"{source}: {collection}[{i}]")
                for i, raw in enumerate(raw_items)
            )
        extras = {}
        for key in ("task_specific_skills", "metadata"):
            value = data.get(key, {})
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise BankError(f"{source}: '{key}' must be an object, got {type(value).__name__}")
            extras[key] = value
        return cls(
            general_skills=parsed["general_skills"],  # type: ignore[arg-type]
            common_mistakes=parsed["common_mistakes"],  # type: ignore[arg-type]
            task_specific_skills=extras["task_specific_skills"],
            metadata=extras["metadata"],
            source=source,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, require_nonempty: bool = False) -> SkillBank:
        """Read and validate a bank file; ``require_nonempty`` also demands >=1 skill and mistake."""
        p = Path(path)
        if not p.exists():
            raise BankError(f"{p}: skill bank file not found")
        if p.is_dir():
            raise BankError(f"{p}: is a directory, expected a skill bank JSON file")
        if p.stat().st_size > bounded_json.MAX_FILE_BYTES:
            raise BankError(f"{p}: {p.stat().st_size:,} bytes, more than the {bounded_json.MAX_FILE_BYTES:,} a bank "
                            "file may hold")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BankError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            data = bounded_json.loads(text)
        except json.JSONDecodeError as exc:
            raise BankError(f"{p}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        bank = cls.from_dict(data, source=str(p))
        if require_nonempty:
            bank.require_nonempty()
        return bank

    @classmethod
    def load_start(cls, path: str | os.PathLike[str], *, grows: bool) -> SkillBank:
        """A training run's first bank: one that forms a teacher pair (a skill and a mistake),
        or, for a run that ``grows`` it online (``sgsd.update.enable``), an EMPTY bank: a cold
        start, with no teacher (and no SGSD loss) until the first update adds items. A bank
        with one collection empty is refused either way (a broken bank, not a cold start)."""
        bank = cls.load(path)
        if grows and not bank.general_skills and not bank.common_mistakes:
            return bank
        try:
            return bank.require_nonempty()
        except BankError as exc:
            if bank.general_skills or bank.common_mistakes:
                raise
            raise BankError(f"{exc}; an empty bank is a cold start only for a run whose bank grows online "
                            "(sgsd.update.enable=true)") from None

    def require_nonempty(self) -> SkillBank:
        """Raise unless the bank can form at least one (skill, mistake) teacher pair."""
        if not self.general_skills or not self.common_mistakes:
            raise BankError(
                f"{self.source}: empty skill bank ({len(self.general_skills)} general_skills, "
                f"{len(self.common_mistakes)} common_mistakes); SGSD needs at least one of each "
                "to form a teacher"
            )
        return self

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict[str, Any]:
        """The JSON object in the released layout (key order as shipped)."""
        return {
            "general_skills": [_item_to_dict(s) for s in self.general_skills],
            "task_specific_skills": dict(self.task_specific_skills),
            "common_mistakes": [_item_to_dict(m) for m in self.common_mistakes],
            "metadata": dict(self.metadata),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bank atomically; the previous file survives any failure."""
        return atomic_write_json(path, self.to_dict())

    def save_snapshot(self, latest_path: str | os.PathLike[str], step: int) -> tuple[Path, Path]:
        """Save the latest bank and a step-indexed copy beside it; returns both paths."""
        snap = snapshot_path(latest_path, step)
        self.save(snap)
        return self.save(latest_path), snap

    # ------------------------------------------------------------------ views
    def items(self, collection: str) -> tuple[BankItem, ...]:
        if collection not in _COLLECTIONS:
            raise KeyError(f"unknown collection {collection!r}; expected one of {tuple(_COLLECTIONS)}")
        return getattr(self, collection)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"general_skills": {"static": n, "dynamic": m, "total": n+m}, "common_mistakes": ...}``."""
        out = {}
        for collection in _COLLECTIONS:
            items = self.items(collection)
            dynamic = sum(item.origin == "dynamic" for item in items)
            out[collection] = {"static": len(items) - dynamic, "dynamic": dynamic, "total": len(items)}
        return out

    def get(self, item_id: str) -> BankItem:
        for collection in _COLLECTIONS:
            for item in self.items(collection):
                if item.item_id == item_id:
                    return item
        raise KeyError(f"{self.source}: no item with id {item_id!r}")

    def with_items(
        self,
        *,
        general_skills: Iterable[GeneralSkill] | None = None,
        common_mistakes: Iterable[CommonMistake] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SkillBank:
        """A new bank with the given collections/metadata replaced (validated again)."""
        return replace(
            self,
            general_skills=self.general_skills if general_skills is None else tuple(general_skills),
            common_mistakes=self.common_mistakes if common_mistakes is None else tuple(common_mistakes),
            metadata=self.metadata if metadata is None else dict(metadata),
        )


def snapshot_path(latest_path: str | os.PathLike[str], step: int) -> Path:
    """``dir/bank.json`` + step 25 -> ``dir/bank.step_000025.json`` (sorts by step)."""
    if step < 0:
        raise ValueError(f"snapshot step must be >= 0, got {step}")
    p = Path(latest_path)
    return p.with_name(f"{p.stem}.step_{step:06d}{p.suffix or '.json'}")
