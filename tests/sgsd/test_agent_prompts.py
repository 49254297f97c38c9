"""Agent-episode wording of the skill writers' prompts (``docs/agent-prompts.md``): Skill-SD's
trajectory summary and the paper's Tab. 7-10 for a multi-turn episode, chosen per record
(extraction) or per window (merge), with the math prompts exactly as they were."""

from __future__ import annotations

import json

import pytest

from sgsd.evolution import RecordWindow
from sgsd.llm.scripted import ScriptedClient
from sgsd.merge import hierarchical_merge, merge_bank
from sgsd.bank import SkillBank
from sgsd.records import EPISODE_FAILURE, EPISODE_SUCCESS, RolloutRecord, memory_record
from sgsd.skill_prompts import (
    extraction_prompt,
    memory_json,
    merge_prompt,
    mistake_extraction_prompt,
    mistake_merge_prompt,
    skill_extraction_prompt,
    skill_merge_prompt,
)
from sgsd.skill_sources import SummaryStore, TrajectorySummarizer, parse_summary, summary_prompt
from sgsd.updater import SkillUpdater, UpdateConfig, record_domain, window_domain

TASK = ("You are pushing boxes in a Sokoban level. Legend: # wall, _ floor, O target, X box, P player. "
        "Answer with <answer>up|down|left|right</answer>. Keep {problem} and {} and {0} as they are.\n"
        "#####\n#P X O#\n#####")
TRANSCRIPT = ("Turn 1\nAssistant: The box is right of me. <answer>right</answer>\n"
              "Environment: #####\n#_PXO#\n#####\n\n"
              "Turn 2\nAssistant: {move} again <answer>jump</answer>\n"
              "Environment: Invalid action: {} is not one of up, down, left, right\n\n"
              "Outcome: solved in 2 turns (1/1 boxes on targets, 1 invalid action)")


def _episode(reward: float, task: str = TASK, transcript: str = TRANSCRIPT) -> RolloutRecord:
    return RolloutRecord(task, transcript, reward, "sokoban", 4, None, episode=True)


def _payload(prompt: str, header: str) -> object:
    start = prompt.index(header) + len(header)
    return json.loads(prompt[start:prompt.index("\n\nReturn ONLY valid JSON")])


# ----------------------------------------------------------------------------- records
def test_record_round_trips_with_and_without_the_episode_flag():
    episode, rollout = _episode(1.0), RolloutRecord("P", "so \\boxed{2}", 0.0, "math", 1, "2")
    assert rollout.episode is False and episode.episode is True
    for record in (episode, rollout):
        data = json.loads(json.dumps(record.to_dict()))
        assert data["episode"] is record.episode
        assert RolloutRecord(**data) == record
    old = {k: v for k, v in rollout.to_dict().items() if k != "episode"}  # saved before the field
    assert RolloutRecord(**old) == rollout


def test_a_record_window_checkpoint_keeps_episodes_and_loads_old_states():
    window = RecordWindow(4)
    window.add([_episode(1.0), _episode(0.0, transcript="Turn 1\nOutcome: not solved")])
    restored = RecordWindow(4)
    restored.load_state_dict(json.loads(json.dumps(window.state_dict())))
    assert restored.records() == window.records() and all(r.episode for r in restored.records())
    old_state = window.state_dict()
    for key in ("success", "failure"):
        old_state[key] = [{k: v for k, v in r.items() if k != "episode"} for r in old_state[key]]
    restored.load_state_dict(old_state)
    assert [r.problem for r in restored.records()] == [TASK, TASK]
    assert not any(r.episode for r in restored.records())


def test_episode_memory_names_task_episode_and_outcome():
    success, failure = memory_record(_episode(1.0), 10_000), memory_record(_episode(0.0), 10_000)
    assert set(success) == {"task", "episode", "reward", "outcome"}
    assert success["task"] == TASK and success["episode"] == TRANSCRIPT
    assert success["outcome"] == EPISODE_SUCCESS and failure["outcome"] == EPISODE_FAILURE
    assert failure["reward"] == 0.0
    cut = memory_record(_episode(0.0, transcript="Turn 1\n" + "x" * 500 + "\nOutcome: not solved"), 100)
    assert len(cut["episode"]) < 120 and cut["episode"].startswith("Turn 1\n")
    assert cut["episode"].endswith("\nOutcome: not solved")  # the tail, with its outcome line, survives
    # the math memory of the same text is the old one
    math = memory_record(RolloutRecord(TASK, TRANSCRIPT, 1.0), 10_000)
    assert {"problem", "completion", "predicted_answer", "feedback"} <= set(math) and "task" not in math


# ----------------------------------------------------------------------------- summary prompt
@pytest.mark.parametrize("reward, verdict", [(1.0, "SUCCESS: the task was solved."),
                                             (0.0, "FAILURE: the task was not solved within the turn limit.")])
def test_episode_summary_prompt_shows_task_verdict_and_transcript(reward, verdict):
    prompt = summary_prompt(_episode(reward))
    assert prompt.startswith("You are summarising one episode of a student agent at a multi-turn task")
    assert "### Task\n" + TASK + "\n\n### Outcome\n" + verdict + "\n\n### The episode\n" + TRANSCRIPT + "\n\n" in prompt
    assert "Do not list the full move sequence." in prompt
    for key in ("success_analysis", "mistake_analysis", "golden_workflow"):
        assert f'"{key}"' in prompt
    assert "box pushed into a corner" in prompt and "invalid actions" in prompt
    lowered = prompt.replace(TASK, "").replace(TRANSCRIPT, "").lower()
    assert "math" not in lowered and "final answer" not in lowered and "problem" not in lowered
    other = EPISODE_FAILURE if reward else EPISODE_SUCCESS
    assert other not in prompt


def test_episode_summary_cuts_a_long_transcript_and_math_summaries_are_unchanged():
    long = "Turn 1\n" + "Assistant: <answer>up</answer>\n" * 400 + "Outcome: not solved in 50 turns"
    prompt = summary_prompt(_episode(0.0, transcript=long), max_completion_chars=200)
    body = prompt.split("### The episode\n", 1)[1].split("\n\n### Your task", 1)[0]
    assert len(body) <= 210 and body.startswith("Turn 1\n") and body.endswith("Outcome: not solved in 50 turns")
    math = RolloutRecord("Solve {problem} $\\frac{1}{2}$", "so \\boxed{5}", 1.0, answer="5")
    assert summary_prompt(math) == summary_prompt(RolloutRecord(**{**math.to_dict(), "episode": False}))
    assert summary_prompt(math).startswith("You are summarising one attempt of a student model at a math problem")
    assert "### Problem\nSolve {problem} $\\frac{1}{2}$" in summary_prompt(math)
    assert summary_prompt(math) != summary_prompt(RolloutRecord(**{**math.to_dict(), "episode": True}))


def test_the_summarizer_sends_the_episode_prompt_and_keeps_the_parsed_summary():
    reply = json.dumps({"success_analysis": "pushed toward the target", "mistake_analysis": "one invalid move",
                        "golden_workflow": "1. Check the action format. 2. Push boxes along open rows."})
    client = ScriptedClient(lambda prompt: reply)
    store = SummaryStore(max_per_task=4)
    with TrajectorySummarizer(client, store, batch_size=2) as writer:
        assert writer.submit([_episode(0.0)]) == 1
        done = writer.drain(timeout=10)
    assert client.prompts == [summary_prompt(_episode(0.0))]
    assert len(done) == 1 and not done[0].success
    assert done[0].golden_workflow == parse_summary(reply).fields["golden_workflow"]
    assert store.summaries(TASK) == tuple(done)


# ----------------------------------------------------------------------------- Tab. 7 / 8
@pytest.mark.parametrize("build, kind, opening, header", [
    (skill_extraction_prompt, "general_skills",
     "You are an expert at distilling multi-turn agent behaviour into concise, reusable skills for a "
     "reinforcement-learning agent.", "Successful memory:\n\n"),
    (mistake_extraction_prompt, "common_mistakes",
     "You are an expert at analyzing failed multi-turn agent behaviour and turning failures into concise, "
     "reusable cautionary skills for a reinforcement-learning agent.", "Failed memory:\n\n"),
])
def test_agent_extraction_prompts(build, kind, opening, header):
    memory = memory_record(_episode(1.0 if kind == "general_skills" else 0.0), 10_000)
    prompt = extraction_prompt(memory, kind, domain="agent")
    assert prompt == build(memory, domain="agent")
    assert prompt.startswith(opening)
    outcome = "successful" if kind == "general_skills" else "failed"
    assert f"You will be given ONE {outcome} episode memory of an agent at a multi-turn task." in prompt
    assert "tasks of this kind" in prompt and "move sequences" in prompt
    assert _payload(prompt, header) == memory  # task and transcript survive as JSON, braces and all
    lowered = prompt.replace(memory_json(memory), "").lower()
    assert "math" not in lowered and "olympiad" not in lowered and "problem" not in lowered
    # the output contract is the paper's: same task items 1, 4, 5 and the same closing and schema lines
    math = extraction_prompt(memory, kind)
    assert prompt != math
    assert prompt.split(memory_json(memory))[1] == math.split(memory_json(memory))[1]
    for line in math.split("Your task:\n")[1].split("\n"):
        if line.startswith(("1. ", "4. ", "5. ")):
            assert line in prompt
    assert build(memory, with_schema=False, domain="agent").endswith(f"Return ONLY valid JSON with key {kind}.")


@pytest.mark.parametrize("kind, build", [("general_skills", skill_extraction_prompt),
                                         ("common_mistakes", mistake_extraction_prompt)])
def test_math_extraction_prompts_do_not_change_with_the_domain_argument(kind, build):
    memory = memory_record(RolloutRecord("Find {problem} {}", "so \\boxed{3}", 0.0, answer="4"), 6000)
    default = extraction_prompt(memory, kind)
    assert extraction_prompt(memory, kind, domain="math") == default == build(memory) == build(memory, domain="math")
    assert "mathematical reasoning" in default and "olympiad-style reasoning" in default
    assert '"problem": "Find {problem} {}"' in default


def test_unknown_domains_are_rejected_naming_the_allowed_ones():
    for call in (lambda: extraction_prompt({}, "general_skills", domain="sokoban"),
                 lambda: skill_extraction_prompt({}, domain="Agent"),
                 lambda: merge_prompt([], "common_mistakes", domain="code"),
                 lambda: skill_merge_prompt([], domain=""),
                 lambda: hierarchical_merge([], "general_skills", ScriptedClient([]), domain="maths")):
        with pytest.raises(ValueError, match=r"unknown domain .*'math', 'agent'"):
            call()


# ----------------------------------------------------------------------------- Tab. 9 / 10
SKILLS = [{"title": "Check {format}", "principle": "Reply with one {} action", "when_to_apply": "every turn"},
          {"title": "Avoid corners", "principle": "Never push a box into a corner", "when_to_apply": "pushing"}]
MISTAKES = [{"description": "Looping {0}", "why_it_happens": "no plan", "how_to_avoid": "track states"}]


def test_agent_merge_prompts_change_only_the_domain_words():
    skills = merge_prompt(SKILLS, "general_skills", domain="agent")
    assert skills == skill_merge_prompt(SKILLS, domain="agent")
    assert skills.startswith("You are an expert at consolidating independently-generated multi-turn agent skills "
                             "into a compact, non-redundant skill bank.")
    assert _payload(skills, "General skills to merge:\n\n") == SKILLS
    mistakes = merge_prompt(MISTAKES, "common_mistakes", group_size=8, domain="agent")
    assert mistakes == mistake_merge_prompt(MISTAKES, group_size=8, domain="agent")
    assert mistakes.startswith("You are an expert at consolidating independently-generated multi-turn agent "
                               "failure lessons into a compact, non-redundant caution bank.")
    assert "You will be given up to 8 common-mistake items extracted from different memories." in mistakes
    for prompt in (skills, mistakes):
        assert "math" not in prompt.lower() and "specific problems" not in prompt
        assert "6. Do not mention specific tasks, levels, move sequences, source memories, or dataset names." in prompt
    # the math merge prompts: default == explicit math, the paper's words
    for items, kind in ((SKILLS, "general_skills"), (MISTAKES, "common_mistakes")):
        default = merge_prompt(items, kind)
        assert merge_prompt(items, kind, domain="math") == default != merge_prompt(items, kind, domain="agent")
        assert default.startswith("You are an expert at consolidating independently-generated math ")
        assert "6. Do not mention specific problems, source memories, or dataset names." in default
        # everything after the intro's first sentence but item 6 is shared
        agent = merge_prompt(items, kind, domain="agent")
        assert default.split("\n\n", 1)[1].split("6. ")[0] == agent.split("\n\n", 1)[1].split("6. ")[0]
        assert default.split("names.\n\n", 1)[1] == agent.split("names.\n\n", 1)[1]


def _echo_merge(prompt: str) -> str:
    header = "General skills to merge:\n\n" if "General skills to merge:" in prompt else "Common mistakes to merge:\n\n"
    kind = "general_skills" if header.startswith("General") else "common_mistakes"
    return json.dumps({kind: _payload(prompt, header)})


def test_hierarchical_merge_and_merge_bank_thread_the_domain():
    for domain, subject in (("agent", "multi-turn agent"), ("math", "math")):
        client = ScriptedClient(_echo_merge)
        result = hierarchical_merge(SKILLS * 3, "general_skills", client, group_size=2, progress=False,
                                    domain=domain)
        assert client.prompts and result.items
        assert all(p.startswith("You are an expert at consolidating independently-generated " + subject + " ")
                   for p in client.prompts)
    raw = SkillBank.from_dict({"general_skills": [{"skill_id": f"g{i}", **s} for i, s in enumerate(SKILLS)],
                               "common_mistakes": [{"mistake_id": f"e{i}", **MISTAKES[0]} for i in range(2)]})
    client = ScriptedClient(_echo_merge)
    merged = merge_bank(raw, client, progress=False, domain="agent")
    assert len(client.prompts) == 2 and all("multi-turn agent" in p for p in client.prompts)
    assert [s.title for s in merged.general_skills] == [s["title"] for s in SKILLS]
    client = ScriptedClient(_echo_merge)
    merge_bank(raw, client, progress=False)
    assert all(" math " in p for p in client.prompts) and not any("multi-turn" in p for p in client.prompts)


# ----------------------------------------------------------------------------- the updater
class Writer:
    """Answers extraction with two fresh items per memory and merges by echoing the group;
    keeps every prompt it was sent (a :class:`ScriptedClient` reply function)."""

    def __init__(self):
        self.n = 0

    def __call__(self, prompt: str) -> str:
        if prompt.startswith("You are an expert at consolidating"):
            return _echo_merge(prompt)
        self.n += 1
        if "Successful memory:" in prompt:
            return json.dumps({"general_skills": [
                {"title": f"Skill {self.n}.{i}", "principle": f"Plan pushes {self.n}.{i}", "when_to_apply": "always"}
                for i in range(2)]})
        return json.dumps({"common_mistakes": [
            {"description": f"Mistake {self.n}.{i}", "why_it_happens": "haste", "how_to_avoid": f"look {self.n}.{i}"}
            for i in range(2)]})


def _math(reward: float, i: int) -> RolloutRecord:
    return RolloutRecord(f"Problem {i}", f"so \\boxed{{{i}}}", reward, "math", 4, "1")


def _run_update(bank: SkillBank, window: list[RolloutRecord]) -> tuple[list[str], list[str], SkillBank]:
    client = ScriptedClient(Writer())
    new, report = SkillUpdater(client, UpdateConfig(max_new_items=5)).update(bank, window, step=4)
    assert report.applied and report.request_failures == 0 and report.parse_failures == 0
    merges = [p for p in client.prompts if p.startswith("You are an expert at consolidating")]
    extractions = [p for p in client.prompts if p not in merges]
    assert len(extractions) == len(window) and len(merges) == 2  # one merge group per collection
    return extractions, merges, new


def test_the_updater_words_an_all_episode_window_for_agents(shipped_bank):
    bank = shipped_bank.with_items(general_skills=shipped_bank.general_skills[:2],
                                   common_mistakes=shipped_bank.common_mistakes[:2])
    window = [_episode(1.0, task=f"Level {i}. " + TASK) for i in range(2)] + [_episode(0.0) for _ in range(3)]
    assert window_domain(window) == "agent" and record_domain(window[0]) == "agent"
    extractions, merges, new = _run_update(bank, window)
    assert all("multi-turn agent behaviour" in p and "math" not in p.lower() for p in extractions)
    successes = [p for p in extractions if "Successful memory:" in p]
    assert len(successes) == 2
    memory = _payload(successes[0], "Successful memory:\n\n")
    assert set(memory) == {"task", "episode", "reward", "outcome"} and memory["episode"] == TRANSCRIPT
    assert memory["outcome"] == EPISODE_SUCCESS
    assert all("independently-generated multi-turn agent" in p and "math" not in p.lower() for p in merges)
    assert new.counts()["general_skills"]["dynamic"] == 4 and new.counts()["common_mistakes"]["dynamic"] == 5


def test_a_mixed_window_extracts_per_record_and_merges_in_math_wording(shipped_bank):
    bank = shipped_bank.with_items(general_skills=shipped_bank.general_skills[:2],
                                   common_mistakes=shipped_bank.common_mistakes[:2])
    window = [_episode(1.0), _math(1.0, 1), _episode(0.0), _math(0.0, 2), _math(0.0, 3)]
    assert window_domain(window) == "math" and window_domain([]) == "math" and record_domain(window[1]) == "math"
    extractions, merges, _ = _run_update(bank, window)
    agent = [p for p in extractions if "multi-turn agent behaviour" in p]
    math = [p for p in extractions if "mathematical reasoning" in p]
    assert len(agent) == 2 and len(math) == 3
    assert all('"task": ' in p for p in agent) and all('"problem": "Problem ' in p for p in math)
    assert all(p.startswith("You are an expert at consolidating independently-generated math ") for p in merges)
    # a math-only window sends exactly the prompts it sent before episodes existed
    math_window = [_math(1.0, 1), _math(0.0, 2), _math(0.0, 3)]
    extractions, merges, _ = _run_update(bank, math_window)
    expected = [extraction_prompt(memory_record(r, UpdateConfig().max_completion_chars),
                                  "general_skills" if r.success else "common_mistakes") for r in math_window]
    assert extractions == expected
    assert all(" math " in p and "multi-turn" not in p for p in merges)
