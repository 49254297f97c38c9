"""The reward-manager hook: every scored rollout reaches the skill updater's buffer.

``reward.reward_manager.name=sgsd`` selects :class:`SGSDRewardManager`, verl's naive
reward manager plus one step: after scoring a trajectory it appends a
:class:`sgsd.records.RolloutRecord` (problem, decoded response, reward, data source,
step) to a named Ray actor holding a bounded :class:`sgsd.records.RecordBuffer`
(validation rollouts — verl marks them ``validate`` — are not recorded). Every
reward worker appends to the same actor; the trainer drains it. The append is awaited,
so a record is stored before its trajectory reaches the trainer: nothing is lost
between two reads.
"""

from __future__ import annotations

import ray

from sgsd.envs.transcript import TRANSCRIPT_KEY
from sgsd.records import RecordBuffer, RolloutRecord
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

BUFFER_ACTOR_NAME = "sgsd_record_buffer"
DEFAULT_BUFFER_SIZE = 8192


@ray.remote(num_cpus=0)
class RecordBufferActor:
    """A :class:`RecordBuffer` shared by every reward worker of a run."""

    def __init__(self, maxlen: int) -> None:
        self.buffer = RecordBuffer(maxlen)

    def extend(self, records: list[RolloutRecord]) -> int:
        return self.buffer.extend(records)

    def drain(self) -> list[RolloutRecord]:
        return self.buffer.drain()

    def stats(self) -> dict[str, int]:
        return {"size": len(self.buffer), "appended": self.buffer.appended, "dropped": self.buffer.dropped}


def record_buffer(maxlen: int = DEFAULT_BUFFER_SIZE):
    """The run's buffer actor, created by whichever process asks first.

    A (non-detached) Ray actor lives as long as its creator: the SGSD trainer creates it
    first, so it lasts the whole run; reward workers then get the same actor by name.
    """
    return RecordBufferActor.options(name=BUFFER_ACTOR_NAME, get_if_exists=True).remote(maxlen)


def _buffer_size(config) -> int:
    try:
        return int(config.get("sgsd", {}).get("record_buffer_size", DEFAULT_BUFFER_SIZE))
    except AttributeError:
        return DEFAULT_BUFFER_SIZE


@register("sgsd")
class SGSDRewardManager(NaiveRewardManager):
    """verl's naive reward manager that also records each scored rollout."""

    def __init__(self, config, tokenizer, compute_score, reward_router_address=None, reward_model_tokenizer=None):
        super().__init__(config, tokenizer, compute_score, reward_router_address, reward_model_tokenizer)
        self._buffer = record_buffer(_buffer_size(config))

    async def run_single(self, data) -> dict:
        result = await super().run_single(data)
        item = data[-1:][0]
        if _is_validation(item.non_tensor_batch):  # validation rollouts are not training experience
            return result
        transcript = episode_transcript_of(item.non_tensor_batch)
        if transcript is None:
            response_ids = item.batch["responses"]
            valid = int(item.batch["attention_mask"][-response_ids.shape[-1]:].sum())
            response = self.tokenizer.decode(response_ids[:valid], skip_special_tokens=True)
        else:  # an agent episode: its transcript (turns, observations, outcome), not the raw tokens
            response = transcript
        record = make_record(item.non_tensor_batch, response, float(result["reward_score"]),
                             episode=transcript is not None)
        await self._buffer.extend.remote([record])
        return result


def _is_validation(non_tensor: dict) -> bool:
    flag = non_tensor.get("validate", False)
    try:
        return bool(flag)
    except (TypeError, ValueError):  # an array-valued flag: validation if any element says so
        return bool(getattr(flag, "any", lambda: False)())


def episode_transcript_of(non_tensor: dict) -> str | None:
    """The episode transcript the agent loop ``sgsd_episode`` left in a trajectory's extra fields
    (verl hands them to the reward manager as ``tool_extra_fields``), or None for a single-turn rollout."""
    extra = non_tensor.get("tool_extra_fields")
    text = extra.get(TRANSCRIPT_KEY) if isinstance(extra, dict) else None
    return text if isinstance(text, str) else None


def make_record(non_tensor: dict, response: str, reward: float, episode: bool = False) -> RolloutRecord:
    """A record from one trajectory's dataset fields (verl's non-tensor batch item); ``episode``:
    ``response`` is an agent episode's transcript and the problem its task message."""
    from sgsd.verl_data import problem_text

    extra_info = non_tensor.get("extra_info") or {}
    reward_model = non_tensor.get("reward_model") or {}
    step = non_tensor.get("global_steps")
    try:
        problem = problem_text(extra_info, non_tensor.get("raw_prompt"))
    except ValueError:
        problem = ""
    return RolloutRecord(
        problem=problem,
        response=response,
        reward=reward,
        data_source=str(non_tensor.get("data_source", "")),
        step=int(step) if step is not None else None,
        answer=None if episode else (str(reward_model.get("ground_truth"))
                                     if reward_model.get("ground_truth") is not None else None),
        episode=episode,
    )
