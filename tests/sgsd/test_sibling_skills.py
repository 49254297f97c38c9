"""A run's Skill-SD / SDAR skills (sgsd.sibling_skills): built from the settings as the trainer
builds them, one draw per problem, outcomes credited, summaries from a real OpenAI-compatible
writer, and the state a checkpoint keeps."""

from __future__ import annotations

import json

import pytest

from sgsd.config import SGSDConfig
from sgsd.llm.openai_client import OpenAICompatibleClient
from sgsd.records import RolloutRecord
from sgsd.sibling_skills import SiblingSkills, make_sibling_skills
from sgsd.skill_sources import Skill, SummaryStore, TrajectorySummary, task_key
from sgsd.skill_strategies import RandomStrategy, UCBStrategy
from tests.skill_writer import WriterServer

SKILLS = (Skill("a", "text a"), Skill("b", "text b"), Skill("c", "text c", keywords=("triangle",)))


def test_sdar_defaults_read_the_shipped_math_files_with_keywords():
    skills = make_sibling_skills(SGSDConfig.from_mapping({"method": "sdar"}))
    assert skills.source == "files" and skills.strategy.name == "keyword" and len(skills.files) == 10
    chosen = skills.select(["The triangle has sides 3, 4 and 5. Find its area."])[0]
    names = [s.name for s in chosen]
    assert "general_workflow" in names and len(names) >= 2  # the general skill and geometry


def test_a_missing_skill_file_names_the_path(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        make_sibling_skills(SGSDConfig.from_mapping({"method": "sdar", "skills": {"files": str(tmp_path / "nope")}}))


def test_one_draw_per_distinct_problem_so_a_group_shares_its_teacher():
    skills = SiblingSkills(RandomStrategy(k=1, seed=3), files=SKILLS)
    problems = ["p1", "p2", "p1", "p1", "p2"]
    chosen = skills.select(problems)
    assert chosen[0] == chosen[2] == chosen[3] and chosen[1] == chosen[4]
    assert skills.strategy._draws == {task_key("p1"): 1, task_key("p2"): 1}


def test_ucb_is_credited_once_per_rollout_and_moves_to_unpulled_arms():
    skills = SiblingSkills(UCBStrategy(k=1), files=SKILLS)
    problems = ["p"] * 4
    chosen = skills.select(problems)
    assert [c[0].name for c in chosen] == ["a"] * 4  # unpulled arms first, file order
    skills.observe(problems, chosen, [1.0, 0.0, 1.0, 1.0])
    assert skills.strategy.pulls(task_key("p"), "a") == 4
    assert skills.select(["p"])[0][0].name == "b"
    with pytest.raises(ValueError, match="4 problems, 1 selections"):
        skills.observe(problems, chosen[:1], [1.0] * 4)


def test_summaries_come_from_the_writer_off_the_callers_thread(tmp_path):
    cfg = SGSDConfig.from_mapping({"method": "skill_sd", "skills": {"max_per_task": 2}})
    with WriterServer() as server:
        writer = OpenAICompatibleClient(base_url=server.base_url, model="skill-writer")
        skills = make_sibling_skills(cfg, writer=writer, store_path=tmp_path / "summaries.json")
        assert skills.select(["p"]) == [()]  # no summary yet: no teacher
        records = [RolloutRecord("p", f"attempt {i}", float(i % 2), step=1) for i in range(3)]
        assert skills.submit(records, step=1) == 3
        assert skills.collect(wait=True, timeout=60) == 3
        skills.close()
    assert len(skills.store.summaries("p")) == 2  # the per-problem bound
    chosen = skills.select(["p"])[0]
    assert len(chosen) == 1 and "Golden workflow" in chosen[0].text
    metrics = skills.metrics()
    assert metrics["sgsd/skills/summaries"] == 2 and metrics["sgsd/skills/summaries_written"] == 3
    saved = json.loads((tmp_path / "summaries.json").read_text())
    assert saved["format"] == "sgsd-trajectory-summaries"


def _summary(name: str, problem: str) -> TrajectorySummary:
    return TrajectorySummary(name=name, task=task_key(problem), success=True, step=1, success_analysis="s",
                             mistake_analysis="m", golden_workflow="g")


def test_a_checkpoint_restores_the_bandit_and_replaces_the_summaries(tmp_path):
    store = SummaryStore(tmp_path / "live.json")
    store.add(_summary("sum_1", "p"), "p")
    skills = SiblingSkills(UCBStrategy(k=1), store=store)
    skills.observe(["p"], [skills.select(["p"])[0]], [1.0])
    skills.save_checkpoint(tmp_path / "ckpt")
    store.add(_summary("sum_2", "p"), "p")  # after the checkpoint: gone on resume
    resumed = SiblingSkills(UCBStrategy(k=1), store=SummaryStore(tmp_path / "live.json"))
    assert resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.strategy.pulls(task_key("p"), "sum_1") == 1
    assert [s.name for s in resumed.store.summaries("p")] == ["sum_1"]
    assert [s["name"] for t in json.loads((tmp_path / "live.json").read_text())["tasks"] for s in t["summaries"]] \
        == ["sum_1"]  # the live file follows the checkpoint
    assert not SiblingSkills(UCBStrategy(), files=SKILLS).load_checkpoint(tmp_path / "empty")


def test_a_checkpoint_of_another_strategy_is_refused(tmp_path):
    SiblingSkills(UCBStrategy(), files=SKILLS).save_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="strategy 'ucb', this run retrieves with 'random'"):
        SiblingSkills(RandomStrategy(), files=SKILLS).load_checkpoint(tmp_path)


def test_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one skill source"):
        SiblingSkills(UCBStrategy())
    with pytest.raises(ValueError, match="hold no skill"):
        SiblingSkills(UCBStrategy(), files=())
