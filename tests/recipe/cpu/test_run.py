"""The CPU launcher (recipe/sgsd/cpu/run.py): what a second run of the demo does, and the
console lines it prints, on the session's real live run (tests/launches.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recipe.sgsd.cpu import run as cpu_run
from recipe.sgsd.cpu.run import CPURun


def test_a_metrics_file_without_a_checkpoint_to_resume_is_kept_before_a_fresh_run(tmp_path, capsys):
    run = CPURun(tmp_path, steps=4)
    run.metrics_file.write_text('{"step": 1, "data": {"x": 1.0}}\n')
    assert cpu_run.settle_previous_run(run) is None  # a fresh run may go ahead
    kept = list(tmp_path.glob("metrics.previous-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_text() == '{"step": 1, "data": {"x": 1.0}}\n'
    assert not run.metrics_file.exists() and str(kept[0]) in capsys.readouterr().out


def test_a_broken_checkpoint_marker_counts_as_no_checkpoint(tmp_path):
    run = CPURun(tmp_path, steps=2)
    run.checkpoint_dir.mkdir()
    (run.checkpoint_dir / "latest_checkpointed_iteration.txt").write_text("not a number")
    assert run.checkpointed_step() == 0 and cpu_run.settle_previous_run(run) is None


@pytest.mark.slow
def test_rerunning_a_finished_run_says_so_and_launches_nothing(live_run, capsys):
    before = live_run.metrics_file.read_bytes()
    assert live_run.checkpointed_step() == 3
    assert cpu_run.main(["--workdir", str(live_run.workdir), "--steps", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "already holds a finished 3-step run" in out[0] and "--steps" in out[0]
    assert live_run.metrics_file.read_bytes() == before  # nothing emptied, nothing trained


@pytest.mark.slow
def test_the_console_shows_one_line_per_step_and_the_bank_update(live_run, capsys):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert cpu_run.follow(live_run, finished, interval=0) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("[cpu_run] step ")]
    assert [line.split(":")[0] for line in steps] == [f"[cpu_run] step {s}/3" for s in (1, 2, 3)]
    assert all("sgsd/loss" in line and "4 teachers" in line for line in steps)
    updates = [line for line in lines if "bank update: window 16 rollouts" in line]
    assert len(updates) == 1  # at step 2 (sgsd.update.freq=2), its 16 training rollouts
    accuracies = [line for line in lines if line.startswith("[cpu_run]   validation accuracy ")]
    assert len(accuracies) == 3  # trainer.test_freq=1: after every step
    # resuming after step 2 shows only what is new
    assert cpu_run.follow(live_run, finished, first_step=3, interval=0) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if "step " in line[:16]] == [
        "[cpu_run] step 3/3"]


def test_the_sokoban_demo_writes_disjoint_levels_and_states_the_reward_floor(tmp_path):
    """TASK=sokoban: episode rows for the agent loop, validation boards disjoint from training,
    and the line that shows the reward is real (the solver solves every level) with its floor."""
    import pyarrow.parquet as pq

    from recipe.sgsd.cpu.run import EPISODE_FILES, episode_floor, write_episode_data
    from sgsd.envs import level_from_spec
    from sgsd.envs.sokoban import generate, render

    write_episode_data(tmp_path, 6, 3)
    boards = {}
    for name in EPISODE_FILES:
        rows = pq.read_table(tmp_path / name).to_pylist()
        assert {r["agent_name"] for r in rows} == {"sgsd_episode"}
        boards[name] = {render(generate(level_from_spec(r["extra_info"]["env"]))) for r in rows}
    assert not boards[EPISODE_FILES[0]] & boards[EPISODE_FILES[1]]
    line = episode_floor(tmp_path)
    assert "6 train, 3 validation" in line and "solver solves 9/9" in line and "random policy solves" in line
    run = CPURun(tmp_path / "run", task="sokoban", variant="sdar", data_dir=tmp_path, model_dir=tmp_path)
    overrides = run.overrides()
    assert f"data.train_files={tmp_path / EPISODE_FILES[0]}" in overrides and "sgsd.skills.files=sokoban" in overrides
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        CPURun(tmp_path, task="chess")
