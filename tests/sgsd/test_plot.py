"""`sgsd plot`: pictures drawn from real CPU runs' metrics (tests/data/plot_runs, see its README)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path

import pytest

from sgsd.cli import main
from sgsd.plot import PANELS, UTILITY_ITEMS, PlotError, build_figures, render
from sgsd.run_metrics import RunData, load_run
from sgsd.item_utility import CATEGORIES, utility_of, utility_score

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "tests" / "data" / "plot_runs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIBLINGS = ("skill_sd", "sdar", "rlsd")  # the sibling methods' panels: none of them in an SGSD run
SGSD_PANELS = tuple(p for p in PANELS if p not in SIBLINGS and p != "episodes")  # a math run: no episodes
SKILL_SD_KEYS = ("loss", "sdl_token_loss", "rho_mean", "rho_max", "rho_clipped_frac", "k3_clipped_frac",
                 "log_ratio_teacher_mean")
SDAR_KEYS = ("loss", "token_loss", "gate_mean", "gate_active_frac", "gap_mean")
RLSD_KEYS = ("lambda", "weight_mean", "weight_clipped_frac")


@pytest.fixture(scope="module")
def sgsd_run() -> RunData:
    return load_run(RUNS / "sgsd")


@pytest.fixture(scope="module")
def grpo_run() -> RunData:
    return load_run(RUNS / "grpo")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_library_import_pulls_in_neither_matplotlib_nor_torch():
    code = ("import json, sys, sgsd.plot, sgsd.run_metrics, sgsd.cli\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'torch', 'numpy'})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_grpo_vs_sgsd_writes_every_panel_as_a_real_png(sgsd_run, grpo_run, tmp_path):
    import matplotlib.image

    rendered = render([grpo_run, sgsd_run], tmp_path / "pics")
    assert rendered.files == tuple(tmp_path / "pics" / f"{p}.png" for p in SGSD_PANELS)
    for path in rendered.files:
        width, height = _png_size(path)
        assert width >= 500 and height >= 350, (path, width, height)
        assert path.stat().st_size > 15_000, path  # titles, axes, text and lines, not a blank canvas
        pixels = matplotlib.image.imread(path)  # decodes the whole file
        assert pixels.shape[:2] == (height, width)
    assert not list((tmp_path / "pics").glob(".*.tmp"))  # atomic writes leave no temporary files
    # the GRPO run is left out of the SGSD panels, and each such panel says so; neither run
    # logged a sibling method's metrics, so those panels are not written; nor episodes: no note
    # (both validated at two steps at least: both are in learning.png, no note)
    assert [n.split(":")[0] for n in rendered.notes] == [f"{p}.png" for p in PANELS[1:]
                                                          if p not in ("episodes", "learning")]
    for note in rendered.notes:
        if note.split(".")[0] in SIBLINGS:
            assert note.startswith(f"{note.split('.')[0]}.png: not written (grpo: no sgsd/* metrics: not an SGSD "
                                   "run; sgsd: no sgsd/"), note
        else:
            assert " grpo not shown (" in note, note


def test_training_panel_overlays_both_runs_with_their_logged_values(sgsd_run, grpo_run):
    figures, _ = build_figures([grpo_run, sgsd_run])
    reward, validation, length = figures["training"].axes
    for ax in (reward, validation, length):
        assert {"grpo", "sgsd"} <= set(_legend(ax)), ax.get_title()
        assert ax.get_xlabel() == "training step" and ax.get_ylabel() and ax.get_title()
    assert "success rate" in _legend(reward)  # two metric styles -> a style legend too
    # one line per (run, metric); colours follow the runs; the data is what was logged
    lines = {(line.get_color(), tuple(line.get_xdata())): list(line.get_ydata()) for line in validation.lines}
    assert lines[("C0", (1, 2))] == grpo_run.series("val-core/math/acc/mean@1")[1]
    assert lines[("C1", (2, 4))] == sgsd_run.series("val-core/math/acc/mean@1")[1]
    assert len(reward.lines) == 3  # grpo reward; sgsd reward and success rate


def test_sgsd_panels_draw_the_sgsd_run_and_name_the_grpo_run_as_not_shown(sgsd_run, grpo_run):
    figures, _ = build_figures([grpo_run, sgsd_run])
    for panel in ("support", "gate_loss", "teachers", "bank", "polarity", "utility"):
        assert "(not shown: grpo)" in figures[panel].get_suptitle(), panel
    gate = figures["gate_loss"].axes[0]
    assert _legend(gate) == ["sgsd", "gate loss", "SGSD loss (as optimised)"]
    assert list(gate.lines[0].get_ydata()) == sgsd_run.series("sgsd/gate_loss")[1]
    assert list(figures["support"].axes[2].lines[0].get_ydata()) == sgsd_run.series("sgsd/clipped_frac")[1]
    general, _ = figures["bank"].axes
    assert sorted(tuple(line.get_ydata()) for line in general.lines) == [(0.0,) * 4, (28.0,) * 4]


def test_polarity_stacks_the_five_logged_fractions(sgsd_run):
    figures, _ = build_figures([sgsd_run])
    [ax] = figures["polarity"].axes
    assert ax.get_title() == "sgsd"
    assert [c.get_label() for c in ax.containers] == [c.replace("_", "-") for c in CATEGORIES]
    for category, bars in zip(CATEGORIES, ax.containers):
        assert [b.get_height() for b in bars] == sgsd_run.series(f"sgsd/{category}_frac")[1]
    tops = [bars[-1].get_y() + bars[-1].get_height() for bars in zip(*ax.containers)]
    assert tops == pytest.approx([1.0] * 4)  # the five categories partition every step


def test_utility_shows_the_best_and_worst_items_of_the_latest_bank(sgsd_run):
    figures, _ = build_figures([sgsd_run])
    scores_ax, shares_ax = figures["utility"].axes[:2]
    used = sorted((it for c in ("general_skills", "common_mistakes") for it in sgsd_run.latest_bank.bank.items(c)
                   if utility_of(it)["uses"] > 0), key=utility_score, reverse=True)
    expected = used[:UTILITY_ITEMS] + used[-UTILITY_ITEMS:]
    bars = sorted(scores_ax.patches, key=lambda b: -b.get_y())  # top to bottom
    assert [b.get_width() for b in bars] == pytest.approx([utility_score(it) for it in expected])
    labels = [t.get_text() for t in sorted(scores_ax.get_yticklabels(), key=lambda t: -t.get_position()[1])]
    assert [lbl.split()[0] for lbl in labels] == [it.item_id for it in expected]
    assert f"best and worst {UTILITY_ITEMS} of {len(used)} used items" in scores_ax.get_title()
    # the fixture's random policy never succeeds: every used teacher was a warning
    warning = next(c for c in shares_ax.containers if c.get_label() == "warning")
    assert [b.get_width() for b in warning] == pytest.approx([1.0] * len(expected))


def test_two_sgsd_runs_side_by_side(sgsd_run):
    other = replace(sgsd_run, name="sgsd $k=8$")  # a '$' must not be read as mathtext
    figures, notes = build_figures([sgsd_run, other])
    assert [n.split(" ")[0] for n in notes] == [f"{p}.png:" for p in SIBLINGS]  # no sibling metrics
    assert all(" not written (sgsd: no sgsd/" in n for n in notes)
    assert [ax.get_title() for ax in figures["polarity"].axes] == ["sgsd", r"sgsd \$k=8\$"]
    assert _legend(figures["teachers"].axes[0])[:2] == ["sgsd", r"sgsd \$k=8\$"]
    assert len(figures["utility"].axes) == 4  # one row of two axes per run
    for fig in figures.values():
        fig.canvas.draw()  # renders every text


def test_grpo_alone_gets_the_training_and_learning_pictures_only(grpo_run, tmp_path):
    rendered = render([grpo_run], tmp_path)
    assert rendered.files == (tmp_path / "training.png", tmp_path / "learning.png")
    assert rendered.notes[0] == "polarity.png: not written (grpo: no sgsd/* metrics: not an SGSD run)"
    assert rendered.notes[-1] == "utility.png: not written (grpo: no bank directory: not an SGSD run)"


def test_bank_sizes_come_from_snapshots_when_the_metrics_lack_them(shipped_bank, tmp_path):
    grown = shipped_bank.with_items(common_mistakes=[*shipped_bank.common_mistakes, replace(
        shipped_bank.common_mistakes[0], mistake_id="dyn_1", origin="dynamic")])
    shipped_bank.save(tmp_path / "bank" / "bank.step_000002.json")
    grown.save(tmp_path / "bank" / "bank.step_000004.json")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"step": s, "data": {"sgsd/loss": 0.1}}) + "\n"
                                              for s in (1, 2, 3, 4)))
    run = load_run(tmp_path / "m.jsonl", bank_dir=tmp_path / "bank")
    figures, notes = build_figures([run])
    _, mistakes = figures["bank"].axes
    dynamic = next(line for line in mistakes.lines if line.get_linestyle() == "-")
    assert list(dynamic.get_xdata()) == [2, 4] and list(dynamic.get_ydata()) == [0.0, 1.0]
    assert "utility.png: not written (m: no item of" in " ".join(notes)  # a fresh bank has no utility yet


def test_runs_that_share_a_name_are_seeds_of_one_method_in_the_learning_picture_alone(sgsd_run, grpo_run,
                                                                                       tmp_path):
    from dataclasses import replace

    from sgsd.learning import accuracy_curve

    seeds = [replace(sgsd_run, name="SGSD"), replace(sgsd_run, name="SGSD",
                                                     steps={s: {**d, **({k: v + 0.5 for k, v in d.items()
                                                                         if k.startswith("val-core/")})}
                                                            for s, d in sgsd_run.steps.items()})]
    figures, notes = build_figures([*seeds, replace(grpo_run, name="GRPO")])
    assert list(figures) == ["learning"] and "seeds of one method" in notes[0]
    by_step, by_time = figures["learning"].axes
    mean = next(line for line in by_step.lines if line.get_label() == "SGSD (2 seeds)")
    expected = [v + 0.25 for _, v in accuracy_curve(sgsd_run)]  # the mean of the two seeds
    assert list(mean.get_ydata()) == pytest.approx(expected)
    assert [line.get_label() for line in by_time.lines] == ["SGSD (2 seeds)", "GRPO"]
    assert len(by_step.collections) == 1  # one band: the method with seeds (min to max)
    unvalidated = RunData(name="x", metrics_path=tmp_path / "m.jsonl", steps={1: {"timing_s/step": 1.0}})
    with pytest.raises(PlotError, match=r"runs that share a name \(x\) are seeds of one method"):
        build_figures([unvalidated, unvalidated])


def test_render_refuses_bad_requests(sgsd_run, tmp_path):
    with pytest.raises(PlotError, match="no run to plot"):
        build_figures([])
    (tmp_path / "file").write_text("")
    with pytest.raises(PlotError, match="exists and is not a directory"):
        render([sgsd_run], tmp_path / "file")
    bare = RunData(name="bare", metrics_path=tmp_path / "m.jsonl", steps={1: {"timing_s/step": 1.0}})
    with pytest.raises(PlotError, match=r"nothing to plot: training.png: not written \(bare: no critic"):
        render([bare], tmp_path / "out")


# ----------------------------------------------------------------------------- the command line
def test_cli_plot_grpo_vs_sgsd(tmp_path, capsys):
    out = tmp_path / "pictures"
    assert main(["plot", str(RUNS / "grpo" / "metrics.jsonl"), str(RUNS / "sgsd"), "-o", str(out),
                 "--name", "GRPO", "--name", "SGSD"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(out / f"{p}.png") for p in SGSD_PANELS]
    assert "sgsd: note: polarity.png: GRPO not shown (no sgsd/* metrics: not an SGSD run)" in captured.err


def test_cli_bank_dir_per_run_with_dash_for_the_default(tmp_path, capsys):
    assert main(["plot", str(RUNS / "sgsd"), str(RUNS / "grpo"), "-o", str(tmp_path), "--name", "a", "--name", "b",
                 "--bank-dir", "-", "--bank-dir", str(RUNS / "sgsd" / "checkpoints" / "sgsd_bank")]) == 0
    assert "utility.png" in capsys.readouterr().out
    assert (tmp_path / "utility.png").exists()


@pytest.mark.parametrize("args, message", [
    (["{runs}/nope"], "nope: no such run directory or metrics file"),
    (["{tmp}/one.jsonl", "{tmp}/one.jsonl"], "runs that share a name (one) are seeds of one method"),
    (["{runs}/grpo", "--name", "a", "--name", "b"], "--name given 2 times for 1 runs"),
    (["{runs}/grpo", "--bank-dir", "{tmp}"], "no bank.json or bank.step_NNNNNN.json"),
    (["{tmp}/broken.jsonl"], "broken.jsonl: line 2: invalid JSON at column 1"),
])
def test_cli_plot_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    (tmp_path / "broken.jsonl").write_text('{"step": 1, "data": {}}\n}\n')
    (tmp_path / "one.jsonl").write_text('{"step": 1, "data": {"critic/score/mean": 0.5}}\n')
    argv = ["plot", *(a.format(runs=RUNS, tmp=tmp_path) for a in args), "-o", str(tmp_path / "out")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1
    assert lines[0].startswith("sgsd: error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_support_panel_draws_the_batch_quantiles_when_logged(tmp_path):
    lines = [{"step": s, "data": {"sgsd/support_mean": 0.1 * s, "sgsd/support_abs_mean": 0.2 * s,
                                  "sgsd/support_p10": -s, "sgsd/support_p50": 0.5 * s, "sgsd/support_p90": 2.0 * s,
                                  "sgsd/clipped_frac": 0.1, "sgsd/below_threshold_frac": 0.2}} for s in (1, 2, 3)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    figures, _ = build_figures([load_run(path)])
    quantiles = figures["support"].axes[1]
    assert [list(line.get_ydata()) for line in quantiles.lines[:3]] == [[-1.0, -2.0, -3.0], [0.5, 1.0, 1.5],
                                                                         [2.0, 4.0, 6.0]]
    assert _legend(quantiles)[1:] == ["10th percentile", "median", "90th percentile"]


# ----------------------------------------------------------------------------- the sibling methods' panels
def _run(tmp_path: Path, name: str, rows: dict[int, dict[str, float]]) -> RunData:
    """A run written as verl's file logger writes it (one line per step), read back by load_run."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in rows.items()))
    return load_run(path)


def _method_rows(method: str, keys: Sequence[str], steps=(1, 2, 3)) -> dict[int, dict[str, float]]:
    """Distinct values per key and step: key i at step s logs 0.1 * (i + 1) + 0.01 * s."""
    return {s: {"critic/score/mean": 0.5, **{f"sgsd/{method}/{k}": round(0.1 * (i + 1) + 0.01 * s, 4)
                                             for i, k in enumerate(keys)}} for s in steps}


def _data(ax) -> list[tuple[str, str, list[int], list[float]]]:
    """(colour, linestyle, steps, values) of each metric line of an axis (not its reference lines)."""
    return [(line.get_color(), line.get_linestyle(), list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.lines if line.get_marker() == "o"]


def test_skill_sd_run_gets_the_skill_sd_panel_only(tmp_path):
    run = _run(tmp_path, "skill_sd", _method_rows("skill_sd", SKILL_SD_KEYS))
    rendered = render([run], tmp_path / "pics")
    written = {f.name for f in rendered.files}
    assert "skill_sd.png" in written and "sdar.png" not in written and "rlsd.png" not in written
    assert (tmp_path / "pics" / "skill_sd.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not (tmp_path / "pics" / "sdar.png").exists()
    assert "sdar.png: not written (skill_sd: no sgsd/sdar/loss, sgsd/sdar/token_loss" in rendered.notes[
        [n.split(":")[0] for n in rendered.notes].index("sdar.png")]

    figures, _ = build_figures([run])
    loss, ratios, clamps, gap = figures["skill_sd"].axes
    assert figures["skill_sd"].get_suptitle() == "Skill-SD: L_SDL and its importance ratios"
    expected = {k: run.series(f"sgsd/skill_sd/{k}")[1] for k in SKILL_SD_KEYS}
    assert expected["loss"] == [0.11, 0.12, 0.13] and expected["log_ratio_teacher_mean"] == [0.71, 0.72, 0.73]
    assert _data(loss) == [("C0", "-", [1, 2, 3], expected["loss"]),
                           ("C0", "--", [1, 2, 3], expected["sdl_token_loss"])]
    assert _data(ratios) == [("C0", "-", [1, 2, 3], expected["rho_mean"]),
                             ("C0", "--", [1, 2, 3], expected["rho_max"])]
    assert _data(clamps) == [("C0", "-", [1, 2, 3], expected["rho_clipped_frac"]),
                             ("C0", "--", [1, 2, 3], expected["k3_clipped_frac"])]
    assert _data(gap) == [("C0", "-", [1, 2, 3], expected["log_ratio_teacher_mean"])]
    assert _legend(loss) == ["skill_sd", "L_SDL (as optimised)", "mean rho k3 per token"]
    assert _legend(ratios) == ["skill_sd", "mean rho", "max rho"]
    assert _legend(clamps) == ["skill_sd", "rho at its clamp", "k3 at its clamp"]
    assert _legend(gap) == ["skill_sd"]  # one metric: no style legend
    assert clamps.get_ylim() == (-0.04, 1.04)


def test_sibling_panels_draw_the_keys_a_run_has_and_name_the_runs_without_them(sgsd_run, tmp_path):
    full = _run(tmp_path, "full", _method_rows("skill_sd", SKILL_SD_KEYS))
    partial = _run(tmp_path, "partial", _method_rows("skill_sd", ("loss", "rho_mean"), steps=(2, 4)))
    figures, notes = build_figures([sgsd_run, full, partial])
    loss, ratios, clamps, gap = figures["skill_sd"].axes
    # colours follow the runs' order (sgsd C0, full C1, partial C2); partial draws only what it logged
    assert _data(loss) == [("C1", "-", [1, 2, 3], [0.11, 0.12, 0.13]), ("C1", "--", [1, 2, 3], [0.21, 0.22, 0.23]),
                           ("C2", "-", [2, 4], [0.12, 0.14])]
    assert [(c, st, x) for c, st, x, _ in _data(ratios)] == [("C1", "-", [1, 2, 3]), ("C1", "--", [1, 2, 3]),
                                                             ("C2", "-", [2, 4])]
    assert [c for c, *_ in _data(clamps)] == ["C1", "C1"] and [c for c, *_ in _data(gap)] == ["C1"]
    assert _legend(clamps)[0] == "full" and "partial" not in _legend(clamps)
    assert _legend(loss)[:2] == ["full", "partial"]
    assert "(not shown: sgsd)" in figures["skill_sd"].get_suptitle()
    assert "skill_sd.png: sgsd not shown (no sgsd/skill_sd/loss, sgsd/skill_sd/sdl_token_loss" in " ".join(notes)
    assert "sdar" not in figures and "rlsd" not in figures


def test_sdar_run_gets_the_sdar_panel_and_rlsd_its_own(tmp_path):
    sdar = _run(tmp_path, "sdar", _method_rows("sdar", SDAR_KEYS))
    rendered = render([sdar], tmp_path / "pics")
    written = {f.name for f in rendered.files}
    assert "sdar.png" in written and "skill_sd.png" not in written and "rlsd.png" not in written
    assert (tmp_path / "pics" / "sdar.png").read_bytes()[:8] == PNG_SIGNATURE
    figures, notes = build_figures([sdar])
    loss, gate, gap = figures["sdar"].axes
    expected = {k: sdar.series(f"sgsd/sdar/{k}")[1] for k in SDAR_KEYS}
    assert _data(loss) == [("C0", "-", [1, 2, 3], expected["loss"]), ("C0", "--", [1, 2, 3], expected["token_loss"])]
    assert _data(gate) == [("C0", "-", [1, 2, 3], expected["gate_mean"]),
                           ("C0", "--", [1, 2, 3], expected["gate_active_frac"])]
    assert _data(gap) == [("C0", "-", [1, 2, 3], expected["gap_mean"])]
    assert _legend(loss) == ["sdar", "SDAR loss (as optimised)", "mean per token"]
    assert _legend(gate) == ["sdar", "mean gate", "gate > 0.5"]
    assert "rlsd.png: not written (sdar: no sgsd/rlsd/lambda, sgsd/rlsd/weight_mean, sgsd/rlsd/weight_clipped_frac)" \
        in notes

    # RLSD's reweighting: its own panel, beside SDAR's when a run logs both, alone when it logs only RLSD
    both = _run(tmp_path, "both", {s: {**_method_rows("sdar", SDAR_KEYS)[s], **_method_rows("rlsd", RLSD_KEYS)[s]}
                                   for s in (1, 2, 3)})
    rlsd_only = _run(tmp_path, "rlsd_only", _method_rows("rlsd", RLSD_KEYS, steps=(1, 2)))
    figures, notes = build_figures([both, rlsd_only])
    assert {"sdar", "rlsd"} <= set(figures) and "skill_sd" not in figures
    lam, weight, clipped = figures["rlsd"].axes
    assert _data(lam) == [("C0", "-", [1, 2, 3], [0.11, 0.12, 0.13]), ("C1", "-", [1, 2], [0.11, 0.12])]
    assert _data(weight) == [("C0", "-", [1, 2, 3], [0.21, 0.22, 0.23]), ("C1", "-", [1, 2], [0.21, 0.22])]
    assert _data(clipped) == [("C0", "-", [1, 2, 3], [0.31, 0.32, 0.33]), ("C1", "-", [1, 2], [0.31, 0.32])]
    assert _legend(lam) == ["both", "rlsd_only"]
    assert "(not shown: rlsd_only)" in figures["sdar"].get_suptitle()
    assert any(n.startswith("sdar.png: rlsd_only not shown (no sgsd/sdar/loss") for n in notes)
    assert _legend(figures["sdar"].axes[0])[0] == "both"
    rendered = render([rlsd_only], tmp_path / "rlsd_pics")
    assert {f.name for f in rendered.files} == {"training.png", "rlsd.png"}


def test_sgsd_run_gets_no_sibling_panel_and_the_notes_say_why(sgsd_run, tmp_path):
    rendered = render([sgsd_run], tmp_path)
    assert not (tmp_path / "skill_sd.png").exists() and not (tmp_path / "sdar.png").exists()
    assert not (tmp_path / "rlsd.png").exists()
    assert rendered.files == tuple(tmp_path / f"{p}.png" for p in SGSD_PANELS)
    assert rendered.notes == (
        "skill_sd.png: not written (sgsd: no " + ", ".join(f"sgsd/skill_sd/{k}" for k in SKILL_SD_KEYS) + ")",
        "sdar.png: not written (sgsd: no " + ", ".join(f"sgsd/sdar/{k}" for k in SDAR_KEYS) + ")",
        "rlsd.png: not written (sgsd: no " + ", ".join(f"sgsd/rlsd/{k}" for k in RLSD_KEYS) + ")",
    )


EPISODE_KEYS = ("solved", "boxes_on_target", "turns", "invalid_rate", "truncated")


def test_the_episodes_panel_draws_any_run_with_episode_metrics_grpo_included(sgsd_run, tmp_path):
    rows = {s: {"critic/score/mean": 0.1 * s, **{f"episode/{k}": round(0.05 * (i + 1) + 0.01 * s, 4)
                                                  for i, k in enumerate(EPISODE_KEYS)}} for s in (1, 2, 3)}
    rows = {s: {**r, "episode/turns": 2.0 + s} for s, r in rows.items()}
    grpo = _run(tmp_path, "grpo_sokoban", rows)
    assert not grpo.is_sgsd  # no sgsd/* key: the other method panels leave it out, this one does not
    figures, notes = build_figures([sgsd_run, grpo])
    success, turns, invalid = figures["episodes"].axes
    assert _data(success) == [("C1", "-", [1, 2, 3], [0.06, 0.07, 0.08]), ("C1", "--", [1, 2, 3], [0.11, 0.12, 0.13])]
    assert _data(turns) == [("C1", "-", [1, 2, 3], [3.0, 4.0, 5.0])]
    assert [(c, st) for c, st, _, _ in _data(invalid)] == [("C1", "-"), ("C1", "--")]
    assert success.get_ylim() == (-0.04, 1.04) and turns.get_ylim() != (-0.04, 1.04)
    assert "episodes.png: sgsd not shown (no episode/* metrics: not a multi-turn run)" in notes
    assert "episodes" not in build_figures([sgsd_run])[0]
