"""The live skill bank of a training run: window, updates, utility, files, resume.

:class:`BankEvolution` is everything the trainer needs around :class:`sgsd.updater.SkillUpdater`
(paper Alg. 4) and :class:`sgsd.item_utility.UtilityTracker`, with no verl in it:

* :meth:`add_records` feeds the rollout records of a step into a :class:`RecordWindow`;
* :meth:`update` runs one online update on the window (every ``freq`` steps — the
  trainer asks :meth:`due`), folds the tracked utility into the bank first (so pruning
  at capacity sees it), saves ``<dir>/bank.json`` and ``<dir>/bank.step_000025.json``
  atomically, and clears the window. A failed update — any exception from the writer,
  the parser or the merge — is logged and counted; the bank stays as it was;
* :meth:`save_checkpoint` / :meth:`load_checkpoint` keep the bank, the window and the
  pending utility next to verl's ``global_step_N`` checkpoint, so a resumed run starts
  from the evolved bank (the paper's code did not restore it).

The window is bounded without bias. The updater reads at most ``max_memories`` successes
and ``max_memories`` failures, sampled uniformly from the window, and the window's success
rate. :class:`RecordWindow` keeps exactly that: the counts, and a uniform reservoir sample
(Algorithm R) of each outcome, so memory is O(max_memories) however long the interval
and however large the batch, and the checkpoint stays small.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sgsd.atomic import atomic_write_json
from sgsd.bank import SkillBank
from sgsd.records import RolloutRecord
from sgsd.updater import SkillUpdater, UpdateReport, with_update_metadata
from sgsd.item_utility import UtilityTracker

__all__ = ["BankEvolution", "RecordWindow", "LATEST_NAME"]

logger = logging.getLogger(__name__)

LATEST_NAME = "bank.json"
STATE_NAME = "evolution_state.json"
STATE_VERSION = 1


class RecordWindow:
    """Counts of every record since the last update plus a uniform sample of each outcome."""

    def __init__(self, sample_size: int, seed: int = 0) -> None:
        if sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {sample_size}")
        self.sample_size = sample_size
        self.seed = seed
        self.clear()

    def clear(self) -> None:
        self.seen = {True: 0, False: 0}
        self.sample: dict[bool, list[RolloutRecord]] = {True: [], False: []}
        self._rng = random.Random(self.seed)

    def add(self, records: Iterable[RolloutRecord]) -> int:
        added = 0
        for record in records:
            if not record.problem:
                continue
            kind = record.success
            self.seen[kind] += 1
            kept = self.sample[kind]
            if len(kept) < self.sample_size:
                kept.append(record)
            else:  # Algorithm R: the i-th record replaces a kept one with probability k/i
                j = self._rng.randrange(self.seen[kind])
                if j < self.sample_size:
                    kept[j] = record
            added += 1
        return added

    def __len__(self) -> int:
        return self.seen[True] + self.seen[False]

    @property
    def success_rate(self) -> float:
        return self.seen[True] / len(self) if len(self) else 0.0

    def records(self) -> list[RolloutRecord]:
        return self.sample[True] + self.sample[False]

    def state_dict(self) -> dict[str, Any]:
        return {"sample_size": self.sample_size, "seed": self.seed,
                "seen": {"success": self.seen[True], "failure": self.seen[False]},
                "success": [r.to_dict() for r in self.sample[True]],
                "failure": [r.to_dict() for r in self.sample[False]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clear()
        self.seen = {True: int(state["seen"]["success"]), False: int(state["seen"]["failure"])}
        self.sample = {True: [RolloutRecord(**r) for r in state["success"]][: self.sample_size],
                       False: [RolloutRecord(**r) for r in state["failure"]][: self.sample_size]}
        # a fresh, but different, stream for the rest of the interval
        self._rng = random.Random(self.seed + len(self))


class BankEvolution:
    """Owns the training run's bank between the trainer and the files.

    Args:
        bank: the bank the run starts from (a shipped or built bank, or a restored one).
        output_dir: where ``bank.json`` and its step snapshots go.
        updater: the online updater, or None when updates are off (utility is still tracked).
        freq: update every ``freq`` steps.
        max_memories: the window's per-outcome sample (the updater reads at most this many).
        tracker: per-item utility; None disables tracking.
    """

    def __init__(self, bank: SkillBank, output_dir: str | Path, *, updater: SkillUpdater | None = None,
                 freq: int = 25, max_memories: int = 32, tracker: UtilityTracker | None = None,
                 seed: int = 0) -> None:
        if freq < 1:
            raise ValueError(f"freq must be >= 1, got {freq}")
        self.bank = bank
        self.output_dir = Path(output_dir)
        self.updater = updater
        self.freq = freq
        self.tracker = tracker
        self.window = RecordWindow(max_memories, seed)
        self.updates_applied = 0
        self.updates_skipped = 0
        self.updates_failed = 0
        self.last_report: UpdateReport | None = None

    @property
    def latest_path(self) -> Path:
        return self.output_dir / LATEST_NAME

    # ------------------------------------------------------------------ per step
    def add_records(self, records: Iterable[RolloutRecord]) -> int:
        return self.window.add(records)

    def due(self, step: int) -> bool:
        return self.updater is not None and step > 0 and step % self.freq == 0

    def update(self, step: int) -> tuple[bool, dict[str, float]]:
        """One online update on the window. Returns (bank changed, ``sgsd/update/*`` metrics)."""
        if self.updater is None:
            raise RuntimeError("BankEvolution.update called without an updater (sgsd.update.enable=false)")
        start = time.perf_counter()
        base = self._fold_utility(self.bank)
        try:
            new_bank, report = self.updater.update(base, self.window.records(), step,
                                                   success_rate=self.window.success_rate,
                                                   window_size=len(self.window))
        except Exception as exc:  # the writer, the parser or the merge: never fatal for training
            logger.exception("SGSD online bank update at step %d failed; the bank is unchanged", step)
            self.updates_failed += 1
            self.window.clear()
            self.bank = base
            return False, {"sgsd/update/failed": 1.0, "sgsd/update/seconds": time.perf_counter() - start,
                           **self._size_metrics(), "sgsd/update/error_" + type(exc).__name__: 1.0}
        self.window.clear()
        self.last_report = report
        if report.applied:
            self.updates_applied += 1
            self.bank = with_update_metadata(new_bank, report)
            self.save(step)
        else:
            self.updates_skipped += 1
            self.bank = base
        metrics = {**report.metrics(), "sgsd/update/failed": 0.0, **self._size_metrics()}
        return report.applied, metrics

    def _fold_utility(self, bank: SkillBank) -> SkillBank:
        return self.tracker.apply(bank) if self.tracker is not None else bank

    def _size_metrics(self) -> dict[str, float]:
        out = {}
        for kind, counts in self.bank.counts().items():
            for origin, n in counts.items():
                out[f"sgsd/bank/{kind}_{origin}"] = float(n)
        return out

    def metrics(self) -> dict[str, float]:
        """Bank sizes, update counters and the utility window (logged every step)."""
        tracked = self.tracker.metrics() if self.tracker is not None else {}
        return {**self._size_metrics(), **tracked, "sgsd/update/total_applied": float(self.updates_applied),
                "sgsd/update/total_skipped": float(self.updates_skipped),
                "sgsd/update/total_failed": float(self.updates_failed),
                "sgsd/update/window_records": float(len(self.window))}

    # ------------------------------------------------------------------ files
    def flush(self) -> Path:
        """Fold pending utility into the bank and save ``bank.json`` (no snapshot)."""
        self.bank = self._fold_utility(self.bank)
        return self.bank.save(self.latest_path)

    def save(self, step: int) -> tuple[Path, Path]:
        """``bank.json`` and ``bank.step_NNNNNN.json``, both atomic."""
        return self.bank.save_snapshot(self.latest_path, step)

    def prepare_output_dir(self, resuming: bool) -> Path | None:
        """Make ``output_dir`` ready for a run; a previous run's files are moved aside, never lost.

        Returns where an earlier run's files were moved, if anywhere.
        """
        moved = None
        if not resuming and self.output_dir.exists() and any(self.output_dir.iterdir()):
            moved = self.output_dir.with_name(self.output_dir.name + time.strftime(".previous-%Y%m%d-%H%M%S"))
            suffix = 1
            while moved.exists():
                moved = moved.with_name(moved.name.split("~")[0] + f"~{suffix}")
                suffix += 1
            shutil.move(str(self.output_dir), str(moved))
            logger.warning("SGSD: %s held an earlier run's bank files; moved them to %s", self.output_dir, moved)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return moved

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "window": self.window.state_dict(),
                "tracker": self.tracker.state_dict() if self.tracker is not None else None,
                "counters": {"applied": self.updates_applied, "skipped": self.updates_skipped,
                             "failed": self.updates_failed}}

    def save_checkpoint(self, folder: str | Path) -> Path:
        """The bank and the evolution state into ``folder`` (e.g. ``global_step_50/sgsd``).

        The bank file is written first and the state last, each atomically: a folder with a
        state file always has the bank that belongs to it.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.bank.save(folder / LATEST_NAME)
        atomic_write_json(folder / STATE_NAME, self.state_dict())
        return folder

    def load_checkpoint(self, folder: str | Path) -> bool:
        """Restore from :meth:`save_checkpoint`'s folder; False (and nothing changed) if absent."""
        folder = Path(folder)
        state_path = folder / STATE_NAME
        if not state_path.exists():
            return False
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{state_path}: not valid JSON ({exc})") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"{state_path}: unsupported SGSD evolution state (expected version {STATE_VERSION})")
        bank = SkillBank.load(folder / LATEST_NAME)  # empty: a cold start saved before its first update
        try:
            self.window.load_state_dict(state["window"])
            if self.tracker is not None and state.get("tracker") is not None:
                self.tracker.load_state_dict(state["tracker"])
            counters = state.get("counters", {})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{state_path}: malformed SGSD evolution state ({exc})") from None
        self.bank = bank
        self.updates_applied = int(counters.get("applied", 0))
        self.updates_skipped = int(counters.get("skipped", 0))
        self.updates_failed = int(counters.get("failed", 0))
        return True
