"""Text Sokoban for multi-turn LLM agents: seeded levels, the move rules, the text protocol.

Levels come from TextArena 0.7.4's generator (``textarena.envs.Sokoban.utils.generate_room``,
MIT): a random-walk room, boxes placed on their targets, then pulled away by a reverse-play
search, so every level is solvable by construction (:func:`sgsd.envs.sokoban_solver.solve`
checks it). Only the generator is used; the move rules, the prompts and the observations are this module's.

A level is a :class:`SokobanLevel` (seed, size, boxes, turn limit), stored in data files as
its :meth:`~SokobanLevel.to_spec` dict. :func:`generate` turns it into a :class:`Board`, always
the same one for the same (seed, size, boxes):

* generator seed of attempt ``k`` (``k = 0 .. GENERATION_ATTEMPTS - 1``) is
  ``seed * GENERATION_ATTEMPTS + k``: one-to-one, so no two levels share a generator seed;
* an attempt fails when ``generate_room`` gives up (``GENERATOR_TRIES`` rooms tried) or its
  room is unusable (box, target or player count off, or every box already on a target);
  the first attempt that succeeds is the level; all failing is a :class:`LevelGenerationError`.

The generator keeps its search in module globals, so calls are serialised by a lock, and
the caller's global ``random`` / ``numpy.random`` states are saved and restored around it.

One episode (:class:`SokobanEnv`)::

    user:      task_prompt()  rules, legend, action format, turn limit, the first grid
    assistant: "... <answer>left</answer>"       (parse_action: the last answer tag)
    user:      step(reply).observation  what happened, the grid, boxes on targets, turns left
    ...        until every box is on a target (solved) or max_turns replies were made

Every reply is a turn, also one without a valid move (it is counted as invalid and the
player stays); the episode never ends early for invalid replies.
"""

from __future__ import annotations

import hashlib
import numbers
import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from sgsd.parsing import strip_thinking

__all__ = [
    "ACTIONS",
    "GENERATION_ATTEMPTS",
    "GENERATOR_TRIES",
    "LEGEND",
    "NAME",
    "SPLIT_BLOCK",
    "TEST_SHARE",
    "board_split",
    "Board",
    "EpisodeOutcome",
    "LevelGenerationError",
    "SokobanEnv",
    "SokobanLevel",
    "StepResult",
    "generate",
    "levels",
    "parse_action",
    "render",
]

NAME = "sokoban"
ACTIONS = ("up", "down", "left", "right")
_DELTAS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}

# TextArena's symbols (its create_board_str), so its players' conventions carry over.
WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET = "#", "_", "O", "X", "√", "P", "S"
LEGEND = (
    "# wall\n"
    "_ floor\n"
    "O target (empty)\n"
    "X box\n"
    "√ box on a target\n"
    "P player (you)\n"
    "S player standing on a target"
)

SIZE_RANGE = (5, 12)
BOXES_RANGE = (1, 6)
MAX_TURNS_RANGE = (1, 200)
GENERATION_ATTEMPTS = 10
GENERATOR_TRIES = 100  # rooms generate_room tries per attempt (10 x 100 = its own default of 1000)
#: level seeds per family (levels walks them in order); TEST_SHARE: one start board in this many is a test board
SPLIT_BLOCK = 10**6
TEST_SHARE = 10
SPLITS = ("train", "test")

_GENERATOR_LOCK = threading.Lock()


class LevelGenerationError(ValueError):
    """No usable room for a level after every attempt (too many boxes for the room, usually)."""


# ----------------------------------------------------------------------------- levels
def _integer(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    # numbers.Integral covers numpy ints (parquet/pandas give those); bool is refused.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if low is not None and value < low or high is not None and value > high:
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def _size(value: Any) -> tuple[int, int]:
    # a parquet list column reads back as a list (pyarrow, datasets) or an array (pandas)
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 2:
        raise ValueError(f"size must be [height, width] (2 integers), got {value!r}")
    return (_integer(value[0], "size height", *SIZE_RANGE), _integer(value[1], "size width", *SIZE_RANGE))


@dataclass(frozen=True)
class SokobanLevel:
    """One level: the generator seed, the room size ``(height, width)`` (outer walls
    included), the number of boxes, and the replies an episode may take."""

    seed: int
    size: tuple[int, int] = (6, 6)
    boxes: int = 1
    max_turns: int = 20

    def __post_init__(self) -> None:
        # normalised in place: numpy ints and list sizes become plain, hashable values
        object.__setattr__(self, "seed", _integer(self.seed, "seed", 0))
        object.__setattr__(self, "size", _size(self.size))
        object.__setattr__(self, "boxes", _integer(self.boxes, "boxes", *BOXES_RANGE))
        object.__setattr__(self, "max_turns", _integer(self.max_turns, "max_turns", *MAX_TURNS_RANGE))

    def to_spec(self) -> dict[str, Any]:
        """The level as plain JSON / parquet values (:func:`sgsd.envs.make_env`'s input)."""
        return {"name": NAME, "seed": self.seed, "size": [self.size[0], self.size[1]], "boxes": self.boxes,
                "max_turns": self.max_turns}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SokobanLevel:
        """The level of a :meth:`to_spec` dict; every field is checked (``ValueError`` naming it)."""
        if not isinstance(spec, Mapping):
            raise ValueError(f"a sokoban level spec must be a mapping, got {type(spec).__name__}")
        if "name" in spec and spec["name"] != NAME:
            raise ValueError(f"spec name must be {NAME!r}, got {spec['name']!r}")
        unknown = sorted(str(k) for k in spec if k not in ("name", "seed", "size", "boxes", "max_turns"))
        if unknown:
            raise ValueError(f"unknown sokoban spec field(s): {', '.join(unknown)}; "
                             "known: name, seed, size, boxes, max_turns")
        if "seed" not in spec:
            raise ValueError("a sokoban level spec needs a 'seed'")
        fields = {k: spec[k] for k in ("seed", "size", "boxes", "max_turns") if k in spec}
        return cls(**fields)


def levels(split: str, count: int, size: Sequence[int] = (6, 6), boxes: int = 1, max_turns: int = 20,
           seed: int = 0) -> list[SokobanLevel]:
    """``count`` levels of a split, always the same ones for the same arguments.

    Splits are by BOARD, not by seed: a small room has few distinct layouts and many seeds
    give the same start (6x6 with one box: 3,200 seeds hold ~2,000 boards), so seed-disjoint
    sets would still share boards. A start board belongs to the test split when the sha256 of
    its rendering is 0 modulo :data:`TEST_SHARE` (one board in ten), else to train
    (:func:`board_split`); ``levels`` walks the family's seeds in order (family ``seed`` owns
    ``[seed * B, (seed + 1) * B)``, ``B = SPLIT_BLOCK``) and keeps the first ``count`` whose
    board is in ``split``. Train and test boards are disjoint for any counts, families and
    turn limits; seeds that generate no usable room are skipped.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    count = _integer(count, "count", 1, SPLIT_BLOCK)
    seed = _integer(seed, "seed", 0)
    size = _size(size)
    chosen: list[SokobanLevel] = []
    for level_seed in range(seed * SPLIT_BLOCK, (seed + 1) * SPLIT_BLOCK):
        level = SokobanLevel(seed=level_seed, size=size, boxes=boxes, max_turns=max_turns)
        try:
            board = generate(level)
        except LevelGenerationError:
            continue
        if board_split(board) == split:
            chosen.append(level)
            if len(chosen) == count:
                return chosen
    raise ValueError(f"family {seed} holds only {len(chosen)} {split} levels of size {size} with {boxes} boxes; "
                     f"asked for {count}")


def board_split(board: Board) -> str:
    """``test`` for one start board in :data:`TEST_SHARE` (by the sha256 of its rendering), else ``train``."""
    digest = hashlib.sha256(render(board).encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_SHARE == 0 else "train"


# ----------------------------------------------------------------------------- boards
Cell = tuple[int, int]
_SYMBOLS = {WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET}


@dataclass(frozen=True)
class Board:
    """A Sokoban position: ``(row, column)`` cells, row 0 at the top. Immutable: a move
    gives a new board. Cells outside the grid count as walls."""

    height: int
    width: int
    walls: frozenset[Cell]
    targets: frozenset[Cell]
    boxes: frozenset[Cell]
    player: Cell

    def __post_init__(self) -> None:
        for name in ("walls", "targets", "boxes"):  # hashable, whatever collection was given
            object.__setattr__(self, name, frozenset(tuple(c) for c in getattr(self, name)))
        object.__setattr__(self, "player", tuple(self.player))
        cells = [*self.walls, *self.targets, *self.boxes, self.player]
        outside = [c for c in cells if not (0 <= c[0] < self.height and 0 <= c[1] < self.width)]
        if outside:
            raise ValueError(f"board cells outside the {self.height}x{self.width} grid: {sorted(outside)}")
        if len(self.boxes) != len(self.targets) or not self.boxes:
            raise ValueError(f"a board needs as many targets as boxes (at least one): "
                             f"{len(self.boxes)} boxes, {len(self.targets)} targets")
        if self.walls & (self.targets | self.boxes) or self.player in self.walls | self.boxes:
            raise ValueError("a wall, a box and the player cannot share a cell")

    @property
    def boxes_on_target(self) -> int:
        return len(self.boxes & self.targets)

    @property
    def solved(self) -> bool:
        return self.boxes <= self.targets

    def move(self, action: str) -> tuple[Board | None, str]:
        """``(board after the move, what happened)``: ``"moved"`` or ``"pushed"`` with the new
        board, or ``"wall"`` / ``"blocked"`` (a box with a wall or a box behind it) with None."""
        if action not in _DELTAS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        dr, dc = _DELTAS[action]
        ahead = (self.player[0] + dr, self.player[1] + dc)
        if self._blocked(ahead):
            return None, "wall"
        if ahead not in self.boxes:
            return Board(self.height, self.width, self.walls, self.targets, self.boxes, ahead), "moved"
        beyond = (ahead[0] + dr, ahead[1] + dc)
        if self._blocked(beyond) or beyond in self.boxes:
            return None, "blocked"
        boxes = (self.boxes - {ahead}) | {beyond}
        return Board(self.height, self.width, self.walls, self.targets, boxes, ahead), "pushed"

    def _blocked(self, cell: Cell) -> bool:
        return cell in self.walls or not (0 <= cell[0] < self.height and 0 <= cell[1] < self.width)

    @classmethod
    def from_text(cls, text: str) -> Board:
        """The board of a :func:`render` grid (cells space-separated or not); hand-made puzzles."""
        rows = [line.split() if " " in line.strip() else list(line.strip())
                for line in text.strip().splitlines() if line.strip()]
        if not rows or len({len(r) for r in rows}) != 1:
            raise ValueError("a board needs rows of equal length")
        walls, targets, boxes, players = set(), set(), set(), []
        for r, row in enumerate(rows):
            for c, symbol in enumerate(row):
                if symbol not in _SYMBOLS:
                    raise ValueError(f"unknown symbol {symbol!r} at row {r}, column {c}; legend:\n{LEGEND}")
                if symbol == WALL:
                    walls.add((r, c))
                if symbol in (TARGET, BOX_ON_TARGET, PLAYER_ON_TARGET):
                    targets.add((r, c))
                if symbol in (BOX, BOX_ON_TARGET):
                    boxes.add((r, c))
                if symbol in (PLAYER, PLAYER_ON_TARGET):
                    players.append((r, c))
        if len(players) != 1:
            raise ValueError(f"a board needs exactly one player (P or S), found {len(players)}")
        return cls(len(rows), len(rows[0]), frozenset(walls), frozenset(targets), frozenset(boxes), players[0])


def render(board: Board) -> str:
    """The grid, one row per line, cells separated by a space (as TextArena draws it: one
    token per cell for the usual tokenizers, so columns stay countable)."""
    lines = []
    for r in range(board.height):
        cells = []
        for c in range(board.width):
            cell = (r, c)
            target = cell in board.targets
            if cell in board.walls:
                cells.append(WALL)
            elif cell in board.boxes:
                cells.append(BOX_ON_TARGET if target else BOX)
            elif cell == board.player:
                cells.append(PLAYER_ON_TARGET if target else PLAYER)
            else:
                cells.append(TARGET if target else FLOOR)
        lines.append(" ".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- generation
def _board_of_room(structure: np.ndarray, state: np.ndarray, boxes: int) -> Board | None:
    """Our board of TextArena's (room_structure, room_state), or None when unusable. Its
    codes: 0 wall, 1 floor, 2 target, 3 box on target, 4 box, 5 player. Boxes on targets
    are read from the structure: the generator writes every box of its result as 4."""
    structure, state = np.asarray(structure), np.asarray(state)
    if structure.ndim != 2 or structure.shape != state.shape:
        return None
    cells = lambda mask: frozenset((int(r), int(c)) for r, c in np.argwhere(mask))  # noqa: E731
    walls, targets = cells(structure == 0), cells(structure == 2)
    box_cells, players = cells((state == 3) | (state == 4)), cells(state == 5)
    if len(box_cells) != boxes or len(targets) != boxes or len(players) != 1:
        return None
    (player,) = players
    try:
        board = Board(int(structure.shape[0]), int(structure.shape[1]), walls, targets, box_cells, player)
    except ValueError:
        return None
    return None if board.solved else board


def _textarena_generate_room():
    try:
        from textarena.envs.Sokoban.utils import generate_room
    except ImportError as exc:
        raise ImportError(f"Sokoban levels need TextArena 0.7.4: pip install 'sgsd-verl[agents]' ({exc})") from None
    return generate_room


@lru_cache(maxsize=4096)
def _generate(seed: int, size: tuple[int, int], boxes: int) -> Board:
    with _GENERATOR_LOCK:
        random_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            generate_room = _textarena_generate_room()  # its first import, too, runs under the guard
            for attempt in range(GENERATION_ATTEMPTS):
                try:
                    structure, state, _ = generate_room(
                        dim=size, p_change_directions=0.35, num_steps=int(1.7 * (size[0] + size[1])),
                        num_boxes=boxes, tries=GENERATOR_TRIES, second_player=False,
                        seed=seed * GENERATION_ATTEMPTS + attempt)
                except (RuntimeError, RuntimeWarning, ValueError, IndexError):  # gave up, or a room too small
                    continue
                board = _board_of_room(structure, state, boxes)
                if board is not None:
                    return board
        finally:
            random.setstate(random_state)
            np.random.set_state(numpy_state)
    raise LevelGenerationError(
        f"no usable sokoban room for seed={seed}, size={size[0]}x{size[1]}, boxes={boxes} after "
        f"{GENERATION_ATTEMPTS} attempts of {GENERATOR_TRIES} rooms; fewer boxes or a larger room")


def generate(level: SokobanLevel) -> Board:
    """The start board of ``level`` (deterministic; cached, boards are immutable)."""
    if not isinstance(level, SokobanLevel):
        raise ValueError(f"generate takes a SokobanLevel, got {type(level).__name__}")
    return _generate(level.seed, level.size, level.boxes)


# ----------------------------------------------------------------------------- replies
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
# the content may not hold another opening tag: "<answer>a <answer>up</answer>" answers "up"
_ANSWER = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.IGNORECASE | re.DOTALL)


def parse_action(reply: str) -> str | None:
    """The move of a reply: the content of its LAST ``<answer>...</answer>`` outside thinking,
    stripped and lower-cased, if it is one of :data:`ACTIONS`; else None.

    Thinking is ``<think>...</think>``; text before a lone ``</think>`` (a template that
    opened the block in the prompt) and after a lone ``<think>`` (cut off mid-thought) is
    thinking too.
    """
    if not isinstance(reply, str):
        return None
    # whole blocks go first (an answer between two blocks counts), then the lone tags' sides
    text = strip_thinking(_THINK_BLOCK.sub(" ", reply))
    answers = _ANSWER.findall(text)
    if not answers:
        return None
    action = answers[-1].strip().lower()
    return action if action in ACTIONS else None


# ----------------------------------------------------------------------------- episodes
@dataclass(frozen=True)
class StepResult:
    """What one reply did. ``valid``: a parsable move that was possible; ``action``: the
    parsed move (also for an impossible one); ``moved``: the player moved; ``pushed``: a box
    moved with it."""

    observation: str
    done: bool
    valid: bool
    action: str | None
    moved: bool
    pushed: bool


@dataclass(frozen=True)
class EpisodeOutcome:
    """How an episode went: ``boxes_on_target`` is the fraction of boxes on targets at the
    end (the partial measure: Skill-SD's "completion")."""

    solved: bool
    boxes_on_target: float
    turns: int
    invalid_actions: int

    @property
    def invalid_rate(self) -> float:
        return self.invalid_actions / self.turns if self.turns else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"solved": bool(self.solved), "boxes_on_target": float(self.boxes_on_target),
                "turns": int(self.turns), "invalid_actions": int(self.invalid_actions),
                "invalid_rate": float(self.invalid_rate)}


_FORMAT = ("End your reply with your move in answer tags: <answer>up</answer>, <answer>down</answer>, "
           "<answer>left</answer> or <answer>right</answer>.")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


class SokobanEnv:
    """One episode of a level (see the module docstring for the protocol).

    ``board`` starts the episode from a given position instead of the level's generated one
    (hand-made puzzles, tests); it must have the level's size and box count.
    """

    def __init__(self, level: SokobanLevel, board: Board | None = None):
        if not isinstance(level, SokobanLevel):
            raise ValueError(f"SokobanEnv takes a SokobanLevel, got {type(level).__name__}")
        if board is None:
            board = generate(level)
        elif (board.height, board.width) != level.size or len(board.boxes) != level.boxes:
            raise ValueError(f"board is {board.height}x{board.width} with {len(board.boxes)} boxes; the level is "
                             f"{level.size[0]}x{level.size[1]} with {level.boxes}")
        self.level = level
        self._start = board
        self._board = board
        self._turns = 0
        self._invalid = 0
        self._done = board.solved

    @property
    def board(self) -> Board:
        return self._board

    @property
    def done(self) -> bool:
        return self._done

    @property
    def turns(self) -> int:
        return self._turns

    def task_prompt(self) -> str:
        """The episode's first user message (the same text for the same level)."""
        n, limit = self.level.boxes, self.level.max_turns
        return (
            "You are playing Sokoban on a grid seen from above. You are the player. "
            + ("Push the box onto the target." if n == 1 else f"Push all {n} boxes onto the {n} targets.")
            + "\n\nRules:\n"
            "- Each turn you make one move: up, down, left or right. You walk one cell that way.\n"
            "- Walking into a box pushes it one cell further the same way. A box can only be pushed onto floor "
            "or an empty target: never into a wall or another box. You cannot pull a box.\n"
            "- A box pushed into a corner between walls can never be moved out again.\n"
            "- The puzzle is solved when every box is on a target.\n\n"
            "Legend:\n" + LEGEND + "\n\n"
            "The first line of the grid is its top row: up moves one line towards it, left one column to the left.\n\n"
            "Think as you like, then end every reply with exactly one move in answer tags, for example:\n"
            "<answer>left</answer>\n"
            "Only the last <answer>...</answer> of a reply counts.\n\n"
            f"You have {_plural(limit, 'turn')}. Every reply is a turn, also one without a valid move.\n\n"
            "The grid now:\n" + render(self._board)
        )

    def step(self, reply: str) -> StepResult:
        """Play one reply (one turn)."""
        if self._done:
            raise RuntimeError("the episode is over (solved or out of turns); start a new SokobanEnv")
        self._turns += 1
        action = parse_action(reply)
        board, what = (None, "unparsed") if action is None else self._board.move(action)
        if board is None:
            self._invalid += 1
            if what == "unparsed":
                head = "Your reply has no valid move. " + _FORMAT
            elif what == "wall":
                head = f"You cannot move {action}: a wall is in the way. You did not move."
            else:
                head = (f"You cannot move {action}: the box there cannot be pushed (a wall or another box is "
                        "behind it). You did not move.")
        else:
            self._board = board
            head = f"You moved {action}" + (" and pushed a box." if what == "pushed" else ".")
        solved = self._board.solved
        self._done = solved or self._turns >= self.level.max_turns
        lines = [head, "", render(self._board), "",
                 f"Boxes on targets: {self._board.boxes_on_target}/{len(self._board.boxes)}."]
        if solved:
            lines.append("Solved: every box is on a target.")
        elif self._done:
            lines.append(f"The turn limit ({_plural(self.level.max_turns, 'turn')}) is reached; "
                         "the puzzle is not solved.")
        else:
            lines.append(f"Turns left: {self.level.max_turns - self._turns}.")
        return StepResult(observation="\n".join(lines), done=self._done, valid=board is not None,
                          action=action, moved=board is not None, pushed=what == "pushed")

    def outcome(self) -> EpisodeOutcome:
        """The episode so far (final once :attr:`done`)."""
        return EpisodeOutcome(solved=self._board.solved,
                              boxes_on_target=self._board.boxes_on_target / len(self._board.boxes),
                              turns=self._turns, invalid_actions=self._invalid)
