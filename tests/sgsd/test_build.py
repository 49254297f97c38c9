"""Cold-start bank build (paper Alg. 2): counts, success/failure routing, resume after an
interrupt, refused reruns, garbage replies, the CLI, and one real run on the tiny Qwen3.

Where the pipeline needs a model that solves problems and writes valid JSON, a
:class:`ScriptedClient` with :class:`Solver`'s reply function stands in: it solves the
"Compute A plus B." problems (right when A+B is even, off by one otherwise) with a Tab.-6
style solution, and answers extraction and merge prompts like a model would (thinking
first, LaTeX unescaped). Everything else - sampling, grading, parsing, merging, files -
is the real code.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sgsd.bank import SkillBank
from sgsd.build import FILES, BuildConfig, BuildError, build_bank, load_seed_set, make_memory
from sgsd.cli import main
from sgsd.datasets import Problem, shipped_path
from sgsd.llm.scripted import ScriptedClient
from sgsd.merge import LAYER_KEYS
from sgsd.skill_prompts import MEMORY_GENERATION_HEADER

N_ROWS = 12
THINK = "<think>\nLet me see: \\boxed{0} and {\"general_skills\": []}.\n</think>\n\n"


def _kind_of(prompt: str) -> str:
    if prompt.startswith(MEMORY_GENERATION_HEADER):
        return "generation"
    if "Successful memory:" in prompt:
        return "skills"
    if "Failed memory:" in prompt:
        return "mistakes"
    if "to merge:" in prompt:
        return "merge"
    raise AssertionError(prompt[:200])


def _memory_of(prompt: str) -> dict:
    start = prompt.index("memory:\n\n") + len("memory:\n\n")
    return json.loads(prompt[start:prompt.index("\n\nReturn ONLY valid JSON")])


def _model_json(obj: dict) -> str:
    return json.dumps(obj, indent=1).replace("\\\\", "\\")  # LaTeX with single backslashes, as models write


class Solver:
    """Reply function: a deterministic 'model'. ``fail`` / ``garbage`` pick prompts to break."""

    def __init__(self, fail=lambda kind, prompt: False, garbage=lambda kind, prompt: False):
        self.fail = fail
        self.garbage = garbage
        self.answered: dict[str, int] = {"generation": 0, "skills": 0, "mistakes": 0, "merge": 0}
        self.memories: dict[str, list[dict]] = {"skills": [], "mistakes": []}

    def __call__(self, prompt: str):
        kind = _kind_of(prompt)
        if self.fail(kind, prompt):
            return None  # a request the client gave up on
        self.answered[kind] += 1
        if self.garbage(kind, prompt):
            return "<think>hmm</think> I cannot do that {oops"
        if kind == "generation":
            a, b = map(int, re.search(r"Compute (\d+) plus (\d+)\.", prompt).groups())
            total = a + b if (a + b) % 2 == 0 else a + b + 1
            return (f"We add the numbers.\n\n{a} + {b} = {total}.\n\nCheck: fine.\n\n"
                    f"So the answer is \\boxed{{{total}}}.")
        if kind in ("skills", "mistakes"):
            memory = _memory_of(prompt)
            self.memories[kind].append(memory)
            tag = memory["problem"]
            if kind == "skills":
                items = [{"title": f"Skill {i} from [{tag}]", "principle": f"Use \\frac{{a}}{{b}} ({i}, {tag})",
                          "when_to_apply": "sums"} for i in range(2)]
                return THINK + "```json\n" + _model_json({"general_skills": items}) + "\n```"
            items = [{"description": f"Mistake {i} from [{tag}]", "why_it_happens": "rushing",
                      "how_to_avoid": f"check \\text{{step}} {i}"} for i in range(4)]  # one more than kept
            return THINK + _model_json({"common_mistakes": items})
        key = "general_skills" if "General skills to merge:" in prompt else "common_mistakes"
        start = prompt.index("to merge:\n\n") + len("to merge:\n\n")
        group = json.loads(prompt[start:prompt.index("\n\nReturn ONLY valid JSON")])
        return _model_json({key: group[: math.ceil(len(group) / 2)]})  # a merge halves its group


def _client(solver: Solver) -> ScriptedClient:
    return ScriptedClient(solver, name="solver")


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    rows = [{"problem": f"Compute {i} plus {i % 3 + 2}.", "answer": str(i + i % 3 + 2)} for i in range(N_ROWS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build(out, data, solver, model="scripted-test", **config):
    config = {"num_problems": 8, "batch_size": 2, "group_size": 4, **config}
    return build_bank(out, str(data), model, _client(solver), BuildConfig(**config), progress=False)


def _bank_items(bank: SkillBank) -> dict:
    return {k: [dict(vars(i), extra=None) for i in bank.items(k)] for k in ("general_skills", "common_mistakes")}


# ----------------------------------------------------------------------------- the whole build
def test_build_writes_a_loadable_bank_with_counts_and_routing(tmp_path, data, capsys):
    solver = Solver()
    result = _build(tmp_path / "out", data, solver)
    out = tmp_path / "out"
    seeds = load_seed_set(str(data), 8, 0)
    solved = [p for p in seeds.problems if int(p.answer) % 2 == 0]
    n_ok, n_bad = len(solved), 8 - len(solved)
    assert 0 < n_ok < 8  # the sample holds both outcomes, else routing proves nothing

    bank = SkillBank.load(out / FILES["bank"], require_nonempty=True)
    assert _bank_items(bank) == _bank_items(result.bank)
    meta = json.loads((out / FILES["build"]).read_text())
    c = meta["counts"]
    assert (c["problems"], c["generated"], c["successes"], c["failures"]) == (8, 8, n_ok, n_bad)
    assert c["candidates"] == {"general_skills": 2 * n_ok, "common_mistakes": 3 * n_bad}  # 4 offered, 3 kept
    assert c["pending_generations"] == c["pending_extractions"] == c["extraction_parse_failures"] == 0
    assert meta["complete"] is True and meta["this_run"]["request_failures"]["generation"] == 0
    assert meta["model"] == "scripted-test" and meta["num_problems"] == 8 and meta["seed"] == 0
    assert meta["merge_layers"] == {"general_skills": len(bank.metadata["general_merge_layers"]),
                                    "common_mistakes": len(bank.metadata["common_mistake_merge_layers"])}
    assert solver.answered["generation"] == 8 and solver.answered["skills"] + solver.answered["mistakes"] == 8
    assert capsys.readouterr().err == ""  # progress off

    # successes feed only general skills, failures only common mistakes
    assert sorted(m["problem"] for m in solver.memories["skills"]) == sorted(p.problem for p in solved)
    assert all(m["reward"] == 1.0 and m["predicted_answer"] == m["reference_answer"] for m in solver.memories["skills"])
    assert all(m["reward"] == 0.0 and m["predicted_answer"] != m["reference_answer"]
               for m in solver.memories["mistakes"])
    ok_tags = {p.problem for p in solved}
    raw = SkillBank.load(out / FILES["raw"])
    assert all(re.search(r"\[(.*)\]", s.title).group(1) in ok_tags for s in raw.general_skills)
    assert all(re.search(r"\[(.*)\]", m.description).group(1) not in ok_tags for m in raw.common_mistakes)
    assert all(s.title in {r.title for r in raw.general_skills} for s in bank.general_skills)

    # the shipped layouts: bank metadata and raw-candidate metadata have the released keys
    shipped = json.loads(shipped_path("skill_banks", "qwen3_1.7b.json").read_text())["metadata"]
    assert set(shipped) <= set(bank.metadata)
    assert all(tuple(layer) == LAYER_KEYS for layer in bank.metadata["general_merge_layers"])
    assert bank.metadata["input_general_skills"] == 2 * n_ok
    assert [s.skill_id for s in bank.general_skills] == [f"gen_{i:03d}" for i in range(1, len(bank.general_skills) + 1)]
    shipped_raw = json.loads(shipped_path("skill_banks", "qwen3_1.7b_raw_candidates.json").read_text())
    raw_json = json.loads((out / FILES["raw"]).read_text())
    assert list(raw_json) == list(shipped_raw) and set(raw_json["metadata"]) == set(shipped_raw["metadata"])
    assert raw_json["common_mistakes"][0]["mistake_id"] == "err_cand_000001"

    # memories: one per problem, with the fields Alg. 2 line 5 names
    memories = [json.loads(line) for line in (out / FILES["memories"]).read_text().splitlines()]
    assert [m["index"] for m in memories] == list(range(8))
    assert all({"problem", "completion", "reward", "predicted_answer", "reference_answer", "trajectory_summary",
                "feedback"} <= set(m) for m in memories)

    # `sgsd bank merge` accepts the raw candidates (real CLI, scripted writer spec)
    reply = '{"general_skills": [{"title": "t", "principle": "p", "when_to_apply": "w"}], ' \
            '"common_mistakes": [{"description": "d", "why_it_happens": "y", "how_to_avoid": "h"}]}'
    merged = tmp_path / "merged.json"
    assert main(["bank", "merge", str(out / FILES["raw"]), "--llm", "scripted:" + reply, "-o", str(merged),
                 "--quiet"]) == 0
    assert SkillBank.load(merged, require_nonempty=True).counts()["general_skills"]["total"] == 1


def test_rerunning_a_finished_build_does_nothing(tmp_path, data):
    first = _build(tmp_path / "out", data, Solver())
    again = Solver()
    second = _build(tmp_path / "out", data, again)
    assert second.already_complete and _bank_items(second.bank) == _bank_items(first.bank)
    assert sum(again.answered.values()) == 0


# ----------------------------------------------------------------------------- resume
class Interrupt:
    """Let ``after`` requests of ``kind`` through, then raise KeyboardInterrupt (Ctrl-C)."""

    def __init__(self, solver: Solver, kind: str, after: int):
        self.solver, self.kind, self.after = solver, kind, after

    def __call__(self, prompt: str):
        kind = _kind_of(prompt)
        seen = self.solver.answered["skills"] + self.solver.answered["mistakes"] if self.kind == "extraction" \
            else self.solver.answered[kind]
        if (kind == self.kind or (self.kind == "extraction" and kind in ("skills", "mistakes"))) \
                and seen >= self.after:
            raise KeyboardInterrupt
        return self.solver(prompt)


@pytest.mark.parametrize("stage, after", [("generation", 4), ("extraction", 6)])
def test_an_interrupted_build_resumes_without_redoing_anything(tmp_path, data, stage, after):
    reference = _build(tmp_path / "straight", data, Solver())
    first = Solver()
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "out", data, Interrupt(first, stage, after))
    assert not (tmp_path / "out" / FILES["bank"]).exists()
    second = Solver()
    result = _build(tmp_path / "out", data, second)
    assert first.answered["generation"] + second.answered["generation"] == 8
    extractions = [s.answered["skills"] + s.answered["mistakes"] for s in (first, second)]
    assert sum(extractions) == 8 and extractions[0] == (after if stage == "extraction" else 0)
    assert result.complete and _bank_items(result.bank) == _bank_items(reference.bank)
    assert result.metadata["this_run"]["generation_requests"] == 8 - first.answered["generation"]


def test_an_interrupt_inside_a_batch_loses_only_that_batch_and_a_torn_line_is_dropped(tmp_path, data):
    first = Solver()
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "out", data, Interrupt(first, "generation", 5), batch_size=3)
    gens = tmp_path / "out" / FILES["generations"]
    assert len(gens.read_text().splitlines()) == 3  # the first batch of 3 was saved, the second was in flight
    with gens.open("a") as handle:
        handle.write('{"index": 7, "row": 1, "compl')  # a crash in the middle of a write
    second = Solver()
    result = _build(tmp_path / "out", data, second, batch_size=3)
    assert second.answered["generation"] == 5 and result.complete
    lines = gens.read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == list(range(8))


# ----------------------------------------------------------------------------- refusals and failures
def test_a_rerun_with_other_settings_is_refused_naming_the_difference(tmp_path, data):
    _build(tmp_path / "out", data, Solver(), num_problems=4)
    with pytest.raises(BuildError, match=r"num_problems 4 there, 6 here"):
        _build(tmp_path / "out", data, Solver(), num_problems=4 + 2)
    with pytest.raises(BuildError, match=r"seed 0 there, 1 here"):
        _build(tmp_path / "out", data, Solver(), num_problems=4, seed=1)
    other = tmp_path / "other.jsonl"
    other.write_text(data.read_text().replace("Compute 0 ", "Compute 100 "))
    with pytest.raises(BuildError, match=r"data_sha256"):
        _build(tmp_path / "out", other, Solver(), num_problems=4)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match=r"not empty and holds no bank build"):
        _build(foreign, data, Solver())
    # batch size and merge settings may change on a rerun
    assert _build(tmp_path / "out", data, Solver(), num_problems=4, batch_size=3, group_size=2).complete


def test_failed_requests_are_retried_on_rerun_and_garbage_is_counted(tmp_path, data):
    seeds = load_seed_set(str(data), 8, 0)
    flaky = {seeds.problems[0].problem, seeds.problems[5].problem}

    def fail(kind, prompt):
        return kind == "generation" and any(p in prompt for p in flaky)

    def garbage(kind, prompt):
        return kind in ("skills", "mistakes") and seeds.problems[1].problem in prompt or kind == "merge"

    result = _build(tmp_path / "out", data, Solver(fail=fail, garbage=garbage))
    meta = result.metadata
    # every merge reply was garbage: nothing merged, so no bank.json (the candidates are raw_candidates.json)
    assert not result.complete and result.bank is None and meta["counts"]["merged_groups"] == 0
    assert (tmp_path / "out" / FILES["raw"]).exists() and not (tmp_path / "out" / FILES["bank"]).exists()
    assert meta["counts"]["pending_generations"] == 2 and meta["counts"]["generated"] == 6
    assert meta["this_run"]["request_failures"]["generation"] == 2
    assert meta["counts"]["extraction_parse_failures"] == 1  # saved as done, counted
    assert meta["counts"]["merge_parse_failures"] >= 1  # every merge reply was garbage: groups kept
    retry = Solver()
    result = _build(tmp_path / "out", data, retry)
    assert retry.answered["generation"] == 2 and retry.answered["skills"] + retry.answered["mistakes"] == 2
    assert result.complete and result.metadata["counts"]["extraction_parse_failures"] == 1
    assert result.bank is not None and result.metadata["counts"]["merged_groups"] > 0


def test_no_extractable_item_writes_memories_and_metadata_but_no_bank(tmp_path, data, capsys):
    solver = Solver(garbage=lambda kind, prompt: kind != "generation")
    result = _build(tmp_path / "out", data, solver)
    out = tmp_path / "out"
    assert result.bank is None
    assert not (out / FILES["bank"]).exists() and not (out / FILES["raw"]).exists()
    assert len((out / FILES["memories"]).read_text().splitlines()) == 8
    meta = json.loads((out / FILES["build"]).read_text())
    assert meta["counts"]["extraction_parse_failures"] == 8 and "bank" not in meta["counts"]
    again = Solver()  # a rerun has nothing to do (and asks nothing)
    rerun = _build(tmp_path / "out", data, again)
    assert rerun.already_complete and rerun.bank is None and sum(again.answered.values()) == 0


def test_a_directory_with_nothing_saved_takes_a_new_identity(tmp_path, data):
    down = Solver(fail=lambda kind, prompt: True)  # e.g. a wrong server URL: every request fails
    result = _build(tmp_path / "out", data, down, model="openai:http://wrong/v1#m")
    assert result.bank is None and result.metadata["counts"]["pending_generations"] == 8
    assert (tmp_path / "out" / FILES["run"]).exists()
    fixed = _build(tmp_path / "out", data, Solver(), model="openai:http://right/v1#m")
    assert fixed.complete and fixed.bank is not None
    assert json.loads((tmp_path / "out" / FILES["run"]).read_text())["model"] == "openai:http://right/v1#m"


def test_bad_config_values_are_refused():
    with pytest.raises(BuildError, match=r"num_problems must be an integer >= 1, got 0"):
        BuildConfig(num_problems=0)
    with pytest.raises(BuildError, match=r"group_size must be >= 2, got 1"):  # MergeConfig's check
        BuildConfig(group_size=1)
    with pytest.raises(BuildError, match=r"patience must be >= 1, got 0"):
        BuildConfig(patience=0)
    with pytest.raises(BuildError, match=r"max_layers must be >= 1, got 0"):
        BuildConfig(max_layers=0)


def test_a_cold_start_memory_is_the_shared_memory_record():
    memory = make_memory(Problem("What is 2+2?", "4"), "so \\boxed{4}", 1.0, max_chars=1000)
    assert list(memory) == ["problem", "completion", "reward", "predicted_answer", "reference_answer",
                            "trajectory_summary", "feedback"]
    assert memory["predicted_answer"] == "4" and memory["feedback"] == "The final answer matches the reference."


# ----------------------------------------------------------------------------- CLI
REPLY = ("Adding.\nSo \\boxed{6}\n" + json.dumps({
    "general_skills": [{"title": "t", "principle": "p", "when_to_apply": "w"}],
    "common_mistakes": [{"description": "d", "why_it_happens": "y", "how_to_avoid": "h"}]}))


def test_cli_build_then_resume_then_refuse(tmp_path, data, capsys):
    out = tmp_path / "out"
    args = ["bank", "build", "--model", "scripted:" + REPLY, "--data", str(data), "-o", str(out), "-n", "12",
            "--batch-size", "5", "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == f"{out / 'bank.json'}: 1 general skills, 1 common mistakes from 12 problems " \
                           "(1 solved, 11 failed)\n"  # only "Compute 2 plus 4." has the answer 6
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("already complete, nothing to do:")
    assert main([*args[:-3], "--seed", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed 0 there, 3 here" in err[0]


def test_cli_ctrl_c_exits_130_and_the_same_command_continues(tmp_path, data, capsys, monkeypatch):
    from sgsd.llm import factory

    first = Solver()
    monkeypatch.setattr(factory, "make_client", lambda spec: _client(Interrupt(first, "generation", 4)))
    args = ["bank", "build", "--model", "scripted:x", "--data", str(data), "-o", str(tmp_path / "out"), "-n", "8",
            "--batch-size", "2", "--quiet"]
    assert main(args) == 130
    assert "interrupted; finished requests are saved" in capsys.readouterr().err
    second = Solver()
    monkeypatch.setattr(factory, "make_client", lambda spec: _client(second))
    assert main(args) == 0
    assert (first.answered["generation"], second.answered["generation"]) == (4, 4)


def test_cli_warns_when_one_collection_is_empty(tmp_path, data, capsys):
    assert main(["bank", "build", "--model", "scripted:" + REPLY.replace("{6}", "{999}"), "--data", str(data),
                 "-o", str(tmp_path / "out"), "-n", "4", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "0 general skills, 1 common mistakes from 4 problems (0 solved, 4 failed)" in captured.out
    assert captured.err.startswith("sgsd: warning: the bank has no general_skills;")


def test_cli_exits_1_when_nothing_can_be_extracted(tmp_path, data, capsys):
    out = tmp_path / "out"
    assert main(["bank", "build", "--model", "scripted:no json \\boxed{1}", "--data", str(data), "-o", str(out),
                 "-n", "3", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no skill or mistake could be extracted from 3 memories (3 unparseable" in captured.err
    assert (out / FILES["memories"]).exists() and (out / FILES["build"]).exists()
    assert not (out / FILES["bank"]).exists()


def test_cli_build_whose_merge_writer_fails_says_so_and_exits_1(tmp_path, data, capsys, monkeypatch):
    """Every merge reply unusable: no bank.json (it would not be a merge); some merge requests
    failing: the bank is written, the build is partial (exit 1) and a rerun retries them."""
    from sgsd.llm import factory

    args = ["bank", "build", "--model", "scripted:x", "--data", str(data), "-o", str(tmp_path / "out"), "-n", "8",
            "--quiet"]
    monkeypatch.setattr(factory, "make_client", lambda spec: _client(Solver(garbage=lambda k, p: k == "merge")))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "sgsd: error: nothing was merged (0 of" in err and "the unmerged candidates are raw_candidates.json" in err
    assert not (tmp_path / "out" / FILES["bank"]).exists()

    calls = {"n": 0}

    def fail_first_merge(kind, prompt):
        calls["n"] += kind == "merge"
        return kind == "merge" and calls["n"] == 1

    out2 = tmp_path / "out2"
    monkeypatch.setattr(factory, "make_client", lambda spec: _client(Solver(fail=fail_first_merge)))
    assert main([*args[:7], str(out2), *args[8:]]) == 1
    captured = capsys.readouterr()
    assert (out2 / FILES["bank"]).exists() and "sgsd: warning: partial build: 1 requests failed" in captured.err
    monkeypatch.setattr(factory, "make_client", lambda spec: _client(Solver()))
    assert main([*args[:7], str(out2), *args[8:]]) == 0


def test_a_writer_that_nests_a_thousand_lists_is_counted_unparseable_and_a_rerun_finishes(tmp_path, data, capsys):
    """~1,000 nested "[" crashed the build with a RecursionError, again on every rerun."""
    out = tmp_path / "out"
    args = ["bank", "build", "--model", "scripted:" + "[" * 1000, "--data", str(data), "-o", str(out), "-n", "3",
            "--quiet"]  # (a spec longer than a file name may be was also mistaken for an unwritable output)
    for _ in range(2):
        assert main(args) == 1
        assert "no skill or mistake could be extracted from 3 memories (3 unparseable" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--data", "MISSING"], "no such file, and not a shipped training set (math_train, gsm8k)"),
    (["--data", "mathz"], "'mathz': no such file, and not a shipped training set"),
    (["--data", "aime24"], "is an evaluation benchmark"),
    (["--model", "bad:spec"], "unknown LLM backend 'bad'"),
    (["--model", "no-such-model-dir"], "not a local model directory and not a BACKEND:TARGET spec"),
    (["--model", "openai:http://h/v1"], "must be openai:BASE_URL#MODEL"),
    (["-n", "0"], "num_problems must be an integer >= 1, got 0"),
    (["-n", "13"], "num_problems 13 exceeds the 12 problems"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["--temperature", "-1"], "generation.temperature must be >= 0"),
    (["--data", "NOANSWER"], "field 'answer' is missing or empty"),
    (["--model", "transformers:MISSING"], "cannot create the LLM client"),
    (["--writer-temperature", "-1"], "extraction.temperature must be >= 0, got -1.0"),
    (["--merge-max-new-tokens", "0"], "merge.max_new_tokens must be >= 1, got 0"),
    (["--group-size", "1"], "group_size must be >= 2, got 1"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, data, capsys, args, message):
    (tmp_path / "NOANSWER.jsonl").write_text('{"problem": "p", "answer": "1"}\n{"problem": "q"}\n')
    subst = {"MISSING": str(tmp_path / "missing.jsonl"), "NOANSWER": str(tmp_path / "NOANSWER.jsonl"),
             "transformers:MISSING": f"transformers:{tmp_path / 'no_model'}"}
    args = [subst.get(a, a) for a in args]
    base = {"--model": "scripted:" + REPLY, "--data": str(data), "-o": str(tmp_path / "out"), "-n": "4"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["bank", "build", *[x for kv in base.items() for x in kv], "--quiet"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and message in lines[0], captured.err
    assert not (tmp_path / "out").exists()  # nothing was written


def test_build_module_imports_without_heavy_libraries():
    code = ("import sys, sgsd.build, sgsd.run_dir; "
            "print([m for m in ('verl', 'ray', 'vllm', 'torch', 'transformers') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- a real model
def test_real_tiny_model_run_end_to_end(tiny_model_dir, tmp_path, capsys):
    """The random tiny Qwen3 through the real TransformersClient: two solutions, two
    extraction replies; whatever it writes is graded, parsed and counted. It writes no
    JSON, so nothing is extracted: exit 1, memories and build.json written, no bank."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "out"
        status = main(["bank", "build", "--model", str(tiny_model_dir), "--data", "math_train", "-o", str(out),
                       "-n", "2", "--max-new-tokens", "8", "--extract-max-new-tokens", "8", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    meta = json.loads((out / FILES["build"]).read_text())
    c = meta["counts"]
    assert meta["model"] == f"transformers:{Path(tiny_model_dir).resolve()}"
    assert c["generated"] + c["pending_generations"] == 2 and c["successes"] + c["failures"] == c["generated"]
    assert c["extracted"] + c["pending_extractions"] == c["generated"]
    assert meta["client_stats"]["requests"] == 4  # 2 solutions + 2 extractions, no merge
    assert (status, c["generated"], c["extraction_parse_failures"]) == (1, 2, 2)
    assert "no skill or mistake could be extracted from 2 memories" in captured.err
    memories = [json.loads(line) for line in (out / FILES["memories"]).read_text().splitlines()]
    assert len(memories) == 2 and all(isinstance(m["completion"], str) for m in memories)
    assert not (out / FILES["bank"]).exists()
