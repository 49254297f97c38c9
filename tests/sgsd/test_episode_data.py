"""sgsd/envs/data.py and prepare_data.py --dataset sokoban: levels -> verl's RL parquet rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgsd.envs import make_env
from sgsd.envs.data import EPISODE_AGENT, episode_rows, episode_schema, episode_spec, is_episode
from sgsd.envs.sokoban import SokobanEnv, SokobanLevel, levels
from sgsd.envs.sokoban_solver import solve
from sgsd.verl_data import write_parquet

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["data_source", "prompt", "ability", "agent_name", "reward_model", "extra_info"]


def _load_cli():
    # Loaded from its file, the way users run it: verl's wheel owns the top-level `scripts`.
    spec = importlib.util.spec_from_file_location("sgsd_prepare_data_sokoban", ROOT / "scripts" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = _load_cli()


def test_episode_rows_layout():
    chosen = levels("train", 3, size=(7, 7), boxes=2, max_turns=30)
    rows = episode_rows(chosen, "train")
    assert EPISODE_AGENT == "sgsd_episode"
    for i, (row, level) in enumerate(zip(rows, chosen)):
        task = SokobanEnv(level).task_prompt()
        # the privileged answer (OPSD's teacher): a shortest solution, which solves the level
        solution = row["reward_model"]["ground_truth"].split(", ")
        env = SokobanEnv(level)
        for move in solution:
            env.step("<answer>" + move + "</answer>")
        assert env.outcome().solved and env.turns == len(solve(level))
        assert row == {
            "data_source": "sokoban",
            "prompt": [{"role": "user", "content": task}],
            "ability": "agent",
            "agent_name": "sgsd_episode",
            "reward_model": {"style": "env", "ground_truth": ", ".join(solution)},
            "extra_info": {"problem": task, "index": i, "split": "train",
                           "env": {"name": "sokoban", "seed": level.seed, "size": [7, 7], "boxes": 2,
                                   "max_turns": 30}},
        }
    assert episode_rows(chosen[:1], "test", data_source="sokoban_7x7")[0]["data_source"] == "sokoban_7x7"


def test_rows_survive_the_parquet_round_trip(tmp_path):
    chosen = levels("test", 4)
    rows = episode_rows(chosen, "test")
    out = write_parquet(rows, tmp_path / "sokoban_test.parquet")
    table = pq.read_table(out)
    assert table.column_names == COLUMNS and table.schema.equals(episode_schema())
    back = table.to_pylist()
    assert back == rows
    for row, level in zip(back, chosen):
        assert is_episode(row["extra_info"])
        assert SokobanLevel.from_spec(episode_spec(row["extra_info"])) == level
        assert make_env(row["extra_info"]["env"]).task_prompt() == row["prompt"][0]["content"]
    # pandas (verl's older readers) gives the size as a numpy array: still the same level
    frame = pq.read_table(out).to_pandas()
    assert [episode_spec(e) for e in frame["extra_info"]] == [level.to_spec() for level in chosen]
    # an explicit schema writes the same file
    assert pq.read_table(write_parquet(rows, tmp_path / "x.parquet", schema=episode_schema())).to_pylist() == rows


def test_the_writer_refuses_mixed_rows(tmp_path):
    from sgsd.datasets import Problem
    from sgsd.verl_data import to_verl_rows

    math = to_verl_rows([Problem("1+1?", "2")], "m", "train")
    episodes = episode_rows(levels("train", 1), "train")
    with pytest.raises(ValueError, match="mix episodes"):
        write_parquet(math + episodes, tmp_path / "mixed.parquet")
    assert not (tmp_path / "mixed.parquet").exists()
    # a math file keeps its own columns (no agent_name)
    assert pq.read_table(write_parquet(math, tmp_path / "m.parquet")).column_names == \
        ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    bad = episode_rows(levels("train", 1), "train")
    bad[0]["extra_info"]["env"]["seed"] = "zero"
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_parquet(bad, tmp_path / "bad.parquet")


@pytest.mark.parametrize("extra_info, expected", [
    (None, False), ({}, False), ({"problem": "x"}, False), ({"env": "sokoban"}, False), ("env", False),
    ({"env": {"name": "sokoban", "seed": 1}}, True),
])
def test_is_episode(extra_info, expected):
    assert is_episode(extra_info) is expected


def test_episode_spec_checks_the_level():
    assert episode_spec({"env": {"name": "sokoban", "seed": 4}}) == SokobanLevel(4).to_spec()
    with pytest.raises(ValueError, match="not an episode row"):
        episode_spec({"problem": "1+1?"})
    with pytest.raises(ValueError, match="unknown env name 'chess'"):
        episode_spec({"env": {"name": "chess", "seed": 4}})
    with pytest.raises(ValueError, match="boxes must be in 1..6"):
        episode_spec({"env": {"name": "sokoban", "seed": 4, "boxes": 9}})


def test_episode_rows_refuses_bad_input():
    with pytest.raises(ValueError, match="split must be one of train, test"):
        episode_rows(levels("train", 1), "val")
    with pytest.raises(ValueError, match="level 1 is a dict"):
        episode_rows([SokobanLevel(1), {"seed": 2}], "train")
    with pytest.raises(ValueError, match="data_source"):
        episode_rows(levels("train", 1), "train", data_source="")


# ----------------------------------------------------------------------------- prepare_data.py
def test_prepare_data_writes_both_sokoban_files(tmp_path, capsys):
    argv = ["--dataset", "sokoban", "--output-dir", str(tmp_path), "--train-count", "12", "--test-count", "6",
            "--size", "7x7", "--boxes", "2", "--max-turns", "30", "--seed", "1"]
    assert CLI.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sokoban_test.parquet", "sokoban_train.parquet"]
    train = pq.read_table(tmp_path / "sokoban_train.parquet").to_pylist()
    test = pq.read_table(tmp_path / "sokoban_test.parquet").to_pylist()
    assert train == episode_rows(levels("train", 12, size=(7, 7), boxes=2, max_turns=30, seed=1), "train")
    assert test == episode_rows(levels("test", 6, size=(7, 7), boxes=2, max_turns=30, seed=1), "test")
    assert not {r["extra_info"]["env"]["seed"] for r in train} & {r["extra_info"]["env"]["seed"] for r in test}
    out = capsys.readouterr().out
    assert f"wrote 12 rows (sokoban, split train) to {tmp_path / 'sokoban_train.parquet'}" in out
    assert "solver: 18/18 levels solved" in out
    assert "random policy on the 6 test levels: success " in out
    assert all(solve(SokobanLevel.from_spec(r["extra_info"]["env"])) for r in test)


def test_prepare_data_sokoban_defaults(tmp_path):
    args = CLI.parse_args(["--dataset", "sokoban"])
    assert (args.size, args.boxes, args.max_turns, args.train_count, args.test_count) == ((6, 6), 1, 20, 3200, 100)
    # sgsd eval's built-in levels are the default test file's
    from sgsd.eval.episodes import SOKOBAN_LEVELS

    assert levels(**SOKOBAN_LEVELS) == levels("test", args.test_count, size=args.size, boxes=args.boxes,
                                              max_turns=args.max_turns)


@pytest.mark.parametrize("argv", [
    ["--dataset", "sokoban", "--output", "x.parquet"],
    ["--dataset", "sokoban", "--limit", "3"],
    ["--dataset", "sokoban", "--shuffle"],
    ["--dataset", "sokoban", "--size", "6by6"],
    ["--dataset", "sokoban", "--train-count", "0"],
    ["--dataset", "aime24", "--boxes", "2"],
    ["--dataset", "aime24", "--output-dir", "x"],
])
def test_prepare_data_sokoban_argument_mistakes_exit_2(argv):
    with pytest.raises(SystemExit) as stop:
        CLI.main(argv)
    assert stop.value.code == 2


def test_prepare_data_sokoban_bad_level_exits_2_with_one_line(tmp_path, capsys):
    assert CLI.main(["--dataset", "sokoban", "--output-dir", str(tmp_path), "--size", "4x6"]) == 2
    assert capsys.readouterr().err == "prepare_data.py: error: size height must be in 5..12, got 4\n"
    assert list(tmp_path.iterdir()) == []
