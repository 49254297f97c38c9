"""scripts/bench_learning.py without training: finished runs are read, summarised and drawn; bad
arguments exit 2. (The runs it launches are the learning tests' launches: test_learning_e2e.py.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEY = "val-core/rulebook/acc/mean@1"


def _bench():
    spec = importlib.util.spec_from_file_location("sgsd_bench_learning", ROOT / "scripts" / "bench_learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _finished(workdir: Path, accuracies: list[float]) -> None:
    """What a finished 4-step run leaves: verl's metrics and its last checkpoint's marker."""
    workdir.mkdir(parents=True)
    lines = [{"step": 0, "data": {KEY: accuracies[0]}}]
    for step in range(1, 5):
        data = {"timing_s/step": 2.0, "response_length/mean": 25.0}
        if step % 2 == 0:
            data[KEY] = accuracies[step // 2]
        lines.append({"step": step, "data": data})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (workdir / "checkpoints").mkdir()
    (workdir / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("4")


def test_finished_runs_are_read_summarised_and_drawn_without_training(tmp_path, capsys):
    bench = _bench()
    for method, curves in (("grpo", ([0.3, 0.5, 0.7], [0.3, 0.6, 0.8])), ("sgsd", ([0.3, 0.4, 0.6], [0.2, 0.4, 0.5]))):
        for seed, curve in enumerate(curves):
            _finished(tmp_path / "runs" / method / f"seed{seed}", curve)
    assert bench.main(["--methods", "grpo,sgsd", "--seeds", "0", "1", "--steps", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ": training 4 steps" not in out and out.count("finished earlier") == 4
    results = (tmp_path / "results.md").read_text()
    assert "| GRPO | 2 | 0.300 ± 0.000 | 0.750 ± 0.071 (step 4) | +0.450 ± 0.071 | 256 | 6,400 | 8 |" in results
    assert "| SGSD | 2 | 0.250 ± 0.071 | 0.550 ± 0.071 (step 4) | +0.300 ± 0.000 | 64 | 1,600 | 8 |" in results
    assert "Scale, the same for every method" in results
    assert (tmp_path / "pictures" / "learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "data_p0" / "train_skills.parquet").exists()  # GRPO+Skill's data, for every method


@pytest.mark.parametrize("argv", [["--methods", "grpo,nope"], ["--steps", "1"], ["--train-rows", "4"]])
def test_bad_arguments_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as stop:
        _bench().main([*argv, "--out", str(tmp_path)])
    assert stop.value.code == 2
