"""What a training run leaves behind, read back: its metrics file and its bank snapshots.

* The metrics file is verl's ``file`` logger output (``trainer.logger=[...,file]``, path
  ``$VERL_FILE_LOGGER_PATH``, else ``./<project>/<experiment>.jsonl``): one
  ``{"step": n, "data": {key: value}}`` per line. A step logged on several lines (a resumed
  run, validation logged apart) is merged, the later line winning per key. A torn last
  line (no newline: the run is still writing it) is skipped; a damaged line anywhere else
  is an error naming the file and the line.
* The bank directory (``sgsd.bank_output_dir``, default ``<trainer.default_local_dir>/sgsd_bank``)
  holds ``bank.json`` (the latest bank) and ``bank.step_NNNNNN.json`` (one per applied update).
* A run directory of ``python -m recipe.sgsd.cpu.run`` holds both: ``metrics.jsonl`` and
  ``checkpoints/sgsd_bank``. verl's defaults put them, relative to the launch folder, at
  ``<project>/<experiment>.jsonl`` and ``checkpoints/<project>/<experiment>/sgsd_bank``
  (the GPU scripts' layout); both layouts are found from the metrics path alone.

:mod:`sgsd.plot` draws them; nothing here imports matplotlib or torch.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sgsd import bounded_json
from sgsd.bank import SkillBank
from sgsd.evolution import LATEST_NAME

__all__ = ["BANK_SUBDIR", "METRICS_NAME", "BankSnapshot", "RunData", "RunMetricsError", "load_bank_dir",
           "load_metrics", "load_run"]

METRICS_NAME = "metrics.jsonl"  # recipe.sgsd.cpu.run's file-logger path inside a run directory
BANK_SUBDIR = Path("checkpoints") / "sgsd_bank"
_SNAPSHOT = re.compile(r"\.step_(\d+)\.json$")


class RunMetricsError(ValueError):
    """A metrics file, bank directory or run path cannot be read; the message names it."""


@dataclass(frozen=True)
class BankSnapshot:
    """A bank file of a run: ``step`` from ``bank.step_NNNNNN.json``, None for ``bank.json``."""

    step: int | None
    path: Path
    bank: SkillBank


@dataclass(frozen=True)
class RunData:
    """One run: its name (legends), metrics per step and bank files."""

    name: str
    metrics_path: Path
    steps: Mapping[int, Mapping[str, float]]  # step -> {metric key: value}, steps ascending
    snapshots: tuple[BankSnapshot, ...] = ()  # step snapshots ascending, then bank.json

    @property
    def is_sgsd(self) -> bool:
        """Whether the run logged any ``sgsd/*`` metric (a GRPO run logs none)."""
        return any(k.startswith("sgsd/") for d in self.steps.values() for k in d)

    @property
    def latest_bank(self) -> BankSnapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    def has(self, key: str) -> bool:
        return any(key in d for d in self.steps.values())

    def keys(self) -> list[str]:
        return sorted({k for d in self.steps.values() for k in d})

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """The steps that logged ``key`` and its values there."""
        pairs = [(s, d[key]) for s, d in self.steps.items() if key in d]
        return [s for s, _ in pairs], [v for _, v in pairs]


def load_metrics(path: str | os.PathLike[str]) -> dict[int, dict[str, float]]:
    """Parse a verl ``file`` logger JSONL into ``{step: {key: value}}`` (steps ascending).

    Finite numbers are kept (booleans as 0/1); strings, null and NaN are dropped.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunMetricsError(f"{p}: metrics file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunMetricsError(f"{p}: cannot read the metrics file: {exc}") from None
    lines = text.split("\n")
    steps: dict[int, dict[str, float]] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = bounded_json.loads(line, allow_nan=True)  # verl's file logger writes NaN; dropped below
        except json.JSONDecodeError as exc:
            if lineno == len(lines):  # no newline after it: a write still in progress
                break
            raise RunMetricsError(f"{p}: line {lineno}: invalid JSON at column {exc.colno}: {exc.msg}") from None
        if not (isinstance(obj, dict) and isinstance(obj.get("step"), int) and isinstance(obj.get("data"), dict)):
            raise RunMetricsError(f'{p}: line {lineno}: expected {{"step": <int>, "data": {{...}}}} '
                                  f"(verl's file logger), got {line[:80]!r}")
        values = steps.setdefault(obj["step"], {})
        for key, value in obj["data"].items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                values[key] = float(value)
    if not steps:
        raise RunMetricsError(f"{p}: no metric lines (expected one JSON object per training step)")
    return dict(sorted(steps.items()))


def load_bank_dir(bank_dir: str | os.PathLike[str]) -> tuple[BankSnapshot, ...]:
    """The step snapshots of a bank directory (ascending), then ``bank.json`` if present.

    Every file is validated (:meth:`SkillBank.load`; an invalid one raises ``BankError``).
    """
    d = Path(bank_dir)
    if not d.is_dir():
        raise RunMetricsError(f"{d}: bank directory not found")
    snapshots = sorted((int(m.group(1)), f) for f in d.glob("*.step_*.json") if (m := _SNAPSHOT.search(f.name)))
    found = [BankSnapshot(step, f, SkillBank.load(f)) for step, f in snapshots]
    if (d / LATEST_NAME).is_file():
        found.append(BankSnapshot(None, d / LATEST_NAME, SkillBank.load(d / LATEST_NAME)))
    if not found:
        raise RunMetricsError(f"{d}: no {LATEST_NAME} or bank.step_NNNNNN.json in the bank directory")
    return tuple(found)


def load_run(path: str | os.PathLike[str], *, name: str | None = None,
             bank_dir: str | os.PathLike[str] | None = None) -> RunData:
    """A run from its metrics file or its run directory.

    The bank directory is ``bank_dir`` when given (it must hold a bank), else the first of
    ``<run dir>/checkpoints/sgsd_bank`` and (for ``<project>/<experiment>.jsonl``) verl's
    ``checkpoints/<project>/<experiment>/sgsd_bank`` beside ``<project>`` that holds one. The
    name defaults to the run directory's name, or the metrics file's stem when the file is not
    called ``metrics.jsonl``.
    """
    p = Path(path)
    if p.is_dir():
        metrics, root = p / METRICS_NAME, p
        if not metrics.is_file():
            raise RunMetricsError(f"{p}: no {METRICS_NAME} in this run directory (give the metrics file itself)")
    elif p.is_file():
        metrics, root = p, p.parent
    else:
        raise RunMetricsError(f"{p}: no such run directory or metrics file")
    if name is None:
        name = root.resolve().name if metrics.name == METRICS_NAME else metrics.stem
    if not name.strip():
        raise RunMetricsError(f"{p}: empty run name")
    steps = load_metrics(metrics)
    candidates = [root / BANK_SUBDIR]
    if metrics.name != METRICS_NAME:  # verl's default file-logger and checkpoint paths
        candidates.append(root.parent / "checkpoints" / root.name / metrics.stem / "sgsd_bank")
    if bank_dir is None:
        bank_dir = next((d for d in candidates if (d / LATEST_NAME).is_file() or any(d.glob("*.step_*.json"))),
                        None)
    snapshots = load_bank_dir(bank_dir) if bank_dir is not None else ()
    return RunData(name=name, metrics_path=metrics, steps=steps, snapshots=snapshots)
