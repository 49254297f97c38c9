"""Online bank evolution (Alg. 4) with a test-double skill writer: growth bounded by N
and C, static items untouched, stable ids, failures leave the bank as it was."""

from __future__ import annotations

import json

import pytest

from sgsd.bank import SkillBank
from sgsd.llm.base import Completion, LLMStats
from sgsd.records import RolloutRecord
from sgsd.updater import SkillUpdater, UpdateConfig


class Writer:
    """Replies like a model: extraction -> 3 new items (LaTeX inside, thinking first);
    merge -> the group unchanged. ``garbage=True`` answers nonsense to everything."""

    name = "writer"

    def __init__(self, garbage: bool = False):
        self.stats = LLMStats()
        self.garbage = garbage
        self.calls = 0

    def generate(self, prompts, settings=None):
        out = []
        for prompt in prompts:
            self.calls += 1
            if self.garbage:
                out.append(Completion("<think>no idea</think> sorry"))
            elif "general_skills" in prompt and "merge" not in prompt.lower()[:400]:
                n = self.calls
                items = [{"title": f"Skill {n}.{i}", "principle": f"Use \\frac{{a}}{{b}} carefully {n}.{i}",
                          "when_to_apply": "fractions"} for i in range(3)]
                out.append(Completion("<think>the answer \\boxed{2}</think>" + json.dumps({"general_skills": items})))
            elif "common_mistakes" in prompt and "merge" not in prompt.lower()[:400]:
                n = self.calls
                items = [{"description": f"Mistake {n}.{i}", "why_it_happens": "rushing",
                          "how_to_avoid": f"check step {n}.{i}"} for i in range(3)]
                out.append(Completion(json.dumps({"common_mistakes": items})))
            else:  # a merge request: echo the items it was given
                start = prompt.index("[")
                items, _ = json.JSONDecoder().raw_decode(prompt[start:])
                key = "general_skills" if "title" in items[0] else "common_mistakes"
                out.append(Completion(json.dumps({key: items})))
        return out


def _window(successes: int, failures: int, step: int = 1):
    return ([RolloutRecord(f"ok problem {i}", f"so \\boxed{{{i}}}", 1.0, "math", step, str(i)) for i in range(successes)]
            + [RolloutRecord(f"bad problem {i}", "I think \\boxed{0}", 0.0, "math", step, "1") for i in range(failures)])


@pytest.fixture
def bank(shipped_bank) -> SkillBank:
    return shipped_bank.with_items(general_skills=shipped_bank.general_skills[:5],
                                   common_mistakes=shipped_bank.common_mistakes[:5])


def test_skip_when_the_window_already_succeeds(bank):
    new, report = SkillUpdater(Writer()).update(bank, _window(9, 1), step=25)
    assert new is bank and not report.applied and report.skipped_reason == "success_rate_above_threshold"
    new, report = SkillUpdater(Writer()).update(bank, [], step=25)
    assert new is bank and report.skipped_reason == "empty_window"


def test_adds_at_most_n_dynamic_items_with_stable_ids_and_keeps_static_items(bank):
    updater = SkillUpdater(Writer(), UpdateConfig(max_new_items=5, capacity=30))
    new, report = updater.update(bank, _window(3, 4), step=25)
    assert report.applied and report.added == {"general_skills": 5, "common_mistakes": 5}
    counts = new.counts()
    assert counts["general_skills"] == {"static": 5, "dynamic": 5, "total": 10}
    assert new.general_skills[:5] == bank.general_skills[:5]  # static items untouched, in place
    assert [s.skill_id for s in new.general_skills[5:]] == [f"gen_dyn_{i:04d}" for i in range(1, 6)]
    assert all(s.extra["created_step"] == 25 for s in new.general_skills[5:])
    # a second update continues the numbering; earlier dynamic ids do not move
    newer, _ = updater.update(new, _window(3, 4, step=50), step=50)
    assert [s.skill_id for s in newer.general_skills[5:10]] == [s.skill_id for s in new.general_skills[5:]]
    assert newer.general_skills[10].skill_id == "gen_dyn_0006"


def test_without_utility_capacity_prunes_the_oldest_dynamic_items(bank):
    updater = SkillUpdater(Writer(), UpdateConfig(max_new_items=5, capacity=7))
    current = bank
    for step in (25, 50, 75):
        current, report = updater.update(current, _window(3, 4, step), step=step)
    dynamic = [s for s in current.general_skills if s.origin == "dynamic"]
    assert len(dynamic) == 7 and report.pruned["general_skills"] == 5
    assert [s.skill_id for s in dynamic] == [f"gen_dyn_{i:04d}" for i in range(9, 16)]
    assert current.counts()["general_skills"]["static"] == 5


def _with_dynamic(bank: SkillBank, utilities: list[dict | None]) -> SkillBank:
    """``bank`` plus dynamic skills gen_dyn_0001.. (oldest first) carrying the given utility records."""
    data = bank.to_dict()
    for i, utility in enumerate(utilities, start=1):
        item = {"skill_id": f"gen_dyn_{i:04d}", "title": f"Old skill {i}", "principle": f"keep {i}",
                "when_to_apply": "always", "origin": "dynamic", "created_step": i}
        data["general_skills"].append(item | ({"utility": utility} if utility is not None else {}))
    return SkillBank.from_dict(data)


def _dynamic_ids(bank: SkillBank) -> list[str]:
    return [s.skill_id for s in bank.general_skills if s.origin == "dynamic"]


def test_capacity_prunes_the_lowest_utility_dynamic_items_first(bank):
    good, bad = {"helpful": 4.0, "uses": 30}, {"misleading": 2.0, "uses": 16}
    current = _with_dynamic(bank, [good, bad, None, {"over_suppressive": 0.5, "uses": 4}, good, good])
    updater = SkillUpdater(Writer(), UpdateConfig(max_new_items=3, capacity=6))
    new, report = updater.update(current, _window(3, 4), step=100)
    # 6 old + 3 new = 9 > 6: the three lowest scores go, worst first (-0.667, -0.333, 0 = never used)
    assert report.pruned["general_skills"] == 3
    assert report.pruned_ids["general_skills"] == ["gen_dyn_0002", "gen_dyn_0004", "gen_dyn_0003"]
    assert _dynamic_ids(new) == ["gen_dyn_0001", "gen_dyn_0005", "gen_dyn_0006",
                                 "gen_dyn_0007", "gen_dyn_0008", "gen_dyn_0009"]
    assert new.get("gen_dyn_0001").extra["utility"] == good  # survivors keep their record
    assert report.metrics()["sgsd/update/pruned_general_skills"] == 3.0


def test_equal_utility_is_pruned_oldest_first(bank):
    same = {"helpful": 1.0, "misleading": 1.0, "uses": 8}  # score 0, like the unused item 3
    current = _with_dynamic(bank, [{"helpful": 1.0, "uses": 8}, same, None, same])
    new, report = SkillUpdater(Writer(), UpdateConfig(max_new_items=2, capacity=4)).update(
        current, _window(3, 4), step=100)
    assert report.pruned_ids["general_skills"] == ["gen_dyn_0002", "gen_dyn_0003"]
    assert _dynamic_ids(new) == ["gen_dyn_0001", "gen_dyn_0004", "gen_dyn_0005", "gen_dyn_0006"]


def test_new_items_are_protected_and_at_most_capacity_join(bank):
    great = {"helpful": 50.0, "uses": 400}  # every old item outranks a new (unused, score 0) one
    current = _with_dynamic(bank, [great] * 4)
    new, report = SkillUpdater(Writer(), UpdateConfig(max_new_items=3, capacity=4)).update(
        current, _window(3, 4), step=100)
    assert report.added["general_skills"] == 3 and report.pruned_ids["general_skills"] == [
        "gen_dyn_0001", "gen_dyn_0002", "gen_dyn_0003"]
    assert _dynamic_ids(new) == ["gen_dyn_0004", "gen_dyn_0005", "gen_dyn_0006", "gen_dyn_0007"]
    # capacity below N: only C new items are admitted (none minted just to be pruned), every old one goes
    new, report = SkillUpdater(Writer(), UpdateConfig(max_new_items=5, capacity=2)).update(
        current, _window(3, 4), step=100)
    assert report.added["general_skills"] == 2 and report.pruned["general_skills"] == 4
    assert _dynamic_ids(new) == ["gen_dyn_0005", "gen_dyn_0006"]


def test_static_items_are_never_pruned_whatever_their_utility(bank):
    data = bank.to_dict()
    for item in data["general_skills"]:
        item["utility"] = {"misleading": 100.0, "uses": 800}  # far below any dynamic item
    current = _with_dynamic(SkillBank.from_dict(data), [None, None])
    new, report = SkillUpdater(Writer(), UpdateConfig(max_new_items=3, capacity=3)).update(
        current, _window(3, 4), step=100)
    assert new.general_skills[:5] == current.general_skills[:5]
    assert report.pruned_ids["general_skills"] == ["gen_dyn_0001", "gen_dyn_0002"]
    assert new.counts()["general_skills"] == {"static": 5, "dynamic": 3, "total": 8}
    # capacity 0 empties the dynamic subset and nothing else
    new, report = SkillUpdater(Writer(), UpdateConfig(capacity=0)).update(current, _window(3, 4), step=100)
    assert report.added["general_skills"] == 0 and report.pruned["general_skills"] == 2
    assert new.general_skills == current.general_skills[:5]


def test_unparseable_replies_leave_the_bank_as_it_was(bank):
    new, report = SkillUpdater(Writer(garbage=True)).update(bank, _window(2, 6), step=25)
    assert new is bank and not report.applied and report.skipped_reason == "no_new_items"
    assert report.parse_failures == 8 and report.requests == 8


@pytest.mark.parametrize("kwargs, message", [
    ({"merge_group_size": 1}, "merge_group_size must be >= 2, got 1"),
    ({"merge_patience": 0}, "merge_patience must be >= 1, got 0"),
])
def test_bad_merge_sizes_are_refused_when_the_config_is_built_not_at_the_first_update(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        UpdateConfig(**kwargs)


