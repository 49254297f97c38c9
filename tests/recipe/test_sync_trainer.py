"""The recipe's sync trainer: where verl's file logger writes, and which of its records a
resumed run writes back (the resume itself runs for real in tests/recipe/test_bank_evolution_e2e.py)."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from recipe.sgsd.sync_trainer import file_logger_path, read_history


def _config(loggers):
    return OmegaConf.create({"trainer": {"logger": loggers, "project_name": "p", "experiment_name": "e"}})


def test_file_logger_path_follows_verls_file_logger(monkeypatch, tmp_path):
    monkeypatch.delenv("VERL_FILE_LOGGER_PATH", raising=False)
    monkeypatch.setenv("VERL_FILE_LOGGER_ROOT", str(tmp_path))
    assert file_logger_path(_config(["console", "file"])) == tmp_path / "p" / "e.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "m.jsonl"))
    assert file_logger_path(_config(["file"])) == tmp_path / "m.jsonl"
    assert file_logger_path(_config(["console"])) is None


def test_history_keeps_the_steps_done_and_skips_a_cut_line(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [json.dumps({"step": s, "data": {"loss": float(s)}}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(lines[:3]) + "\n" + '{"step": 3, "data": {"val' + "\n" + lines[3] + "\n")
    assert [r["step"] for r in read_history(path, 3)] == [1, 2, 3]  # step 4 is trained again
    assert read_history(path, 3)[2] == {"step": 3, "data": {"loss": 3.0}}
