"""Rollout records: the bounded buffer behind the reward-manager hook, and the memory a skill
writer sees of a rollout."""

from __future__ import annotations

import threading

import pytest

from sgsd.records import RecordBuffer, RolloutRecord, memory_record, trajectory_summary


def _rec(i: int, reward: float = 1.0) -> RolloutRecord:
    return RolloutRecord(problem=f"p{i}", response=f"r{i}", reward=reward, data_source="math", step=i)


def test_drain_returns_each_record_once_in_order():
    buf = RecordBuffer(10)
    buf.extend([_rec(0), _rec(1)])
    buf.extend([_rec(2)])
    assert [r.problem for r in buf.drain()] == ["p0", "p1", "p2"]
    assert buf.drain() == [] and len(buf) == 0
    assert buf.appended == 3 and buf.dropped == 0


def test_bounded_drops_oldest_and_counts():
    buf = RecordBuffer(3)
    assert buf.extend([_rec(i) for i in range(5)]) == 2
    assert [r.step for r in buf.drain()] == [2, 3, 4]
    assert buf.dropped == 2
    with pytest.raises(ValueError):
        RecordBuffer(0)


def test_concurrent_writers_lose_nothing():
    buf = RecordBuffer(100_000)
    threads = [threading.Thread(target=lambda k=k: [buf.extend([_rec(k * 1000 + i)]) for i in range(1000)])
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = buf.drain()
    assert len(records) == 8000 and len({r.step for r in records}) == 8000


def test_success_is_positive_reward():
    assert _rec(0, 1.0).success and not _rec(0, 0.0).success and not _rec(0, -1.0).success


def test_memory_record_fields():
    rec = RolloutRecord("P", "x" * 100 + " \\boxed{7}", 0.0, "math", 3, "8")
    memory = memory_record(rec, max_chars=40)
    assert memory["predicted_answer"] == "7" and memory["reference_answer"] == "8"
    assert memory["completion"] == "x" * 20 + "\n...\n" + rec.response[-20:]  # head and tail kept
    assert memory["feedback"] == "The final answer does not match the reference."
    unboxed = memory_record(RolloutRecord("P", "no answer", 0.0), max_chars=100)
    assert unboxed["predicted_answer"] is None and unboxed["feedback"] == "No final \\boxed{} answer was given."


def test_trajectory_summary_keeps_the_answer_parts_head_and_tail():
    text = "<think>long thoughts\nmore</think>\n" + "\n".join(f"line {i}" for i in range(10)) + "\n\\boxed{4}"
    assert trajectory_summary(text) == "line 0\nline 1\nline 2\n[... 5 more lines ...]\nline 8\nline 9\n\\boxed{4}"
    assert trajectory_summary("  a   b \n\n c") == "a b\nc"
    assert trajectory_summary("x" * 400).endswith("...") and len(trajectory_summary("x" * 400)) == 300
