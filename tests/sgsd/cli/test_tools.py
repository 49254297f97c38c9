"""`sgsd retrieve` (real encoder, shipped data) and `sgsd grade` as a person uses them, and their bad inputs."""

from __future__ import annotations

import json

import pytest

from sgsd.cli import main


def test_retrieve_json_one_object_per_problem(tmp_path, capsys):
    problems = tmp_path / "p.jsonl"
    rows = [{"problem": "What is the remainder when 7^{100} is divided by 5?"},
            {"problem": "A fair die is rolled twice. Probability the sum is 7?", "answer": "\\frac{1}{6}"},
            {"problem": "Solve for x: \\frac{x}{2} + {3} = 5."}]
    problems.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["retrieve", "--bank", "qwen3_1.7b", "--problems", str(problems), "--top-k", "3", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        obj = json.loads(line)
        assert obj["index"] == i and len(obj["teachers"]) == 3
        assert set(obj["teachers"][0]) == {"skill_id", "mistake_id", "skill_score", "mistake_score", "alpha"}
        assert sum(t["alpha"] for t in obj["teachers"]) == pytest.approx(1.0)
        assert all(t["skill_id"].startswith("gen_") and t["mistake_id"].startswith("err_") for t in obj["teachers"])


def test_retrieve_human_output_on_a_shipped_benchmark(capsys):
    assert main(["retrieve", "--bank", "qwen3_4b", "--problems", "amc2023", "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n[") + out.startswith("[") == 40  # one block per AMC23 problem
    assert out.count("k=1  alpha=") == 40 and out.count("k=2  alpha=") == 40


def test_retrieve_bad_inputs_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty_bank.json"
    empty.write_text(json.dumps({"general_skills": [], "common_mistakes": []}))
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"problem": "ok"}\n{"answer": "no problem field"}\n')
    assert main(["retrieve", "--bank", str(empty), "--problems", "aime24"]) == 2
    assert "empty skill bank" in capsys.readouterr().err
    assert main(["retrieve", "--bank", "qwen3_4b", "--problems", str(problems)]) == 2
    assert "line 2: field 'problem' must be a non-empty string" in capsys.readouterr().err
    assert main(["retrieve", "--bank", "qwen3_4b", "--problems", str(tmp_path / "missing.jsonl")]) == 2
    assert "problem file not found" in capsys.readouterr().err
    assert main(["retrieve", "--bank", "qwen3_4b", "--problems", "aime24", "--top-k", "0"]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err
    # refused by RetrievalConfig before the (missing) problem file is opened, worded with the flag
    assert main(["retrieve", "--bank", "qwen3_4b", "--problems", "MISSING", "--temperature", "0"]) == 2
    assert capsys.readouterr().err == "sgsd: error: --temperature must be > 0, got 0.0\n"


def test_grade_json(capsys):
    assert main(["grade", "--answer", "\\frac{1}{2}", "--response", "Thus the answer is \\boxed{0.5}.", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"correct": True, "extracted": "0.5"}
    assert main(["grade", "--answer", "3", "--response", "I think \\boxed{4}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"correct": False, "extracted": "4"}
    assert main(["grade", "--answer", "3", "--response", "no box here", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"correct": False, "extracted": None}


def test_grade_refuses_an_empty_answer(capsys):
    assert main(["grade", "--answer", "  ", "--response", "\\boxed{1}"]) == 2
    assert "--answer is empty" in capsys.readouterr().err


@pytest.mark.parametrize("name, content, message", [
    ("dir.jsonl", None, "is a directory, expected a problem file"),
    ("empty.parquet", b"", "not a readable parquet file"),
    ("bad.parquet", b"PAR1 garbage", "not a readable parquet file"),
    ("s.jsonl", b'{"problem": "x\\ud800"}\n', "field 'problem' holds a lone surrogate \\ud800"),
])
def test_retrieve_on_bad_problem_files_exits_2_with_one_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert main(["retrieve", "--bank", "qwen3_1.7b", "--problems", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_retrieve_reads_the_parquet_prepare_data_writes(tmp_path, capsys):
    from sgsd.datasets import load_problems, resolve
    from sgsd.verl_data import to_verl_rows, write_parquet

    problems = load_problems(resolve("aime24", "benchmark"))[:2]
    write_parquet(to_verl_rows(problems, "aime24", "test"), tmp_path / "aime24.parquet")
    again = load_problems(tmp_path / "aime24.parquet", require_answer=True)
    assert [(p.problem, p.answer) for p in again] == [(p.problem, p.answer) for p in problems]
    assert main(["retrieve", "--bank", "qwen3_1.7b", "--problems", str(tmp_path / "aime24.parquet"), "--top-k",
                 "1", "--json"]) == 0
