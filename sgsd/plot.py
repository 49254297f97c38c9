"""Pictures of a run: ``sgsd plot RUN [RUN ...] -o OUT_DIR``.

Reads what a training run leaves behind, for one run or several side by side (GRPO vs
SGSD), and draws one PNG per panel group:

================  ==========================================================================
file              what it shows (metric keys)
================  ==========================================================================
training.png      reward ``critic/score/mean`` and training accuracy ``sgsd/success_rate``;
                  validation accuracy ``val-core/<source>/acc/mean@N``; ``response_length/mean``
polarity.png      the teachers' polarity mix per step, stacked: ``sgsd/{helpful,warning,
                  over_suppressive,misleading,neutral}_frac`` (eq. 13, Tab. 2); one panel per run
support.png       the robust support ``a_k`` (eqs. 11-12): ``sgsd/support_mean``,
                  ``sgsd/support_abs_mean``; its batch quantiles ``sgsd/support_p{10,50,90}``
                  (the trainer's, over every present teacher of the step); shares
                  ``sgsd/clipped_frac`` (at ``±clip``) and
                  ``sgsd/below_threshold_frac`` (inside the neutral zone ``±eps_a``)
gate_loss.png     ``sgsd/gate_loss`` and ``sgsd/loss`` (eqs. 14-17)
skill_sd.png      Skill-SD's L_SDL: ``sgsd/skill_sd/loss`` and ``sgsd/skill_sd/sdl_token_loss`` (mean
                  rho k3 per token); the importance ratios ``sgsd/skill_sd/rho_{mean,max}``; the
                  clamps' shares ``sgsd/skill_sd/{rho,k3}_clipped_frac``; the teacher gap
                  ``sgsd/skill_sd/log_ratio_teacher_mean`` (mean log pi_theta - log pi_T)
sdar.png          SDAR's gate: ``sgsd/sdar/loss`` and ``sgsd/sdar/token_loss``;
                  ``sgsd/sdar/gate_mean`` and ``sgsd/sdar/gate_active_frac`` (gate > 0.5); the gap
                  ``sgsd/sdar/gap_mean`` (mean log pi_T - log pi_theta)
rlsd.png          RLSD's advantage reweighting: ``sgsd/rlsd/lambda`` (the decaying mixing weight),
                  ``sgsd/rlsd/weight_mean``, ``sgsd/rlsd/weight_clipped_frac`` (at ``1 ± eps``)
episodes.png      multi-turn episodes (``recipe.sgsd.agent_loop``, any estimator): success
                  ``episode/solved`` and the partial measure ``episode/boxes_on_target``; turns per
                  episode ``episode/turns``; ``episode/invalid_rate`` and ``episode/truncated``
                  (the trajectory's token budget spent)
teachers.png      ``sgsd/teachers_per_problem`` (scored by the loss) and
                  ``sgsd/teachers_per_problem_retrieved``
bank.png          static and dynamic items per collection: ``sgsd/bank/<collection>_<origin>``,
                  or the counts of the bank snapshots when the metrics lack them
utility.png       the best and worst items of the latest bank by :func:`sgsd.item_utility.utility_score`,
                  beside the alpha-weighted share of each teacher category in their record
learning.png      validation accuracy against step and against training time (:mod:`sgsd.learning`);
                  runs given the same ``--name`` are the seeds of one method: their mean and a
                  min-max band (then learning.png is the only picture)
================  ==========================================================================

The support panel draws what the run logs: per-step means, shares and batch quantiles of
``a_k`` (runs from before the quantiles were logged show the means and shares only). The sibling
methods' panels (``skill_sd``, ``sdar``, ``rlsd``) are drawn for the runs that log their keys, any
of them: a key a run lacks is not drawn for it. A run without ``sgsd/*`` metrics (GRPO)
appears in the training panel only; every panel or run left out is reported in
:attr:`Rendered.notes` and in the figure's title, and a picture nobody can draw is not written.

The runs come from :func:`sgsd.run_metrics.load_run` (verl's ``file`` logger JSONL and the
bank directory). Each run keeps one colour in every picture; the legends name the runs.
matplotlib (the ``plot`` extra) is imported only when drawing, on an Agg canvas: no
display, no pyplot state. :func:`build_figures` returns the figures unsaved (tests read
their legends); :func:`render` writes them.

    figures, notes = build_figures([load_run("outputs/grpo"), load_run("outputs/sgsd")])
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sgsd.run_metrics import RunData
from sgsd.item_utility import CATEGORIES, utility_of, utility_score

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PANELS", "PlotError", "Rendered", "build_figures", "render"]

PANELS = ("training", "polarity", "support", "gate_loss", "skill_sd", "sdar", "rlsd", "episodes", "teachers",
          "bank", "utility", "learning")
COLLECTIONS = ("general_skills", "common_mistakes")
CATEGORY_COLOURS = {"helpful": "#2ca02c", "warning": "#1f77b4", "over_suppressive": "#ff7f0e",
                    "misleading": "#d62728", "neutral": "#9a9a9a"}
UTILITY_ITEMS = 8  # items shown at each end of the utility ranking
_VALIDATION = re.compile(r"^val-core/(?P<source>.+)/(?P<var>[^/]+)/mean@(?P<n>\d+)$")
_PANEL_SIZE = (5.6, 3.8)  # inches per subplot; 110 dpi reads well on a laptop screen
_DPI = 110


class PlotError(ValueError):
    """The runs cannot be drawn (no run, repeated names, nothing to draw, a bad output folder)."""


@dataclass(frozen=True)
class Rendered:
    """What :func:`render` wrote, and every panel or run it left out (one line each)."""

    files: tuple[Path, ...]
    notes: tuple[str, ...]


# --------------------------------------------------------------------- drawing helpers
def _colour(index: int) -> str:
    return f"C{index % 10}"


def _text(value: str) -> str:
    return value.replace("$", r"\$")  # matplotlib would read "$...$" in bank text as math


def _figure(rows: int, cols: int, title: str, *, height: float | None = None, sharey: bool = False):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, h = _PANEL_SIZE
    fig = Figure(figsize=(width * cols, height or h * rows), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    fig.suptitle(title, fontsize=13)
    return fig, axes


def _axis(ax: Axes, title: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=11)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)  # grid lines behind bars


def _lines(ax: Axes, runs: Sequence[RunData], specs: Sequence[tuple[str, str, str]], *, title: str,
           ylabel: str, empty: str = "not logged", unit: bool = False) -> list[str]:
    """One line per (run, metric): colour = run, ``specs`` = (key, label, linestyle).

    Returns the names of the runs drawn; an axis with nothing to draw says ``empty``.
    ``unit``: the values are shares or accuracies, shown on the whole [0, 1] range.
    """
    from matplotlib.lines import Line2D

    drawn, styles, seen = [], {}, []
    for index, run in enumerate(runs):
        for key, label, style in specs:
            steps, values = run.series(key)
            if not steps:
                continue
            ax.plot(steps, values, linestyle=style, color=_colour(index), marker="o" if len(steps) <= 30 else None,
                    markersize=3.5, linewidth=1.6)
            styles[label], seen = style, seen + values
            if run.name not in drawn:
                drawn.append(run.name)
    _axis(ax, title, ylabel)
    if not drawn:
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="0.4")
        return drawn
    if unit and all(0.0 <= v <= 1.0 for v in seen):
        ax.set_ylim(-0.04, 1.04)
    handles = [Line2D([], [], color=_colour(i), linewidth=2, label=_text(r.name))
               for i, r in enumerate(runs) if r.name in drawn]
    if len(styles) > 1:
        handles += [Line2D([], [], color="0.2", linestyle=s, label=lbl) for lbl, s in styles.items()]
    ax.legend(handles=handles, fontsize=8, loc="best")
    return drawn


def _missing(runs: Sequence[RunData], drawn: Sequence[str], needs: str) -> dict[str, str]:
    """Why each run a panel could not draw is missing: it lacks ``needs``, or it is no SGSD run."""
    return {r.name: needs if r.is_sgsd else "no sgsd/* metrics: not an SGSD run" for r in runs if r.name not in drawn}


def _titled(fig: Figure, title: str, runs: Sequence[RunData], drawn: Sequence[str]) -> None:
    """The figure's title, naming the runs it leaves out (the notes say why)."""
    missing = [r.name for r in runs if r.name not in drawn]
    fig.suptitle(f"{title}\n(not shown: {_text(', '.join(missing))})" if missing else title, fontsize=13)


# --------------------------------------------------------------------- panels
def _training(runs: Sequence[RunData]) -> tuple[Figure | None, dict[str, str]]:
    fig, axes = _figure(1, 3, "Training")
    drawn = _lines(axes[0, 0], runs, [("critic/score/mean", "reward", "-"),
                                      ("sgsd/success_rate", "success rate", "--")],
                   title="Reward and accuracy (training rollouts)", ylabel="mean over the batch")
    validation = []
    for run in runs:  # prefer the verifier's `acc`, else whatever mean@N verl logged
        found = {}
        for key in run.keys():
            m = _VALIDATION.match(key)
            if m and (m["source"] not in found or m["var"] == "acc"):
                found[m["source"]] = key
        validation += [(key, f"{src} {_VALIDATION.match(key)['var']}", "-") for src, key in found.items()]
    specs = list(dict.fromkeys(validation))
    drawn += _lines(axes[0, 1], runs, [(k, lbl, ("-", "--", ":", "-.")[i % 4]) for i, (k, lbl, _) in
                                       enumerate(specs)],
                    title="Validation accuracy", ylabel="mean@N (val-core)",
                    empty="no validation metrics\n(logged when trainer.test_freq > 0)", unit=True)
    drawn += _lines(axes[0, 2], runs, [("response_length/mean", "mean", "-")],
                    title="Response length", ylabel="tokens (mean over the batch)")
    missing = {r.name: "no critic/score/mean, val-core/* or response_length/mean" for r in runs if r.name not in drawn}
    if not drawn:
        return None, missing
    _titled(fig, "Training", runs, drawn)
    return fig, missing


def _polarity(runs: Sequence[RunData]) -> tuple[Figure | None, dict[str, str]]:
    keys = [f"sgsd/{c}_frac" for c in CATEGORIES]
    shown = [r for r in runs if all(r.has(k) for k in keys)]
    missing = _missing(runs, [r.name for r in shown], "no sgsd/<category>_frac polarity metrics")
    if not shown:
        return None, missing
    fig, axes = _figure(1, len(shown), "Teacher polarity per step (eq. 13, Tab. 2)", sharey=True)
    for ax, run in zip(axes[0], shown):
        steps = sorted(s for s, d in run.steps.items() if all(k in d for k in keys))
        # separate bars for a short run, a filled band for a long one
        width = (0.85 if len(steps) <= 60 else 1.0) * min([b - a for a, b in zip(steps, steps[1:])] or [1])
        bottom = [0.0] * len(steps)
        for category, key in zip(CATEGORIES, keys):
            values = [run.steps[s][key] for s in steps]
            ax.bar(steps, values, width=width, bottom=bottom, color=CATEGORY_COLOURS[category],
                   label=category.replace("_", "-"), linewidth=0)
            bottom = [b + v for b, v in zip(bottom, values)]
        _axis(ax, _text(run.name), "share of (rollout, teacher) pairs" if ax is axes[0, 0] else "")
        ax.set_ylim(0, 1.02)
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _titled(fig, "Teacher polarity per step (eq. 13, Tab. 2)", runs, [r.name for r in shown])
    return fig, missing


def _sgsd_lines(title: str, subplots: Sequence[tuple[str, str, Sequence[tuple[str, str, str]]]],
                runs: Sequence[RunData]) -> tuple[Figure | None, dict[str, str]]:
    """A figure of line subplots over SGSD metrics: (subplot title, y label, specs) each."""
    fig, axes = _figure(1, len(subplots), title)
    drawn: list[str] = []
    for ax, (sub_title, ylabel, specs) in zip(axes[0], subplots):
        drawn += _lines(ax, runs, specs, title=sub_title, ylabel=ylabel)
    missing = _missing(runs, drawn, "no " + ", ".join(k for _, _, specs in subplots for k, _, _ in specs))
    if not drawn:
        return None, missing
    _titled(fig, title, runs, drawn)
    return fig, missing


def _support(runs):
    fig, missing = _sgsd_lines("Robust support a_k (eqs. 11-12): logged per-step summaries", [
        ("Support of the teachers", "a_k (clipped)",
         [("sgsd/support_mean", "mean a_k", "-"), ("sgsd/support_abs_mean", "mean |a_k|", "--")]),
        ("Its distribution over the batch", "a_k quantile",
         [("sgsd/support_p10", "10th percentile", ":"), ("sgsd/support_p50", "median", "-"),
          ("sgsd/support_p90", "90th percentile", "--")]),
        ("Where the support falls", "share of (rollout, teacher) pairs",
         [("sgsd/clipped_frac", "|a_k| at the clip", "-"),
          ("sgsd/below_threshold_frac", "|a_k| <= eps_a (neutral zone)", "--")]),
    ], runs)
    if fig is not None:
        fig.axes[0].axhline(0.0, color="0.5", linewidth=0.8)
        fig.axes[1].axhline(0.0, color="0.5", linewidth=0.8)
        fig.axes[2].set_ylim(-0.04, 1.04)  # shares
    return fig, missing


def _gate_loss(runs):
    return _sgsd_lines("SGSD loss", [
        ("Gated distillation loss (eqs. 14-17)", "loss",
         [("sgsd/gate_loss", "gate loss", "-"), ("sgsd/loss", "SGSD loss (as optimised)", "--")])], runs)


def _skill_sd(runs):
    fig, missing = _sgsd_lines("Skill-SD: L_SDL and its importance ratios", [
        ("Self-distillation loss L_SDL", "loss",
         [("sgsd/skill_sd/loss", "L_SDL (as optimised)", "-"),
          ("sgsd/skill_sd/sdl_token_loss", "mean rho k3 per token", "--")]),
        ("Importance ratio rho = pi_theta / pi_old", "rho",
         [("sgsd/skill_sd/rho_mean", "mean rho", "-"), ("sgsd/skill_sd/rho_max", "max rho", "--")]),
        ("Where the clamps bind", "share of tokens",
         [("sgsd/skill_sd/rho_clipped_frac", "rho at its clamp", "-"),
          ("sgsd/skill_sd/k3_clipped_frac", "k3 at its clamp", "--")]),
        ("Gap to the teacher", "log pi_theta - log pi_T (mean per token)",
         [("sgsd/skill_sd/log_ratio_teacher_mean", "mean log ratio", "-")]),
    ], runs)
    if fig is not None:
        fig.axes[1].axhline(1.0, color="0.5", linewidth=0.8)  # on-policy: rho = 1
        fig.axes[2].set_ylim(-0.04, 1.04)  # shares
        fig.axes[3].axhline(0.0, color="0.5", linewidth=0.8)
    return fig, missing


def _sdar(runs):
    fig, missing = _sgsd_lines("SDAR: gated self-distillation", [
        ("SDAR loss", "loss",
         [("sgsd/sdar/loss", "SDAR loss (as optimised)", "-"), ("sgsd/sdar/token_loss", "mean per token", "--")]),
        ("The gate", "gate value / share of tokens",
         [("sgsd/sdar/gate_mean", "mean gate", "-"), ("sgsd/sdar/gate_active_frac", "gate > 0.5", "--")]),
        ("Teacher gap", "log pi_T - log pi_theta (mean per token)",
         [("sgsd/sdar/gap_mean", "mean gap", "-")]),
    ], runs)
    if fig is not None:
        fig.axes[1].set_ylim(-0.04, 1.04)  # a sigmoid gate and a share
        fig.axes[2].axhline(0.0, color="0.5", linewidth=0.8)
    return fig, missing


def _rlsd(runs):
    fig, missing = _sgsd_lines("RLSD: advantage reweighting", [
        ("Mixing weight (decays to 0)", "lambda", [("sgsd/rlsd/lambda", "lambda", "-")]),
        ("Advantage weight clip(exp(sign(A) Delta), 1 ± eps)", "weight (mean over tokens)",
         [("sgsd/rlsd/weight_mean", "mean weight", "-")]),
        ("Where the clip binds", "share of tokens", [("sgsd/rlsd/weight_clipped_frac", "weight at 1 ± eps", "-")]),
    ], runs)
    if fig is not None:
        fig.axes[1].axhline(1.0, color="0.5", linewidth=0.8)  # weight 1: the advantage unchanged
        fig.axes[2].set_ylim(-0.04, 1.04)  # shares
    return fig, missing


def _episodes(runs):
    """Episode outcomes, for every run that logs them (a GRPO run too: the trainer logs them)."""
    subplots = [
        ("Success", "share of episodes",
         [("episode/solved", "solved", "-"), ("episode/boxes_on_target", "boxes on targets (partial)", "--")]),
        ("Turns per episode", "turns", [("episode/turns", "mean turns", "-")]),
        ("Invalid actions", "share", [("episode/invalid_rate", "invalid-action rate", "-"),
                                      ("episode/truncated", "token budget spent", "--")]),
    ]
    if not any(run.series(key)[0] for run in runs for _, _, specs in subplots for key, _, _ in specs):
        return None, {}  # single-turn runs only: nothing to draw, nothing to say
    fig, axes = _figure(1, len(subplots), "Multi-turn episodes")
    drawn: list[str] = []
    for ax, (sub_title, ylabel, specs) in zip(axes[0], subplots):
        drawn += _lines(ax, runs, specs, title=sub_title, ylabel=ylabel, unit=ylabel != "turns")
    missing = {r.name: "no episode/* metrics: not a multi-turn run" for r in runs if r.name not in drawn}
    _titled(fig, "Multi-turn episodes", runs, drawn)
    return fig, missing


def _teachers(runs):
    return _sgsd_lines("Teachers per problem", [
        ("Teachers per problem", "teachers",
         [("sgsd/teachers_per_problem", "scored by the loss", "-"),
          ("sgsd/teachers_per_problem_retrieved", "retrieved", "--")])], runs)


def _bank_series(run: RunData, collection: str, origin: str) -> tuple[list[int], list[float]]:
    steps, values = run.series(f"sgsd/bank/{collection}_{origin}")
    if steps:
        return steps, values
    snaps = [s for s in run.snapshots if s.step is not None]
    return [s.step for s in snaps], [float(s.bank.counts()[collection][origin]) for s in snaps]


def _bank(runs: Sequence[RunData]) -> tuple[Figure | None, dict[str, str]]:
    from matplotlib.lines import Line2D

    title = "Skill bank size (static: cold start, dynamic: added online)"
    fig, axes = _figure(1, 2, title)
    drawn, any_update = [], False
    for ax, collection in zip(axes[0], COLLECTIONS):
        top = 1.0
        for index, run in enumerate(runs):
            for origin, style in (("static", "--"), ("dynamic", "-")):
                steps, values = _bank_series(run, collection, origin)
                if steps:
                    ax.plot(steps, values, linestyle=style, color=_colour(index), marker="o" if len(steps) <= 30
                            else None, markersize=3.5, linewidth=1.6)
                    top = max([top, *values])
                    drawn += [] if run.name in drawn else [run.name]
            for step, d in run.steps.items():  # the online updates that changed the bank
                if d.get("sgsd/update/applied", 0) > 0:
                    ax.axvline(step, color=_colour(index), linestyle=":", linewidth=1)
                    any_update = True
        _axis(ax, collection.replace("_", " "), "items in the bank")
        ax.set_ylim(-0.04 * top, 1.08 * top)  # a dynamic count of 0 stays visible above the axis
        handles = [Line2D([], [], color=_colour(i), linewidth=2, label=_text(r.name))
                   for i, r in enumerate(runs) if r.name in drawn]
        handles += [Line2D([], [], color="0.2", linestyle=s, label=o) for o, s in (("static", "--"), ("dynamic", "-"))]
        if any_update:
            handles.append(Line2D([], [], color="0.2", linestyle=":", label="update applied"))
        ax.legend(handles=handles, fontsize=8, loc="best")
    missing = _missing(runs, drawn, "no sgsd/bank/* metrics and no bank.step_*.json snapshots")
    if not drawn:
        return None, missing
    _titled(fig, title, runs, drawn)
    return fig, missing


def _label(item: Any, width: int = 34) -> str:
    head = " ".join(str(getattr(item, item.TEXT_FIELDS[0])).split())
    head = head if len(head) <= width else head[: width - 1] + "…"
    return _text(f"{item.item_id}{' (dyn)' if item.origin == 'dynamic' else ''}  {head}")


def _ranked(run: RunData) -> tuple[list[Any], str]:
    """The used items of the run's latest bank, best first, or why there are none."""
    snap = run.latest_bank
    if snap is None:
        return [], "no bank directory" if run.is_sgsd else "no bank directory: not an SGSD run"
    used = [it for c in COLLECTIONS for it in snap.bank.items(c) if utility_of(it)["uses"] > 0]
    used.sort(key=utility_score, reverse=True)  # stable: ties keep bank order
    return used, f"no item of {snap.path} has a utility record with uses"


def _utility(runs: Sequence[RunData]) -> tuple[Figure | None, dict[str, str]]:
    title = "Skill utility in the latest bank (sgsd.item_utility)"
    shown, missing = [], {}
    for run in runs:
        used, why = _ranked(run)
        if used:
            picked = used if len(used) <= 2 * UTILITY_ITEMS else used[:UTILITY_ITEMS] + used[-UTILITY_ITEMS:]
            shown.append((run, used, picked))
        else:
            missing[run.name] = why
    if not shown:
        return None, missing
    rows = sum(len(picked) + (len(picked) < len(used)) for _, used, picked in shown)
    fig, axes = _figure(len(shown), 2, title, height=1.3 + 0.3 * rows + 1.0 * len(shown))
    for (run, used, picked), (left, right) in zip(shown, axes):
        # best on top; a one-row gap separates the best from the worst when items are left out
        gap = len(picked) < len(used)
        y = [len(picked) + gap - 1 - i - (gap and i >= UTILITY_ITEMS) for i in range(len(picked))]
        scores = [utility_score(it) for it in picked]
        left.barh(y, scores, color="0.35", height=0.7)
        left.set_yticks(y, [_label(it) for it in picked], fontsize=8)
        left.axvline(0.0, color="0.2", linewidth=0.8)
        left.set_xlim(-1, 1)
        left.set_xlabel("utility score, in (-1, 1): + validated, - reversed")
        what = f"best and worst {UTILITY_ITEMS} of {len(used)}" if gap else f"all {len(used)}"
        left.set_title(f"{_text(run.name)}: {what} used items ({run.latest_bank.path.name})", fontsize=10)
        left.grid(axis="x", alpha=0.3)
        edge = [0.0] * len(picked)
        for category in CATEGORIES:
            shares = []
            for it in picked:
                u = utility_of(it)
                total = sum(u[c] for c in CATEGORIES)
                shares.append(u[category] / total if total > 0 else 0.0)
            right.barh(y, shares, left=edge, color=CATEGORY_COLOURS[category], height=0.7,
                       label=category.replace("_", "-"))
            edge = [a + b for a, b in zip(edge, shares)]
        uses = [int(utility_of(it)["uses"]) for it in picked]
        right.set_yticks(y, [f"{n} use{'s' if n != 1 else ''}" for n in uses], fontsize=8)
        right.set_xlim(0, 1)
        right.set_xlabel("share of the item's alpha weight")
        right.set_title("teacher categories of its uses", fontsize=10)
    axes[0, 1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _titled(fig, title, runs, [r.name for r, _, _ in shown])
    return fig, missing


def _learning(runs: Sequence[RunData]):
    from sgsd.learning import accuracy_curve, learning_figure

    missing = {r.name: "no validation accuracy at two steps" for r in runs if len(accuracy_curve(r)) < 2}
    return learning_figure({r.name: [r] for r in runs if r.name not in missing}), missing


_BUILDERS = {"training": _training, "polarity": _polarity, "support": _support, "gate_loss": _gate_loss,
             "skill_sd": _skill_sd, "sdar": _sdar, "rlsd": _rlsd, "episodes": _episodes, "teachers": _teachers,
             "bank": _bank, "utility": _utility, "learning": _learning}


# --------------------------------------------------------------------- entry points
def build_figures(runs: Sequence[RunData]) -> tuple[dict[str, Figure], list[str]]:
    """``{panel: Figure}`` for every panel some run can draw (in :data:`PANELS` order), and
    the notes on what was left out. Nothing is written."""
    if not runs:
        raise PlotError("no run to plot")
    from sgsd.learning import learning_figure

    methods: dict[str, list[RunData]] = {}
    for r in runs:
        methods.setdefault(r.name, []).append(r)
    figures, notes = {}, []
    if len(methods) < len(runs):  # a name given to several runs: the seeds of one method
        learning = learning_figure(methods)
        if learning is None:
            raise PlotError(f"runs that share a name ({', '.join(n for n, rs in methods.items() if len(rs) > 1)}) "
                            "are seeds of one method, drawn in learning.png only, and these runs have no "
                            "validation accuracy at two steps: give each run its own --name")
        notes.append("runs that share a name are seeds of one method: learning.png only (one name per run "
                     "draws every panel)")
        return {"learning": learning}, notes
    for panel in PANELS:
        fig, missing = _BUILDERS[panel](runs)
        if fig is None:
            if missing:  # (the episodes panel of single-turn runs says nothing)
                notes.append(f"{panel}.png: not written ({'; '.join(f'{n}: {why}' for n, why in missing.items())})")
            continue
        figures[panel] = fig
        notes += [f"{panel}.png: {n} not shown ({why})" for n, why in missing.items()]
    return figures, notes


def render(runs: Sequence[RunData], out_dir: str | os.PathLike[str]) -> Rendered:
    """Write ``<panel>.png`` for every panel some run can draw into ``out_dir``."""
    from sgsd.atomic import atomic_path

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PlotError(f"{out}: exists and is not a directory")
    figures, notes = build_figures(runs)
    if not figures:
        raise PlotError("nothing to plot: " + "; ".join(notes))
    files = []
    for panel, fig in figures.items():
        with atomic_path(out / f"{panel}.png") as tmp:  # a reader never sees half a PNG
            fig.savefig(tmp, format="png")
        files.append(out / f"{panel}.png")
    return Rendered(files=tuple(files), notes=tuple(notes))
