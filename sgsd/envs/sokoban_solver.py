"""The Sokoban solver and baseline: a breadth-first search for the shortest solution of a level
(the scripted solver that shows every generated level is solvable, and the privileged answer an
answer-conditioned teacher sees), and the random policy whose success is the floor a trained
policy must beat."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from typing import Any

from sgsd.envs.sokoban import _DELTAS, ACTIONS, Board, SokobanEnv, SokobanLevel, _integer, generate

__all__ = ["random_policy", "solve"]


def solve(level_or_board: SokobanLevel | Board, max_states: int = 200_000) -> list[str] | None:
    """The shortest move list solving a level (or a board), by breadth-first search over
    (player, boxes) states; ``[]`` for a solved board, None when no solution is found
    within ``max_states`` distinct states (or none exists)."""
    board = generate(level_or_board) if isinstance(level_or_board, SokobanLevel) else level_or_board
    if not isinstance(board, Board):
        raise ValueError(f"solve takes a SokobanLevel or a Board, got {type(board).__name__}")
    max_states = _integer(max_states, "max_states", 1)
    if board.solved:
        return []
    # Cells as ints (row * width + column) keep the states small and fast to hash; the
    # neighbour table is None where a move leaves the free cells (wall or edge).
    w = board.width
    free = [(r, c) for r in range(board.height) for c in range(w) if (r, c) not in board.walls]
    index = {(r, c): r * w + c for r, c in free}
    neighbour = {index[(r, c)]: [index.get((r + dr, c + dc)) for dr, dc in (_DELTAS[a] for a in ACTIONS)]
                 for r, c in free}
    targets = frozenset(index[c] for c in board.targets)
    start = (index[board.player], frozenset(index[c] for c in board.boxes))
    parents: dict[tuple[int, frozenset[int]], tuple[tuple[int, frozenset[int]], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        player, boxes = state
        for a, action in enumerate(ACTIONS):
            ahead = neighbour[player][a]
            if ahead is None:
                continue
            if ahead in boxes:
                beyond = neighbour[ahead][a]
                if beyond is None or beyond in boxes:
                    continue
                nxt = (ahead, (boxes - {ahead}) | {beyond})
            else:
                nxt = (ahead, boxes)
            if nxt in parents:
                continue
            parents[nxt] = (state, action)
            if nxt[1] <= targets:
                moves = []
                node: tuple[int, frozenset[int]] = nxt
                while (link := parents[node]) is not None:
                    node, move = link
                    moves.append(move)
                return moves[::-1]
            if len(parents) >= max_states:
                return None
            queue.append(nxt)
    return None


def random_policy(levels: Iterable[SokobanLevel], seed: int = 0) -> dict[str, Any]:
    """Uniformly random moves (``<answer>left</answer>`` replies) on every level until its
    episode ends: the floor a trained policy must beat. Means over the episodes."""
    rng = random.Random(_integer(seed, "seed"))
    outcomes = []
    for level in levels:
        env = SokobanEnv(level)
        while not env.done:
            env.step("<answer>" + rng.choice(ACTIONS) + "</answer>")
        outcomes.append(env.outcome())
    if not outcomes:
        raise ValueError("random_policy needs at least one level")
    mean = lambda values: float(sum(values) / len(outcomes))  # noqa: E731
    return {"episodes": len(outcomes), "success_rate": mean(o.solved for o in outcomes),
            "boxes_on_target": mean(o.boxes_on_target for o in outcomes),
            "turns": mean(o.turns for o in outcomes), "invalid_rate": mean(o.invalid_rate for o in outcomes)}
