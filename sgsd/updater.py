"""Online skill-bank evolution (paper Alg. 4, App. C.4), as a pure function of a window.

Every ``freq`` steps the trainer hands :meth:`SkillUpdater.update` the rollout records
gathered since the last update. If the window's success rate is at least ``gamma`` the
update is skipped. Otherwise successes are summarised into new general skills and
failures into new common mistakes (the Tab. 7/8 prompts), each collection's candidates
are merged (Alg. 3), candidates that repeat an item already in the bank are dropped, at
most ``max_new_items`` survive per collection, and they join the bank as DYNAMIC items
with stable ids (``gen_dyn_0001``...; existing ids never change). Each collection keeps
at most ``capacity`` dynamic items: beyond it the existing dynamic items with the lowest
:func:`sgsd.item_utility.utility_score` are pruned first (ties: oldest first, so a bank
without utility records is pruned by age). Items added by this very update are
protected; at most ``capacity`` of them are admitted, so they never have to be pruned.
Static (cold-start) items are never touched. The scores are the ones stored in the
bank: a trainer applies its :class:`sgsd.item_utility.UtilityTracker` before updating.

Agent episodes (``record.episode``): each record's extraction prompt is worded for its
own kind (a math rollout gets the paper's Tab. 7/8, an episode the agent wording, with
the episode memory of :func:`sgsd.records.memory_record`). The merge prompts have one
wording per update: the agent one when EVERY record of the window is an episode, the
paper's math one otherwise (a mixed window merges math-worded: the paper's text is the
default, and the agent text would be wrong for its math items). See ``docs/agent-prompts.md``.

Nothing here raises for a bad model reply: an update whose calls fail or whose replies
cannot be parsed adds nothing, and the bank is returned as it was, with the counts in
the report.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sgsd.bank import CommonMistake, GeneralSkill, SkillBank
from sgsd.checks import raising
from sgsd.llm.base import GenerationSettings, LLMClient
from sgsd.merge import MergeConfig, hierarchical_merge
from sgsd.parsing import parse_items
from sgsd.records import RolloutRecord, memory_record
from sgsd.skill_prompts import extraction_prompt
from sgsd.item_utility import utility_score

__all__ = ["UpdateConfig", "UpdateReport", "SkillUpdater", "record_domain", "window_domain"]

_KIND_OF = {True: "general_skills", False: "common_mistakes"}
_DYN_PREFIX = {"general_skills": "gen_dyn_", "common_mistakes": "err_dyn_"}
_ITEM_CLASS = {"general_skills": GeneralSkill, "common_mistakes": CommonMistake}
_DYN_ID = re.compile(r"^(?:gen|err)_dyn_(\d+)$")


@dataclass(frozen=True)
class UpdateConfig:
    success_threshold: float = 0.8  # gamma: skip when the window is already this good
    max_new_items: int = 5  # N, per collection and update
    capacity: int = 30  # C, dynamic items per collection
    max_memories: int = 32  # extraction requests per kind and update (sampled from the window)
    max_completion_chars: int = 6000  # a memory's completion is cut to this (keeps prompts bounded)
    seed: int = 0
    merge_group_size: int = 32
    merge_patience: int = 3
    settings: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=2048,
                                                                                    temperature=0.6))

    def __post_init__(self) -> None:
        with raising(ValueError, lambda exc: exc.named(f"merge_{exc.name}")):  # checked when built, not mid-run
            MergeConfig(group_size=self.merge_group_size, patience=self.merge_patience)


@dataclass
class UpdateReport:
    """What one update did (logged as ``sgsd/update/*`` metrics and kept in bank metadata)."""

    step: int
    applied: bool
    skipped_reason: str | None = None
    window: int = 0
    success_rate: float = 0.0
    requests: int = 0
    request_failures: int = 0
    parse_failures: int = 0
    candidates: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)
    pruned_ids: dict[str, list[str]] = field(default_factory=dict)  # lowest utility first
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        out = {
            "sgsd/update/applied": float(self.applied),
            "sgsd/update/skipped": float(not self.applied),
            "sgsd/update/window": float(self.window),
            "sgsd/update/success_rate": self.success_rate,
            "sgsd/update/requests": float(self.requests),
            "sgsd/update/request_failures": float(self.request_failures),
            "sgsd/update/parse_failures": float(self.parse_failures),
            "sgsd/update/seconds": self.seconds,
        }
        for name in ("added", "pruned", "candidates"):
            for kind, value in getattr(self, name).items():
                out[f"sgsd/update/{name}_{kind}"] = float(value)
        return out


def record_domain(record: RolloutRecord) -> str:
    """The prompt wording of one record's extraction: ``"agent"`` for an episode, else ``"math"``."""
    return "agent" if record.episode else "math"


def window_domain(records: Sequence[RolloutRecord]) -> str:
    """The merge wording of a window: ``"agent"`` when all its records are episodes, else ``"math"``
    (a mixed or empty window keeps the paper's math wording)."""
    return "agent" if records and all(r.episode for r in records) else "math"


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class SkillUpdater:
    """Alg. 4 with an injected skill writer (any :class:`sgsd.llm.LLMClient`)."""

    def __init__(self, client: LLMClient, config: UpdateConfig = UpdateConfig()) -> None:
        self.client = client
        self.config = config

    def update(self, bank: SkillBank, window: Sequence[RolloutRecord], step: int, *,
               success_rate: float | None = None, window_size: int | None = None) -> tuple[SkillBank, UpdateReport]:
        """One update on ``window``.

        ``success_rate`` / ``window_size`` describe the whole window when ``window`` is only a
        sample of it (:class:`sgsd.evolution.RecordWindow` keeps counts and a uniform sample);
        by default they are computed from ``window`` itself.
        """
        start = time.perf_counter()
        records = [r for r in window if r.problem]
        report = UpdateReport(step=step, applied=False, window=len(records) if window_size is None else window_size)
        if not records:
            report.skipped_reason = "empty_window"
            return bank, self._done(report, start)
        report.success_rate = (sum(r.success for r in records) / len(records) if success_rate is None
                               else float(success_rate))
        if report.success_rate >= self.config.success_threshold:
            report.skipped_reason = "success_rate_above_threshold"
            return bank, self._done(report, start)

        rng = random.Random(self.config.seed + step)
        domain = window_domain(records)
        new_bank = bank
        for success, kind in _KIND_OF.items():
            pool = [r for r in records if r.success == success]
            if len(pool) > self.config.max_memories:
                pool = rng.sample(pool, self.config.max_memories)
            candidates = self._extract(pool, kind, report, domain)
            report.candidates[kind] = len(candidates)
            new_bank = self._admit(new_bank, kind, candidates, step, report)
        report.applied = any(report.added.values()) or any(report.pruned.values())
        if not report.applied:
            report.skipped_reason = "no_new_items"
            return bank, self._done(report, start)
        return new_bank, self._done(report, start)

    def _extract(self, pool: Sequence[RolloutRecord], kind: str, report: UpdateReport,
                 merge_domain: str = "math") -> list[dict[str, str]]:
        if not pool:
            return []
        prompts = [extraction_prompt(memory_record(r, self.config.max_completion_chars), kind, domain=record_domain(r))
                   for r in pool]
        replies = self.client.generate(prompts, self.config.settings)
        report.requests += len(prompts)
        items: list[dict[str, str]] = []
        for reply in replies:
            if reply.text is None:
                report.request_failures += 1
                continue
            parsed = parse_items(reply.text, kind)
            if not parsed.items:
                report.parse_failures += 1
            items.extend(parsed.items[:3])  # "up to three" per memory (Alg. 2)
        if len(items) > 1:
            merged = hierarchical_merge(items, kind, self.client, group_size=self.config.merge_group_size,
                                        patience=self.config.merge_patience, settings=self.config.settings,
                                        progress=False, domain=merge_domain)
            report.requests += merged.requests
            report.request_failures += merged.request_failures
            report.parse_failures += merged.parse_failures
            items = [_fields(it, kind) for it in merged.items]
        return items

    def _admit(self, bank: SkillBank, kind: str, candidates: list[dict[str, str]], step: int,
               report: UpdateReport) -> SkillBank:
        existing = list(bank.items(kind))
        cls = _ITEM_CLASS[kind]
        seen = {tuple(_norm(v) for v in _fields(it, kind).values()) for it in existing}
        next_id = 1 + max((int(m.group(1)) for it in existing if (m := _DYN_ID.match(it.item_id))), default=0)
        # New items are protected from pruning, so admitting more than C would only mint
        # ids that are pruned at once: at most min(N, C) join.
        max_new = max(min(self.config.max_new_items, self.config.capacity), 0)
        added = []
        for cand in candidates:
            key = tuple(_norm(v) for v in cand.values())
            if key in seen or len(added) >= max_new:
                continue
            seen.add(key)
            added.append(cls(f"{_DYN_PREFIX[kind]}{next_id:04d}", **cand, origin="dynamic",
                             extra={"created_step": step}))
            next_id += 1
        # Candidates for pruning: the existing dynamic items, lowest utility first, then
        # oldest first (bank order is age order: dynamic items are appended).
        old_dynamic = [(utility_score(it), age, it.item_id) for age, it in enumerate(existing)
                       if it.origin == "dynamic"]
        overflow = max(len(old_dynamic) + len(added) - self.config.capacity, 0)
        pruned = [item_id for _, _, item_id in sorted(old_dynamic)[:overflow]]
        gone = set(pruned)
        items = [it for it in existing if it.item_id not in gone] + added
        report.added[kind] = len(added)
        report.pruned[kind] = len(pruned)
        report.pruned_ids[kind] = pruned
        if not added and not pruned:
            return bank
        return bank.with_items(**{kind: items})

    def _done(self, report: UpdateReport, start: float) -> UpdateReport:
        report.seconds = time.perf_counter() - start
        return report


def _fields(item: Any, kind: str) -> dict[str, str]:
    names = GeneralSkill.TEXT_FIELDS if kind == "general_skills" else CommonMistake.TEXT_FIELDS
    if isinstance(item, dict):
        return {n: item[n] for n in names}
    return {n: getattr(item, n) for n in names}


def with_update_metadata(bank: SkillBank, report: UpdateReport, keep: int = 50) -> SkillBank:
    """Append the report to ``metadata.online_updates`` (the last ``keep`` are kept)."""
    history = list(bank.metadata.get("online_updates", []))[-(keep - 1):] if keep > 1 else []
    history.append({k: v for k, v in replace(report).__dict__.items()})
    return bank.with_items(metadata={**bank.metadata, "online_updates": history})
