"""`sgsd bank inspect` as a person uses it (shipped banks by name, bad banks: exit 2, one line).
Merging and building through the CLI are tested beside their modules (tests/sgsd/test_merge.py,
tests/sgsd/test_build.py), where their scripted skill writers live."""

from __future__ import annotations

import pytest

from sgsd.cli import main


def test_bank_inspect_human_output_by_shipped_name(capsys):
    assert main(["bank", "inspect", "qwen3_4b"]) == 0
    out = capsys.readouterr().out
    assert "valid skill bank" in out and "general_skills      24" in out and "common_mistakes     15" in out


@pytest.mark.parametrize("content, message", [
    ('{"general_skills": [}', "invalid JSON at line 1"),
    # ~1,000 nested lists: json's recursion used to end in a RecursionError traceback
    ('{"general_skills": ' + "[" * 1000 + "]" * 1000 + "}", "invalid JSON at line 1 column 83: nested deeper than 64"),
    ('{"general_skills": [], "common_mistakes": [{"mistake_id": "e1", "description": "d", '
     '"why_it_happens": "w", "how_to_avoid": 3}]}',
     "common_mistakes[0] (id 'e1'): field 'how_to_avoid' must be a string, got int"),
])
def test_bank_inspect_bad_bank_exits_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bank.json"
    path.write_text(content)
    assert main(["bank", "inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0]


def test_bank_inspect_says_a_bank_without_mistakes_cannot_pair(tmp_path, capsys, shipped_bank):
    import json

    path = tmp_path / "skills_only.json"
    shipped_bank.with_items(common_mistakes=()).save(path)
    assert main(["bank", "inspect", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["can_pair"] is False
    assert "has no common_mistakes: SGSD cannot form a teacher (skill, mistake) pair" in captured.err


def test_a_lone_surrogate_in_a_bank_is_bad_input_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "bank.json"
    path.write_text('{"general_skills": [{"skill_id": "g", "title": "t\\ud800", "principle": "p", '
                    '"when_to_apply": "w"}], "common_mistakes": []}')
    assert main(["bank", "inspect", str(path), "--by-utility"]) == 2
    assert "field 'title' holds a lone surrogate \\ud800" in capsys.readouterr().err
