"""The agent loop ``sgsd_episode`` (recipe/sgsd/agent_loop.py) in this process: verl's
``AgentLoopBase`` machinery (Continuous Token builder, merges) against the CPU backend's real
``hf`` rollout server on the tiny model, playing real Sokoban levels; then the teacher pass and
the reward and record hooks on its episodes.

What a trainer launch adds (Ray, TransferQueue, the FSDP workers) is covered by the sokoban
launches of test_episodes_e2e.py (``--all``)."""

from __future__ import annotations

import asyncio
import re

import pytest
import torch

from tests.recipe.cpu.test_backend import _ONLY_THE_BACKEND

TURN_TOKENS = 12
USER_TURN = re.compile(r"\n?<\|im_start\|>user\n(?P<observation>.*)<\|im_end\|>\n<\|im_start\|>assistant\n"
                       r"(<think>\n\n</think>\n\n)?", re.DOTALL)
RESPONSE_LENGTH = 400


@pytest.fixture(scope="module")
def backend_env():
    mp = pytest.MonkeyPatch()
    for key, value in _ONLY_THE_BACKEND.items():  # in case this imports verl first
        mp.setenv(key, value)
    yield
    mp.undo()


def loop_config(response_length: int = RESPONSE_LENGTH, turn_tokens: int = TURN_TOKENS):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "actor_rollout_ref": {"rollout": {"prompt_length": 512, "response_length": response_length}},
        "data": {"apply_chat_template_kwargs": {"enable_thinking": False}},
        "sgsd": {"agent": {"max_turn_tokens": turn_tokens}},
    })


class HFServer:
    """The ``hf`` rollout server in this process, behind verl's ``server_manager.generate`` call."""

    def __init__(self, model_dir, response_length: int = RESPONSE_LENGTH):
        from recipe.sgsd.cpu.hf_rollout import HFRolloutServer
        from verl.workers.config import HFModelConfig, RolloutConfig

        config = RolloutConfig(name="hf", prompt_length=512, response_length=response_length,
                               tensor_model_parallel_size=1)
        self.server = HFRolloutServer(config, HFModelConfig(path=str(model_dir),
                                                            override_config={"attn_implementation": "sdpa"}), 0)
        self.requests: list[dict] = []

    async def generate(self, request_id, prompt_ids, sampling_params, **kwargs):
        self.requests.append(dict(sampling_params))
        return await self.server.generate(list(prompt_ids), dict(sampling_params), request_id=request_id)


class ScriptedServer:
    """A policy that replies with the given moves, one per turn (the solver's, to solve a level)."""

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies = tokenizer, list(replies)

    async def generate(self, request_id, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        text = self.replies.pop(0) + "<|im_end|>"
        self.calls = getattr(self, "calls", 0) + 1  # verl's server client stamps the weight version
        return TokenOutput(token_ids=self.tokenizer.encode(text, add_special_tokens=False), log_probs=None,
                           extra_fields={"min_global_steps": 7, "max_global_steps": 7 + self.calls})


def make_loop(server, tokenizer, config=None):
    """The agent loop's arguments; verl builds one loop per episode, inside the worker's event loop."""
    from recipe.sgsd.agent_loop import EpisodeAgentLoop
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap

    config = config or loop_config()
    return lambda: EpisodeAgentLoop(trainer_config=DictConfigWrap(config), server_manager=server,
                                    tokenizer=tokenizer, processor=None, dataset_cls=None,
                                    data_config=DictConfigWrap(config.data), hf_model_type="qwen3")


def rows(count: int = 2, split: str = "train", max_turns: int = 3):
    from sgsd.envs.data import episode_rows
    from sgsd.envs.sokoban import levels

    return episode_rows(levels(split, count, size=(6, 6), boxes=1, max_turns=max_turns), split)


def play(loop, row, sampling=None, prompt=None):
    sampling = sampling or {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}

    async def episode():
        return await loop().run(dict(sampling), raw_prompt=prompt or row["prompt"], extra_info=row["extra_info"])

    return asyncio.run(episode())


def spans(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) runs of a 0/1 mask."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((mask[start], start, i))
            start = i
    return out


@pytest.fixture(scope="module")
def tiny_episodes(backend_env, run_model_dir, run_tokenizer):
    """Two episodes of the tiny model against the real hf server (3 turns at most each)."""
    server = HFServer(run_model_dir)
    loop = make_loop(server, run_tokenizer)
    episodes = [(row, play(loop, row)) for row in rows(2)]
    return server, episodes


def test_environment_tokens_are_outside_the_response_mask(tiny_episodes, run_tokenizer):
    """Decoded, every masked-out span is exactly an observation the environment wrote (in the
    chat template's user turn), and every trained span is exactly what the server generated."""
    from sgsd.envs import make_env

    server, episodes = tiny_episodes
    for row, out in episodes:
        assert len(out.response_ids) == len(out.response_mask) <= RESPONSE_LENGTH
        env = make_env(row["extra_info"]["env"])
        runs = spans(out.response_mask)
        assert runs[0][0] == 1 and runs[-1][0] == 1  # starts and ends with the assistant
        observations = [out.response_ids[a:b] for v, a, b in runs if v == 0]
        replies = [out.response_ids[a:b] for v, a, b in runs if v == 1]
        assert len(replies) == len(observations) + 1 == out.extra_fields["episode"]["turns"]
        for reply, observation in zip(replies, observations):
            step = env.step(run_tokenizer.decode(reply, skip_special_tokens=True))
            # the span is exactly the user turn of the observation and the next generation prompt
            # (Qwen3's template adds the empty think block with thinking off): nothing of the assistant's
            turn = USER_TURN.fullmatch(run_tokenizer.decode(observation))
            assert turn is not None, run_tokenizer.decode(observation)
            assert turn["observation"] == step.observation
        env.step(run_tokenizer.decode(replies[-1], skip_special_tokens=True))
        assert env.outcome().to_dict() == {k: v for k, v in out.extra_fields["episode"].items() if k != "truncated"}
        assert out.num_turns == 2 * len(replies)
    # each turn asked for at most max_turn_tokens, and never for more than the budget left
    assert server.requests and all(1 <= r["max_tokens"] <= TURN_TOKENS for r in server.requests)


def test_rollout_log_probs_align_with_the_response(tiny_episodes):
    """The server's sampled-token log-probs sit on the assistant tokens; observations get 0."""
    _, episodes = tiny_episodes
    for _, out in episodes:
        assert out.response_logprobs is not None and len(out.response_logprobs) == len(out.response_ids)
        for value, a, b in spans(out.response_mask):
            chunk = out.response_logprobs[a:b]
            assert all(lp == 0.0 for lp in chunk) if value == 0 else any(lp < 0 for lp in chunk)


def test_a_solved_episode_ends_when_solved_and_scores_one(backend_env, run_tokenizer):
    from sgsd.envs.sokoban import SokobanLevel
    from sgsd.envs.sokoban_solver import solve
    from sgsd.verifier import compute_score

    row = rows(1, "test", max_turns=30)[0]
    moves = solve(SokobanLevel.from_spec(row["extra_info"]["env"]))
    assert moves
    replies = ["I push the box. <answer>" + m + "</answer>" for m in moves] + ["never used"]
    out = play(make_loop(ScriptedServer(run_tokenizer, replies), run_tokenizer, loop_config(2000, 32)), row)
    episode = out.extra_fields["episode"]
    assert episode["solved"] and episode["turns"] == len(moves) and episode["invalid_actions"] == 0
    assert not episode["truncated"]
    # verl's staleness tags: the first generation's weight version, and the last one's
    assert out.extra_fields["min_global_steps"] == 7 and out.extra_fields["max_global_steps"] == 7 + len(moves)
    transcript = out.extra_fields["episode_transcript"]
    assert transcript.count("Turn ") == len(moves) and transcript.rstrip().splitlines()[-1].startswith("Outcome: solved")
    # verl's reward manager merges the loop's extra fields into extra_info before scoring
    assert compute_score("sokoban", "", "", {**row["extra_info"], **out.extra_fields})["score"] == 1.0
    failed = {**out.extra_fields, "episode": {**episode, "solved": False}}
    assert compute_score("sokoban", "", "", {**row["extra_info"], **failed})["score"] == 0.0


def test_an_episode_stops_before_an_observation_that_does_not_fit(backend_env, run_tokenizer):
    row = rows(1, max_turns=30)[0]
    loop = make_loop(ScriptedServer(run_tokenizer, ["<answer>jump</answer>"] * 30), run_tokenizer,
                     loop_config(response_length=150, turn_tokens=16))
    out = play(loop, row)
    assert out.extra_fields["episode"]["truncated"] and not out.extra_fields["episode"]["solved"]
    assert len(out.response_ids) <= 150 and out.response_mask[-1] == 1  # no half observation at the end
    assert out.extra_fields["episode"]["invalid_actions"] == out.extra_fields["episode"]["turns"] >= 1


def test_a_row_whose_prompt_is_not_its_level_is_refused(backend_env, run_tokenizer):
    row = rows(1)[0]
    other = rows(2)[1]
    loop = make_loop(ScriptedServer(run_tokenizer, ["<answer>up</answer>"]), run_tokenizer)
    with pytest.raises(ValueError, match="not its level's task prompt"):
        play(loop, row, prompt=other["prompt"])


def test_the_teacher_scores_the_whole_trajectory_after_its_own_prompt(tiny_episodes, run_model_dir, run_tokenizer,
                                                                      policy):
    """The teacher pass on episodes: the teacher prompt is the task message with the mode's
    context (verbatim, no math wrapper), the whole trajectory is appended, and its log-probs
    equal an independent forward of (teacher prompt + trajectory); only assistant tokens enter
    the loss (token mask AND response mask)."""
    from recipe.sgsd.teacher_pass import Rollouts, TeacherPass, rollout_loss_inputs
    from sgsd.config import SGSDConfig
    from sgsd.prompts import ANSWER_INSTRUCTION
    from sgsd.sibling_skills import SiblingSkills
    from sgsd.skill_sources import Skill
    from sgsd.skill_strategies import make_strategy
    from tests.tiny_policy import HFScorer, response_log_probs

    _, episodes = tiny_episodes
    rollouts = Rollouts(
        responses=[torch.tensor(out.response_ids) for _, out in episodes],
        response_masks=[torch.tensor(out.response_mask) for _, out in episodes],
        log_probs=[torch.tensor(out.response_logprobs) for _, out in episodes],
        rewards=torch.zeros(len(episodes)),
        problems=[row["extra_info"]["problem"] for row, _ in episodes],
        episodes=[True] * len(episodes),
    )
    config = SGSDConfig.from_mapping({"method": "sdar", "max_teacher_prompt_length": 1024})
    skill = Skill("sokoban", "Never push a box into a corner that is not a target.", ("box",), "test")
    skills = SiblingSkills(make_strategy("full", encoder=None), files=[skill])
    result = TeacherPass(config, run_tokenizer, retriever=None, skills=skills)(rollouts, HFScorer(policy))
    assert (result.fields.alpha == 1).all()
    for j, owner in enumerate(result.plan.owner):
        prompt = run_tokenizer.decode(result.plan.prompt_ids[j])
        assert rollouts.problems[owner] in prompt and ANSWER_INSTRUCTION not in prompt
        assert "Never push a box into a corner" in prompt
        expected = response_log_probs(policy, torch.tensor(result.plan.prompt_ids[j]), rollouts.responses[owner])
        torch.testing.assert_close(result.scored[j], expected, rtol=1e-4, atol=1e-4)
    inputs = rollout_loss_inputs(result.fields, rollouts)
    for i, mask in enumerate(rollouts.response_masks):
        width = len(mask)
        assert torch.equal(inputs.token_mask[i, :width] > 0, (result.fields.token_mask[i] > 0) & (mask > 0))
        assert not (inputs.token_mask[i, :width][mask == 0]).any()  # no gap on an observation token


def test_an_episode_reaches_the_skill_writers_as_its_transcript(tiny_episodes, backend_env):
    """The ``sgsd`` reward manager's record of an episode (what SGSD's bank evolution and
    Skill-SD's summarizer read): the task message as the problem, the transcript as the
    response, no reference answer; the writers then use their agent wording."""
    from recipe.sgsd.reward_hook import episode_transcript_of, make_record
    from sgsd.skill_sources import summary_prompt
    from sgsd.updater import memory_record, record_domain

    _, episodes = tiny_episodes
    row, out = episodes[0]
    # what verl's reward manager hands over: the dataset fields and the loop's extra fields
    non_tensor = {"extra_info": row["extra_info"], "raw_prompt": row["prompt"], "data_source": row["data_source"],
                  "reward_model": row["reward_model"], "tool_extra_fields": out.extra_fields, "global_steps": 3}
    transcript = episode_transcript_of(non_tensor)
    assert transcript == out.extra_fields["episode_transcript"]
    assert episode_transcript_of({**non_tensor, "tool_extra_fields": {"turn_scores": []}}) is None  # single turn
    record = make_record(non_tensor, transcript, 0.0, episode=True)
    assert record.episode and record.problem == row["prompt"][0]["content"] and record.answer is None
    assert record.response.startswith("Turn 1\nAssistant: ")
    assert record.response.count("\nAssistant: ") == out.extra_fields["episode"]["turns"]
    assert "Environment: " in record.response and record.step == 3
    assert record_domain(record) == "agent"
    prompt = summary_prompt(record)
    assert transcript in prompt and "FAILURE: the task was not solved" in prompt
    assert memory_record(record, 6000)["task"] == record.problem
