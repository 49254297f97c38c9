"""Per-item utility: Tab. 2 categories per teacher, alpha-weighted records kept in the bank,
the ranking score, tracker state for resume, and `sgsd bank inspect` showing it."""

from __future__ import annotations

import json

import pytest
import torch

from sgsd.bank import BankError, SkillBank, check_utility_record
from sgsd.cli import main
from sgsd.objective import teacher_polarity
from sgsd.item_utility import UtilityTracker, classify_teachers, utility_of, utility_score

POLARITY = {"helpful": 1.0, "warning": 1.0, "over_suppressive": -1.0, "misleading": -1.0, "neutral": 0.0}


def _bank(utilities: dict[str, dict] | None = None) -> SkillBank:
    utilities = utilities or {}

    def skill(i):
        raw = {"skill_id": f"g{i}", "title": f"Skill {i}", "principle": "p", "when_to_apply": "w"}
        return raw | ({"utility": utilities[raw["skill_id"]]} if raw["skill_id"] in utilities else {})

    def mistake(i):
        raw = {"mistake_id": f"e{i}", "description": f"Mistake {i}", "why_it_happens": "y", "how_to_avoid": "h"}
        return raw | ({"utility": utilities[raw["mistake_id"]]} if raw["mistake_id"] in utilities else {})

    return SkillBank.from_dict({"general_skills": [skill(i) for i in range(3)],
                                "common_mistakes": [mistake(i) for i in range(3)]})


# --------------------------------------------------------------------- classify
def test_each_category_by_hand():
    support = torch.tensor([[0.2, -0.2, 0.05, -0.05, 0.0],
                            [0.2, -0.2, 0.051, -0.051, 0.0]])
    sign = torch.tensor([1.0, -1.0])
    assert classify_teachers(support, sign, threshold=0.05) == [
        ["helpful", "over_suppressive", "neutral", "neutral", "neutral"],  # |a| = eps_a is neutral
        ["misleading", "warning", "misleading", "warning", "neutral"],
    ]
    # eps_a = 0 leaves only a = 0 neutral; an outcome sign of 0 makes every teacher neutral
    assert classify_teachers(support[:1, 2:], torch.tensor([1.0]), 0.0) == [["helpful", "over_suppressive",
                                                                             "neutral"]]
    assert classify_teachers(support[:1], torch.tensor([0.0]), 0.05) == [["neutral"] * 5]
    with pytest.raises(ValueError, match="threshold"):
        classify_teachers(support, sign, -0.1)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        classify_teachers(support, sign[:1], 0.05)


@pytest.mark.parametrize("seed", range(5))
def test_classify_agrees_with_teacher_polarity_on_random_tensors(seed):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(16, 8, generator=g) * 0.1
    support[0, :4] = torch.tensor([0.05, -0.05, 0.0, float("nan")])  # boundary and NaN cases
    sign = torch.randint(-1, 2, (16,), generator=g).float()  # -1, 0, +1
    threshold = [0.0, 0.05, 0.1, 0.05, 0.2][seed]
    names = classify_teachers(support, sign, threshold)
    mapped = torch.tensor([[POLARITY[n] for n in row] for row in names])
    expected = torch.nan_to_num(teacher_polarity(support, sign, threshold))
    torch.testing.assert_close(mapped, expected)
    for b, row in enumerate(names):  # and the outcome half of the name is right
        for k, name in enumerate(row):
            if name in ("helpful", "over_suppressive"):
                assert sign[b] > 0
            if name in ("warning", "misleading"):
                assert sign[b] < 0
            if name in ("helpful", "misleading"):
                assert support[b, k] > threshold


# --------------------------------------------------------------------- tracker
def test_observe_credits_both_items_of_a_pair_with_alpha():
    tracker = UtilityTracker()
    # rollout 0 succeeds: teacher (g0, e0) supports it -> helpful, (g1, e1) suppresses -> over_suppressive
    # rollout 1 fails: (g0, e2) suppresses -> warning, (g2, e1) is within eps_a -> neutral
    tracker.observe([["g0", "g1"], ["g0", "g2"]], [["e0", "e1"], ["e2", "e1"]],
                    support=torch.tensor([[0.5, -0.5], [-0.3, 0.01]]),
                    alpha=torch.tensor([[0.75, 0.25], [0.6, 0.4]]),
                    outcome_sign=torch.tensor([1.0, -1.0]), threshold=0.05)
    pending = tracker.pending()
    assert set(pending) == {"g0", "g1", "g2", "e0", "e1", "e2"}
    assert pending["g0"] == pytest.approx({"helpful": 0.75, "warning": 0.6, "over_suppressive": 0.0,
                                           "misleading": 0.0, "neutral": 0.0, "uses": 2.0})
    assert pending["e1"] == pytest.approx({"helpful": 0.0, "warning": 0.0, "over_suppressive": 0.25,
                                           "misleading": 0.0, "neutral": 0.4, "uses": 2.0})
    assert pending["e0"]["helpful"] == pytest.approx(0.75) and pending["e0"]["uses"] == 1.0
    assert pending["g2"]["neutral"] == pytest.approx(0.4) and pending["e2"]["warning"] == pytest.approx(0.6)
    m = tracker.metrics()  # per teacher (not per item): total alpha weight 2.0
    assert m["sgsd/utility/helpful_weight"] == pytest.approx(0.75 / 2)
    assert m["sgsd/utility/warning_weight"] == pytest.approx(0.6 / 2)
    assert m["sgsd/utility/over_suppressive_weight"] == pytest.approx(0.25 / 2)
    assert m["sgsd/utility/neutral_weight"] == pytest.approx(0.4 / 2)
    assert m["sgsd/utility/misleading_weight"] == 0.0
    assert m["sgsd/utility/teacher_uses"] == 4.0 and m["sgsd/utility/items_pending"] == 6.0


def test_absent_teachers_are_ignored():
    tracker = UtilityTracker()
    nan = float("nan")
    tracker.observe(
        [["g0", "g1", None], ["g2"]],  # slot 2 of row 0 has no skill; row 1 has K_x = 1
        [["e0", "e1", "e2"], ["e2"]],
        support=torch.tensor([[0.5, nan, 0.5], [0.5, nan, nan]]),
        alpha=torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.0, 0.0]]),  # slot 1 of row 0: alpha 0
        outcome_sign=torch.tensor([1.0, -1.0]), threshold=0.05)
    pending = tracker.pending()
    assert set(pending) == {"g0", "e0", "g2", "e2"}
    assert pending["e2"] == pytest.approx({"helpful": 0.0, "warning": 0.0, "over_suppressive": 0.0,
                                           "misleading": 1.0, "neutral": 0.0, "uses": 1.0})
    assert tracker.metrics()["sgsd/utility/teacher_uses"] == 2.0
    with pytest.raises(ValueError, match="K=3"):
        tracker.observe([["a", "b", "c", "d"]], [["e"]], torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1), 0.05)


def test_apply_accumulates_across_calls_and_persists_through_save_and_load(tmp_path):
    bank = _bank()
    tracker = UtilityTracker()
    assert tracker.apply(bank) is bank  # nothing pending: the same object
    step = dict(support=torch.tensor([[0.5, -0.5]]), alpha=torch.tensor([[0.7, 0.3]]), threshold=0.05)
    tracker.observe([["g0", "g1"]], [["e0", "e1"]], outcome_sign=torch.tensor([1.0]), **step)
    bank1 = tracker.apply(bank)
    assert tracker.pending() == {} and tracker.metrics()["sgsd/utility/teacher_uses"] == 0.0
    assert "utility" not in bank.get("g0").extra  # the input bank is not changed
    assert "utility" not in bank1.get("g2").extra  # unused items get no record
    tracker.observe([["g0", "g1"]], [["e0", "e1"]], outcome_sign=torch.tensor([-1.0]), **step)
    tracker.observe([["g0"]], [["e1"]], support=torch.tensor([[0.01]]), alpha=torch.tensor([[0.2]]),
                    outcome_sign=torch.tensor([1.0]), threshold=0.05)
    bank2 = tracker.apply(bank1)
    assert utility_of(bank2.get("g0")) == pytest.approx({"helpful": 0.7, "warning": 0.0, "over_suppressive": 0.0,
                                                         "misleading": 0.7, "neutral": 0.2, "uses": 3.0})
    assert utility_of(bank2.get("e1")) == pytest.approx({"helpful": 0.0, "warning": 0.3, "over_suppressive": 0.3,
                                                         "misleading": 0.0, "neutral": 0.2, "uses": 3.0})
    again = SkillBank.load(bank2.save(tmp_path / "bank.json"))
    assert again.get("g0").extra["utility"] == bank2.get("g0").extra["utility"]
    assert again.to_dict() == bank2.to_dict()
    stored = json.loads((tmp_path / "bank.json").read_text())["general_skills"][0]["utility"]
    assert stored == {"helpful": 0.7, "warning": 0.0, "over_suppressive": 0.0, "misleading": 0.7,
                      "neutral": 0.2, "uses": 3}
    assert utility_of(again.get("g2")) == dict.fromkeys(("helpful", "warning", "over_suppressive",
                                                         "misleading", "neutral", "uses"), 0.0)


def test_ids_pruned_meanwhile_are_dropped():
    tracker = UtilityTracker()
    tracker.observe([["g0", "gone_dyn_1"]], [["e0", "gone_dyn_2"]], support=torch.tensor([[0.5, 0.5]]),
                    alpha=torch.tensor([[0.5, 0.5]]), outcome_sign=torch.tensor([1.0]), threshold=0.05)
    bank = tracker.apply(_bank())
    assert utility_of(bank.get("g0"))["helpful"] == 0.5 and tracker.pending() == {}
    assert tracker.metrics()["sgsd/utility/dropped_ids"] == 2.0
    tracker.observe([["gone"]], [["also_gone"]], torch.tensor([[0.5]]), torch.tensor([[1.0]]),
                    torch.tensor([1.0]), 0.05)
    assert tracker.apply(bank) is bank and tracker.pending() == {}  # nothing of it was in the bank


def test_state_dict_round_trip():
    tracker = UtilityTracker()
    tracker.observe([["g0", "g1"], ["g2"]], [["e0", "e1"], ["e2"]], support=torch.tensor([[0.5, -0.5], [0.3, 0.0]]),
                    alpha=torch.tensor([[0.6, 0.4], [1.0, 0.0]]), outcome_sign=torch.tensor([1.0, -1.0]),
                    threshold=0.05)
    tracker.apply(_bank().with_items(general_skills=_bank().general_skills[:2]))  # g2 is dropped
    tracker.observe([["g0"]], [["e1"]], torch.tensor([[-0.5]]), torch.tensor([[0.9]]), torch.tensor([-1.0]), 0.05)
    state = json.loads(json.dumps(tracker.state_dict()))  # JSON-able
    resumed = UtilityTracker()
    resumed.load_state_dict(state)
    assert resumed.pending() == tracker.pending() and resumed.metrics() == tracker.metrics()
    assert resumed.metrics()["sgsd/utility/dropped_ids"] == 1.0
    for bad in ({"version": 2}, {"version": 1, "pending": {"g0": {"helpful": -1}}},
                {"version": 1, "pending": [], "window": {}}, {"version": 1, "dropped": -3}):
        with pytest.raises(ValueError):
            resumed.load_state_dict(bad)
    assert resumed.pending() == tracker.pending() != {}  # a failed load changed nothing
    assert resumed.apply(_bank()).to_dict() == tracker.apply(_bank()).to_dict()


# --------------------------------------------------------------------- score
def test_utility_score_by_hand():
    assert utility_score(_bank().get("g0")) == 0.0  # no record
    record = {"helpful": 2.0, "warning": 1.0, "over_suppressive": 0.5, "misleading": 0.5, "neutral": 1.0, "uses": 9}
    assert utility_score({"utility": record}) == pytest.approx((3.0 - 1.0) / (5.0 + 1.0))
    # the prior keeps a handful of uses from looking certain; evidence moves the score towards the mean polarity
    few, many = ({"utility": {"helpful": 0.125 * n, "uses": n}} for n in (3, 300))
    assert utility_score(few) == pytest.approx(0.375 / 1.375) and utility_score(many) == pytest.approx(37.5 / 38.5)
    assert utility_score({"utility": {"misleading": 4.0}}) == pytest.approx(-0.8)
    assert utility_score({"utility": {"neutral": 9.0}}) == 0.0 and utility_score({"utility": record}, prior=0.0) == 0.4


@pytest.mark.parametrize("utility, message", [
    ([1, 2], "field 'utility': must be an object, got list"),
    ({"helpful": -0.5}, "field 'utility': 'helpful' must be a number in [0, 1e+15], got -0.5"),
    ({"helpful": 1e308}, "field 'utility': 'helpful' must be a number in [0, 1e+15], got 1e+308"),  # was a NaN score
    ({"uses": "3"}, "field 'utility': 'uses' must be a number, got str"),
    ({"warning": True}, "field 'utility': 'warning' must be a number, got bool"),
    ({"helpfull": 1.0}, "field 'utility': unknown key 'helpfull'"),
])
def test_malformed_utility_in_a_bank_file_names_file_collection_id_and_field(tmp_path, utility, message):
    data = _bank().to_dict()
    data["common_mistakes"][1]["utility"] = utility
    path = tmp_path / "bank.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BankError) as info:
        SkillBank.load(path)
    assert str(info.value).startswith(f"{path}: common_mistakes[1] (id 'e1'): ")
    assert message in str(info.value)


def test_a_nan_utility_in_a_bank_file_is_invalid_json(tmp_path):
    data = _bank().to_dict()
    data["common_mistakes"][1]["utility"] = {"neutral": float("nan")}
    path = tmp_path / "bank.json"
    path.write_text(json.dumps(data))  # Python writes the non-JSON token NaN
    with pytest.raises(BankError, match="NaN is not a JSON number"):
        SkillBank.load(path)
    with pytest.raises(ValueError, match="'neutral' must be a number in"):
        check_utility_record({"neutral": float("nan")})


# --------------------------------------------------------------------- inspect
def test_bank_inspect_shows_utility_and_sorts_by_it(tmp_path, capsys):
    path = tmp_path / "bank.json"
    _bank({"g0": {"misleading": 3.0, "uses": 12}, "g2": {"helpful": 1.0, "warning": 1.0, "uses": 8},
           "e1": {"neutral": 2.0, "over_suppressive": 0.5, "uses": 5}}).save(path)
    assert main(["bank", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid skill bank" in out and "general_skills       3" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("    g") or line.startswith("    e")]
    assert [r[0] for r in rows] == ["g0", "g1", "g2", "e0", "e1", "e2"]  # bank order without the flag
    assert rows[0][:9] == ["g0", "static", "12", "-0.750", "0.000", "0.000", "0.000", "3.000", "0.000"]
    assert rows[2][:4] == ["g2", "static", "8", "+0.667"]
    assert rows[4][:4] == ["e1", "static", "5", "-0.143"] and rows[4][-2:] == ["Mistake", "1"]

    assert main(["bank", "inspect", str(path), "--by-utility"]) == 0
    out = capsys.readouterr().out
    order = [line.split()[0] for line in out.splitlines() if line.startswith("    g") or line.startswith("    e")]
    assert order == ["g2", "g1", "g0", "e0", "e2", "e1"]  # best first; unused items (0) keep bank order
    assert "general_skills, best first:" in out

    assert main(["bank", "inspect", str(path), "--json", "--by-utility"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [i["id"] for i in report["items"]["general_skills"]] == ["g2", "g1", "g0"]
    assert report["items"]["general_skills"][2] == {
        "id": "g0", "origin": "static", "score": -0.75, "helpful": 0.0, "warning": 0.0,
        "over_suppressive": 0.0, "misleading": 3.0, "neutral": 0.0, "uses": 12.0}


def test_bank_inspect_without_utility_is_unchanged(capsys):
    assert main(["bank", "inspect", "qwen3_4b", "--json"]) == 0
    assert "items" not in json.loads(capsys.readouterr().out)
    assert main(["bank", "inspect", "qwen3_4b"]) == 0
    out = capsys.readouterr().out
    assert "utility" not in out and len(out.strip().splitlines()) == 4

