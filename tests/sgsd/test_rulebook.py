"""The rulebook task: its problems, splits, guidance, and the retrieval that must find it."""

from __future__ import annotations

import json
from itertools import permutations

import pytest

from sgsd import rulebook
from sgsd.bank import SkillBank
from sgsd.datasets import resolve
from sgsd.verifier import grade


def test_every_rule_is_a_distinct_non_identity_permutation():
    digits = tuple("1234")
    results = {name: rule.apply(digits) for name, rule in rulebook.RULES.items()}
    assert len(set(results.values())) == len(results)
    assert digits not in results.values()
    assert sorted(rulebook.RULES["rotate_left"].apply(tuple("2865"))) == sorted("2865")
    assert "".join(rulebook.RULES["rotate_left"].apply(tuple("2865"))) == "8652"
    assert "".join(rulebook.RULES["swap_pairs"].apply(tuple("2865"))) == "8256"


def test_only_the_familys_own_rule_is_graded_correct():
    """For distinct digits every wrong rule gives another answer; the verifier tells them apart."""
    for family in rulebook.FAMILIES:
        problem = rulebook.problems("val", 1, families=[family.name])[0]
        digits = list(problem.problem.rsplit(" ", 1)[1].rstrip("?"))
        for rule in rulebook.RULES:
            solution = rulebook.solution_text(family.name, digits, rule)
            assert grade(solution, problem.answer).correct == (rule == family.rule), (family.name, rule)
            assert rulebook.rule_used(solution, family.name) == rule
        assert problem.extra["solution"] == rulebook.solution_text(family.name, digits)


def test_the_splits_are_disjoint_and_cover_every_problem():
    every = {(f.name, d) for f in rulebook.FAMILIES for d in permutations(rulebook.DIGITS, 4)}
    by_split = {s: {(f, d) for f, d in every if rulebook.split_of(f, d) == s} for s in rulebook.SPLITS}
    assert sum(map(len, by_split.values())) == len(every)
    shares = {s: len(v) / len(every) for s, v in by_split.items()}
    assert shares["train"] == pytest.approx(0.7, abs=0.02) and shares["val"] == pytest.approx(0.1, abs=0.02)
    drawn = {s: {p.problem for p in rulebook.problems(s, 600, seed=3)} for s in rulebook.SPLITS}
    assert all(len(v) == 600 for v in drawn.values())
    assert not (drawn["train"] & drawn["val"]) and not (drawn["train"] & drawn["test"]) and not (
        drawn["val"] & drawn["test"])


def test_problems_are_seeded_balanced_and_refuse_what_a_split_cannot_hold():
    first, again, other = (rulebook.problems("train", 60, seed=s) for s in (0, 0, 1))
    assert [p.problem for p in first] == [p.problem for p in again]
    assert [p.problem for p in first] != [p.problem for p in other]
    counts = {f.name: sum(p.extra["family"] == f.name for p in first) for f in rulebook.FAMILIES}
    assert set(counts.values()) == {10}
    with pytest.raises(ValueError, match="the val split holds"):
        rulebook.problems("val", 100_000)
    with pytest.raises(ValueError, match="unknown split"):
        rulebook.problems("dev", 1)
    with pytest.raises(ValueError, match="unknown families"):
        rulebook.problems("train", 1, families=["zorp", "nope"])
    with pytest.raises(ValueError, match="names no operation"):
        rulebook.family_of("What is 2 + 2?")


def test_the_bank_states_right_and_misleading_rules_and_the_shipped_files_are_the_generators():
    bank = rulebook.rulebook_bank()
    assert len(bank.general_skills) == len(bank.common_mistakes) == 2 * len(rulebook.FAMILIES)
    for family in rulebook.FAMILIES:
        right = bank.get(f"skill_{family.name}_right")
        wrong = bank.get(f"skill_{family.name}_misleading")
        assert rulebook.rule_used(right.principle, family.name) == family.rule
        assert rulebook.rule_used(wrong.principle, family.name) == family.confused_with != family.rule
        assert rulebook.rule_used(bank.get(f"mistake_{family.name}_right").how_to_avoid, family.name) == family.rule
    assert SkillBank.load(resolve("rulebook", "bank")).to_dict()["general_skills"] == bank.to_dict()["general_skills"]
    assert SkillBank.load(resolve("rulebook", "bank")).to_dict()["common_mistakes"] == bank.to_dict()["common_mistakes"]
    shipped = json.loads(resolve("rulebook", "skills").read_text())
    assert shipped == rulebook.rulebook_skill_files()
    assert rulebook.rulebook_bank(misleading=False).counts()["general_skills"]["total"] == len(rulebook.FAMILIES)


def test_the_packaged_encoder_retrieves_each_familys_items_first(encoder):
    """SGSD's retrieval (MiniLM) must find a family's items from its problems: the top-2 skills
    and top-2 mistakes of every problem are its own (one right, one misleading)."""
    from sgsd.retrieval import SkillRetriever

    retriever = SkillRetriever(encoder, rulebook.rulebook_bank(), top_k=4)
    problems = rulebook.problems("val", 60)
    for problem, found in zip(problems, retriever.retrieve([p.problem for p in problems])):
        name = problem.extra["family"]
        top = found.teachers[:2]
        assert {t.skill.skill_id for t in top} == {f"skill_{name}_right", f"skill_{name}_misleading"}
        assert {t.mistake.mistake_id for t in top} == {f"mistake_{name}_right", f"mistake_{name}_misleading"}


def _prepare_data():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("sgsd_prepare_data_rulebook", root / "scripts" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_data_writes_the_three_rulebook_splits_as_verl_rows(tmp_path, capsys):
    import pyarrow.parquet as pq

    from sgsd.verl_data import to_verl_rows

    cli = _prepare_data()
    assert cli.main(["--dataset", "rulebook", "--output-dir", str(tmp_path), "--train-count", "30",
                     "--val-count", "12", "--test-count", "18", "--seed", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"rulebook_{s}.parquet" for s in ("test", "train", "val")]
    for split, count in (("train", 30), ("val", 12), ("test", 18)):
        rows = pq.read_table(tmp_path / f"rulebook_{split}.parquet").to_pylist()
        assert rows == to_verl_rows(rulebook.problems(split, count, seed=2), "rulebook",
                                    "train" if split == "train" else "test")
        assert all(r["extra_info"]["solution"] and r["reward_model"]["ground_truth"] for r in rows)
    out = capsys.readouterr().out
    assert "wrote 30 rows (rulebook, train)" in out and "zorp 5" in out


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "rulebook", "--shuffle"], "takes no --shuffle"),
    (["--dataset", "rulebook", "--boxes", "2"], "takes no --boxes"),
    (["--dataset", "rulebook", "--val-count", "0"], "--val-count must be >= 1"),
    (["--dataset", "aime24", "--val-count", "3"], "--val-count goes with --dataset rulebook only"),
])
def test_prepare_data_rulebook_argument_mistakes_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        _prepare_data().main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_prepare_data_refuses_more_problems_than_a_split_holds(tmp_path, capsys):
    assert _prepare_data().main(["--dataset", "rulebook", "--output-dir", str(tmp_path),
                                 "--val-count", "100000"]) == 2
    assert "the val split holds" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
