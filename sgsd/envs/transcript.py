"""An episode as text: what the skill writers read of a multi-turn rollout.

The trainer's records (:class:`sgsd.records.RolloutRecord`) carry an episode's task message as
their ``problem`` and this transcript as their ``response``::

    Turn 1
    Assistant: <the reply, ending with its action>
    Environment: <the observation>

    Turn 2
    ...
    Outcome: solved in 7 turns (2/2 boxes on targets, 1 invalid action)

The last turn has no ``Environment:`` line when the episode ended on it. The agent loop
(:mod:`recipe.sgsd.agent_loop`) and the evaluation write it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["EPISODE_KEY", "TRANSCRIPT_KEY", "episode_transcript", "outcome_line"]

# The agent loop's ``extra_fields`` keys (verl's reward manager merges them into ``extra_info``):
EPISODE_KEY = "episode"  # the outcome (sgsd.envs.sokoban.EpisodeOutcome.to_dict() + truncated)
TRANSCRIPT_KEY = "episode_transcript"  # this module's text of the episode


def outcome_line(outcome: Mapping) -> str:
    """``Outcome: solved in 7 turns (...)`` / ``Outcome: not solved after 20 turns (...)``."""
    turns = int(outcome.get("turns", 0))
    invalid = int(outcome.get("invalid_actions", 0))
    head = ("solved in " if outcome.get("solved") else "not solved after ") + f"{turns} turn{'s' * (turns != 1)}"
    details = [f"{float(outcome.get('boxes_on_target', 0.0)):.0%} of the boxes on targets"] \
        if "boxes_on_target" in outcome else []
    details.append(f"{invalid} invalid action{'s' * (invalid != 1)}")
    if outcome.get("truncated"):
        details.append("stopped: the trajectory's token budget was spent")
    return "Outcome: " + head + " (" + ", ".join(details) + ")"


def episode_transcript(turns: Sequence[tuple[str, str | None]], outcome: Mapping) -> str:
    """The transcript of ``turns`` (each ``(reply, observation or None)``) and the outcome line."""
    blocks = []
    for i, (reply, observation) in enumerate(turns, 1):
        lines = [f"Turn {i}", "Assistant: " + reply.strip()]
        if observation is not None:
            lines.append("Environment: " + observation.strip())
        blocks.append("\n".join(lines))
    blocks.append(outcome_line(outcome))
    return "\n\n".join(blocks)
