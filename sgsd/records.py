"""Rollout records for the online skill updater (paper Alg. 4's window W).

Every scored rollout becomes a :class:`RolloutRecord` (and, for a skill writer, a memory:
:func:`memory_record`, the same for the cold-start builder and the online updater); a :class:`RecordBuffer` keeps the
ones not yet read, bounded in size (the oldest are dropped first, and counted, so a
stalled reader cannot grow memory without limit), and hands them out exactly once.

A record is either a single-turn math rollout (the default) or, with ``episode=True``, a
multi-turn agent episode: ``problem`` is the episode's task message, ``response`` its
plain-text transcript (turns, then an ``Outcome:`` line), ``reward`` 1.0 when solved and
``answer`` None. The skill writers word their prompts for the episode
(``docs/agent-prompts.md``); a record saved before the field existed loads with
``episode=False``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["EPISODE_FAILURE", "EPISODE_SUCCESS", "RecordBuffer", "RolloutRecord", "episode_outcome", "memory_record",
           "trajectory_summary"]


@dataclass(frozen=True)
class RolloutRecord:
    problem: str
    response: str
    reward: float
    data_source: str = ""
    step: int | None = None
    answer: str | None = None
    episode: bool = False  # a multi-turn agent episode (task message + transcript), not a math rollout

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


def trajectory_summary(completion: str, *, head: int = 3, tail: int = 3, max_line_chars: int = 300) -> str:
    """First ``head`` and last ``tail`` non-empty lines of the reply's answer part, whitespace
    collapsed and cut to ``max_line_chars``; the lines between are replaced by a count."""
    text = completion
    if "</think>" in text and text.rsplit("</think>", 1)[1].strip():
        text = text.rsplit("</think>", 1)[1]
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line if len(line) <= max_line_chars else line[:max_line_chars - 3] + "..." for line in lines if line]
    if len(lines) > head + tail:
        omitted = len(lines) - head - tail
        lines = lines[:head] + [f"[... {omitted} more lines ...]"] + (lines[-tail:] if tail else [])
    return "\n".join(lines)


#: The verdict an episode's writers are shown (summary prompt and memory record alike).
EPISODE_SUCCESS = "SUCCESS: the task was solved."
EPISODE_FAILURE = "FAILURE: the task was not solved within the turn limit."


def episode_outcome(record: RolloutRecord) -> str:
    """:data:`EPISODE_SUCCESS` or :data:`EPISODE_FAILURE` for an episode's reward."""
    return EPISODE_SUCCESS if record.success else EPISODE_FAILURE


def _cut_middle(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars // 2] + "\n...\n" + text[-max_chars // 2:]


def memory_record(record: RolloutRecord, max_chars: int) -> dict[str, Any]:
    """A memory (paper Alg. 2: problem, completion, reward, answers, trajectory summary, feedback)
    from a rollout; the cold-start builder and the online updater use the same one.

    An episode's memory is ``{"task", "episode", "reward", "outcome"}`` instead: the task
    message, the transcript (cut like a completion, head and tail kept, so its closing
    ``Outcome:`` line survives) and the verdict; there is no answer to extract or compare.
    """
    if record.episode:
        return {"task": record.problem, "episode": _cut_middle(record.response, max_chars),
                "reward": record.reward, "outcome": episode_outcome(record)}
    from sgsd.verifier import extract_answer

    completion = _cut_middle(record.response, max_chars)
    predicted = extract_answer(record.response)
    feedback = ("The final answer matches the reference." if record.success else
                "No final \\boxed{} answer was given." if predicted is None else
                "The final answer does not match the reference.")
    return {"problem": record.problem, "completion": completion, "reward": record.reward,
            "predicted_answer": predicted, "reference_answer": record.answer,
            "trajectory_summary": trajectory_summary(record.response), "feedback": feedback}
