"""Hierarchical merging of skill candidates (paper Alg. 3, App. C.3) and ``sgsd bank merge``.

Each layer partitions the collection, in order, into groups of at most ``group_size``
items; every group of two or more items goes to the skill writer with the merge prompt
of its kind (Tab. 9 / 10) - ONE batched ``client.generate`` per layer - and its reply
replaces the group. The layer's groups are concatenated; the stagnation counter resets
when the collection shrank and grows otherwise; merging stops after the layer that had
a single group (the root) or when the counter reaches ``patience``. Exact duplicates are
then removed and ids ``gen_001``... / ``err_001``... assigned (static items).

A group KEEPS its original items (Alg. 3 line 6) when its request failed, when the
reply holds no JSON object with the key, when no item in it is valid, when it has
MORE valid items than the group had (a merge may reword and combine but never add, and
a longer list is a model splitting or inventing items, so it is rejected whole rather
than cut at an arbitrary item), or when it keeps fewer than :data:`MIN_KEEP_FRACTION` of
the group's distinct items (a writer answering every group of 32 with one item collapsed
575 skills into 1; the released merges keep about half per layer). The first rule also bounds every layer
by its input, which makes the loop terminate (a shrinking count ends at the root; a flat
one at ``patience``); ``max_layers`` is only a guard.

Resuming: with a :class:`ReplyCache` every reply the writer gave (text, not a failed
request) is saved once per request batch, keyed by its prompt; a rerun reuses them, so it
redoes the layers without asking again and only retries the failed requests.

Duplicates are "exact" after normalisation: two items are the same when all text
fields agree ignoring case and runs of whitespace; the first one is kept.

The prompts are the paper's math wording unless ``domain="agent"`` (the multi-turn agent
wording of :mod:`sgsd.skill_prompts`; ``docs/agent-prompts.md``).

Per-layer statistics have exactly the shape of the shipped banks'
``metadata.general_merge_layers`` / ``common_mistake_merge_layers``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sgsd.bank import CommonMistake, GeneralSkill, SkillBank
from sgsd.checks import check_int
from sgsd.llm.base import Completion, GenerationSettings, LLMClient
from sgsd.parsing import parse_items
from sgsd.skill_prompts import COLLECTION_FIELDS, DOMAINS, merge_prompt

__all__ = [
    "DEFAULT_MERGE_SETTINGS",
    "ID_PREFIX",
    "LAYER_KEYS",
    "MergeConfig",
    "MIN_KEEP_FRACTION",
    "MergeResult",
    "ReplyCache",
    "hierarchical_merge",
    "merge_bank",
    "resolve_client",
]

ID_PREFIX = {"general_skills": "gen", "common_mistakes": "err"}
LAYER_KEYS = ("layer_index", "input_items", "num_groups", "output_items", "stagnant_layers", "stopped_reason")
_LAYER_METADATA_KEY = {"general_skills": "general_merge_layers", "common_mistakes": "common_mistake_merge_layers"}
_ITEM_CLASS = {"general_skills": GeneralSkill, "common_mistakes": CommonMistake}

#: A merge reply of 32 items is ~3k tokens of JSON; thinking off keeps it within budget.
DEFAULT_MERGE_SETTINGS = GenerationSettings(max_new_tokens=4096, temperature=0.6, top_p=0.95)
#: A reply must keep at least this share of its group (rounded up) to replace it.
MIN_KEEP_FRACTION = 1 / 8


class ReplyCache:
    """The writer's replies of a merge, saved in a :class:`sgsd.run_dir.RunDir` log (one JSON
    line per reply, keyed by the hash of collection, layer and prompt: a stagnant layer asks
    again, as Alg. 3's patience means) so a rerun asks only for what is missing. Failed
    requests are never saved."""

    LOG = "merge_replies.jsonl"

    def __init__(self, run) -> None:  # run: sgsd.run_dir.RunDir
        self.run = run
        self.replies = {row["key"]: row["text"] for row in run.read_log(self.LOG)
                        if isinstance(row.get("key"), str) and isinstance(row.get("text"), str)}
        self.reused = 0

    @staticmethod
    def key(kind: str, layer: int, prompt: str) -> str:
        import hashlib

        return hashlib.sha256(f"{kind}\0{layer}\0{prompt}".encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, kind: str, layer: int, prompt: str) -> str | None:
        return self.replies.get(self.key(kind, layer, prompt))

    def add(self, kind: str, layer: int, pairs: Sequence[tuple[str, str]]) -> None:
        rows = []
        for prompt, text in pairs:
            key = self.key(kind, layer, prompt)
            if key not in self.replies:
                self.replies[key] = text
                rows.append({"index": len(self.replies) - 1, "key": key, "text": text})
        self.run.append_log(self.LOG, rows)


@dataclass(frozen=True)
class MergeConfig:
    """Alg. 3's sizes, checked here for every caller: ``group_size`` items per merge call (H;
    a group of one cannot merge), ``patience`` stagnant layers before stopping (P) and
    ``max_layers``, a guard."""

    group_size: int = 32
    patience: int = 3
    max_layers: int = 64

    def __post_init__(self) -> None:
        check_int("group_size", self.group_size, 2)
        check_int("patience", self.patience, 1)
        check_int("max_layers", self.max_layers, 1)


@dataclass
class MergeResult:
    """Merged items (static, ids assigned), per-layer statistics and failure counts."""

    items: list[Any]  # list[GeneralSkill] or list[CommonMistake]
    layers: list[dict[str, Any]]
    parse_failures: int = 0  # replies with no usable item (no object, or zero valid items)
    request_failures: int = 0  # requests the client gave up on (Completion.text is None)
    growth_rejections: int = 0  # replies with more items than their group (kept the group)
    collapse_rejections: int = 0  # replies keeping fewer than MIN_KEEP_FRACTION of their group
    merged_groups: int = 0  # groups a reply replaced
    reused_replies: int = 0  # replies taken from the ReplyCache instead of asked for
    first_error: str | None = None  # the first failed request's error, for the terminal
    dropped_items: int = 0  # invalid items dropped from replies that were used
    duplicates_removed: int = 0
    input_items: int = 0
    requests: int = 0
    layer_details: list[dict[str, int]] = field(default_factory=list)

    @property
    def stopped_reason(self) -> str | None:
        return self.layers[-1]["stopped_reason"] if self.layers else None

    def diagnostics(self) -> dict[str, Any]:
        """The failure counts as a JSON-ready dict (written to bank metadata)."""
        return {
            "requests": self.requests,
            "parse_failures": self.parse_failures,
            "request_failures": self.request_failures,
            "growth_rejections": self.growth_rejections,
            "collapse_rejections": self.collapse_rejections,
            "merged_groups": self.merged_groups,
            "reused_replies": self.reused_replies,
            "first_error": self.first_error,
            "dropped_items": self.dropped_items,
            "duplicates_removed": self.duplicates_removed,
        }


def _as_fields(item: Any, fields: tuple[str, ...], index: int) -> dict[str, str]:
    """The text fields of an input item (a bank item or a mapping), validated."""
    out: dict[str, str] = {}
    for name in fields:
        value = item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"item {index}: field {name!r} must be a non-empty string, got {value!r}")
        out[name] = value.strip()
    return out


def _dedupe_key(item: Mapping[str, str], fields: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(" ".join(item[name].split()).casefold() for name in fields)


def hierarchical_merge(
    items: Sequence[Any],
    kind: str,
    client: LLMClient,
    *,
    group_size: int = 32,
    patience: int = 3,
    max_layers: int = 64,
    settings: GenerationSettings | None = None,
    progress: bool = True,
    cache: ReplyCache | None = None,
    batch_size: int | None = None,
    domain: str = "math",
) -> MergeResult:
    """Merge one collection (``general_skills`` or ``common_mistakes``) with Alg. 3.

    ``items`` are bank items or mappings with the collection's text fields. The result's
    ``layers`` has one entry per layer (keys :data:`LAYER_KEYS`); its last entry's
    ``stopped_reason`` is ``root_group_reached``, ``stagnation_patience_reached`` or, only
    if the ``max_layers`` guard fired, ``max_layers_reached``. An empty input runs no layer.
    ``batch_size`` prompts go to the writer per ``generate`` call (default: a whole layer);
    with a ``cache`` each call's replies are saved before the next. ``domain`` (``"math"`` or
    ``"agent"``) picks the merge prompts' wording.
    """
    if kind not in COLLECTION_FIELDS:
        raise ValueError(f"unknown collection {kind!r}; expected one of {tuple(COLLECTION_FIELDS)}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    MergeConfig(group_size, patience, max_layers)  # refuses out-of-range values
    fields = COLLECTION_FIELDS[kind]
    settings = settings or DEFAULT_MERGE_SETTINGS
    current = [_as_fields(item, fields, i) for i, item in enumerate(items)]
    result = MergeResult(items=[], layers=[], input_items=len(current))
    from tqdm.auto import tqdm  # light, but only needed here

    bar = tqdm(desc=f"merge {kind}", unit="layer", disable=not progress or not current, file=sys.stderr)
    stagnant = 0
    try:
        while current:
            layer_index = len(result.layers)
            groups = [current[i:i + group_size] for i in range(0, len(current), group_size)]
            merged, detail = _merge_layer(groups, kind, client, settings, group_size, fields, result, cache,
                                          batch_size, layer_index, domain)
            stagnant = 0 if len(merged) < len(current) else stagnant + 1
            if len(groups) == 1:
                reason: str | None = "root_group_reached"
            elif stagnant >= patience:
                reason = "stagnation_patience_reached"
            elif layer_index + 1 >= max_layers:
                reason = "max_layers_reached"
            else:
                reason = None
            result.layers.append({
                "layer_index": layer_index,
                "input_items": len(current),
                "num_groups": len(groups),
                "output_items": len(merged),
                "stagnant_layers": stagnant,
                "stopped_reason": reason,
            })
            result.layer_details.append({"layer_index": layer_index, **detail})
            current = merged
            bar.update(1)
            bar.set_postfix(items=len(current), stagnant=stagnant)
            if reason is not None:
                break
    finally:
        bar.close()

    unique: list[dict[str, str]] = []
    seen: set[tuple[str, ...]] = set()
    for item in current:
        key = _dedupe_key(item, fields)
        if key not in seen:
            seen.add(key)
            unique.append(item)
    result.duplicates_removed = len(current) - len(unique)
    cls = _ITEM_CLASS[kind]
    prefix = ID_PREFIX[kind]
    result.items = [cls(f"{prefix}_{i:03d}", **item) for i, item in enumerate(unique, start=1)]
    return result


def _merge_layer(
    groups: list[list[dict[str, str]]],
    kind: str,
    client: LLMClient,
    settings: GenerationSettings,
    group_size: int,
    fields: tuple[str, ...],
    result: MergeResult,
    cache: ReplyCache | None = None,
    batch_size: int | None = None,
    layer: int = 0,
    domain: str = "math",
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """One layer: the multi-item groups' prompts to the writer (cached replies reused);
    returns items and counts."""
    todo = [g for g in groups if len(g) > 1]
    prompts = [merge_prompt(g, kind, group_size=group_size, domain=domain) for g in todo]
    replies = _ask(prompts, kind, layer, client, settings, result, cache, batch_size)
    detail = {"merged_groups": 0, "kept_groups": 0, "request_failures": 0, "parse_failures": 0,
              "growth_rejections": 0, "collapse_rejections": 0}
    merged: list[dict[str, str]] = []
    pending = iter(replies)
    for group in groups:
        if len(group) == 1:  # nothing to merge with (Alg. 3 line 4)
            merged.extend(group)
            continue
        status, new, dropped = _group_outcome(group, next(pending), kind, fields)
        detail[status] += 1
        if new is None:
            detail["kept_groups"] += 1
            merged.extend(group)
        else:
            result.dropped_items += dropped
            merged.extend(new)
    result.request_failures += detail["request_failures"]
    result.parse_failures += detail["parse_failures"]
    result.growth_rejections += detail["growth_rejections"]
    result.collapse_rejections += detail["collapse_rejections"]
    result.merged_groups += detail["merged_groups"]
    return merged, detail


def _ask(prompts: list[str], kind: str, layer: int, client: LLMClient, settings: GenerationSettings,
         result: MergeResult, cache: ReplyCache | None, batch_size: int | None) -> list[Completion]:
    """A reply per prompt: from ``cache`` when it has one, else from the writer in batches."""
    replies: list[Completion | None] = [None] * len(prompts)
    missing = []
    for i, prompt in enumerate(prompts):
        saved = cache.get(kind, layer, prompt) if cache is not None else None
        if saved is None:
            missing.append(i)
        else:
            replies[i] = Completion(saved)
            result.reused_replies += 1
    size = batch_size or len(missing) or 1
    for start in range(0, len(missing), size):
        batch = missing[start:start + size]
        got = list(client.generate([prompts[i] for i in batch], settings))
        if len(got) != len(batch):
            # A client that breaks the one-reply-per-prompt contract must not shift replies
            # onto the wrong groups: nothing of this batch is trusted.
            error = f"client returned {len(got)} replies for {len(batch)} prompts"
            got = [Completion(None, error=error)] * len(batch)
        result.requests += len(batch)
        for i, reply in zip(batch, got):
            replies[i] = reply
            if reply.text is None and result.first_error is None:
                result.first_error = reply.error or "no reply"
        if cache is not None:
            cache.add(kind, layer, [(prompts[i], reply.text) for i, reply in zip(batch, got) if reply.text is not None])
    return replies  # type: ignore[return-value]


def _group_outcome(
    group: list[dict[str, str]], reply: Completion, kind: str, fields: tuple[str, ...]
) -> tuple[str, list[dict[str, str]] | None, int]:
    """``(status, items or None to keep the group, dropped items)`` for one group's reply."""
    if reply.text is None:
        return "request_failures", None, 0
    parsed = parse_items(reply.text, kind)
    if parsed.error is not None or not parsed.items:
        return "parse_failures", None, 0
    if len(parsed.items) > len(group):
        return "growth_rejections", None, 0
    distinct = len({_dedupe_key(item, fields) for item in group})  # copies of one item may become one
    if len(parsed.items) < math.ceil(distinct * MIN_KEEP_FRACTION):
        return "collapse_rejections", None, 0
    return "merged_groups", [{name: item[name] for name in fields} for item in parsed.items], parsed.dropped


def merge_bank(
    raw_bank: SkillBank,
    client: LLMClient,
    *,
    group_size: int = 32,
    patience: int = 3,
    max_layers: int = 64,
    settings: GenerationSettings | None = None,
    progress: bool = True,
    source: str | None = None,
    cache: ReplyCache | None = None,
    batch_size: int | None = None,
    domain: str = "math",
) -> SkillBank:
    """Merge both collections of a raw candidate bank into a bank in the shipped layout.

    The metadata has the shipped banks' keys (``source``, ``merge_group_size``,
    ``merge_stagnation_patience``, input/output counts, the two layer lists) plus
    ``merge_diagnostics`` (request/parse failures, growth rejections, duplicates).
    ``domain`` as in :func:`hierarchical_merge`.
    """
    settings = settings or DEFAULT_MERGE_SETTINGS
    results = {
        kind: hierarchical_merge(raw_bank.items(kind), kind, client, group_size=group_size, patience=patience,
                                 max_layers=max_layers, settings=settings, progress=progress, cache=cache,
                                 batch_size=batch_size, domain=domain)
        for kind in ("general_skills", "common_mistakes")
    }
    general, mistakes = results["general_skills"], results["common_mistakes"]
    failed = general.request_failures + mistakes.request_failures
    partial = f" (partial: {failed} failed requests kept their groups unmerged)" if failed else ""
    metadata: dict[str, Any] = {
        "source": f"hierarchical merge from {source or raw_bank.source} using {getattr(client, 'name', client)}"
                  + partial,
        "merge_group_size": group_size,
        "merge_stagnation_patience": patience,
        "input_general_skills": general.input_items,
        "output_general_skills": len(general.items),
        "input_common_mistakes": mistakes.input_items,
        "output_common_mistakes": len(mistakes.items),
        _LAYER_METADATA_KEY["general_skills"]: general.layers,
        _LAYER_METADATA_KEY["common_mistakes"]: mistakes.layers,
        "merge_diagnostics": {
            "general_skills": general.diagnostics(),
            "common_mistakes": mistakes.diagnostics(),
            "settings": dataclasses.asdict(settings),
        },
    }
    return SkillBank(
        general_skills=tuple(general.items),
        common_mistakes=tuple(mistakes.items),
        task_specific_skills=dict(raw_bank.task_specific_skills),
        metadata=metadata,
        source="<merged>",
    )


def resolve_client(spec: str) -> LLMClient:
    """The skill writer named by ``--llm SPEC`` (via :func:`sgsd.llm.factory.make_client`).

    Imported lazily: backends pull in heavy libraries (vllm, transformers, HTTP clients)
    that nothing else in ``sgsd`` needs. Tests replace this function.
    """
    from sgsd.llm.factory import make_client

    return make_client(spec)
