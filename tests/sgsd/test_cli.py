"""The `sgsd` command as a person uses it (real encoder, shipped data, bad inputs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sgsd.cli import main
from sgsd.datasets import bank_path


def _sgsd_executable() -> str:
    exe = Path(sys.executable).with_name("sgsd")
    if not exe.exists():
        pytest.fail(f"the `sgsd` console script is not installed next to {sys.executable}: pip install -e .")
    return str(exe)


def test_installed_console_script_inspects_a_shipped_bank():
    done = subprocess.run([_sgsd_executable(), "bank", "inspect", str(bank_path("qwen3_1.7b")), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["valid"] is True
    assert report["general_skills"] == {"static": 28, "dynamic": 0, "total": 28}
    assert report["common_mistakes"] == {"static": 98, "dynamic": 0, "total": 98}


def test_bank_inspect_human_output_by_shipped_name(capsys):
    assert main(["bank", "inspect", "qwen3_4b"]) == 0
    out = capsys.readouterr().out
    assert "valid skill bank" in out and "general_skills      24" in out and "common_mistakes     15" in out


@pytest.mark.parametrize("content, message", [
    ('{"general_skills": [}', "invalid JSON at line 1"),
    ('{"general_skills": [], "common_mistakes": [{"mistake_id": "e1", "description": "d", '
     '"why_it_happens": "w", "how_to_avoid": 3}]}',
     "common_mistakes[0] (id 'e1'): field 'how_to_avoid' must be a string, got int"),
])
def test_bank_inspect_bad_bank_exits_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bank.json"
    path.write_text(content)
    assert main(["bank", "inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0]


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


def test_grade_json(capsys):
    assert main(["grade", "--answer", "\\frac{1}{2}", "--response", "Thus the answer is \\boxed{0.5}.", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"correct": True, "extracted": "0.5"}
    assert main(["grade", "--answer", "3", "--response", "I think \\boxed{4}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"correct": False, "extracted": "4"}
    assert main(["grade", "--answer", "3", "--response", "no box here", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"correct": False, "extracted": None}
