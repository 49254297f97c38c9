"""Episode datasets of ``sgsd eval``: seeded environment levels played to the end, and their metrics.

An episode dataset is either

- ``sokoban``: the built-in test levels, :data:`SOKOBAN_LEVELS` (100 seeded 6x6 levels with
  one box and at most 20 turns, from ``sgsd.envs.sokoban.levels("test", ...)``, whose seeds
  never overlap the train split's), or
- a parquet written by ``scripts/prepare_data.py --dataset sokoban`` (rows whose
  ``extra_info`` carries the level in ``env``, :func:`sgsd.envs.data.is_episode`). Each row's
  prompt must be its level's task prompt, as the training agent loop requires.

``--limit N`` keeps the first N levels. Each level is played ``samples`` times
(:func:`sgsd.envs.play.play_episodes`); episode ``j`` of level ``l`` has index ``l * n + j``
and is saved as one line of the dataset's ``samples.jsonl`` as soon as it ends.

Metrics per dataset, each a mean over levels of the mean over the level's episodes (the
math datasets' avg@n): ``success_rate`` (solved), ``pass@k`` (solved at least once in k,
the unbiased estimator of :func:`sgsd.eval.metrics.pass_at_k`), ``boxes_on_target`` (the
fraction of boxes on targets at the end: the partial measure), ``mean_turns`` and
``invalid_rate`` (the share of an episode's replies that were no valid action); plus the
episode count and ``failed_replies`` (failed requests, each played as an invalid reply).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sgsd.datasets import ProblemFileError
from sgsd.eval.metrics import pass_at_k

__all__ = ["EPISODE_KIND", "OUTCOME_KEYS", "SOKOBAN", "SOKOBAN_LEVELS", "check_episode_row", "episode_dataset",
           "episode_row", "episode_summary", "is_episode_file"]

EPISODE_KIND = "episodes"  # a dataset identity's "kind" (absent: a math dataset)
SOKOBAN = "sokoban"  # the built-in shorthand
SOKOBAN_LEVELS: dict[str, Any] = {"split": "test", "count": 100, "size": (6, 6), "boxes": 1, "max_turns": 20}
OUTCOME_KEYS = ("solved", "boxes_on_target", "turns", "invalid_actions", "invalid_rate")


def _task_prompts(specs: Sequence[Mapping[str, Any]]) -> list[str]:
    from sgsd.envs import make_env

    return [make_env(spec).task_prompt() for spec in specs]


def _digest(specs: Sequence[Mapping[str, Any]], prompts: Sequence[str]) -> str:
    """What the built-in levels are: their specs and the boards they generate."""
    text = json.dumps([[dict(spec), prompt] for spec, prompt in zip(specs, prompts)], sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_episode_file(path: Path) -> bool:
    """True for a parquet whose rows are episodes; ``ProblemFileError`` for one mixing
    episode and problem rows (False for any other file: a math dataset)."""
    if path.suffix != ".parquet" or not path.is_file():
        return False
    from sgsd.envs.data import is_episode
    from sgsd.verl_data import iter_parquet_rows

    kinds = {bool(is_episode(row.get("extra_info"))) for row in iter_parquet_rows(path)}
    if kinds == {True, False}:
        raise ProblemFileError(f"{path}: mixes episode rows (extra_info.env) with problem rows; "
                               "an evaluation dataset holds one kind")
    return kinds == {True}


def episode_dataset(spec: str, limit: int | None = None) -> tuple[str, str, str, tuple[dict[str, Any], ...]] | None:
    """``(name, source, sha256, level specs)`` when ``spec`` names an episode dataset, else None.

    An existing file named like the shorthand wins over it (as for shipped benchmarks).

    Raises:
        ProblemFileError: a row without a level, a level ``make_env`` refuses, or a prompt
            that is not its level's task prompt (the message names the file and row).
    """
    path = Path(spec).expanduser()
    if spec == SOKOBAN and not path.exists():
        from sgsd.envs.sokoban import levels

        specs = [level.to_spec() for level in levels(**SOKOBAN_LEVELS)]
        specs = specs[:limit] if limit else specs
        return SOKOBAN, _builtin_label(), _digest(specs, _task_prompts(specs)), tuple(specs)
    if not is_episode_file(path):
        return None
    from sgsd.envs.data import episode_spec
    from sgsd.verl_data import iter_parquet_rows

    specs = []
    for number, row in enumerate(iter_parquet_rows(path), start=1):
        if limit and len(specs) == limit:
            break
        try:
            env = episode_spec(row.get("extra_info"))
            (task,) = _task_prompts([env])
        except ValueError as exc:
            raise ProblemFileError(f"{path}: row {number}: extra_info.env is no level: {exc}") from None
        users = [m.get("content") for m in row.get("prompt") or []
                 if isinstance(m, Mapping) and m.get("role") == "user"]
        if users != [task]:
            raise ProblemFileError(f"{path}: row {number}: its prompt is not the task prompt of its level "
                                   "(extra_info.env); the file was written by another version of sgsd.envs: "
                                   "rewrite it with scripts/prepare_data.py --dataset sokoban")
        specs.append(env)
    if not specs:
        raise ProblemFileError(f"{path}: no episode rows")
    from sgsd.datasets import source_label

    return path.stem, source_label(path), hashlib.sha256(path.read_bytes()).hexdigest(), tuple(specs)


def _builtin_label() -> str:
    s = SOKOBAN_LEVELS
    return (f"built-in: sgsd.envs.sokoban.levels({s['split']!r}, {s['count']}, size={tuple(s['size'])}, "
            f"boxes={s['boxes']}, max_turns={s['max_turns']})")


def episode_row(dataset: str, index: int, samples: int, play: Any) -> dict[str, Any]:
    """The saved line of one finished episode (``play``: a :class:`sgsd.envs.play.EpisodePlay`)."""
    return {"index": index, "dataset": dataset, "problem_index": index // samples, "sample": index % samples,
            "env": play.spec, "correct": bool(play.outcome["solved"]), "outcome": play.outcome,
            "replies": list(play.replies), "transcript": play.transcript, "failed_replies": play.failed,
            "errors": list(play.errors)}


def check_episode_row(row: Mapping[str, Any]) -> bool:
    """A saved episode line holds its outcome's numbers."""
    outcome = row.get("outcome")
    return isinstance(outcome, Mapping) and all(isinstance(outcome.get(key), (int, float)) for key in OUTCOME_KEYS)


def episode_summary(identity: Mapping[str, Any], rows: Mapping[int, Mapping[str, Any]], n: int, k: int,
                    label: str) -> dict[str, Any]:
    """One episode dataset's metrics (see the module docstring) from its saved episodes."""
    levels = identity["problems"]
    by_level: dict[int, list[Mapping[str, Any]]] = {}
    for row in sorted(rows.values(), key=lambda r: r["index"]):
        by_level.setdefault(row["problem_index"], []).append(row["outcome"])
    groups = list(by_level.values())

    def level_mean(key: str) -> float | None:
        if not groups:
            return None
        return sum(sum(float(o[key]) for o in g) / len(g) for g in groups) / len(groups)

    passes = [pass_at_k(len(g), sum(bool(o["solved"]) for o in g), min(k, len(g))) for g in groups]
    return {"label": label, "source": identity["source"], "kind": EPISODE_KIND, "levels": levels,
            "levels_scored": len(groups), "episodes": len(rows), "pending_episodes": levels * n - len(rows),
            "success_rate": level_mean("solved"), f"pass@{k}": sum(passes) / len(passes) if passes else None,
            "boxes_on_target": level_mean("boxes_on_target"), "mean_turns": level_mean("turns"),
            "invalid_rate": level_mean("invalid_rate"),
            "failed_replies": sum(int(r.get("failed_replies") or 0) for r in rows.values())}
