"""Problem files in the shapes users have: JSONL, JSON list, parquet; bad rows named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgsd.datasets import (
    BENCHMARKS,
    DATA_DIR,
    ProblemFileError,
    benchmark_path,
    load_problems,
    resolve,
    shipped_file,
    shipped_path,
    source_label,
)


@pytest.mark.parametrize("name, rows", [("aime24", 30), ("aime25", 30), ("hmmt25", 30), ("amc2023", 40),
                                        ("math500", 500)])
def test_shipped_benchmarks(name, rows):
    problems = load_problems(benchmark_path(name), require_answer=True)
    assert len(problems) == rows and all(p.problem and p.answer for p in problems)
    assert name in BENCHMARKS


def test_shipped_training_sets_keep_solutions():
    math = load_problems(shipped_path("train", "math_train.jsonl"))
    assert len(math) == 4500 and "\\boxed" in math[0].extra["solution"]
    assert len(load_problems(shipped_path("train", "gsm8k.jsonl"))) == 1319


def test_json_list_parquet_question_field_and_numeric_answers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.json").write_text(json.dumps([{"question": "Q1", "answer": 12}, {"problem": "Q2", "answer": 0.5}]))
    got = load_problems(tmp_path / "a.json")
    assert [(p.problem, p.answer) for p in got] == [("Q1", "12"), ("Q2", "0.5")]
    pq.write_table(pa.Table.from_pylist([{"problem": "P", "answer": "\\frac{1}{2}", "level": 3}]), tmp_path / "b.parquet")
    [row] = load_problems(tmp_path / "b.parquet")
    assert (row.problem, row.answer, row.extra) == ("P", "\\frac{1}{2}", {"level": 3})


@pytest.mark.parametrize("content, message", [
    ("", "contains no problems"),
    ('{"problem": "ok"}\nnot json\n', "line 2: invalid JSON"),
    ('{"problem": "ok"}\n[1, 2]\n', "line 2: expected a JSON object"),
    ('{"problem": "   "}\n', "line 1: field 'problem' must be a non-empty string"),
    ('{"problem": "ok", "answer": [1]}\n', "line 1: field 'answer' must be a string, got list"),
    ('{"problem": "ok", "answer": NaN}\n', "line 1: invalid JSON: NaN is not a JSON number"),
    ('{"problem": "ok"}\n{"problem": ' + "[" * 1000 + "]" * 1000 + "}\n",  # was a RecursionError
     "line 2: invalid JSON: nested deeper than 64 levels"),
])
def test_bad_problem_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ProblemFileError, match=message.replace("[", r"\[")):
        load_problems(path)


def test_answer_required_where_grading_needs_it(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"problem": "no answer here"}\n')
    assert load_problems(path)[0].answer is None
    with pytest.raises(ProblemFileError, match="line 1: field 'answer' is missing or empty"):
        load_problems(path, require_answer=True)


@pytest.mark.parametrize("value, kind, shipped", [
    ("qwen3_1.7b", "bank", "skill_banks/qwen3_1.7b.json"),
    ("aime24", "benchmark", "benchmarks/aime24.jsonl"),
    ("amc23", "benchmark", "benchmarks/amc2023.jsonl"),  # the papers' name for amc2023
    ("gsm8k", "train", "train/gsm8k.jsonl"),
    ("math", "skills", "skills/math.json"),  # SDAR-style skill file, written for this project
])
def test_resolve_a_shipped_name(value, kind, shipped):
    assert resolve(value, kind) == DATA_DIR / shipped
    assert source_label(resolve(value, kind)) == shipped.split("/")[1].rsplit(".", 1)[0]


def test_resolve_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "aime24").write_text('{"problem": "mine", "answer": "1"}\n')
    (tmp_path / "gsm8k").mkdir()  # a folder of that name is not a file: the shipped set is meant
    assert resolve("aime24", "benchmark") == Path("aime24")
    assert load_problems(resolve("aime24", "benchmark"))[0].problem == "mine"
    assert resolve("gsm8k", "train") == DATA_DIR / "train" / "gsm8k.jsonl"
    assert source_label(resolve("aime24", "benchmark")) == str(tmp_path / "aime24")


def test_a_skill_path_wins_over_the_shipped_skill_file(tmp_path, monkeypatch):
    """load_skill_files reads a JSON file or a folder of .md/.txt skills: either, if it exists, is meant."""
    from sgsd.skill_sources import load_skill_files

    monkeypatch.chdir(tmp_path)
    assert resolve("math", "skills") == DATA_DIR / "skills" / "math.json"
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "general.md").write_text("Read the task twice.\n")
    assert resolve("math", "skills") == Path("math")
    assert [s.name for s in load_skill_files(resolve("math", "skills"))] == ["general"]
    mine = tmp_path / "mine.json"
    mine.write_text('[{"name": "mine", "text": "My skill."}]')
    assert resolve(mine, "skills") == mine
    assert resolve("aime24", "skills") == Path("aime24")  # a benchmark is no skill file
    with pytest.raises(ValueError, match=r"unknown shipped skill file 'physics'; shipped: math"):
        shipped_file("physics", "skills")


def test_resolve_leaves_other_values_to_their_loader(tmp_path):
    assert resolve("aime24", "bank") == Path("aime24")  # a benchmark is no bank
    assert resolve("~/no/such.json", "bank") == Path.home() / "no" / "such.json"
    with pytest.raises(ProblemFileError, match="problem file not found"):
        load_problems(resolve(tmp_path / "missing.jsonl", "benchmark"))
    with pytest.raises(ValueError, match=r"unknown shipped skill bank 'qwen9'; shipped: qwen3_1\.7b, qwen3_4b"):
        shipped_file("qwen9", "bank")


def test_a_nan_answer_in_a_parquet_file_is_refused(tmp_path):
    """It was graded against the string "nan"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"problem": "P", "answer": float("nan")}]), tmp_path / "p.parquet")
    with pytest.raises(ProblemFileError, match="line 1: field .answer. must be a finite number or a string, got nan"):
        load_problems(tmp_path / "p.parquet")
