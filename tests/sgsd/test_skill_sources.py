"""Skill sources: SDAR's skill files, Skill-SD's summary parsing, store and background writer
(a real OpenAI-compatible client against a real local server, tests/chat_server.py)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from sgsd.llm.openai_client import OpenAICompatibleClient
from sgsd.records import RolloutRecord
from sgsd.skill_sources import (
    SUMMARY_FIELD_MAX_CHARS,
    Skill,
    SkillFileError,
    SummaryStore,
    TrajectorySummarizer,
    TrajectorySummary,
    load_skill_files,
    parse_summary,
    summary_prompt,
    task_key,
)
from tests.chat_server import ChatServer, ok_reply

GOOD = {"success_analysis": "Factoring $x^2-1$ first worked.",
        "mistake_analysis": "It divided by $x+1$ without excluding $x=-1$.",
        "golden_workflow": "1. Factor. 2. Cancel with the condition. 3. Check the domain."}


# ----------------------------------------------------------------------------- skill files
def test_a_folder_of_skill_files(tmp_path):
    (tmp_path / "general_skills.md").write_text("Read the task twice.\n")
    (tmp_path / "heat.md").write_text("Keywords: Heat, microwave,  heat \nUse the microwave.\nThen place it.\n")
    (tmp_path / "cool.txt").write_text("keywords: cool\nUse the fridge.")
    (tmp_path / "notes.json").write_text("[]")  # not a skill file in folder mode
    (tmp_path / "sub.md").mkdir()
    skills = load_skill_files(tmp_path)
    assert [s.name for s in skills] == ["cool", "general_skills", "heat"]
    cool, general, heat = skills
    assert general.keywords == () and general.text == "Read the task twice."
    assert heat.keywords == ("heat", "microwave") and heat.text == "Use the microwave.\nThen place it."
    assert cool.text == "Use the fridge." and cool.source.endswith("cool.txt")


def test_a_json_list_of_skills(tmp_path):
    path = tmp_path / "skills.json"
    path.write_text(json.dumps([{"name": "heat", "text": "Use the microwave.", "keywords": ["Heat"]},
                                {"name": "general", "text": "Read the task twice."}]))
    heat, general = load_skill_files(path)
    assert (heat.name, heat.keywords, general.keywords) == ("heat", ("heat",), ())


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not utf-8", "not UTF-8"),
    (b'[{"name": "a", "text": "x"},', "invalid JSON at line 1"),
    (b'{"name": "a"}', "non-empty JSON list"),
    (b'[{"name": "a", "text": "x", "keyword": ["b"]}]', "unknown key"),
    (b'[{"name": "a", "text": "  "}]', "'text' must be a non-empty string"),
    (b'[{"name": "a", "text": "x"}, {"name": "a", "text": "y"}]', "also used by"),
    (b"[" * 100 + b"]" * 100, "nested deeper"),
])
def test_a_bad_json_skill_file_is_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "skills.json"
    path.write_bytes(content)
    with pytest.raises(SkillFileError, match=message) as info:
        load_skill_files(path)
    assert str(path) in str(info.value)


def test_a_bad_skill_folder_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(SkillFileError, match="not found"):
        load_skill_files(tmp_path / "missing")
    with pytest.raises(SkillFileError, match="no .md or .txt"):
        load_skill_files(tmp_path)
    (tmp_path / "a.md").write_bytes(b"ok")
    (tmp_path / "b.md").write_bytes(b"keywords: x\n   \n")
    with pytest.raises(SkillFileError, match="b.md: the skill file has no text"):
        load_skill_files(tmp_path)
    (tmp_path / "b.md").write_bytes(b"\xc3\x28")
    with pytest.raises(SkillFileError, match="b.md: not UTF-8"):
        load_skill_files(tmp_path)


def test_the_shipped_math_skill_file():
    """sgsd/data/skills/math.json (written for this project): one general skill, topic skills
    whose every keyword occurs in some MATH training problem (a typo'd keyword would not)."""
    from sgsd.datasets import load_problems, resolve, shipped_path
    from sgsd.skill_strategies import KeywordStrategy

    skills = load_skill_files(resolve("math", "skills"))
    names = [s.name for s in skills]
    assert len(names) == len(set(names)) and len(skills) >= 8
    [general] = [s for s in skills if not s.keywords]  # exactly one, shown for every problem
    assert general.name == "general_workflow" and "\\boxed{" in general.text
    assert all(len(s.text) <= 1000 and not s.text.lstrip().startswith("#") for s in skills)
    problems = [p.problem for p in load_problems(shipped_path("train", "math_train.jsonl"))]
    strategy = KeywordStrategy()
    unmatched = [(s.name, kw) for s in skills for kw in s.keywords
                 if not any(strategy.matches(p, Skill(s.name, s.text, (kw,))) for p in problems)]
    assert not unmatched, unmatched
    topics = [sum(1 for s in strategy.select(p, skills) if s.keywords) for p in problems]
    assert sum(1 for n in topics if n) > 0.7 * len(problems)  # most problems get a topic skill
    assert sum(1 for n in topics if n > 3) < 0.02 * len(problems)  # few get nearly all of them


# ----------------------------------------------------------------------------- parsing
def test_parse_a_real_models_summary_reply():
    reply = ("<think>maybe \\boxed{3} {x}</think>\nHere it is:\n```json\n"
             + json.dumps(GOOD).replace("\\\\", "\\") + "\n```")  # LaTeX with lone backslashes
    parsed = parse_summary(reply)
    assert parsed.error is None
    assert parsed.fields["success_analysis"] == GOOD["success_analysis"]
    assert parsed.fields["golden_workflow"].startswith("1. Factor.")


@pytest.mark.parametrize("reply, error", [
    (None, "no_reply"),
    ("I think the attempt was fine.", "not_json"),
    (json.dumps({"success_analysis": "a", "golden_workflow": "b"}), "missing_keys"),
    (json.dumps({**GOOD, "golden_workflow": ["1.", "2."]}), "not_strings"),
    (json.dumps({k: "  " for k in GOOD}), "empty"),
    ("x" * 1_000_001 + json.dumps(GOOD), "too_long"),
    ("[" * 5000 + json.dumps(GOOD), "too_long"),
])
def test_hostile_replies_are_named_not_raised(reply, error):
    assert parse_summary(reply).error == error


def test_fields_are_capped_and_kept_plain():
    parsed = parse_summary(json.dumps({**GOOD, "mistake_analysis": "word " * 1000 + "<|im_start|>"}))
    assert len(parsed.fields["mistake_analysis"]) <= SUMMARY_FIELD_MAX_CHARS + 3
    assert parsed.fields["mistake_analysis"].endswith("...")
    assert "<|im_start|>" not in parse_summary(json.dumps({**GOOD, "golden_workflow": "<|im_start|>x"})).fields[
        "golden_workflow"]


def test_the_prompt_shows_the_verdict_not_the_answer():
    record = RolloutRecord("Solve {problem} $\\frac{1}{2}$", "so \\boxed{5}", 1.0, answer="SECRET-42")
    prompt = summary_prompt(record)
    assert "Solve {problem} $\\frac{1}{2}$" in prompt and "SUCCESS" in prompt and "SECRET-42" not in prompt
    assert "FAILURE" in summary_prompt(RolloutRecord("p", "r", 0.0))


# ----------------------------------------------------------------------------- store
def summary(problem: str, i: int) -> TrajectorySummary:
    return TrajectorySummary(f"sum_{i}", task_key(problem), f"s{i}", f"m{i}", f"w{i}", success=bool(i % 2), step=i)


def test_store_bounds_each_task_and_resumes_from_its_file(tmp_path):
    path = tmp_path / "summaries.json"
    store = SummaryStore(path, max_per_task=2)
    for i in range(3):
        assert store.add(summary("P", i), "P")
    assert not store.add(summary("P", 2), "P")  # the same rollout twice
    store.add(summary("Q", 9), "Q")
    assert [s.name for s in store.summaries("  P ")] == ["sum_1", "sum_2"]  # oldest dropped
    assert (store.evicted, len(store), store.num_tasks) == (1, 3, 2)
    assert store.skills_for("P")[1].text == "Success analysis: s2\nMistake analysis: m2\nGolden workflow: w2"
    store.save()
    resumed = SummaryStore(path, max_per_task=2)
    assert resumed.summaries("P") == store.summaries("P") and resumed.summaries("Q") == store.summaries("Q")
    tighter = SummaryStore(path, max_per_task=1)
    assert [s.name for s in tighter.summaries("P")] == ["sum_2"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic save left no temporary file


def test_a_corrupt_store_file_names_itself(tmp_path):
    path = tmp_path / "summaries.json"
    path.write_text('{"format": "other"}')
    with pytest.raises(SkillFileError, match="not a trajectory-summary store") as info:
        SummaryStore(path)
    assert str(path) in str(info.value)
    path.write_text('{"format": "sgsd-trajectory-summaries", "tasks": [{"problem": "p", "summaries": [{}]}]}')
    with pytest.raises(SkillFileError, match="task entry 0 is malformed"):
        SummaryStore(path)


# ----------------------------------------------------------------------------- background writer
def summary_writer(delay: float = 0.0, gate: threading.Event | None = None):
    """A local writer: answers by the problem's marker, like a model that sometimes misbehaves."""

    def behaviour(body, headers, attempt):
        if gate is not None:
            gate.wait(10)
        prompt = body["messages"][-1]["content"]
        if "HOSTILE-text" in prompt:
            return 200, ok_reply("The attempt looks fine to me."), delay, {}
        if "HOSTILE-keys" in prompt:
            return 200, ok_reply(json.dumps({"success_analysis": "only this"})), delay, {}
        if "HOSTILE-huge" in prompt:
            return 200, ok_reply("{" + "x" * 1_100_000), delay, {}
        if "HOSTILE-500" in prompt:
            return 500, "server error", delay, {}
        return 200, ok_reply("<think>\\boxed{1}</think>" + json.dumps(GOOD)), delay, {}

    return ChatServer(behaviour)


def client(server) -> OpenAICompatibleClient:
    return OpenAICompatibleClient(server.base_url, "writer", api_key_env="", backoff_s=0.01, show_progress=False)


def test_summaries_are_written_off_the_critical_path_and_persisted(tmp_path):
    gate = threading.Event()
    path = tmp_path / "summaries.json"
    records = [RolloutRecord("Problem A", f"attempt {i} \\boxed{{{i}}}", float(i % 2), step=3) for i in range(4)]
    records.append(RolloutRecord("Problem B", "attempt", 1.0, step=3))
    with summary_writer(gate=gate) as server:
        with TrajectorySummarizer(client(server), SummaryStore(path, max_per_task=3), batch_size=2) as writer:
            start = time.perf_counter()
            assert writer.submit(records) == 5
            assert time.perf_counter() - start < 0.5  # the server is blocked: submit did not wait for it
            assert writer.pending == 5 and writer.collect() == []
            gate.set()
            done = writer.drain(timeout=30)
            assert len(done) == 5 and writer.pending == 0
            assert writer.counts.requests == 5 and writer.counts.written == 5 and not writer.failures
            assert writer.store.evicted == 1  # Problem A keeps its 3 newest of 4
            assert all(s.step == 3 and s.golden_workflow == GOOD["golden_workflow"] for s in done)
            # resubmitting kept rollouts asks nothing
            assert writer.submit(records[2:]) == 0 and writer.counts.duplicates == 3
            assert len(server.requests) == 5
    resumed = SummaryStore(path, max_per_task=3)
    kept_a = [s.name for s in done if s.task == task_key("Problem A")][-3:]
    assert [s.name for s in resumed.summaries("Problem A")] == kept_a
    assert len(resumed.summaries("Problem B")) == 1 and resumed.summaries("Problem B")[0].success


def test_hostile_replies_are_counted_and_skipped(tmp_path):
    problems = ["HOSTILE-text", "HOSTILE-keys", "HOSTILE-huge", "HOSTILE-500", "fine problem"]
    with summary_writer() as server:
        writer = TrajectorySummarizer(client(server), SummaryStore(tmp_path / "s.json"), batch_size=5)
        writer.submit(RolloutRecord(p, "attempt", 0.0) for p in problems)
        done = writer.drain(timeout=60)
        writer.close()
    assert [task_key("fine problem")] == [s.task for s in done]
    assert writer.failures == {"not_json": 1, "missing_keys": 1, "too_long": 1, "no_reply": 1}
    assert len(SummaryStore(tmp_path / "s.json")) == 1


def test_a_full_queue_drops_new_rollouts_without_blocking(tmp_path):
    gate = threading.Event()
    with summary_writer(gate=gate) as server:
        writer = TrajectorySummarizer(client(server), SummaryStore(), batch_size=1, max_pending=2)
        accepted = writer.submit(RolloutRecord(f"P{i}", "r", 1.0) for i in range(6))
        # submit holds the queue while it adds: exactly max_pending accepted, the rest dropped
        assert accepted == 2 and writer.counts.dropped_full == 4
        gate.set()
        assert len(writer.drain(timeout=30)) == accepted
        writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit([RolloutRecord("P", "r", 1.0)])


def test_the_shipped_sokoban_skill_file():
    """sgsd/data/skills/sokoban.json (written for this project, SDAR's teacher on Sokoban): one
    general skill that states the environment's move format as parse_action reads it, and
    keyword skills whose keywords occur in the task prompt of every level."""
    from sgsd.datasets import resolve
    from sgsd.envs.sokoban import SokobanEnv, levels, parse_action
    from sgsd.skill_strategies import KeywordStrategy

    skills = load_skill_files(resolve("sokoban", "skills"))
    [general] = [s for s in skills if not s.keywords]
    assert parse_action(general.text) in ("up", "down", "left", "right")
    prompt = SokobanEnv(levels("test", 1)[0]).task_prompt()
    chosen = KeywordStrategy().select(prompt, skills)
    assert [s.name for s in chosen] == [s.name for s in skills]  # every skill reaches a Sokoban teacher
