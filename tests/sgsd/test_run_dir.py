"""The resumable folder: append-only logs that survive a torn write, and identity checks."""

from __future__ import annotations

import json

import pytest

from sgsd.run_dir import RunDir, RunDirError


def test_logs_append_in_order_and_a_torn_last_line_is_cut_off(tmp_path):
    run = RunDir(tmp_path / "job")
    assert run.read_log("log.jsonl") == []
    run.append_log("log.jsonl", [{"index": 0, "x": "a\\nb"}, {"index": 1}])
    run.append_log("log.jsonl", [])
    path = tmp_path / "job" / "log.jsonl"
    with path.open("a") as handle:
        handle.write('{"index": 2, "x": "cut')
    assert [r["index"] for r in run.read_log("log.jsonl")] == [0, 1]
    assert path.read_text().endswith("}\n")  # truncated, so the next append starts on a fresh line
    run.append_log("log.jsonl", [{"index": 2}])
    assert [r["index"] for r in run.read_log("log.jsonl")] == [0, 1, 2]


@pytest.mark.parametrize("content, message", [
    ('{"index": 0}\n{bad\n{"index": 1}\n', "line 2: invalid JSON"),
    ('{"index": "0"}\n', "line 1: not a progress record"),
])
def test_a_damaged_log_is_an_error_naming_the_line(tmp_path, content, message):
    (tmp_path / "log.jsonl").write_text(content)
    with pytest.raises(RunDirError, match=message):
        RunDir(tmp_path).read_log("log.jsonl")


def test_identity_checks(tmp_path):
    run = RunDir(tmp_path / "job", what="bank build")
    identity = {"n": 4, "settings": {"t": 1.0}, "label": "a"}
    assert run.check_identity(identity, has_records=False) is False  # new folder
    run.save_identity(identity)
    assert run.check_identity({**identity, "label": "b"}, has_records=True, informational=("label",)) is True
    changed = {"n": 5, "settings": {"t": 0.5}, "label": "a"}
    with pytest.raises(RunDirError, match=r"another bank build \(n 4 there, 5 here; settings.t 1.0 there, 0.5 here\)"):
        run.check_identity(changed, has_records=True)
    assert run.check_identity(changed, has_records=False) is False  # nothing saved yet: may be replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "f.txt").write_text("x")
    with pytest.raises(RunDirError, match="not empty and holds no bank build"):
        RunDir(tmp_path / "other", what="bank build").check_identity(identity, has_records=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="not a directory"):
        RunDir(tmp_path / "file")
    assert json.loads((tmp_path / "job" / "run.json").read_text()) == identity
