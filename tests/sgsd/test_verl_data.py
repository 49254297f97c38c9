"""scripts/prepare_data.py and sgsd/verl_data.py: problem sets -> verl's RL parquet."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgsd.datasets import load_problems
from sgsd.prompts import student_prompt
from sgsd.verl_data import (
    DAPO_PREFIX,
    DAPO_SUFFIX,
    SHIPPED_SETS,
    TRAIN_SETS,
    dapo_problems,
    shipped_set_path,
    strip_dapo_wrapper,
    to_verl_rows,
    write_parquet,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prepare_data.py"
COLUMNS = ["data_source", "prompt", "ability", "reward_model", "extra_info"]


def _load_cli():
    # Loaded from its file, the way users run it: verl's wheel owns the top-level `scripts`.
    spec = importlib.util.spec_from_file_location("sgsd_prepare_data_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = _load_cli()


def _run_file(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The script as a separate process, from a folder outside the checkout."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env={**os.environ, **env})


def _rows(path: Path) -> list[dict]:
    table = pq.read_table(path)
    assert table.column_names == COLUMNS
    return table.to_pylist()


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", SHIPPED_SETS)
def test_every_shipped_set_becomes_verl_rows(name, tmp_path):
    out = tmp_path / f"{name}.parquet"
    assert CLI.main(["--dataset", name, "--output", str(out)]) == 0
    source = load_problems(shipped_set_path(name))
    rows = _rows(out)
    assert len(rows) == len(source) > 0
    split = "train" if name in TRAIN_SETS else "test"
    for i, (row, problem) in enumerate(zip(rows, source)):
        assert row == {
            "data_source": name,
            "prompt": [{"role": "user", "content": student_prompt(problem.problem)}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": problem.answer.strip()},
            "extra_info": {"problem": problem.problem, "answer": problem.answer.strip(),
                           "solution": problem.extra.get("solution", ""), "index": i, "split": split,
                           "skill_ids": [], "mistake_ids": [], "skills_from": ""},
        }
    if name == "math_train":  # the OPSD-style baselines' solution survives
        assert all(r["extra_info"]["solution"] for r in rows)


def test_jsonl_with_latex_braces_and_numeric_answers(tmp_path):
    problems = [
        {"problem": r"Compute $\frac{a}{b}$ for {problem} and {} in \boxed{x}.", "answer": r"\frac{1}{2}"},
        {"problem": "What is %s {0} {answer}?", "answer": 42, "solution": r"So \boxed{42}."},
    ]
    src = _write_jsonl(tmp_path / "latex.jsonl", problems)
    out = tmp_path / "out" / "latex.parquet"  # a missing folder is created
    assert CLI.main(["--input", str(src), "--output", str(out)]) == 0
    rows = _rows(out)
    assert [r["data_source"] for r in rows] == ["latex", "latex"]  # the input's stem
    assert rows[0]["prompt"][0]["content"] == student_prompt(problems[0]["problem"])
    assert "{problem}" in rows[0]["prompt"][0]["content"]  # braces are text, never a template
    assert [r["reward_model"]["ground_truth"] for r in rows] == [r"\frac{1}{2}", "42"]
    assert rows[1]["extra_info"]["solution"] == r"So \boxed{42}." and rows[0]["extra_info"]["solution"] == ""
    assert {r["extra_info"]["split"] for r in rows} == {"train"}


def test_missing_answer_in_training_data_exits_2_with_one_line(tmp_path):
    src = _write_jsonl(tmp_path / "bad.jsonl", [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?"}])
    out = tmp_path / "bad.parquet"
    done = _run_file(["--input", str(src), "--output", str(out)], cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(src) in lines[0] and "line 2" in lines[0] and "'answer'" in lines[0]
    assert not out.exists()


def test_rows_without_answers_are_allowed_for_a_test_split(tmp_path):
    src = _write_jsonl(tmp_path / "noans.jsonl", [{"problem": "2+2?"}])
    out = tmp_path / "noans.parquet"
    assert CLI.main(["--input", str(src), "--output", str(out), "--split", "test"]) == 0
    row = _rows(out)[0]
    assert row["reward_model"]["ground_truth"] == "" and row["extra_info"]["split"] == "test"


@pytest.mark.parametrize("content, expected", [
    ('{"problem": "ok", "answer": "1"}\n{not json\n', "line 2: invalid JSON"),
    ('{"problem": "", "answer": "1"}\n', "line 1: field 'problem'"),
    ('{"problem": "x", "answer": ["1"]}\n', "line 1: field 'answer' must be a string"),
])
def test_bad_input_names_file_line_and_field(tmp_path, capsys, content, expected):
    src = tmp_path / "bad.jsonl"
    src.write_text(content, encoding="utf-8")
    assert CLI.main(["--input", str(src), "--output", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(src) in err[0] and expected in err[0]


def test_missing_input_file_exits_2(tmp_path, capsys):
    assert CLI.main(["--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o.parquet")]) == 2
    assert "not found" in capsys.readouterr().err


def test_student_skills_top_k_is_refused_before_the_encoder_loads(tmp_path, capsys):
    argv = ["--dataset", "math500", "--student-skills", "qwen3_4b", "--student-skills-top-k", "0",
            "--output", str(tmp_path / "o.parquet")]
    assert CLI.main(argv) == 2
    assert capsys.readouterr().err == "prepare_data.py: error: --student-skills-top-k must be >= 1, got 0\n"
    assert not (tmp_path / "o.parquet").exists()


def test_shuffle_seed_and_limit(tmp_path):
    def run(*extra: str) -> list[str]:
        out = tmp_path / "s.parquet"
        assert CLI.main(["--dataset", "math500", "--output", str(out), *extra]) == 0
        return [r["extra_info"]["problem"] for r in _rows(out)]

    plain = run("--limit", "20")
    assert plain == [p.problem for p in load_problems(shipped_set_path("math500"))[:20]]
    first, again, other = (run("--shuffle", "--seed", s, "--limit", "20") for s in ("1", "1", "2"))
    assert first == again != plain and first != other
    assert len(first) == 20 and len(set(first)) == 20
    # the output's index is the row's position: unique, what verl logs per sample
    assert [r["extra_info"]["index"] for r in _rows(tmp_path / "s.parquet")] == list(range(20))


@pytest.mark.parametrize("argv", [["--dataset", "aime24", "--seed", "3"], ["--dataset", "aime24", "--limit", "0"],
                                  [], ["--dataset", "aime24", "--input", "x.jsonl"]])
def test_argument_mistakes_exit_2(argv):
    with pytest.raises(SystemExit) as stop:
        CLI.main(argv)
    assert stop.value.code == 2


def test_to_verl_rows_needs_answers_for_training():
    from sgsd.datasets import Problem

    with pytest.raises(ValueError, match="problem 1 has no answer"):
        to_verl_rows([Problem("a", "1"), Problem("b", None)], "x", "train")
    assert to_verl_rows([Problem("b", None)], "x", "test")[0]["reward_model"]["ground_truth"] == ""


# ----------------------------------------------------------------------------- DAPO-Math-17k
def _dapo_row(problem: str, answer: str, index: int) -> dict:
    """A row in BytedTsinghua-SIA/DAPO-Math-17k's schema (its dataset card's features)."""
    return {
        "data_source": "math_dapo",
        "prompt": [{"content": DAPO_PREFIX + problem + DAPO_SUFFIX, "role": "user"}],
        "ability": "MATH",
        "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": f"id-{index}"},
    }


def test_strip_dapo_wrapper_leaves_the_plain_problem():
    problem = "Let $f(x) = \\frac{1}{x}$.\n\nFind $f(2)$ and write it as $\\frac{m}{n}$; give $m+n$."
    assert strip_dapo_wrapper(DAPO_PREFIX + problem + DAPO_SUFFIX) == problem
    assert strip_dapo_wrapper("  " + problem + "  ") == problem  # an unwrapped problem is kept as is


def test_dapo_local_copy_is_stripped_deduplicated_and_english(tmp_path):
    rows = [_dapo_row("Find $x$ if $2x = 4$.", "2", 0), _dapo_row("Find $x$ if $2x = 4$.", "2", 1),
            _dapo_row("求 $1+1$ 的值。", "2", 2), _dapo_row("Compute $3^2$.", "9", 3)]
    src = tmp_path / "dapo-math-17k.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "dapo.parquet"
    assert CLI.main(["--dataset", "dapo-math-17k", "--input", str(src), "--output", str(out)]) == 0
    got = _rows(out)
    assert [r["extra_info"]["problem"] for r in got] == ["Find $x$ if $2x = 4$.", "Compute $3^2$."]
    assert got[0]["prompt"][0]["content"] == student_prompt("Find $x$ if $2x = 4$.")
    assert "Answer:" not in got[0]["prompt"][0]["content"]  # DAPO's own format instruction is gone
    assert [r["reward_model"]["ground_truth"] for r in got] == ["2", "9"]
    assert {r["data_source"] for r in got} == {"dapo-math-17k"} and got[0]["extra_info"]["split"] == "train"
    assert CLI.main(["--dataset", "dapo-math-17k", "--input", str(src), "--output", str(out),
                     "--language", "all"]) == 0
    assert len(_rows(out)) == 3


def test_dapo_rows_without_ground_truth_are_named():
    bad = _dapo_row("Compute $3^2$.", "9", 7)
    bad["reward_model"] = {"style": "rule"}
    with pytest.raises(ValueError, match=r"row 2: field 'reward_model.ground_truth'"):
        dapo_problems([_dapo_row("Compute $2^2$.", "4", 0), bad])


def test_dapo_without_hub_access_fails_clearly(tmp_path):
    done = _run_file(["--dataset", "dapo-math-17k", "--output", str(tmp_path / "d.parquet")], cwd=tmp_path,
                     HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "BytedTsinghua-SIA/DAPO-Math-17k" in last and "--input" in last


# ----------------------------------------------------------------------------- the file itself
def test_write_is_atomic_when_the_writer_fails(tmp_path, monkeypatch):
    rows = to_verl_rows(load_problems(shipped_set_path("aime24")), "aime24", "test")
    target = tmp_path / "aime24.parquet"
    write_parquet(rows, target)
    before = target.read_bytes()

    def broken_write(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")  # a partial file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(rows, target)
    assert target.read_bytes() == before  # the old file, untouched
    with pytest.raises(OSError):
        write_parquet(rows, tmp_path / "new.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aime24.parquet"]  # no partial or temp file


def test_bad_row_types_write_nothing(tmp_path):
    rows = to_verl_rows(load_problems(shipped_set_path("aime24")), "aime24", "test")
    rows[3]["extra_info"]["index"] = "three"
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_parquet(rows, tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no rows"):
        write_parquet([], tmp_path / "x.parquet")


def test_verl_rlhf_dataset_reads_the_file(tmp_path, tiny_tokenizer):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    out = tmp_path / "aime24.parquet"
    assert CLI.main(["--dataset", "aime24", "--output", str(out)]) == 0
    config = OmegaConf.create({"max_prompt_length": 4096, "filter_overlong_prompts": True,
                               "apply_chat_template_kwargs": {"enable_thinking": False},
                               "cache_dir": str(tmp_path / "cache")})
    dataset = RLHFDataset(data_files=[str(out)], tokenizer=tiny_tokenizer, config=config)
    assert len(dataset) == 30
    item = dataset[0]
    problem = load_problems(shipped_set_path("aime24"))[0].problem
    assert item["raw_prompt"] == [{"role": "user", "content": student_prompt(problem)}]
    assert item["extra_info"]["problem"] == problem and item["index"] == 0
    assert item["data_source"] == "aime24"


def test_library_module_stays_light():
    code = ("import sys, sgsd.verl_data\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'verl', 'ray', 'vllm', 'pyarrow', 'datasets'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_problem_text_from_extra_info_or_the_chat_prompt():
    from sgsd.prompts import student_prompt
    from sgsd.verl_data import problem_text

    assert problem_text({"problem": "P?"}, None) == "P?"
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": student_prompt("What is {x}?")}]
    assert problem_text({}, messages) == "What is {x}?"
    assert problem_text(None, [{"role": "user", "content": "raw question"}]) == "raw question"
    with pytest.raises(ValueError, match="neither extra_info.problem nor a user message"):
        problem_text({}, [])
