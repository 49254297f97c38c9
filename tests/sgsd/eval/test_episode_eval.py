"""Agent episodes in ``sgsd eval`` (:mod:`sgsd.eval.episodes`, :mod:`sgsd.envs.play`): Sokoban levels
played in lockstep by the tiny Qwen3 (real transformers client) and by a client replying the BFS
solver's moves, metrics whose values are known, resuming and refused reruns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sgsd.envs.sokoban import SokobanEnv
from sgsd.envs.sokoban_solver import solve
from sgsd.envs.play import play_episodes
from sgsd.envs.sokoban import levels
from sgsd.eval.episodes import SOKOBAN_LEVELS
from sgsd.eval.report import compare_runs
from sgsd.eval.runner import EvalConfig, EvalError, evaluate
from sgsd.llm import GenerationSettings, ScriptedClient
from sgsd.llm.base import as_messages
from tests.sgsd.eval.helpers import one_torch_thread, sample_rows, write_problems

SOLVER = {"model": "bfs-solver"}
GARBAGE = "I am not sure where to go."


def builtin_levels(count: int) -> list:
    """The first levels of the ``sokoban`` shorthand."""
    return levels(**SOKOBAN_LEVELS)[:count]


def solutions(count: int) -> dict[str, list[str]]:
    """Task prompt -> the solver's moves, for the first ``count`` built-in levels."""
    return {SokobanEnv(level).task_prompt(): solve(level) for level in builtin_levels(count)}


def solver_reply(moves: dict[str, list[str]]):
    """The reply a perfect player gives to a conversation: the next move of the solution."""
    def reply(conversation: Any) -> str:
        turn = sum(m["role"] == "assistant" for m in conversation)
        return f"Next move. <answer>{moves[conversation[0]['content']][turn]}</answer>"

    return reply


class RecordingClient(ScriptedClient):
    """A scripted client that keeps each call's batch, and raises KeyboardInterrupt on call ``stop_at``."""

    def __init__(self, reply, stop_at: int | None = None):
        super().__init__(reply)
        self.calls: list[list[Any]] = []
        self.stop_at = stop_at

    def generate(self, prompts, settings=None):
        if self.stop_at is not None and len(self.calls) + 1 == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append([as_messages(p) for p in prompts])
        return super().generate(prompts, settings)


def _evaluate(out: Path, client, config: EvalConfig, datasets=("sokoban",), model=SOLVER):
    return evaluate(out, None, list(datasets), config, client=client, model_identity=model, progress=False)


# ----------------------------------------------------------------------------- play_episodes
def test_play_episodes_batches_every_running_episode_in_one_call_per_round():
    moves = solutions(5)
    lengths = [len(m) for m in moves.values()]
    assert len(set(lengths)) > 1  # episodes end at different rounds, or the test shows nothing
    specs = [level.to_spec() for level in builtin_levels(5)]
    client = RecordingClient(solver_reply(moves))
    finished = []
    plays = play_episodes(client, specs, GenerationSettings(seed=7, max_new_tokens=16), on_episode=finished.append)

    assert len(client.calls) == max(lengths)
    tasks = list(moves)
    for r, batch in enumerate(client.calls):
        running = [i for i, length in enumerate(lengths) if length > r]
        assert [conv[0]["content"] for conv in batch] == [tasks[i] for i in running]  # spec order
        assert all(len(conv) == 2 * r + 1 and conv[-1]["role"] == "user" for conv in batch)
    assert [s.seed for s in client.settings] == [7 + r * 5 for r in range(max(lengths))]
    # saved as each ends: shorter episodes first
    assert [p.index for p in finished] == sorted(range(5), key=lambda i: (lengths[i], i))
    assert [p.index for p in plays] == list(range(5)) and [p.spec for p in plays] == specs
    for play, length in zip(plays, lengths):
        assert play.outcome == {"solved": True, "boxes_on_target": 1.0, "turns": length, "invalid_actions": 0,
                                "invalid_rate": 0.0}
        assert len(play.replies) == length and play.failed == 0
        assert f"Turn {length}\n" in play.transcript and play.transcript.endswith("0 invalid actions)")
    # the second round's conversation: the task, the first reply, the observation after it
    second = client.calls[1][0]
    assert second[1] == {"role": "assistant", "content": plays[0].replies[0]}
    assert second[2]["content"].startswith("You moved ") and "Turns left: 19." in second[2]["content"]


def test_a_failed_request_is_played_as_an_invalid_reply():
    moves = solutions(1)
    (task,) = moves
    solver = solver_reply(moves)
    # the first turn fails; from then on the solver plays (its turn count includes the empty reply)
    client = ScriptedClient(lambda conv: None if len(conv) == 1 else solver(conv[:1] + conv[3:]))
    (play,) = play_episodes(client, [builtin_levels(1)[0].to_spec()])
    length = len(moves[task])
    assert play.replies[0] == "" and play.failed == 1 and play.errors[0].startswith("scripted")
    assert play.outcome["solved"] and play.outcome["turns"] == length + 1
    assert play.outcome["invalid_actions"] == 1 and play.outcome["invalid_rate"] == pytest.approx(1 / (length + 1))
    with pytest.raises(ValueError, match="episode 1: bad env spec .* unknown env name 'chess'"):
        play_episodes(client, [builtin_levels(1)[0].to_spec(), {"name": "chess"}])


# ----------------------------------------------------------------------------- evaluation
def test_the_solver_solves_every_level(tmp_path):
    moves = solutions(4)
    result = _evaluate(tmp_path / "out", ScriptedClient(solver_reply(moves)), EvalConfig(samples=2, limit=4))
    entry = result.summary["datasets"]["sokoban"]
    assert result.complete and result.generated == 8
    assert (entry["levels"], entry["episodes"], entry["pending_episodes"]) == (4, 8, 0)
    assert entry["success_rate"] == 1.0 and entry["pass@2"] == 1.0 and entry["boxes_on_target"] == 1.0
    assert entry["invalid_rate"] == 0.0 and entry["failed_replies"] == 0
    assert entry["mean_turns"] == pytest.approx(sum(map(len, moves.values())) / 4)
    rows = sample_rows(tmp_path / "out", "sokoban")
    assert sorted((r["problem_index"], r["sample"]) for r in rows) == [(p, j) for p in range(4) for j in range(2)]
    assert [r["env"] for r in sorted(rows, key=lambda r: r["index"])][::2] == [
        level.to_spec() for level in builtin_levels(4)]
    assert "| Sokoban | 4 | 8 | 100.0 | 100.0 | 100.0 |" in (tmp_path / "out" / "summary.md").read_text()


def test_metrics_average_over_levels_of_their_episodes(tmp_path):
    """Episode 0 of each level is played by the solver, episode 1 never gives a move."""
    moves = solutions(3)
    solver = solver_reply(moves)
    first_asked: set[str] = set()

    def half(conv: Any) -> str:
        if len(conv) == 1:  # round 1: the level's two episodes are still the same conversation
            if conv[0]["content"] in first_asked:
                return GARBAGE
            first_asked.add(conv[0]["content"])
            return solver(conv)
        return GARBAGE if conv[1]["content"] == GARBAGE else solver(conv)

    result = _evaluate(tmp_path / "out", ScriptedClient(half), EvalConfig(samples=2, limit=3, k=1))
    entry = result.summary["datasets"]["sokoban"]
    turns = [len(m) for m in moves.values()]
    assert entry["success_rate"] == pytest.approx(0.5) and entry["pass@1"] == pytest.approx(0.5)
    assert entry["boxes_on_target"] == pytest.approx(0.5)  # one box per level: on its target or not
    assert entry["mean_turns"] == pytest.approx(sum((t + 20) / 2 for t in turns) / 3)  # 20: the turn limit
    assert entry["invalid_rate"] == pytest.approx(0.5)
    by_sample = {(r["problem_index"], r["sample"]): r["outcome"] for r in sample_rows(tmp_path / "out", "sokoban")}
    assert [by_sample[(p, 0)]["solved"] for p in range(3)] == [True] * 3
    assert [by_sample[(p, 1)]["invalid_actions"] for p in range(3)] == [20] * 3


def test_an_interrupted_evaluation_plays_only_the_missing_episodes(tmp_path):
    moves = solutions(6)
    lengths = [len(m) for m in moves.values()]
    stop_at = min(lengths) + 1  # the shortest episodes have ended (and been saved), the others run
    assert max(lengths) >= stop_at
    config, out = EvalConfig(samples=1, limit=6), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _evaluate(out, RecordingClient(solver_reply(moves), stop_at=stop_at), config)
    ended = [i for i, length in enumerate(lengths) if length < stop_at]
    assert sorted(r["index"] for r in sample_rows(out, "sokoban")) == ended

    rerun = RecordingClient(solver_reply(moves))
    result = _evaluate(out, rerun, config)
    tasks = list(moves)
    assert [conv[0]["content"] for conv in rerun.calls[0]] == [tasks[i] for i in range(6) if i not in ended]
    assert result.generated == 6 - len(ended) and result.complete
    rows = sample_rows(out, "sokoban")
    assert sorted(r["index"] for r in rows) == list(range(6))  # each episode once
    entry = result.summary["datasets"]["sokoban"]
    assert entry["episodes"] == 6 and entry["success_rate"] == 1.0 and entry["pending_episodes"] == 0
    nothing = RecordingClient(solver_reply(moves))
    assert _evaluate(out, nothing, config).generated == 0 and nothing.calls == []


def test_a_rerun_with_other_settings_is_refused_and_loses_nothing(tmp_path):
    out = tmp_path / "out"
    _evaluate(out, ScriptedClient(solver_reply(solutions(2))), EvalConfig(samples=1, limit=2))
    saved = (out / "sokoban" / "samples.jsonl").read_bytes()
    with pytest.raises(EvalError, match=r"sampling\.temperature 1\.0 there, 0\.5 here"):
        _evaluate(out, ScriptedClient([]), EvalConfig(samples=1, limit=2, temperature=0.5))
    with pytest.raises(EvalError, match=r"model\.model 'bfs-solver' there, 'other' here"):
        _evaluate(out, ScriptedClient([]), EvalConfig(samples=1, limit=2), model={"model": "other"})
    with pytest.raises(EvalError, match=r"problems 2 there, 3 here"):
        _evaluate(out, ScriptedClient([]), EvalConfig(samples=1, limit=3))
    assert (out / "sokoban" / "samples.jsonl").read_bytes() == saved
    assert json.loads((out / "summary.json").read_text())["datasets"]["sokoban"]["episodes"] == 2


def test_math_and_episode_datasets_share_a_run(tmp_path):
    moves = solutions(2)
    solver = solver_reply(moves)
    client = ScriptedClient(lambda prompt: "\\boxed{1}" if isinstance(prompt, str) else solver(prompt))
    data = write_problems(tmp_path / "toy.jsonl", ["1", "2"])
    result = _evaluate(tmp_path / "out", client, EvalConfig(samples=1, limit=2), datasets=(str(data), "sokoban"))
    assert result.summary["datasets"]["toy"]["avg@1"] == 0.5  # math as before: one of two right
    assert result.summary["average"] == {"avg@1": 0.5, "success_rate": 1.0}
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| toy | 2 | 2 | 50.0 |" in text and "| Sokoban | 2 | 2 | 100.0 |" in text
    table = compare_runs([tmp_path / "out"], metric="success_rate")
    assert table.columns == ("Sokoban", "toy", "Avg.") and table.values == ((1.0, None, None),)
    with pytest.raises(EvalError, match="--skills .* sokoban is an episode dataset"):
        _evaluate(tmp_path / "other", client, EvalConfig(samples=1, limit=1, skills="qwen3_1.7b"))


def _episode_file(path: Path, count: int, max_turns: int) -> Path:
    from sgsd.envs.data import episode_rows
    from sgsd.verl_data import write_parquet

    return write_parquet(episode_rows(levels("test", count, max_turns=max_turns), "test"), path)


def test_an_episode_file_whose_prompt_is_not_its_level_is_refused(tmp_path):
    from sgsd.envs.data import episode_rows
    from sgsd.verl_data import write_parquet

    rows = episode_rows(levels("test", 3), "test")
    rows[1]["prompt"] = [{"role": "user", "content": rows[1]["prompt"][0]["content"].replace("Sokoban", "a game")}]
    write_parquet(rows, tmp_path / "edited.parquet")
    with pytest.raises(EvalError, match=r"edited\.parquet: row 2: its prompt is not the task prompt of its level"):
        _evaluate(tmp_path / "out", ScriptedClient([]), EvalConfig(samples=1),
                  datasets=(str(tmp_path / "edited.parquet"),))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the tiny model
def test_the_tiny_model_plays_an_episode_file_through_the_cli(tmp_path, tiny_model_dir, capsys):
    from sgsd.cli import main

    data = _episode_file(tmp_path / "sokoban_test.parquet", count=3, max_turns=2)
    out = tmp_path / "out"
    args = ["eval", "--model", str(tiny_model_dir), "--datasets", str(data), "--limit", "2", "--samples", "2",
            "--max-new-tokens", "6", "--no-thinking", "--backend", "transformers", "--quiet", "-o", str(out)]
    with one_torch_thread():
        assert main(args) == 0
    assert "| sokoban_test | 2 | 4 |" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["datasets"]["sokoban_test"]
    assert summary["complete"] and summary["backend"] == "transformers"
    assert (entry["levels"], entry["episodes"], entry["pending_episodes"]) == (2, 4, 0)
    for key in ("success_rate", "boxes_on_target", "invalid_rate"):
        assert 0.0 <= entry[key] <= 1.0
    assert 1.0 <= entry["mean_turns"] <= 2.0
    rows = sample_rows(out, "sokoban_test")
    assert sorted((r["problem_index"], r["sample"]) for r in rows) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for row in rows:
        outcome = row["outcome"]
        assert len(row["replies"]) == outcome["turns"] and all(isinstance(r, str) for r in row["replies"])
        assert outcome["turns"] == 2 or outcome["solved"]  # two turns unless solved at once
        assert f"Turn {outcome['turns']}\n" in row["transcript"]
    assert entry["invalid_rate"] == pytest.approx(sum(r["outcome"]["invalid_rate"] for r in rows) / 4)
    assert main(args) == 0  # complete: nothing left to play, no model loaded
    assert json.loads((out / "summary.json").read_text())["this_run"]["generated"] == 0
    assert main(args[:-2] + ["--samples", "3", "-o", str(out)]) == 2
    assert "sampling.samples 2 there, 3 here" in capsys.readouterr().err
