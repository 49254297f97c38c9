"""The paper's Tab. 3 across evaluation runs (:mod:`sgsd.eval.report`), in markdown and PNG."""

from __future__ import annotations

from sgsd.cli import main
from sgsd.eval.report import compare_runs
from tests.sgsd.eval.helpers import scored_run, write_problems


def test_compare_table_in_the_layout_of_tab3(tmp_path, capsys):
    import matplotlib.image

    a = write_problems(tmp_path / "aime24.jsonl", ["1", "2"])  # a file named like a benchmark keeps its label
    b = write_problems(tmp_path / "extra.jsonl", ["1", "2"])
    right, wrong = "\\boxed{1}", "\\boxed{9}"
    base = scored_run(tmp_path / "base", a, {0: [right, wrong], 1: [wrong, wrong]})  # 25%
    scored_run(tmp_path / "base", b, {0: [right, right], 1: [wrong, wrong]})  # 50%
    sgsd = scored_run(tmp_path / "sgsd", a, {0: [right, right], 1: [wrong, wrong]})  # 50%
    scored_run(tmp_path / "sgsd", b, {0: [right, right], 1: [wrong, wrong]})  # 50%
    half = scored_run(tmp_path / "half", a, {0: [wrong, wrong], 1: [wrong, wrong]})  # no `extra` column
    table = compare_runs([base, sgsd, half], ["Base", "SGSD", "Half"])
    assert table.columns == ("AIME24", "extra", "Avg.")
    md = table.markdown().splitlines()
    assert md[0] == "| Method | AIME24 | extra | Avg. |"
    assert md[2] == "| Base | <u>25.0</u> | **50.0** | <u>37.5</u> |"
    assert md[3] == "| SGSD | **50.0** | **50.0** | **50.0** |"  # ties share the mark
    assert md[4] == "| Half | 0.0 | – | – |"  # no average over a partial row
    assert "avg@2 in %" in md[-1]
    out = tmp_path / "table.md"
    assert main(["eval", "compare", str(base), str(sgsd), "--name", "Base", "--name", "SGSD", "--metric", "pass",
                 "-o", str(out)]) == 0
    assert "| SGSD | **50.0** | **50.0** | **50.0** |" in out.read_text() and "pass@2" in out.read_text()
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert matplotlib.image.imread(png).ndim == 3  # decodes as an image
    assert "| Base |" in capsys.readouterr().out
    assert main(["eval", "compare", str(base), "--name", "A", "--name", "B"]) == 2
    assert main(["eval", "compare", str(tmp_path / "nothing")]) == 2
    assert "summary.json: not found" in capsys.readouterr().err
