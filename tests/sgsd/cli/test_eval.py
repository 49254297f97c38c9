"""`sgsd eval` as a person runs it: the tiny Qwen3 end to end, the flags scripts/eval.sh
passes, bad input (exit 2, one line) and failed requests (exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sgsd.cli import build_parser, main
from sgsd.llm import ScriptedClient
from tests.sgsd.eval.helpers import one_torch_thread, sample_rows

ROOT = Path(__file__).resolve().parents[3]


def test_cli_eval_of_the_tiny_model_end_to_end(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    args = ["eval", "--model", str(tiny_model_dir), "--datasets", "aime24,math500", "--limit", "2",
            "--samples", "2", "--max-new-tokens", "6", "--backend", "transformers", "--quiet", "-o", str(out)]
    with one_torch_thread():
        assert main(args) == 0
    assert "| AIME24 | 2 | 4 |" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["backend"] == "transformers"
    assert summary["sampling"]["enable_thinking"] is True and summary["model"]["model"] == str(tiny_model_dir)
    for name in ("aime24", "math500"):
        rows = sample_rows(out, name)
        assert [(r["problem_index"], r["sample"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert all(isinstance(r["completion"], str) and 1 <= r["tokens"] <= 6 for r in rows)
        assert all(r["finish_reason"] in ("stop", "length") for r in rows)
        entry = summary["datasets"][name]
        assert entry["avg@2"] == pytest.approx(sum(r["correct"] for r in rows) / 4)
        assert entry["format_rate"] == pytest.approx(sum(r["extracted"] is not None for r in rows) / 4)
        assert entry["mean_tokens"] == pytest.approx(sum(r["tokens"] for r in rows) / 4)
    assert main(args) == 0  # complete: nothing left to generate, no model loaded
    assert json.loads((out / "summary.json").read_text())["this_run"]["generated"] == 0
    assert main(args[:-2] + ["--samples", "3", "-o", str(out)]) == 2
    assert "sampling.samples 2 there, 3 here" in capsys.readouterr().err


def _script_argv(tmp_path: Path, *args: str, **env: str) -> tuple[list[str], Path]:
    """What scripts/eval.sh runs, recorded by a stand-in `python3` (the real run is tested above)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "argv.json"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").write_text(f"#!{sys.executable}\nimport json, sys\n"
                                     f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    (bin_dir / "python3").chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "eval.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = json.loads(record.read_text())
    assert argv[:3] == ["-m", "sgsd", "eval"]
    return argv[2:], Path(argv[argv.index("-o") + 1])


def test_eval_script_passes_the_papers_protocol_and_the_callers_flags(tmp_path):
    argv, out = _script_argv(tmp_path, "--limit", "5", "--samples", "2")
    args = build_parser().parse_args(argv)
    assert (args.model, args.datasets, args.backend) == ("Qwen/Qwen3-8B", "aime24,aime25,hmmt25", "auto")
    assert (args.temperature, args.top_p, args.top_k, args.max_new_tokens, args.thinking) == (
        1.0, 0.95, -1, 38912, True)
    assert (args.samples, args.limit) == (2, 5)  # "$@" comes last: the caller's flags win
    assert out == ROOT / "evals" / "qwen3-8b"
    argv, out = _script_argv(tmp_path, CHECKPOINT="/ckpt/sgsd_qwen3_8b/global_step_200/actor", SKILLS="qwen3_4b")
    args = build_parser().parse_args(argv)
    assert (args.model, args.verl_checkpoint, args.skills, args.samples) == (
        None, "/ckpt/sgsd_qwen3_8b/global_step_200/actor", "qwen3_4b", 12)
    assert out.name == "sgsd_qwen3_8b_global_step_200_skill"
    argv, out = _script_argv(tmp_path, MODEL_PATH="/m/Qwen3-1.7B", LORA_PATH="/a/run7/", OUT_DIR=str(tmp_path / "o"))
    args = build_parser().parse_args(argv)
    assert (args.model, args.lora, out) == ("/m/Qwen3-1.7B", "/a/run7/", tmp_path / "o")
    assert args.skills is None and args.encoder is None  # the plain rows retrieve nothing


def test_eval_script_retrieves_base_skill_pairs_with_the_papers_encoder_unless_told_otherwise(tmp_path):
    """Base+Skill retrieves with Qwen3-Embedding-0.6B, as SGSD's teachers do in the GPU scripts
    (tests/recipe/test_launch_scripts.py checks the two read one variable); ENCODER= and a
    caller's --encoder win."""
    argv, _ = _script_argv(tmp_path, SKILLS="qwen3_1.7b", MODEL_PATH="Qwen/Qwen3-1.7B")
    args = build_parser().parse_args(argv)
    assert (args.skills, args.encoder, args.skills_top_k) == ("qwen3_1.7b", "Qwen/Qwen3-Embedding-0.6B", 8)
    argv, _ = _script_argv(tmp_path, SKILLS="qwen3_1.7b", ENCODER="all-MiniLM-L6-v2")
    assert build_parser().parse_args(argv).encoder == "all-MiniLM-L6-v2"
    argv, _ = _script_argv(tmp_path, "--encoder", "/enc/mine", SKILLS="qwen3_1.7b")
    assert build_parser().parse_args(argv).encoder == "/enc/mine"


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "aime24"], "exactly one model source"),
    (["--model", "m", "--verl-checkpoint", "c", "--datasets", "aime24"], "exactly one model source"),
    (["--verl-checkpoint", "c", "--lora", "a", "--datasets", "aime24"], "--lora needs --model"),
    (["--model", "./no/such/dir", "--datasets", "aime24"], "no such directory"),
    (["--model", "m", "--datasets", "aime42"], "dataset 'aime42': no such file"),
    (["--model", "m"], "--datasets is required"),
    (["--model", "m", "--datasets", "aime24", "--samples", "0"], "samples must be an integer >= 1, got 0"),
    (["--model", "m", "--datasets", "aime24", "--k", "13"], "k must be <= samples (12)"),
    (["--model", "m", "--datasets", "aime24", "--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--model", "m", "--datasets", "aime24", "--top-k", "0"], "top_k must be -1 (off) or >= 1"),
    (["--model", "m", "--datasets", "aime24", "--backend", "tpu"], "backend must be one of auto, vllm"),
    (["--model", "m", "--datasets", "aime24", "--skills", "no_bank"], "--skills 'no_bank': no such file"),
    (["--model", "m", "--datasets", "aime24", "--max-new-tokens", "0"], "max_new_tokens must be >= 1, got 0"),
    (["--model", "m", "--datasets", "aime24", "--skills-top-k", "0"], "skills_top_k must be >= 1, got 0"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["eval", *argv, "-o", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and captured.out == ""
    assert not out.exists()  # refused before writing anything


def test_bad_model_folders_and_data_files_exit_2(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "adapter").mkdir()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "What is 1+1?"}\n')
    cases = [(["--verl-checkpoint", str(tmp_path / "ckpt")], "not an FSDP actor checkpoint (no fsdp_config.json)"),
             (["--model", "m", "--lora", str(tmp_path / "adapter")], "not a peft adapter folder"),
             (["--model", str(tmp_path / "adapter")], "without config.json")]
    for argv, message in cases:
        assert main(["eval", *argv, "--datasets", "aime24", "-o", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
    assert main(["eval", "--model", "m", "--datasets", str(bad), "-o", str(tmp_path / "out")]) == 2
    assert f"{bad}: line 1: field 'answer' is missing or empty" in capsys.readouterr().err


def test_failed_requests_make_the_cli_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sgsd.eval.runner.make_eval_client", lambda *a: ScriptedClient([None, "\\boxed{204}"]))
    argv = ["eval", "--model", "Qwen/Qwen3-1.7B", "--datasets", "aime24", "--limit", "1", "--samples", "2",
            "--backend", "transformers", "--quiet", "-o", str(tmp_path / "out")]
    assert main(argv) == 1
    assert "1 requests failed; rerun the same command" in capsys.readouterr().err
    monkeypatch.setattr("sgsd.eval.runner.make_eval_client", lambda *a: ScriptedClient(["\\boxed{1}"]))  # the retry
    assert main(argv) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["datasets"]["aime24"]["avg@2"] == 0.5
