"""sgsd/envs/sokoban.py: seeded TextArena levels, the move rules, the text protocol, the solver."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from sgsd.envs import ENV_NAMES, level_from_spec, make_env
from sgsd.envs import sokoban as sk
from sgsd.envs.sokoban import (
    ACTIONS,
    LEGEND,
    Board,
    board_split,
    LevelGenerationError,
    SokobanEnv,
    SokobanLevel,
    generate,
    levels,
    parse_action,
    render,
)
from sgsd.envs.sokoban_solver import random_policy, solve

ROOT = Path(__file__).resolve().parents[2]


def board(text: str) -> Board:
    return Board.from_text(text)


# A 6x6 room: the box one push right of the player, the target right of it.
PUSH_ONTO_TARGET = """
# # # # # #
# P X O _ #
# _ _ _ _ #
# _ _ _ _ #
# _ _ _ _ #
# # # # # #
"""
# Two boxes side by side, the player right of them; both targets below them.
TWO_BOXES = """
# # # # # #
# _ _ _ _ #
# _ X X P #
# _ O O _ #
# _ _ _ _ #
# # # # # #
"""
# A box in a corner: it can never reach its target.
CORNERED = """
# # # # # #
# X P _ _ #
# _ _ _ O #
# _ _ _ _ #
# _ _ _ _ #
# # # # # #
"""


def env_of(text: str, max_turns: int = 20) -> SokobanEnv:
    start = board(text)
    return SokobanEnv(SokobanLevel(seed=0, size=(start.height, start.width), boxes=len(start.boxes),
                                   max_turns=max_turns), board=start)


def ta_grid(structure, state) -> str:
    """TextArena's own arrays drawn cell by cell (0 wall, 1 floor, 2 target, 3/4 box, 5 player)."""
    rows = []
    for r in range(structure.shape[0]):
        cells = []
        for c in range(structure.shape[1]):
            target = structure[r, c] == 2
            if structure[r, c] == 0:
                cells.append("#")
            elif state[r, c] in (3, 4):
                cells.append("√" if target else "X")
            elif state[r, c] == 5:
                cells.append("S" if target else "P")
            else:
                cells.append("O" if target else "_")
        rows.append(" ".join(cells))
    return "\n".join(rows)


# ----------------------------------------------------------------------------- generation
def test_a_level_is_the_same_board_every_time_and_seeds_differ():
    chosen = levels("train", 12)
    first = [render(generate(level)) for level in chosen]
    sk._generate.cache_clear()  # generated again, not read from the cache
    assert [render(generate(level)) for level in chosen] == first
    assert len(set(first)) >= 10  # a few layouts may repeat in a 6x6 room, not most
    # the same seed in another size or box count is another level
    assert render(generate(SokobanLevel(chosen[0].seed, (7, 7), 2))) != first[0]


def test_generation_leaves_the_callers_random_states_alone():
    sk._generate.cache_clear()
    random.seed(1234)
    np.random.seed(99)
    before_random, before_numpy = random.getstate(), np.random.get_state()
    generate(SokobanLevel(seed=777, size=(7, 7), boxes=2))
    assert random.getstate() == before_random
    after_numpy = np.random.get_state()
    assert after_numpy[0] == before_numpy[0] and np.array_equal(after_numpy[1], before_numpy[1])
    assert after_numpy[2:] == before_numpy[2:]


def test_generation_from_several_threads_gives_the_serial_boards():
    chosen = levels("test", 8, size=(7, 7), boxes=1)
    serial = [render(generate(level)) for level in chosen]
    sk._generate.cache_clear()
    results: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, render(generate(chosen[i]))))
               for i in range(len(chosen))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(chosen))] == serial


def test_the_board_is_textarenas_room_for_the_documented_seed():
    from textarena.envs.Sokoban.utils import generate_room

    for level in levels("train", 5, size=(7, 7), boxes=2):
        structure, state, _ = generate_room(dim=level.size, num_steps=int(1.7 * 14), num_boxes=2,
                                            tries=sk.GENERATOR_TRIES, seed=level.seed * sk.GENERATION_ATTEMPTS)
        assert render(generate(level)) == ta_grid(structure, state)


def test_a_failed_attempt_moves_on_to_the_next_derived_seed():
    from textarena.envs.Sokoban.utils import generate_room

    level = SokobanLevel(seed=0, size=(6, 6), boxes=3)  # attempt 0 finds no room for this seed
    kwargs = {"dim": (6, 6), "num_steps": int(1.7 * 12), "num_boxes": 3, "tries": sk.GENERATOR_TRIES}
    with pytest.raises(RuntimeWarning):
        generate_room(**kwargs, seed=0)
    for attempt in range(1, sk.GENERATION_ATTEMPTS):
        try:
            structure, state, _ = generate_room(**kwargs, seed=attempt)
        except RuntimeWarning:
            continue
        break
    assert render(generate(level)) == ta_grid(structure, state)


def test_a_room_too_small_for_its_boxes_is_a_clear_error():
    with pytest.raises(LevelGenerationError, match=r"seed=3, size=5x5, boxes=6 .*fewer boxes or a larger room"):
        generate(SokobanLevel(seed=3, size=(5, 5), boxes=6))
    assert issubclass(LevelGenerationError, ValueError)


def test_unusable_generator_rooms_are_rejected():
    # PUSH_ONTO_TARGET in TextArena's codes: the fixed room, then the movable parts
    structure = np.array([[0] * 6, [0, 1, 1, 2, 1, 0], *[[0, 1, 1, 1, 1, 0]] * 3, [0] * 6])
    state = structure.copy()
    state[1, 1], state[1, 2] = 5, 4
    assert render(sk._board_of_room(structure, state, 1)) == render(board(PUSH_ONTO_TARGET))
    solved = structure.copy()
    solved[1, 1], solved[1, 3] = 5, 3  # the box already on its target
    assert sk._board_of_room(structure, solved, 1) is None
    assert sk._board_of_room(structure, state, 2) is None  # not the boxes asked for
    no_player = state.copy()
    no_player[1, 1] = 1
    assert sk._board_of_room(structure, no_player, 1) is None


def test_generated_levels_are_never_solved_at_the_start():
    for level in [*levels("train", 30), *levels("test", 10, size=(7, 7), boxes=2)]:
        start = generate(level)
        assert not start.solved and start.boxes_on_target < level.boxes
        assert len(start.boxes) == len(start.targets) == level.boxes


# ----------------------------------------------------------------------------- rendering
def test_render_uses_textarenas_symbols_and_reads_back():
    text = """
    # # # # # # #
    # P _ O X √ #
    # _ _ _ _ _ #
    # # # # # # #
    """
    b = board(text)
    assert render(b) == "\n".join(line.strip() for line in text.strip().splitlines())
    on_target = Board(b.height, b.width, b.walls, b.targets, b.boxes, (1, 3))  # the player on the target
    assert render(on_target).splitlines()[1] == "# _ _ S X √ #"
    assert Board.from_text(render(on_target)) == on_target
    assert board("#####\n#PXO#\n#####") == board("# # # # #\n# P X O #\n# # # # #")  # unspaced too
    for symbol in ("#", "_", "O", "X", "√", "P", "S"):
        assert any(line.startswith(symbol + " ") for line in LEGEND.splitlines()), symbol


def test_generated_grids_hold_only_legend_symbols():
    for level in levels("test", 10, size=(7, 7), boxes=2):
        rows = [row.split(" ") for row in render(generate(level)).splitlines()]
        assert len(rows) == 7 and all(len(row) == 7 for row in rows)
        cells = [c for row in rows for c in row]
        assert set(cells) <= {"#", "_", "O", "X", "√", "P", "S"}
        assert rows[0] == rows[-1] == ["#"] * 7 and all(row[0] == row[-1] == "#" for row in rows)
        assert cells.count("P") + cells.count("S") == 1
        assert cells.count("X") + cells.count("√") == 2 == cells.count("O") + cells.count("√") + cells.count("S")


@pytest.mark.parametrize("text, message", [
    ("# # #\n# P\n# # #", "equal length"),
    ("# # #\n# Q #\n# # #", "unknown symbol 'Q' at row 1, column 1"),
    ("# # # #\n# X O #\n# # # #", "exactly one player"),
    ("# # # # #\n# P X X O #\n", "equal length"),
    ("# # # # #\n# P X _ #\n# # # # #", "as many targets as boxes"),
])
def test_bad_boards_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        Board.from_text(text)


def test_the_task_prompt_states_rules_legend_format_limit_and_grid():
    level = levels("test", 1, max_turns=17)[0]
    env = SokobanEnv(level)
    prompt = env.task_prompt()
    assert prompt == SokobanEnv(level).task_prompt()  # deterministic for a level
    assert prompt.endswith(render(generate(level)))
    assert LEGEND in prompt and "<answer>left</answer>" in prompt and "17 turns" in prompt
    assert "pull" in prompt and "wall" in prompt
    assert "{" not in prompt  # plain text, nothing formatted into it
    two = SokobanEnv(SokobanLevel(level.seed, (7, 7), 2, 40)).task_prompt()
    assert "all 2 boxes onto the 2 targets" in two and "40 turns" in two


# ----------------------------------------------------------------------------- replies
@pytest.mark.parametrize("reply, action", [
    ("<answer>up</answer>", "up"),
    ("I go left.\n<answer> Left </answer>", "left"),
    ("<ANSWER>DOWN</ANSWER>", "down"),
    ("<answer>up</answer> no wait <answer>right</answer>", "right"),  # the last tag wins
    ("<answer>right</answer> then <answer>jump</answer>", None),  # the last tag is no move
    ("<think>maybe <answer>up</answer></think>So: <answer>down</answer>", "down"),
    ("<think>only thinking <answer>up</answer></think>", None),
    ("reasoning without an opening tag <answer>up</answer></think><answer>left</answer>", "left"),
    ("plan done </think> answer given: <answer>left</answer>", "left"),
    ("<answer>left</answer> <think>cut off mid-thought <answer>up</answer>", "left"),
    ("<think>never closed <answer>up</answer>", None),
    ("<answer>up down</answer>", None),
    ("<answer>up.</answer>", None),
    ("<answer></answer>", None),
    ("<answer>w</answer>", None),
    ("up", None),
    ("[up]", None),
    ("<answer>up", None),
    ("<answer>left <answer>up</answer>", "up"),
    ("", None),
])
def test_parse_action(reply, action):
    assert parse_action(reply) == action


def test_parse_action_refuses_non_strings():
    assert parse_action(None) is None  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- step rules
def test_a_reply_without_a_move_is_invalid_and_repeats_the_format_and_grid():
    env = env_of(PUSH_ONTO_TARGET)
    step = env.step("I think I should go right.")
    assert (step.valid, step.action, step.moved, step.pushed, step.done) == (False, None, False, False, False)
    assert "no valid move" in step.observation and "<answer>up</answer>" in step.observation
    assert render(board(PUSH_ONTO_TARGET)) in step.observation and "Turns left: 19." in step.observation
    assert env.board == board(PUSH_ONTO_TARGET) and env.turns == 1


def test_walking_into_a_wall_is_invalid_and_the_player_stays():
    env = env_of(PUSH_ONTO_TARGET)
    step = env.step("<answer>up</answer>")
    assert (step.valid, step.action, step.moved, step.pushed) == (False, "up", False, False)
    assert "cannot move up" in step.observation and "wall" in step.observation
    assert env.board == board(PUSH_ONTO_TARGET)
    assert env.outcome().invalid_actions == 1


def test_a_box_with_a_box_or_a_wall_behind_it_cannot_be_pushed():
    env = env_of(TWO_BOXES)
    step = env.step("<answer>left</answer>")  # box at (2,3), another box behind it
    assert (step.valid, step.moved, step.pushed) == (False, False, False)
    assert "cannot move left" in step.observation and "cannot be pushed" in step.observation
    assert env.board == board(TWO_BOXES)
    cornered = env_of(CORNERED)
    step = cornered.step("<answer>left</answer>")  # the box is against the wall
    assert not step.valid and "cannot be pushed" in step.observation and cornered.board == board(CORNERED)


def test_a_plain_move_and_a_push_onto_a_target():
    env = env_of(TWO_BOXES)
    step = env.step("<answer>up</answer>")
    assert (step.valid, step.moved, step.pushed, step.done) == (True, True, False, False)
    assert step.observation.startswith("You moved up.") and env.board.player == (1, 4)
    env.step("<answer>left</answer>")
    step = env.step("<answer>down</answer>")  # pushes the right box onto its target
    assert (step.valid, step.moved, step.pushed, step.done) == (True, True, True, False)
    assert "pushed a box" in step.observation and "Boxes on targets: 1/2." in step.observation
    assert "√" in step.observation and render(env.board) in step.observation and "Turns left: 17." in step.observation
    assert env.board.player == (2, 3) and env.board.boxes == {(2, 2), (3, 3)}
    assert env.outcome().to_dict() == {"solved": False, "boxes_on_target": 0.5, "turns": 3, "invalid_actions": 0,
                                       "invalid_rate": 0.0}


def test_solving_ends_the_episode_and_a_done_episode_cannot_step():
    env = env_of(PUSH_ONTO_TARGET, max_turns=2)
    env.step("<answer>up</answer>")
    step = env.step("<answer>right</answer>")  # solved on the last turn: solved, not out of turns
    assert step.done and env.done and step.pushed
    assert "Solved" in step.observation and "turn limit" not in step.observation
    assert "Boxes on targets: 1/1." in step.observation
    outcome = env.outcome()
    assert (outcome.solved, outcome.boxes_on_target, outcome.turns, outcome.invalid_actions) == (True, 1.0, 2, 1)
    assert outcome.invalid_rate == 0.5
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("<answer>left</answer>")


def test_the_turn_limit_ends_an_unsolved_episode():
    env = env_of(TWO_BOXES, max_turns=3)
    for reply in ("<answer>up</answer>", "nothing", "<answer>left</answer>"):
        assert not env.done
        step = env.step(reply)
    assert step.done and env.done and env.turns == 3
    assert "turn limit (3 turns) is reached" in step.observation and "Solved" not in step.observation
    assert env.outcome().to_dict() == {"solved": False, "boxes_on_target": 0.0, "turns": 3, "invalid_actions": 1,
                                       "invalid_rate": 1 / 3}
    with pytest.raises(RuntimeError):
        env.step("<answer>down</answer>")


def test_outcome_values_are_plain_python():
    env = env_of(TWO_BOXES)
    assert env.outcome().invalid_rate == 0.0  # no turns yet
    env.step("x")
    out = env.outcome().to_dict()
    assert [type(out[k]) for k in ("solved", "boxes_on_target", "turns", "invalid_actions", "invalid_rate")] == \
        [bool, float, int, int, float]
    json.dumps(out)


def test_a_wall_bump_on_generated_levels():
    bumped = 0
    for level in levels("train", 10):
        env = SokobanEnv(level)
        start = env.board
        r, c = start.player
        blocked = [a for a in ACTIONS if (r + sk._DELTAS[a][0], c + sk._DELTAS[a][1]) in start.walls]
        if not blocked:  # the player may start with floor all round
            continue
        step = env.step(f"<answer>{blocked[0]}</answer>")
        assert not step.valid and not step.moved and env.board == start and "a wall is in the way" in step.observation
        bumped += 1
    assert bumped >= 5


def test_a_board_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="the level is 7x7 with 1"):
        SokobanEnv(SokobanLevel(0, (7, 7)), board=board(PUSH_ONTO_TARGET))


# ----------------------------------------------------------------------------- solver
def test_the_solver_finds_shortest_solutions_of_hand_made_boards():
    assert solve(board(PUSH_ONTO_TARGET)) == ["right"]
    moves = solve(board(TWO_BOXES))
    # 1. up, left, down (right box onto (3,3)); 2. walk round to above the left box and push it down
    assert moves is not None and len(moves) == 6
    env = env_of(TWO_BOXES)
    for move in moves:
        step = env.step(f"<answer>{move}</answer>")
        assert step.valid
    assert env.done and env.outcome().solved
    assert solve(board(CORNERED)) is None  # no solution exists
    assert solve(board(TWO_BOXES), max_states=3) is None  # not within the budget
    solved = Board.from_text("# # # # #\n# P √ _ #\n# # # # #")
    assert solve(solved) == []
    with pytest.raises(ValueError, match="max_states"):
        solve(board(TWO_BOXES), max_states=0)


@pytest.mark.parametrize("size, boxes, count", [((6, 6), 1, 30), ((7, 7), 2, 10)])
def test_generated_levels_are_solved_by_replaying_the_solver(size, boxes, count):
    for level in levels("test", count, size=size, boxes=boxes, max_turns=200):
        moves = solve(level)
        assert moves, level
        env = SokobanEnv(level)
        for i, move in enumerate(moves, 1):
            assert not env.done
            step = env.step(f"Pushing on. <answer>{move}</answer>")
            assert step.valid and step.done == (i == len(moves))
        assert env.outcome().to_dict() == {"solved": True, "boxes_on_target": 1.0, "turns": len(moves),
                                           "invalid_actions": 0, "invalid_rate": 0.0}


# ----------------------------------------------------------------------------- random policy
def test_the_random_policy_floor():
    chosen = levels("test", 25)
    floor = random_policy(chosen, seed=0)
    assert floor == random_policy(chosen, seed=0)  # deterministic for a seed
    assert floor != random_policy(chosen, seed=1)
    assert floor["episodes"] == 25
    for key in ("success_rate", "boxes_on_target", "invalid_rate"):
        assert 0.0 <= floor[key] <= 1.0
    assert floor["success_rate"] == floor["boxes_on_target"]  # one box: solved iff on target
    assert 0 < floor["success_rate"] < 1 and 0 < floor["invalid_rate"] < 1  # random, not hopeless, not perfect
    assert 1 <= floor["turns"] <= 20
    with pytest.raises(ValueError, match="at least one level"):
        random_policy([], seed=0)


# ----------------------------------------------------------------------------- levels and specs
def test_train_and_test_boards_are_disjoint_across_families():
    """Split by start board, not by seed: small rooms repeat layouts across seeds, so a test
    board must never be one a training level starts from (of any family)."""
    chosen = {(split, family): levels(split, 300 if split == "train" else 30, seed=family)
              for split in ("train", "test") for family in (0, 1)}
    boards = {key: {render(generate(level)) for level in group} for key, group in chosen.items()}
    train = boards["train", 0] | boards["train", 1]
    test = boards["test", 0] | boards["test", 1]
    assert len(train) > 150 and len(test) > 20 and not train & test
    assert all(board_split(generate(level)) == split for (split, _), group in chosen.items() for level in group)
    seeds = [level.seed for group in chosen.values() for level in group]
    assert len(seeds) == len(set(seeds))  # families own disjoint seed ranges
    assert levels("train", 5) == levels("train", 8)[:5]
    assert levels("test", 3, max_turns=7)[0].seed == levels("test", 3)[0].seed  # turn limits do not move boards


def test_a_family_without_enough_levels_of_a_split_says_so(monkeypatch):
    monkeypatch.setattr(sk, "SPLIT_BLOCK", 40)  # the same rule at a size a test can enumerate
    assert len(levels("train", 20)) == 20
    with pytest.raises(ValueError, match="family 0 holds only .* test levels .* asked for 40"):
        levels("test", 40)
    with pytest.raises(ValueError, match="count must be in 1..40, got 41"):
        levels("train", 41)


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "val", "count": 3}, "split must be one of train, test"),
    ({"split": "train", "count": 0}, "count must be in 1..1000000"),
    ({"split": "train", "count": 2, "seed": -1}, "seed must be >= 0"),
    ({"split": "train", "count": 2, "size": (6, 13)}, "size width must be in 5..12"),
    ({"split": "train", "count": 2, "boxes": 7}, "boxes must be in 1..6"),
])
def test_levels_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        levels(**kwargs)


def test_specs_round_trip_and_accept_numpy_and_tuples():
    level = SokobanLevel(seed=1000003, size=(7, 6), boxes=2, max_turns=40)
    spec = level.to_spec()
    assert spec == {"name": "sokoban", "seed": 1000003, "size": [7, 6], "boxes": 2, "max_turns": 40}
    assert json.loads(json.dumps(spec)) == spec
    assert SokobanLevel.from_spec(spec) == level == level_from_spec(spec)
    numpy_spec = {"name": "sokoban", "seed": np.int64(1000003), "size": np.array([7, 6]), "boxes": np.int32(2),
                  "max_turns": np.int64(40)}
    parsed = SokobanLevel.from_spec(numpy_spec)
    assert parsed == level and type(parsed.seed) is int and parsed.size == (7, 6) and type(parsed.size[0]) is int
    assert SokobanLevel.from_spec({"seed": 5, "size": (6, 6)}) == SokobanLevel(5)  # defaults, no name
    assert hash(SokobanLevel(5, [6, 6])) == hash(SokobanLevel(5))


@pytest.mark.parametrize("spec, message", [
    ({"name": "sokoban"}, "needs a 'seed'"),
    ({"seed": -1}, "seed must be >= 0, got -1"),
    ({"seed": True}, "seed must be an integer, got True"),
    ({"seed": 1.0}, "seed must be an integer, got 1.0"),
    ({"seed": "3"}, "seed must be an integer"),
    ({"seed": 1, "size": [4, 6]}, "size height must be in 5..12, got 4"),
    ({"seed": 1, "size": [6, 13]}, "size width must be in 5..12, got 13"),
    ({"seed": 1, "size": [6]}, r"size must be \[height, width\]"),
    ({"seed": 1, "size": "6x6"}, r"size must be \[height, width\]"),
    ({"seed": 1, "size": [6.0, 6]}, "size height must be an integer"),
    ({"seed": 1, "boxes": 0}, "boxes must be in 1..6, got 0"),
    ({"seed": 1, "boxes": 7}, "boxes must be in 1..6, got 7"),
    ({"seed": 1, "max_turns": 0}, "max_turns must be in 1..200, got 0"),
    ({"seed": 1, "max_turns": 201}, "max_turns must be in 1..200, got 201"),
    ({"seed": 1, "turns": 5}, "unknown sokoban spec field"),
    ({"name": "chess", "seed": 1}, "spec name must be 'sokoban'"),
])
def test_from_spec_names_the_bad_field(spec, message):
    with pytest.raises(ValueError, match=message):
        SokobanLevel.from_spec(spec)


def test_make_env_dispatches_on_the_name():
    assert ENV_NAMES == ("sokoban",)
    level = levels("test", 1)[0]
    env = make_env(level.to_spec())
    assert isinstance(env, SokobanEnv) and env.level == level and not env.done and env.turns == 0
    with pytest.raises(ValueError, match=r"unknown env name 'chess'; known: sokoban"):
        make_env({"name": "chess", "seed": 1})
    with pytest.raises(ValueError, match="unknown env name None"):
        make_env({"seed": 1})
    with pytest.raises(ValueError, match="must be a mapping"):
        make_env([("name", "sokoban")])
    assert ACTIONS == ("up", "down", "left", "right")


def test_the_library_stays_light():
    code = ("import sys, sgsd.envs, sgsd.envs.data, sgsd.envs.sokoban\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'verl', 'ray', 'vllm', 'textarena', 'pyarrow', 'torch'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
