"""Learning curves of methods over seeds: validation accuracy against step and against wall time.

A *method* is a name and its runs (one per seed, :class:`sgsd.run_metrics.RunData`). From each run
this reads verl's validation accuracy (``val-core/<source>/acc/mean@N``: the first source a run
logs), its step times (``timing_s/step``), its rollouts and generated tokens, and summarises a method
over its seeds (:func:`summarise`: mean and sample standard deviation at the first and last
validated step) for the markdown table of ``scripts/bench_learning.py``; :func:`learning_figure`
draws every method's mean curve with its min-max band over seeds (``sgsd plot`` writes it as
``learning.png``). matplotlib is imported only when drawing.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sgsd.run_metrics import RunData

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["MethodSummary", "accuracy_curve", "learning_figure", "markdown_table", "summarise", "wall_clock"]

_ACCURACY = re.compile(r"^val-core/(?P<source>.+)/acc/mean@(?P<n>\d+)$")


def accuracy_curve(run: RunData) -> list[tuple[int, float]]:
    """``[(step, validation accuracy)]`` of ``run``, steps ascending (step 0: before training)."""
    key = None
    for data in run.steps.values():
        key = next((k for k in sorted(data) if _ACCURACY.match(k)), None)
        if key:
            break
    if key is None:
        return []
    return [(step, float(data[key])) for step, data in run.steps.items()
            if key in data and math.isfinite(float(data[key]))]


def wall_clock(run: RunData) -> dict[int, float]:
    """Seconds of training up to the end of each step (verl's ``timing_s/step`` summed; step 0: 0)."""
    total, out = 0.0, {0: 0.0}
    for step, data in run.steps.items():
        total += float(data.get("timing_s/step", 0.0))
        out[step] = total
    return out


@dataclass(frozen=True)
class MethodSummary:
    """One method over its seeds (accuracies: mean and sample standard deviation, 0 for one seed)."""

    name: str
    seeds: int
    first_step: int
    last_step: int
    start_mean: float
    start_std: float
    end_mean: float
    end_std: float
    gain_mean: float
    gain_std: float
    rollouts: float  # per seed
    tokens: float  # generated response tokens per seed
    seconds: float  # training seconds per seed (timing_s/step summed)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(name: str, runs: Sequence[RunData], rollouts_per_step: int) -> MethodSummary:
    """``runs`` (one per seed) of one method; ``rollouts_per_step`` = problems x rollouts each."""
    curves = [accuracy_curve(r) for r in runs]
    if not runs or any(len(c) < 2 for c in curves):
        raise ValueError(f"{name}: every run needs validation accuracy at two steps at least")
    starts, ends = [c[0][1] for c in curves], [c[-1][1] for c in curves]
    trained = [[d for s, d in r.steps.items() if s > 0 and "timing_s/step" in d] for r in runs]
    tokens = [sum(float(d.get("response_length/mean", 0.0)) * rollouts_per_step for d in t) for t in trained]
    return MethodSummary(
        name, len(runs), curves[0][0][0], curves[0][-1][0], *_mean_std(starts), *_mean_std(ends),
        *_mean_std([e - s for s, e in zip(starts, ends)]),
        rollouts=statistics.fmean(len(t) * rollouts_per_step for t in trained),
        tokens=statistics.fmean(tokens), seconds=statistics.fmean(wall_clock(r)[max(r.steps)] for r in runs))


def markdown_table(summaries: Sequence[MethodSummary]) -> str:
    """The comparison as a markdown table, one row per method, in the order given."""
    lines = ["| method | seeds | val. acc. step 0 | val. acc. end | gain | rollouts | tokens generated | "
             "training time (s) |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s.name} | {s.seeds} | {s.start_mean:.3f} ± {s.start_std:.3f} | {s.end_mean:.3f} ± "
                     f"{s.end_std:.3f} (step {s.last_step}) | {s.gain_mean:+.3f} ± {s.gain_std:.3f} | "
                     f"{s.rollouts:.0f} | {s.tokens:,.0f} | {s.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def learning_figure(methods: Mapping[str, Sequence[RunData]]) -> Figure | None:
    """Validation accuracy against step and against training wall time, one colour per method:
    the mean over its seeds, a band from the lowest to the highest seed. ``None``: no method has
    validation accuracy at two steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = {name: runs for name, runs in methods.items() if runs and all(len(accuracy_curve(r)) >= 2 for r in runs)}
    if not drawn:
        return None
    fig = Figure(figsize=(11.2, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    for index, (name, runs) in enumerate(drawn.items()):
        colour = f"C{index % 10}"
        curves = [dict(accuracy_curve(r)) for r in runs]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        values = [[c[s] for c in curves] for s in steps]
        mean = [statistics.fmean(v) for v in values]
        label = name if len(runs) == 1 else f"{name} ({len(runs)} seeds)"
        clocks = [wall_clock(r) for r in runs]
        times = [statistics.fmean(c.get(s, math.nan) for c in clocks) / 60 for s in steps]
        for ax, x in ((by_step, steps), (by_time, times)):
            ax.plot(x, mean, color=colour, marker="o", markersize=3, label=label)
            if len(runs) > 1:
                ax.fill_between(x, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.15)
    by_step.set(title="Validation accuracy by step", xlabel="training step", ylabel="validation accuracy")
    by_time.set(title="... by training time", xlabel="training time (minutes, timing_s/step summed)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    fig.suptitle("Learning curves: mean over seeds, band = lowest to highest seed", fontsize=12)
    return fig
