"""Reading a run back: verl's file-logger JSONL and the bank directory (real CPU runs in tests/data)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sgsd.bank import BankError
from sgsd.run_metrics import RunMetricsError, load_bank_dir, load_metrics, load_run

RUNS = Path(__file__).resolve().parents[1] / "data" / "plot_runs"


def _lines(path: Path, *objects, end: str = "\n") -> Path:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objects) + end)
    return path


def test_real_runs_load_with_their_steps_validation_and_bank():
    sgsd, grpo = load_run(RUNS / "sgsd"), load_run(RUNS / "grpo")
    assert (sgsd.name, grpo.name) == ("sgsd", "grpo")
    assert list(sgsd.steps) == [1, 2, 3, 4] and list(grpo.steps) == [1, 2]
    assert sgsd.is_sgsd and not grpo.is_sgsd
    assert sgsd.series("val-core/math/acc/mean@1")[0] == [2, 4]  # trainer.test_freq=2
    assert grpo.series("val-core/math/acc/mean@1")[0] == [1, 2]
    assert sgsd.series("sgsd/teachers_per_problem") == ([1, 2, 3, 4], [4.0, 4.0, 4.0, 4.0])
    assert sgsd.latest_bank.path.name == "bank.json" and sgsd.latest_bank.step is None
    assert sgsd.latest_bank.bank.counts()["general_skills"] == {"static": 28, "dynamic": 0, "total": 28}
    assert grpo.snapshots == () and grpo.latest_bank is None


def test_a_step_on_several_lines_is_merged_later_values_winning(tmp_path):
    path = _lines(tmp_path / "m.jsonl", {"step": 0, "data": {"val-core/math/acc/mean@1": 0.25}},
                  {"step": 1, "data": {"critic/score/mean": 0.5, "sgsd/loss": 1.0}},
                  {"step": 1, "data": {"sgsd/loss": 2.0, "note": "text", "missing": None, "flag": True}})
    assert load_metrics(path) == {0: {"val-core/math/acc/mean@1": 0.25},
                                  1: {"critic/score/mean": 0.5, "sgsd/loss": 2.0, "flag": 1.0}}


def test_steps_come_back_in_order_and_non_finite_values_are_dropped(tmp_path):
    path = _lines(tmp_path / "m.jsonl", '{"step": 3, "data": {"a": NaN, "b": 1}}', {"step": 1, "data": {"a": 2}})
    assert load_metrics(path) == {1: {"a": 2.0}, 3: {"b": 1.0}}


@pytest.mark.parametrize("bad, message", [
    ('{"step": 2, "data": {"a": 1}', "line 2: invalid JSON at column 29: Expecting ',' delimiter"),
    ('{"step": "2", "data": {}}', 'line 2: expected {"step": <int>, "data": {...}}'),
    ('[1, 2]', 'line 2: expected {"step": <int>, "data": {...}}'),
])
def test_a_damaged_line_names_the_file_and_the_line(tmp_path, bad, message):
    path = _lines(tmp_path / "m.jsonl", {"step": 1, "data": {"a": 1}}, bad, {"step": 3, "data": {"a": 1}})
    with pytest.raises(RunMetricsError) as err:
        load_metrics(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_torn_last_line_is_skipped_but_a_complete_bad_last_line_is_an_error(tmp_path):
    torn = _lines(tmp_path / "torn.jsonl", {"step": 1, "data": {"a": 1}}, '{"step": 2, "da', end="")
    assert load_metrics(torn) == {1: {"a": 1.0}}  # the run is still writing step 2
    bad = _lines(tmp_path / "bad.jsonl", {"step": 1, "data": {"a": 1}}, '{"step": 2, "da')
    with pytest.raises(RunMetricsError, match="line 2: invalid JSON"):
        load_metrics(bad)


def test_an_empty_or_missing_metrics_file_is_an_error(tmp_path):
    with pytest.raises(RunMetricsError, match="no metric lines"):
        load_metrics(_lines(tmp_path / "m.jsonl", "", ""))
    with pytest.raises(RunMetricsError, match="metrics file not found"):
        load_metrics(tmp_path / "nope.jsonl")


def test_run_paths_and_default_names(tmp_path):
    with pytest.raises(RunMetricsError, match="no such run directory or metrics file"):
        load_run(tmp_path / "nope")
    with pytest.raises(RunMetricsError, match="no metrics.jsonl in this run directory"):
        load_run(tmp_path)
    verl_default = _lines(tmp_path / "sgsd_qwen3_8b.jsonl", {"step": 1, "data": {"a": 1}})
    assert load_run(verl_default).name == "sgsd_qwen3_8b"  # ./<project>/<experiment>.jsonl
    assert load_run(RUNS / "grpo" / "metrics.jsonl").name == "grpo"
    assert load_run(RUNS / "grpo", name="GRPO baseline").name == "GRPO baseline"
    with pytest.raises(RunMetricsError, match="empty run name"):
        load_run(RUNS / "grpo", name=" ")


def test_bank_dir_snapshots_in_step_order_then_the_latest(tmp_path, shipped_bank):
    grown = shipped_bank.with_items(general_skills=[*shipped_bank.general_skills, replace(
        shipped_bank.general_skills[0], skill_id="dyn_1", origin="dynamic")])
    shipped_bank.save(tmp_path / "bank.step_000002.json")
    grown.save(tmp_path / "bank.step_000010.json")
    grown.save(tmp_path / "bank.json")
    (tmp_path / "evolution_state.json").write_text("{}")  # not a bank: ignored
    snaps = load_bank_dir(tmp_path)
    assert [s.step for s in snaps] == [2, 10, None]
    assert [s.bank.counts()["general_skills"]["dynamic"] for s in snaps] == [0, 1, 1]
    run = load_run(RUNS / "grpo", bank_dir=tmp_path)
    assert run.latest_bank.path == tmp_path / "bank.json"


def test_bank_dir_errors(tmp_path):
    with pytest.raises(RunMetricsError, match="bank directory not found"):
        load_run(RUNS / "grpo", bank_dir=tmp_path / "nope")
    with pytest.raises(RunMetricsError, match="no bank.json or bank.step_NNNNNN.json"):
        load_bank_dir(tmp_path)
    (tmp_path / "bank.json").write_text('{"general_skills": []}')
    with pytest.raises(BankError, match="missing top-level key 'common_mistakes'"):
        load_bank_dir(tmp_path)


def test_the_bank_of_a_run_in_verls_default_layout_is_found(tmp_path, shipped_bank):
    """GPU scripts: ./<project>/<experiment>.jsonl and ./checkpoints/<project>/<experiment>/sgsd_bank."""
    metrics = _lines((tmp_path / "sgsd").mkdir() or tmp_path / "sgsd" / "sgsd_qwen3_8b.jsonl",
                     {"step": 1, "data": {"sgsd/loss": 1.0}})
    assert load_run(metrics).snapshots == ()
    shipped_bank.save(tmp_path / "checkpoints" / "sgsd" / "sgsd_qwen3_8b" / "sgsd_bank" / "bank.json")
    run = load_run(metrics)
    assert run.name == "sgsd_qwen3_8b"
    assert run.latest_bank.path == tmp_path / "checkpoints" / "sgsd" / "sgsd_qwen3_8b" / "sgsd_bank" / "bank.json"
