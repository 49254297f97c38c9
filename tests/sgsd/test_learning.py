"""Learning curves over seeds (sgsd/learning.py): curves, clocks, the summary and its table."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from sgsd.learning import accuracy_curve, markdown_table, summarise, wall_clock
from sgsd.run_metrics import RunData

KEY = "val-core/rulebook/acc/mean@1"


def _run(name: str, accuracies: dict[int, float], step_seconds: float = 2.0, length: float = 20.0) -> RunData:
    steps = {0: {KEY: accuracies[0]}}
    for step in range(1, max(accuracies) + 1):
        steps[step] = {"timing_s/step": step_seconds, "response_length/mean": length}
        if step in accuracies:
            steps[step][KEY] = accuracies[step]
    return RunData(name=name, metrics_path=Path("m.jsonl"), steps=steps)


def test_the_curve_is_the_validated_steps_and_the_clock_sums_step_times():
    run = _run("a", {0: 0.3, 2: 0.4, 4: 0.5}, step_seconds=3.0)
    assert accuracy_curve(run) == [(0, 0.3), (2, 0.4), (4, 0.5)]
    assert wall_clock(run) == {0: 0.0, 1: 3.0, 2: 6.0, 3: 9.0, 4: 12.0}
    assert accuracy_curve(RunData("b", Path("m"), {1: {"timing_s/step": 1.0}})) == []


def test_a_method_is_summarised_over_its_seeds_with_the_sample_spread():
    runs = [_run("s", {0: 0.30, 4: 0.50}), _run("s", {0: 0.32, 4: 0.62}), _run("s", {0: 0.28, 4: 0.56})]
    summary = summarise("SGSD", runs, rollouts_per_step=16)
    assert summary.seeds == 3 and summary.last_step == 4
    assert summary.start_mean == pytest.approx(0.30) and summary.end_mean == pytest.approx(0.56)
    assert summary.end_std == pytest.approx(statistics.stdev([0.50, 0.62, 0.56]))
    assert summary.gain_mean == pytest.approx(0.26)
    assert summary.gain_std == pytest.approx(statistics.stdev([0.20, 0.30, 0.28]))
    assert summary.rollouts == 4 * 16 and summary.tokens == pytest.approx(4 * 16 * 20.0)
    assert summary.seconds == pytest.approx(8.0)
    table = markdown_table([summary])
    assert "| SGSD | 3 | 0.300 ± 0.020 | 0.560 ± 0.060 (step 4) | +0.260 ± 0.053 | 64 | 1,280 | 8 |" in table
    with pytest.raises(ValueError, match="validation accuracy at two steps"):
        summarise("x", [_run("x", {0: 0.3})], 16)
