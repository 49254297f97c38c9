"""Rollout records for the online skill updater (paper Alg. 4's window W).

Every scored rollout becomes a :class:`RolloutRecord`; a :class:`RecordBuffer` keeps the
ones not yet read, bounded in size (the oldest are dropped first, and counted, so a
stalled reader cannot grow memory without limit), and hands them out exactly once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass

__all__ = ["RecordBuffer", "RolloutRecord"]


@dataclass(frozen=True)
class RolloutRecord:
    problem: str
    response: str
    reward: float
    data_source: str = ""
    step: int | None = None
    answer: str | None = None

    @property
    def success(self) -> bool:
        return self.reward > 0

    def to_dict(self) -> dict:
        return asdict(self)


class RecordBuffer:
    """Thread-safe bounded FIFO of records; :meth:`drain` returns each record once."""

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self._items: deque[RolloutRecord] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.appended = 0
        self.dropped = 0

    def extend(self, records: Iterable[RolloutRecord]) -> int:
        """Add records; returns how many old ones were dropped to make room."""
        dropped = 0
        with self._lock:
            for record in records:
                if len(self._items) == self._items.maxlen:
                    dropped += 1
                self._items.append(record)
                self.appended += 1
            self.dropped += dropped
        return dropped

    def drain(self) -> list[RolloutRecord]:
        """All records added since the last drain, oldest first."""
        with self._lock:
            out = list(self._items)
            self._items.clear()
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
