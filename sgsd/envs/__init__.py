"""Multi-turn environments for LLM agents, built from a level spec.

A spec is a plain dict (what data files store in ``extra_info.env``) naming its environment::

    {"name": "sokoban", "seed": 1000003, "size": [6, 6], "boxes": 1, "max_turns": 20}

:func:`make_env` builds one episode of it; :func:`level_from_spec` only checks and reads the
level (no generation). Importing this package is cheap: TextArena, which the Sokoban levels
come from, is imported the first time a board is generated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sgsd.envs.sokoban import SokobanEnv, SokobanLevel

__all__ = ["ENV_NAMES", "level_from_spec", "make_env"]  # each environment's names live in its module

# name -> (level type, environment type)
_ENVS = {"sokoban": (SokobanLevel, SokobanEnv)}
ENV_NAMES = tuple(_ENVS)


def _entry(spec: Mapping[str, Any]) -> tuple[type, type]:
    if not isinstance(spec, Mapping):
        raise ValueError(f"an env spec must be a mapping with a 'name', got {type(spec).__name__}")
    name = spec.get("name")
    if name not in _ENVS:
        raise ValueError(f"unknown env name {name!r}; known: {', '.join(ENV_NAMES)}")
    return _ENVS[name]


def level_from_spec(spec: Mapping[str, Any]) -> SokobanLevel:
    """The level of ``spec`` (every field checked: ``ValueError`` naming the bad one)."""
    level_type, _ = _entry(spec)
    return level_type.from_spec(spec)


def make_env(spec: Mapping[str, Any]) -> SokobanEnv:
    """A fresh episode of the level ``spec`` describes."""
    _, env_type = _entry(spec)
    return env_type(level_from_spec(spec))
