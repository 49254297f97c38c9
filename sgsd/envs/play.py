"""Play environment episodes with any :class:`sgsd.llm.LLMClient`, all levels in lockstep.

Outside the trainer (the evaluation, a dry run) an episode is played through the LLM clients,
one conversation per episode::

    user:      the task prompt (rules, legend, action format, first board)
    assistant: reply 1 (its action)
    user:      the observation after it
    assistant: reply 2
    ...

Every round makes ONE batched :meth:`~sgsd.llm.LLMClient.generate` call over the conversations
of the episodes still running, then feeds each reply to its environment's
:meth:`~sgsd.envs.sokoban.SokobanEnv.step`. A failed request (``text=None``) is played as an
empty reply, which the environment counts as an invalid action, so a flaky server costs the
episode a turn and never stalls the others. An episode ends when its environment says so
(solved, or the turn limit spent).

The transcript (:func:`sgsd.envs.transcript.episode_transcript`) is written as the agent loop
(:mod:`recipe.sgsd.agent_loop`) writes it during training. With ``settings.seed`` set, round
``r`` of a call is seeded with ``seed + r * len(specs)`` (clients seed request ``i`` of a call
at most ``len(specs)`` apart, so no two rounds share a seed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sgsd.envs.transcript import episode_transcript
from sgsd.llm.base import Completion, GenerationSettings, LLMClient

__all__ = ["EpisodePlay", "play_episodes"]


@dataclass(frozen=True)
class EpisodePlay:
    """One finished episode.

    ``index`` is its position in the ``specs`` given to :func:`play_episodes` (several
    episodes may share a level); ``outcome`` is :meth:`EpisodeOutcome.to_dict`;
    ``replies`` the assistant's replies in turn order ("" for a failed request);
    ``failed`` how many of them were failed requests (the completion's errors in
    ``errors``, one per failed turn).
    """

    index: int
    spec: dict[str, Any]
    outcome: dict[str, Any]
    transcript: str
    replies: tuple[str, ...]
    failed: int = 0
    errors: tuple[str, ...] = ()


def play_episodes(client: LLMClient, specs: Sequence[Mapping[str, Any]],
                  settings: GenerationSettings | None = None, *,
                  on_episode: Callable[[EpisodePlay], None] | None = None) -> list[EpisodePlay]:
    """Play one episode per spec (an env spec, :func:`sgsd.envs.make_env`'s input), in lockstep.

    ``on_episode(play)`` is called as each episode finishes (before the next round), so a
    caller can save it at once; an exception it raises stops the play, and the episodes
    it was already called for stay finished. Returns the plays in ``specs`` order.

    Raises:
        ValueError: a spec ``make_env`` refuses (the message names its position).
    """
    from sgsd.envs import make_env

    settings = settings or GenerationSettings()
    envs = []
    for i, spec in enumerate(specs):
        try:
            envs.append(make_env(spec))
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"episode {i}: bad env spec {spec!r}: {exc}") from exc
    conversations = [[{"role": "user", "content": env.task_prompt()}] for env in envs]
    turns: list[list[tuple[str, str | None]]] = [[] for _ in envs]
    errors: list[list[str]] = [[] for _ in envs]
    plays: list[EpisodePlay | None] = [None] * len(envs)

    def finish(i: int) -> None:
        outcome = envs[i].outcome().to_dict()
        play = EpisodePlay(index=i, spec=dict(specs[i]), outcome=outcome,
                           transcript=episode_transcript(turns[i], outcome),
                           replies=tuple(reply for reply, _ in turns[i]), failed=len(errors[i]),
                           errors=tuple(errors[i]))
        plays[i] = play
        if on_episode is not None:
            on_episode(play)

    for i, env in enumerate(envs):
        if env.done:  # nothing to play (a board solved from the start)
            finish(i)
    round_index = 0
    while True:
        active = [i for i, play in enumerate(plays) if play is None]
        if not active:
            break
        round_settings = settings if settings.seed is None else dataclasses.replace(
            settings, seed=settings.seed + round_index * len(envs))
        # Copies: the conversations grow after the call, a client may keep what it was given.
        completions = list(client.generate([list(conversations[i]) for i in active], round_settings))
        if len(completions) != len(active):  # never pair a reply with the wrong episode
            error = (f"{getattr(client, 'name', 'the client')} returned {len(completions)} completions "
                     f"for {len(active)} prompts")
            completions = [Completion(text=None, error=error)] * len(active)
        for i, completion in zip(active, completions):
            if completion.text is None:
                errors[i].append(completion.error or "failed request")
            reply = completion.text if completion.text is not None else ""
            step = envs[i].step(reply)
            conversations[i].append({"role": "assistant", "content": reply})
            turns[i].append((reply, step.observation))
            if step.done or envs[i].done:
                finish(i)
            else:
                conversations[i].append({"role": "user", "content": step.observation})
        round_index += 1
    return [play for play in plays if play is not None]
