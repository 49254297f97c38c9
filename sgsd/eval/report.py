"""Tables of evaluation results: one run's ``summary.md``, and ``sgsd eval compare``.

    sgsd eval compare OUT_BASE OUT_SGSD ... [--name Base --name SGSD] [--metric avg] -o table.md

The comparison has the layout of the paper's Tab. 3: one row per method (run folder),
one column per dataset, then the average over those columns; values in percent with one
decimal, the best of each column in **bold** and the second best <u>underlined</u> (ties
share the mark). A run lacking a dataset shows a dash there and in its average (an
average over other columns would not compare). A run with samples still missing is
marked ``*``. The PNG beside the markdown draws the same table (matplotlib, imported
when drawing); it marks the second best in italics, having no underline. Episode datasets
(:mod:`sgsd.eval.episodes`) have their own table in ``summary.md`` and compare with
``--metric success_rate`` (or ``pass``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "CompareTable", "ReportError", "compare_runs", "summary_markdown", "write_png"]

METRICS = ("avg", "pass", "maj", "format_rate", "success_rate")
_ORDER = ("aime24", "aime25", "hmmt25", "amc2023", "math500")  # the paper's columns first


class ReportError(ValueError):
    """A run folder without a readable summary, or a bad table request."""


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _metric_key(summary: dict[str, Any], metric: str) -> str:
    if metric in ("format_rate", "success_rate"):
        return metric
    return f"{metric}@{summary['n'] if metric == 'avg' else summary['k']}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """One run's metrics per dataset, in percent (episode datasets in a table of their own)."""
    n, k = summary["n"], summary["k"]
    cols = [f"avg@{n}", f"pass@{k}", f"maj@{k}", "format_rate"]
    math = [d for d in summary["datasets"].values() if d.get("kind") != "episodes"]
    episodes = [d for d in summary["datasets"].values() if d.get("kind") == "episodes"]
    per = "samples per problem" if math else "episodes per level"
    lines = [f"# Evaluation: {_model_name(summary)}", "",
             f"{n} {per}, temperature {summary['sampling']['temperature']}, "
             f"top-p {summary['sampling']['top_p']}, top-k {summary['sampling']['top_k']}, "
             f"max new tokens {summary['sampling']['max_new_tokens']}, "
             f"thinking {'on' if summary['sampling']['enable_thinking'] else 'off'}, "
             f"prompt {summary['prompt']['mode']}; values in %.", ""]
    if math:
        lines += ["| dataset | problems | samples | " + " | ".join(cols) + " | mean tokens | truncated |",
                  "|---|---:|---:|" + "---:|" * (len(cols) + 2)]
    for d in math:
        pending = f" ({d['pending_samples']} missing)" if d["pending_samples"] else ""
        tokens = "–" if d["mean_tokens"] is None else f"{d['mean_tokens']:.0f}"
        lines.append(f"| {d['label']} | {d['problems']} | {d['samples']}{pending} | "
                     + " | ".join(_pct(d[c]) for c in cols) + f" | {tokens} | {_pct(d['truncated_rate'])} |")
    if episodes:
        lines += ([""] if math else []) + [
            f"| dataset | levels | episodes | success | pass@{k} | boxes on target | mean turns | invalid actions |"
            " failed replies |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in episodes:
        pending = f" ({d['pending_episodes']} missing)" if d["pending_episodes"] else ""
        turns = "–" if d["mean_turns"] is None else f"{d['mean_turns']:.1f}"
        lines.append(f"| {d['label']} | {d['levels']} | {d['episodes']}{pending} | {_pct(d['success_rate'])} | "
                     f"{_pct(d[f'pass@{k}'])} | {_pct(d['boxes_on_target'])} | {turns} | "
                     f"{_pct(d['invalid_rate'])} | {d['failed_replies']} |")
    unfinished = "" if summary["complete"] else "; INCOMPLETE: rerun the same command to finish"
    if math or not episodes:
        lines += ["", f"Average {_pct(summary['average'][f'avg@{n}'])} avg@{n} over {len(math)} datasets"
                  + unfinished + "."]
    if episodes:
        lines += ["", f"Average success {_pct(summary['average'].get('success_rate'))} over {len(episodes)} episode "
                  "datasets" + ("" if math else unfinished) + "."]
    return "\n".join(lines) + "\n"


def _model_name(summary: dict[str, Any]) -> str:
    model = summary.get("model", {})
    parts = [f"{key} {value}" for key, value in model.items() if value]
    return ", ".join(parts) or "?"


@dataclass(frozen=True)
class CompareTable:
    """Rows of ``values[method][column]`` (fractions; None: missing), best marks per column."""

    methods: tuple[str, ...]
    columns: tuple[str, ...]  # dataset labels, then "Avg."
    values: tuple[tuple[float | None, ...], ...]
    metric: str  # e.g. "avg@12" (or "avg@12 / avg@4" when runs differ)
    incomplete: tuple[bool, ...]

    def ranks(self, col: int) -> list[int | None]:
        """Per row: 0 best, 1 second best, None otherwise or missing (ties share a rank)."""
        distinct = sorted({round(row[col], 12) for row in self.values if row[col] is not None}, reverse=True)
        return [None if row[col] is None or round(row[col], 12) not in distinct[:2]
                else distinct.index(round(row[col], 12)) for row in self.values]

    def markdown(self) -> str:
        ranks = [self.ranks(c) for c in range(len(self.columns))]
        lines = ["| Method | " + " | ".join(self.columns) + " |", "|---|" + "---:|" * len(self.columns)]
        for r, (method, row) in enumerate(zip(self.methods, self.values)):
            cells = []
            for c, value in enumerate(row):
                text = _pct(value)
                cells.append(f"**{text}**" if ranks[c][r] == 0 else f"<u>{text}</u>" if ranks[c][r] == 1 else text)
            lines.append(f"| {method}{'*' if self.incomplete[r] else ''} | " + " | ".join(cells) + " |")
        lines += ["", f"{self.metric} in %; best **bold**, second best <u>underlined</u>; Avg. = mean over "
                  f"{', '.join(self.columns[:-1])}."]
        if any(self.incomplete):
            lines[-1] += " * = incomplete run (samples missing)."
        return "\n".join(lines) + "\n"


def compare_runs(run_dirs: Sequence[str | os.PathLike[str]], names: Sequence[str] = (), metric: str = "avg",
                 datasets: Sequence[str] = ()) -> CompareTable:
    """The Tab.-3 table of ``run_dirs`` (each holding ``summary.json``), named by ``names`` or folder."""
    if metric not in METRICS:
        raise ReportError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not run_dirs:
        raise ReportError("name at least one run folder")
    if names and len(names) != len(run_dirs):
        raise ReportError(f"{len(names)} --name for {len(run_dirs)} runs: give one per run, in order")
    summaries = []
    for run in run_dirs:
        path = Path(run) / "summary.json"
        try:
            summaries.append(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ReportError(f"{path}: not found; is {run} an `sgsd eval` output folder?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReportError(f"{path}: unreadable ({exc})") from None
    seen = [name for s in summaries for name in s.get("datasets", {})]
    if datasets:
        missing = [d for d in datasets if d not in seen]
        if missing:
            raise ReportError(f"dataset(s) {', '.join(missing)} in no run; "
                              f"the runs have: {', '.join(sorted(set(seen)))}")
        columns = list(datasets)
    else:
        columns = [d for d in _ORDER if d in seen] + sorted({d for d in seen if d not in _ORDER})
    rows, keys, labels = [], set(), {}
    for s in summaries:
        key = _metric_key(s, metric)
        keys.add(key)
        row = []
        for d in columns:
            entry = s.get("datasets", {}).get(d)
            labels.setdefault(d, entry["label"] if entry else d)
            row.append(None if entry is None else entry.get(key))
        known = [v for v in row if v is not None]
        row.append(sum(known) / len(known) if known and len(known) == len(row) else None)
        rows.append(tuple(row))
    return CompareTable(methods=tuple(names) if names else tuple(Path(r).resolve().name for r in run_dirs),
                        columns=tuple(labels[d] for d in columns) + ("Avg.",), values=tuple(rows),
                        metric=" / ".join(sorted(keys)), incomplete=tuple(not s.get("complete") for s in summaries))


def write_png(table: CompareTable, path: str | os.PathLike[str]) -> Path:
    """Draw ``table`` (best bold, second best italic) into a PNG at ``path``, atomically."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError("drawing the PNG needs matplotlib: pip install 'sgsd-verl[plot]'") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from sgsd.atomic import atomic_path

    ranks = [table.ranks(c) for c in range(len(table.columns))]
    cells = [[_pct(v) for v in row] for row in table.values]
    methods = [m + ("*" if inc else "") for m, inc in zip(table.methods, table.incomplete)]
    width = 1.6 + 1.1 * len(table.columns)
    fig, ax = plt.subplots(figsize=(width, 0.9 + 0.35 * (len(methods) + 1)))
    try:
        ax.axis("off")
        drawn = ax.table(cellText=cells, rowLabels=methods, colLabels=list(table.columns), loc="center",
                         cellLoc="center")
        drawn.scale(1.0, 1.3)
        for r in range(len(methods)):
            for c in range(len(table.columns)):
                text = drawn[r + 1, c].get_text()
                if ranks[c][r] == 0:
                    text.set_fontweight("bold")
                elif ranks[c][r] == 1:
                    text.set_fontstyle("italic")
        ax.set_title(f"{table.metric} (%): best bold, second best italic", fontsize=10)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)
