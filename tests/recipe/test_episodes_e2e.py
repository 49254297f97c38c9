"""Sokoban episodes through verl's real trainer on CPU (``--all``): each mode (SGSD, GRPO,
Skill-SD, SDAR, OPSD) trains two steps on multi-turn episodes played by the agent loop
``sgsd_episode`` against the ``hf`` rollout server. The in-process checks of the same path (the
agent loop, masking, the teacher pass, the records) are tests/recipe/test_agent_loop.py, in the
default tier."""

from __future__ import annotations

import math
import re

import pytest
import torch

from recipe.sgsd.cpu.run import EPISODE_FILES, EPISODE_LEVEL, CPURun
from sgsd.datasets import resolve
from sgsd.skill_sources import load_skill_files
from tests.tiny_policy import LOGGED_TOLERANCE, load_model, response_log_probs

pytestmark = [pytest.mark.slow, pytest.mark.sweep]

USER_TURN = re.compile(r"\n?<\|im_start\|>user\n(?P<observation>.*)<\|im_end\|>\n<\|im_start\|>assistant\n"
                       r"(<think>\n\n</think>\n\n)?", re.DOTALL)
SOKOBAN_SKILLS = load_skill_files(resolve("sokoban", "skills"))
MODES = {"sgsd": {}, "grpo": {"estimator": "grpo"}, "skill_sd": {"variant": "skill_sd"}, "sdar": {"variant": "sdar"},
         "opsd": {"variant": "opsd"}}


class EpisodeRuns:
    """Each mode's two-step run, launched the first time a test asks for it (``-k sdar`` launches
    SDAR alone); every mode trains on the same levels and tiny model."""

    def __init__(self, tmp_path_factory, model_dir):
        self.factory, self.model_dir, self.runs = tmp_path_factory, model_dir, {}
        self.data = tmp_path_factory.mktemp("sokoban_data")

    def __getitem__(self, mode: str) -> CPURun:
        if mode not in self.runs:
            workdir = self.factory.mktemp(f"sokoban_{mode}")
            group = mode in ("grpo", "skill_sd", "sdar")
            extra = ["sgsd.update.freq=2", "sgsd.update.max_new_tokens=16", "sgsd.update.max_memories=2",
                     "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                     "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
                     "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2"]
            run = CPURun(workdir, steps=2, batch_size=2, rollout_n=2 if group else 1, task="sokoban", train_rows=4,
                         model_dir=self.model_dir, data_dir=self.data, extra=extra,
                         env={"SGSD_DEBUG_DUMP_DIR": str(workdir / "dump")}, **MODES[mode])
            done = run.run(capture=True, timeout=900)
            assert done.returncode == 0, (mode, done.stdout[-3000:], done.stderr[-3000:])
            self.runs[mode] = run
        return self.runs[mode]


@pytest.fixture(scope="module")
def episode_runs(tmp_path_factory, run_model_dir):
    from recipe.sgsd.cpu.backend import gpu_present

    if gpu_present():
        pytest.skip("the CPU backend stays off on GPU machines")
    return EpisodeRuns(tmp_path_factory, run_model_dir)


def _dump(run, step):
    return torch.load(run.workdir / "dump" / f"teacher_pass_step{step:04d}.pt")


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_on_episodes_and_logs_their_outcome(episode_runs, mode):
    steps = {s["step"]: s["data"] for s in episode_runs[mode].metrics()}
    assert sorted(steps) == [1, 2]
    for m in steps.values():
        assert math.isfinite(m["actor/grad_norm"])
        # a solved episode has every box on a target: the share solved never exceeds the partial measure
        assert 0 <= m["episode/solved"] <= m["episode/boxes_on_target"] <= 1
        assert 1 <= m["episode/turns"] <= EPISODE_LEVEL["max_turns"]
        assert 0 <= m["episode/invalid_rate"] <= 1 and m["critic/score/mean"] == m["episode/solved"]
        assert m["training/num_turns/mean"] == 2 * m["episode/turns"]  # replies and observations
    key = {"sgsd": "sgsd/loss", "grpo": None, "skill_sd": "sgsd/skill_sd/loss", "sdar": "sgsd/sdar/loss",
           "opsd": "sgsd/loss"}[mode]
    if key is None:
        assert not any(k.startswith("sgsd/") for k in steps[1])  # verl's own GRPO
    else:
        assert math.isfinite(steps[1][key])


@pytest.mark.parametrize("mode", ["sgsd", "sdar", "opsd"])
def test_the_trainer_masks_observations_and_its_teachers_score_the_whole_trajectory(episode_runs, mode,
                                                                                    run_tokenizer):
    """In the real trainer's batch: every masked-out span of a response is exactly an
    observation of its level (replaying the decoded replies through the environment), and the
    teachers' log-probs equal an independent forward of (teacher prompt + trajectory) with the
    initial weights (step 1 scores before the first update)."""
    import pyarrow.parquet as pq

    from sgsd.envs import make_env

    run = episode_runs[mode]
    rows = pq.read_table(run.data_dir / EPISODE_FILES[0]).to_pylist()
    level_of = {row["extra_info"]["problem"]: row["extra_info"]["env"] for row in rows}
    dump = _dump(run, 1)
    checked_observations = 0
    for problem, response, mask in zip(dump["problems"], dump["responses"], dump["response_masks"]):
        env = make_env(level_of[problem])
        ids, mask = response.tolist(), mask.tolist()
        starts = [0] + [i for i in range(1, len(mask)) if mask[i] != mask[i - 1]] + [len(mask)]
        runs = [(mask[a], ids[a:b]) for a, b in zip(starts, starts[1:])]
        assert runs[0][0] == 1
        for (flag, chunk), following in zip(runs, runs[1:] + [(None, None)]):
            if flag != 1:
                continue
            step = env.step(run_tokenizer.decode(chunk, skip_special_tokens=True))
            if following[0] == 0:
                turn = USER_TURN.fullmatch(run_tokenizer.decode(following[1]))
                assert turn is not None and turn["observation"] == step.observation
                checked_observations += 1
    assert checked_observations >= 2
    model = load_model(run.model_dir)
    for j, owner in enumerate(dump["owner"]):
        expected = response_log_probs(model, torch.tensor(dump["prompt_ids"][j]), dump["responses"][owner],
                                      dump["temperature"])
        assert (expected - dump["scored"][j].float()).abs().mean().item() < LOGGED_TOLERANCE
        teacher_prompt = run_tokenizer.decode(dump["prompt_ids"][j])
        assert dump["problems"][owner] in teacher_prompt  # the task message, verbatim
        if mode == "opsd":  # the privileged answer: a shortest solution of the level (the rows' ground truth)
            [row] = [r for r in rows if r["extra_info"]["problem"] == dump["problems"][owner]]
            assert "The verified final answer is: " + row["reward_model"]["ground_truth"] in teacher_prompt
        if mode == "sdar":  # the shipped Sokoban skill file (the CPU run's sgsd.skills.files=sokoban),
            # cut from its start to fit sgsd.max_teacher_prompt_length (SDAR's left truncation)
            assert teacher_prompt.startswith("[Privileged Skill Information]\n")
            assert any(skill.text[-80:] in teacher_prompt for skill in SOKOBAN_SKILLS)


def test_episodes_reach_the_bank_writer(episode_runs):
    """SGSD's bank update at step 2 saw the episodes of both steps (4 rollouts) and asked the
    policy writer about them; Skill-SD submitted every episode for a summary."""
    sgsd = {s["step"]: s["data"] for s in episode_runs["sgsd"].metrics()}[2]
    assert sgsd["sgsd/update/window"] == 4 and sgsd["sgsd/update/requests"] >= 1
    skill_sd = {s["step"]: s["data"] for s in episode_runs["skill_sd"].metrics()}
    assert skill_sd[1]["sgsd/skills/summaries_submitted"] == 4
