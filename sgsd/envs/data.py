"""Environment episodes -> verl's RL parquet rows (what the agent loop ``sgsd_episode`` plays).

One row per level::

    data_source   str   "sokoban" (or the caller's name)
    prompt        [{"role": "user", "content": SokobanEnv(level).task_prompt()}]   ONE message
    ability       "agent"
    agent_name    "sgsd_episode"   (EPISODE_AGENT: verl's agent-loop worker picks the loop by it)
    reward_model  {"style": "env", "ground_truth": "left, up, ..."}   a shortest solution (the BFS
                  solver's); the environment decides the reward, this is the privileged answer an
                  answer-conditioned teacher sees (OPSD), never the student or the skill writers
    extra_info    {"problem": <the task prompt>, "index", "split", "env": level.to_spec()}

``extra_info.env`` is the level itself (seed, size, boxes, turn limit), from which the agent
loop rebuilds the episode, so the prompt must stay the level's task prompt.
``extra_info.problem`` is the same text, the "problem" the skill writers and teachers see.
The rows go to disk through :func:`sgsd.verl_data.write_parquet`, which types them with
:func:`episode_schema` (it recognises them by their ``agent_name``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sgsd.envs import level_from_spec
from sgsd.envs.sokoban import SokobanEnv, SokobanLevel
from sgsd.envs.sokoban_solver import solve

__all__ = ["EPISODE_AGENT", "EPISODE_SPLITS", "episode_rows", "episode_schema", "episode_spec", "is_episode"]

EPISODE_AGENT = "sgsd_episode"
EPISODE_SPLITS = ("train", "test")


def episode_rows(levels: Sequence[SokobanLevel], split: str, data_source: str = "sokoban") -> list[dict[str, Any]]:
    """verl RL rows for ``levels`` (layout in the module docstring); generates each board."""
    if not isinstance(data_source, str) or not data_source:
        raise ValueError("data_source must be a non-empty string")
    if split not in EPISODE_SPLITS:
        raise ValueError(f"split must be one of {', '.join(EPISODE_SPLITS)}, got {split!r}")
    rows = []
    for i, level in enumerate(levels):
        if not isinstance(level, SokobanLevel):
            raise ValueError(f"{data_source}: level {i} is a {type(level).__name__}, not a SokobanLevel")
        task = SokobanEnv(level).task_prompt()
        rows.append({
            "data_source": data_source,
            "prompt": [{"role": "user", "content": task}],
            "ability": "agent",
            "agent_name": EPISODE_AGENT,
            "reward_model": {"style": "env", "ground_truth": ", ".join(solve(level) or ())},
            "extra_info": {"problem": task, "index": i, "split": split, "env": level.to_spec()},
        })
    return rows


def episode_schema():
    """The pyarrow schema of :func:`episode_rows` (explicit, so every file types alike)."""
    import pyarrow as pa

    env = pa.struct([("name", pa.string()), ("seed", pa.int64()), ("size", pa.list_(pa.int64())),
                     ("boxes", pa.int64()), ("max_turns", pa.int64())])
    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("agent_name", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("problem", pa.string()), ("index", pa.int64()), ("split", pa.string()),
                                  ("env", env)])),
    ])


def is_episode(extra_info: Any) -> bool:
    """True for the ``extra_info`` of an episode row (it carries an ``env`` mapping)."""
    return isinstance(extra_info, Mapping) and isinstance(extra_info.get("env"), Mapping)


def episode_spec(extra_info: Any) -> dict[str, Any]:
    """The checked level spec of an episode row's ``extra_info`` (plain values, as
    :meth:`SokobanLevel.to_spec` writes it, whatever reader gave the row)."""
    if not is_episode(extra_info):
        raise ValueError("extra_info carries no environment ('env' mapping): not an episode row")
    return level_from_spec(extra_info["env"]).to_spec()
