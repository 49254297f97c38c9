"""The evaluation harness (:mod:`sgsd.eval.runner`): scripted runs whose numbers are known,
resuming, refused reruns and Base+Skill prompts."""

from __future__ import annotations

import json
import re

import pytest

from sgsd.eval.runner import EvalConfig, EvalError, evaluate, final_answer_part
from sgsd.llm import Completion, ScriptedClient
from sgsd.prompts import GUIDANCE_HEADER, student_prompt
from tests.sgsd.eval.helpers import SCRIPTED, per_problem_client, sample_rows, write_problems


def test_final_answer_part():
    assert final_answer_part("<think>maybe \\boxed{1}</think>so \\boxed{2}") == "so \\boxed{2}"
    assert final_answer_part("<think>maybe \\boxed{1} and then the budget ran out") == ""
    assert final_answer_part("no thinking: \\boxed{3}") == "no thinking: \\boxed{3}"
    assert final_answer_part("thought without an opening tag</think>\\boxed{4}") == "\\boxed{4}"


SCRIPT = {  # answers: 1, 2, 1/2; n = 4 samples, k = 2
    0: ["\\boxed{1}", "\\boxed{1}", "\\boxed{7}", "no box at all"],
    1: ["\\boxed{5}", "<think>\\boxed{2}</think> \\boxed{5}", "\\boxed{2}", "<think>\\boxed{2} and cut"],
    2: ["\\boxed{0.5}", "\\boxed{3}", "\\boxed{3}", "\\boxed{\\dfrac{1}{2}}"],
}


def test_scripted_eval_numbers_are_exact(tmp_path):
    data = write_problems(tmp_path / "toy.jsonl", ["1", "2", "\\frac{1}{2}"])
    client = per_problem_client(SCRIPT)
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
    rows = sample_rows(tmp_path / "out", "toy")
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
    assert [r["index"] for r in sample_rows(out, "aime24")] == [0, 1, 2, 3]  # two finished batches
    flaky = ScriptedClient([None, "\\boxed{1}"])  # one request fails: not saved, counted
    partial = evaluate(out, None, ["aime24"], config, client=flaky, model_identity=SCRIPTED, progress=False)
    assert len(flaky.prompts) == 2 and not partial.complete and partial.failed == 1
    assert partial.summary["datasets"]["aime24"]["pending_samples"] == 1
    last = ScriptedClient(["\\boxed{2}"])
    done = evaluate(out, None, ["aime24"], config, client=last, model_identity=SCRIPTED, progress=False)
    assert len(last.prompts) == 1 and done.complete
    rows = sample_rows(out, "aime24")
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
    rows = sample_rows(tmp_path / "out", "aime24")
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


@pytest.mark.parametrize("kwargs, message", [
    ({"samples": 0}, "samples must be an integer >= 1, got 0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),  # GenerationSettings' check
    ({"temperature": -1.0}, "temperature must be >= 0, got -1.0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
    ({"top_k": 0}, "top_k must be -1 (off) or >= 1, got 0"),
    ({"skills_top_k": 0}, "skills_top_k must be >= 1, got 0"),  # RetrievalConfig's, named by its field here
])
def test_bad_config_values_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(EvalError, match=f"^{re.escape(message)}$"):
        EvalConfig(**kwargs)


def test_client_reply_count_mismatch_saves_nothing(tmp_path):
    class Short(ScriptedClient):
        def generate(self, prompts, settings=None):
            return [Completion("\\boxed{1}")]  # one reply for several prompts

    result = evaluate(tmp_path / "out", None, ["aime24"], EvalConfig(samples=3, limit=1), client=Short([]),
                      model_identity=SCRIPTED, progress=False)
    assert result.failed == 3 and result.generated == 0 and not result.complete
