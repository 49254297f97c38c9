"""The evaluation harness (`sgsd eval`): metrics on hand-made cases, scripted runs whose
numbers are known, the tiny Qwen3 end to end, LoRA merging, resuming, tables and the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgsd.cli import main
from sgsd.eval.runner import EvalConfig, EvalError, evaluate, final_answer_part
from sgsd.eval.metrics import (
    CORRECT_KEY,
    GradedSample,
    majority_score,
    pass_at_k,
    score_problem,
    verifier_equivalent,
    vote_keys,
)
from sgsd.eval.models import ModelError, ModelSource, prepare_model
from sgsd.eval.report import compare_runs
from sgsd.llm import Completion, ScriptedClient
from sgsd.prompts import GUIDANCE_HEADER, student_prompt

ROOT = Path(__file__).resolve().parents[3]
SCRIPTED = {"model": "scripted"}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from intra-op threads; on 2 busy cores they spin-wait."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _problems(path: Path, answers: list[str]) -> Path:
    path.write_text("".join(json.dumps({"problem": f"Problem number {i}: find the value.", "answer": a}) + "\n"
                            for i, a in enumerate(answers)))
    return path


def _per_problem_client(script: dict[int, list[str]]) -> ScriptedClient:
    """Replies to problem ``p``'s prompts with ``script[p]`` in order (sample j gets the j-th)."""
    seen: dict[int, int] = {}

    def reply(prompt: str) -> str:
        p = int(prompt.split("Problem number ")[1].split(":")[0])
        seen[p] = seen.get(p, 0) + 1
        return script[p][seen[p] - 1]

    return ScriptedClient(reply)


def _rows(out: Path, dataset: str) -> list[dict]:
    return [json.loads(line) for line in (out / dataset / "samples.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- metrics

@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 1, 0.25), (4, 1, 2, 1 - 3 / 6), (5, 2, 3, 1 - 1 / 10), (4, 0, 2, 0.0), (4, 4, 1, 1.0),
    (12, 1, 12, 1.0), (12, 3, 10, 1.0),  # n - c < k: every k-subset holds a correct sample
])
def test_pass_at_k_hand_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_combinatorial_formula_and_rejects_k_above_n():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


@pytest.mark.parametrize("keys, expected", [
    ([CORRECT_KEY, "7", "7"], 0.0),                  # a wrong majority
    ([CORRECT_KEY, CORRECT_KEY, "7"], 1.0),
    ([CORRECT_KEY, "7"], 0.5),                       # two-way tie: a random tie-break is right half the time
    ([CORRECT_KEY, "7", "8"], 1 / 3),                # three-way tie
    (["7", "8", CORRECT_KEY, CORRECT_KEY, "8"], 0.5),  # a tie between the two largest groups
    ([None, None, CORRECT_KEY], 1.0),                # samples without an answer abstain
    ([None, None], 0.0),                             # nobody voted
])
def test_majority_score_and_ties(keys, expected):
    assert majority_score(keys) == pytest.approx(expected)


def test_vote_keys_group_correct_answers_and_equivalent_wrong_ones():
    samples = [GradedSample("\\frac{1}{2}", True), GradedSample("0.5", True),  # both correct: one vote group
               GradedSample("3", False), GradedSample("\\dfrac{6}{2}", False), GradedSample("3.0", False),
               GradedSample(None, False)]
    by_string = vote_keys(samples, equivalent=None)
    assert by_string[:2] == [CORRECT_KEY, CORRECT_KEY] and by_string[5] is None
    assert len({by_string[2], by_string[3], by_string[4]}) == 3  # strings alone: three wrong groups
    assert majority_score(by_string) == 1.0
    by_value = vote_keys(samples, equivalent=verifier_equivalent)  # math-verify: 3 = 6/2 = 3.0
    assert by_value[2] == by_value[3] == by_value[4] != CORRECT_KEY
    assert majority_score(by_value) == 0.0
    assert vote_keys([GradedSample("\\dfrac{1}{3}", False), GradedSample("\\frac{1}{3}", False)],
                     equivalent=None)[0] == vote_keys([GradedSample("\\frac{1}{3}", False)], equivalent=None)[0]


def test_score_problem_uses_the_first_k_samples_for_the_vote():
    samples = [GradedSample("5", False), GradedSample("5", False)] + [GradedSample("2", True)] * 3
    score = score_problem(samples, k=2, equivalent=None)
    assert (score.samples, score.correct, score.with_answer) == (5, 3, 5)
    assert score.accuracy == pytest.approx(0.6)
    assert score.pass_at_k == pytest.approx(1 - 1 / 10)
    assert score.maj_at_k == 0.0  # the first two samples agree on a wrong answer
    assert score_problem(samples, k=5, equivalent=None).maj_at_k == 1.0
    assert score_problem(samples[:2], k=12, equivalent=None).pass_at_k == 0.0  # k capped at n


def test_final_answer_part():
    assert final_answer_part("<think>maybe \\boxed{1}</think>so \\boxed{2}") == "so \\boxed{2}"
    assert final_answer_part("<think>maybe \\boxed{1} and then the budget ran out") == ""
    assert final_answer_part("no thinking: \\boxed{3}") == "no thinking: \\boxed{3}"
    assert final_answer_part("thought without an opening tag</think>\\boxed{4}") == "\\boxed{4}"


# ----------------------------------------------------------------------------- scripted runs

SCRIPT = {  # answers: 1, 2, 1/2; n = 4 samples, k = 2
    0: ["\\boxed{1}", "\\boxed{1}", "\\boxed{7}", "no box at all"],
    1: ["\\boxed{5}", "<think>\\boxed{2}</think> \\boxed{5}", "\\boxed{2}", "<think>\\boxed{2} and cut"],
    2: ["\\boxed{0.5}", "\\boxed{3}", "\\boxed{3}", "\\boxed{\\dfrac{1}{2}}"],
}


def test_scripted_eval_numbers_are_exact(tmp_path):
    data = _problems(tmp_path / "toy.jsonl", ["1", "2", "\\frac{1}{2}"])
    client = _per_problem_client(SCRIPT)
    result = evaluate(tmp_path / "out", None, [str(data)], EvalConfig(samples=4, k=2, batch_size=5),
                      client=client, model_identity=SCRIPTED, progress=False)
    toy = result.summary["datasets"]["toy"]
    # per problem: accuracy 2/4, 1/4, 2/4; pass@2 5/6, 1/2, 5/6; maj@2 1, 0 (5, 5), 1/2 (0.5 vs 3 tie)
    assert toy["avg@4"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    assert toy["pass@2"] == pytest.approx((5 / 6 + 0.5 + 5 / 6) / 3)
    assert toy["maj@2"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert toy["format_rate"] == pytest.approx(10 / 12)
    assert (toy["problems"], toy["samples"], toy["pending_samples"]) == (3, 12, 0)
    assert result.complete and result.generated == 12 and result.summary["average"]["avg@4"] == toy["avg@4"]
    rows = _rows(tmp_path / "out", "toy")
    assert [r["index"] for r in rows] == list(range(12))
    assert [r["extracted"] for r in rows[4:8]] == ["5", "5", "2", None]  # graded after </think>
    assert [r["correct"] for r in rows[8:]] == [True, False, False, True]
    # the paper's protocol by default, the plain student prompt, one seed offset per batch
    assert client.prompts[0] == student_prompt("Problem number 0: find the value.")
    settings = client.settings[0]
    assert (settings.temperature, settings.top_p, settings.top_k, settings.max_new_tokens,
            settings.enable_thinking) == (1.0, 0.95, -1, 38912, True)
    assert [s.seed for s in client.settings] == [0, 5, 10]
    summary_md = (tmp_path / "out" / "summary.md").read_text()
    assert "| toy | 3 | 12 | 41.7 | 72.2 | 50.0 | 83.3 |" in summary_md


class _Interrupting(ScriptedClient):
    def __init__(self, reply, fail_on_call: int):
        super().__init__(reply)
        self.calls, self.fail_on_call = 0, fail_on_call

    def generate(self, prompts, settings=None):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        return super().generate(prompts, settings)


def test_resume_keeps_finished_samples_and_retries_failed_ones(tmp_path):
    config = EvalConfig(samples=2, limit=3, batch_size=2)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        evaluate(out, None, ["aime24"], config, client=_Interrupting(lambda p: "\\boxed{204}", 3),
                 model_identity=SCRIPTED, progress=False)
    assert [r["index"] for r in _rows(out, "aime24")] == [0, 1, 2, 3]  # two finished batches
    flaky = ScriptedClient([None, "\\boxed{1}"])  # one request fails: not saved, counted
    partial = evaluate(out, None, ["aime24"], config, client=flaky, model_identity=SCRIPTED, progress=False)
    assert len(flaky.prompts) == 2 and not partial.complete and partial.failed == 1
    assert partial.summary["datasets"]["aime24"]["pending_samples"] == 1
    last = ScriptedClient(["\\boxed{2}"])
    done = evaluate(out, None, ["aime24"], config, client=last, model_identity=SCRIPTED, progress=False)
    assert len(last.prompts) == 1 and done.complete
    rows = _rows(out, "aime24")
    assert sorted(r["index"] for r in rows) == list(range(6)) and len(rows) == 6
    assert [r["correct"] for r in sorted(rows, key=lambda r: r["index"])][:4] == [True] * 2 + [False] * 2
    nothing = ScriptedClient([])
    assert evaluate(out, None, ["aime24"], config, client=nothing, model_identity=SCRIPTED,
                    progress=False).generated == 0 and nothing.prompts == []


def test_a_rerun_with_other_settings_is_refused_naming_the_difference(tmp_path):
    out = tmp_path / "out"
    evaluate(out, None, ["aime24"], EvalConfig(samples=2, limit=1), client=ScriptedClient(["a", "b"]),
             model_identity=SCRIPTED, progress=False)
    with pytest.raises(EvalError, match=r"sampling\.temperature 1\.0 there, 0\.6 here"):
        evaluate(out, None, ["aime24"], EvalConfig(samples=2, limit=1, temperature=0.6),
                 client=ScriptedClient([]), model_identity=SCRIPTED, progress=False)
    with pytest.raises(EvalError, match=r"model\.model 'scripted' there, 'other' here"):
        evaluate(out, None, ["aime24"], EvalConfig(samples=2, limit=1), client=ScriptedClient([]),
                 model_identity={"model": "other"}, progress=False)
    with pytest.raises(EvalError, match=r"problems 1 there, 2 here"):
        evaluate(out, None, ["aime24"], EvalConfig(samples=2, limit=2), client=ScriptedClient([]),
                 model_identity=SCRIPTED, progress=False)
    # the same settings may add a dataset; the saved one is not regenerated
    more = ScriptedClient(["x", "y"])
    result = evaluate(out, None, ["aime24", "amc23"], EvalConfig(samples=2, limit=1), client=more,
                      model_identity=SCRIPTED, progress=False)
    assert len(more.prompts) == 2 and set(result.summary["datasets"]) == {"aime24", "amc2023"}
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(EvalError, match="not empty and holds no evaluation"):
        evaluate(tmp_path / "foreign", None, ["aime24"], EvalConfig(samples=1, limit=1),
                 client=ScriptedClient([]), model_identity=SCRIPTED, progress=False)


def test_base_plus_skill_prompts_carry_the_retrieved_skills(tmp_path, encoder, shipped_bank):
    from sgsd.bank import SkillBank
    from sgsd.datasets import benchmark_path, load_problems
    from sgsd.retrieval import SkillRetriever

    bank = SkillBank(general_skills=shipped_bank.general_skills[:5], common_mistakes=shipped_bank.common_mistakes[:5])
    bank.save(tmp_path / "bank.json")  # small: embedding the whole shipped bank costs seconds on 2 cores
    client = ScriptedClient(lambda prompt: "\\boxed{0}")
    config = EvalConfig(samples=1, limit=2, skills=str(tmp_path / "bank.json"), skills_top_k=2)
    evaluate(tmp_path / "out", None, ["aime24"], config, client=client, model_identity=SCRIPTED,
             encoder=encoder, progress=False)
    problems = load_problems(benchmark_path("aime24"))[:2]
    expected = SkillRetriever(encoder, bank, top_k=2).retrieve([p.problem for p in problems])
    first_two = [s.skill_id for s in bank.general_skills[:2]]  # the test could not tell retrieval from slicing
    assert any([t.skill.skill_id for t in r.teachers] != first_two for r in expected)
    rows = _rows(tmp_path / "out", "aime24")
    for prompt, problem, found, row in zip(client.prompts, problems, expected, rows):
        assert prompt.startswith(GUIDANCE_HEADER) and prompt.endswith(student_prompt(problem.problem))
        for teacher in found.teachers:
            assert f"- {teacher.skill.title}: {teacher.skill.principle}" in prompt
            assert f"- Don't: {teacher.mistake.description}" in prompt
        assert row["skill_ids"] == [t.skill.skill_id for t in found.teachers]
        assert row["mistake_ids"] == [t.mistake.mistake_id for t in found.teachers]
    identity = json.loads((tmp_path / "out" / "run.json").read_text())
    assert identity["prompt"]["mode"] == "skills" and identity["prompt"]["top_k"] == 2
    with pytest.raises(EvalError, match=r"prompt\.mode 'skills' there, 'plain' here"):
        evaluate(tmp_path / "out", None, ["aime24"], EvalConfig(samples=1, limit=2), client=ScriptedClient([]),
                 model_identity=SCRIPTED, progress=False)


# ----------------------------------------------------------------------------- tables

def _scored_run(path: Path, data: Path, replies: dict[int, list[str]]) -> Path:
    evaluate(path, None, [str(data)], EvalConfig(samples=2), client=_per_problem_client(replies),
             model_identity=SCRIPTED, progress=False)
    return path


def test_compare_table_in_the_layout_of_tab3(tmp_path, capsys):
    import matplotlib.image

    a = _problems(tmp_path / "aime24.jsonl", ["1", "2"])  # a file named like a benchmark keeps its label
    b = _problems(tmp_path / "extra.jsonl", ["1", "2"])
    right, wrong = "\\boxed{1}", "\\boxed{9}"
    base = _scored_run(tmp_path / "base", a, {0: [right, wrong], 1: [wrong, wrong]})  # 25%
    _scored_run(tmp_path / "base", b, {0: [right, right], 1: [wrong, wrong]})  # 50%
    sgsd = _scored_run(tmp_path / "sgsd", a, {0: [right, right], 1: [wrong, wrong]})  # 50%
    _scored_run(tmp_path / "sgsd", b, {0: [right, right], 1: [wrong, wrong]})  # 50%
    half = _scored_run(tmp_path / "half", a, {0: [wrong, wrong], 1: [wrong, wrong]})  # no `extra` column
    table = compare_runs([base, sgsd, half], ["Base", "SGSD", "Half"])
    assert table.columns == ("AIME24", "extra", "Avg.")
    md = table.markdown().splitlines()
    assert md[0] == "| Method | AIME24 | extra | Avg. |"
    assert md[2] == "| Base | <u>25.0</u> | **50.0** | <u>37.5</u> |"
    assert md[3] == "| SGSD | **50.0** | **50.0** | **50.0** |"  # ties share the mark
    assert md[4] == "| Half | 0.0 | – | – |"  # no average over a partial row
    assert "avg@2 in %" in md[-1]
    out = tmp_path / "table.md"
    assert main(["eval", "compare", str(base), str(sgsd), "--name", "Base", "--name", "SGSD", "--metric", "pass",
                 "-o", str(out)]) == 0
    assert "| SGSD | **50.0** | **50.0** | **50.0** |" in out.read_text() and "pass@2" in out.read_text()
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert matplotlib.image.imread(png).ndim == 3  # decodes as an image
    assert "| Base |" in capsys.readouterr().out
    assert main(["eval", "compare", str(base), "--name", "A", "--name", "B"]) == 2
    assert main(["eval", "compare", str(tmp_path / "nothing")]) == 2
    assert "summary.json: not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the tiny model

def test_cli_eval_of_the_tiny_model_end_to_end(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    args = ["eval", "--model", str(tiny_model_dir), "--datasets", "aime24,math500", "--limit", "2",
            "--samples", "2", "--max-new-tokens", "6", "--backend", "transformers", "--quiet", "-o", str(out)]
    assert main(args) == 0
    assert "| AIME24 | 2 | 4 |" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["backend"] == "transformers"
    assert summary["sampling"]["enable_thinking"] is True and summary["model"]["model"] == str(tiny_model_dir)
    for name in ("aime24", "math500"):
        rows = _rows(out, name)
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


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, tiny_model_dir) -> Path:
    """A peft LoRA adapter for the tiny model with random (non-zero) A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)  # B starts at zero in training; a trained one is not
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path)
    return path


def test_lora_adapter_is_merged_like_peft_computes_it(tmp_path, tiny_model_dir, lora_adapter, monkeypatch):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    source = ModelSource(model=str(tiny_model_dir), lora=str(lora_adapter)).resolved()
    merged_dir = Path(prepare_model(source, tmp_path / "work"))
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)(ids).logits
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                              str(lora_adapter))(ids).logits
    assert (merged - base).abs().max() > 1e-2
    torch.testing.assert_close(merged, reference, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr("sgsd.eval.models.merge_lora", lambda *a, **k: pytest.fail("merged twice"))
    assert prepare_model(source, tmp_path / "work") == str(merged_dir)  # stamped: reused on resume
    # a whole evaluation from base + adapter; the merged copy goes once the run completes
    monkeypatch.undo()
    out = tmp_path / "out"
    result = evaluate(out, ModelSource(model=str(tiny_model_dir), lora=str(lora_adapter)), ["aime24"],
                      EvalConfig(samples=1, limit=1, max_new_tokens=3), backend="transformers", progress=False)
    assert result.complete and result.summary["model"]["lora"] == str(lora_adapter.resolve())
    assert not (out / "merged_model").exists()


def test_a_zero_lora_scale_is_refused(tmp_path, tiny_model_dir, lora_adapter):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 0}))
    with pytest.raises(ModelError, match="alpha 0"):
        prepare_model(ModelSource(model=str(tiny_model_dir), lora=str(adapter)), tmp_path / "work")


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
    from sgsd.cli import build_parser

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


# ----------------------------------------------------------------------------- bad input

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


def test_client_reply_count_mismatch_saves_nothing(tmp_path):
    class Short(ScriptedClient):
        def generate(self, prompts, settings=None):
            return [Completion("\\boxed{1}")]  # one reply for several prompts

    result = evaluate(tmp_path / "out", None, ["aime24"], EvalConfig(samples=3, limit=1), client=Short([]),
                      model_identity=SCRIPTED, progress=False)
    assert result.failed == 3 and result.generated == 0 and not result.complete


# ----------------------------------------------------------------------------- a real verl checkpoint

@pytest.mark.slow
def test_a_verl_lora_checkpoint_is_merged_and_evaluated(tmp_path):
    """One SGSD step with LoRA through verl's trainer on CPU (~2.5 min), then
    `sgsd eval --verl-checkpoint`: verl's merger writes the base weights and lora_adapter/,
    which is merged on top; the result must equal W + (alpha / r) B A from the raw shard."""
    import torch
    from safetensors.torch import load_file

    from recipe.sgsd.cpu.backend import gpu_present
    from recipe.sgsd.cpu.run import CPURun

    if gpu_present():
        pytest.skip("the CPU backend stays off on GPU machines")

    class NoHFModel(CPURun):  # the checkpoint of a real run: no hf_model copy to fall back on
        def overrides(self) -> list[str]:
            key = "actor_rollout_ref.actor.checkpoint.save_contents="
            return [o if not o.startswith(key) else key + "[model,optimizer,extra]" for o in super().overrides()]

    run = NoHFModel(tmp_path / "run", steps=1, response_length=16, extra=[
        "actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
        "++actor_rollout_ref.model.lora.merge=true", "actor_rollout_ref.actor.optim.lr=5e-2"])
    done = run.run(timeout=900, capture=True)
    assert done.returncode == 0, done.stderr[-3000:]
    actor = run.checkpoint_dir / "global_step_1" / "actor"
    assert not (actor / "huggingface" / "model.safetensors").exists()
    out = tmp_path / "eval"
    assert main(["eval", "--verl-checkpoint", str(actor.parent), "--datasets", "aime24", "--limit", "1",
                 "--samples", "1", "--max-new-tokens", "4", "--backend", "transformers", "--keep-merged",
                 "--quiet", "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["model"]["verl_checkpoint"] == str(actor.resolve())
    shard = torch.load(actor / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).float() for k, v in shard.items()}
    prefix = "base_model.model.model.layers.0.self_attn.q_proj."
    a, b = full[prefix + "lora_A.default.weight"], full[prefix + "lora_B.default.weight"]
    base = full[prefix + "base_layer.weight"]
    expected = base + (16 / 8) * b @ a  # W + (alpha / r) B A
    merged = load_file(out / "merged_model" / "model" / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert (merged.float() - base).abs().max() > 3e-2  # one step (lr 5e-2) moved B off its zero init
    torch.testing.assert_close(merged.float(), expected, atol=1e-2, rtol=0)  # verl's merger rounds to bf16
