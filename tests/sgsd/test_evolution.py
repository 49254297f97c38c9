"""The live bank of a run (sgsd.evolution): the bounded window, updates with a real
(scripted) writer, files and snapshots, failures, utility, checkpoint/resume."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from sgsd.bank import SkillBank
from sgsd.evolution import BankEvolution, RecordWindow
from sgsd.llm.scripted import ScriptedClient
from sgsd.records import RolloutRecord
from sgsd.updater import SkillUpdater, UpdateConfig
from sgsd.item_utility import UtilityTracker, utility_of
from tests.skill_writer import writer_reply


def _writer() -> ScriptedClient:
    counter = iter(range(1, 10**6))
    return ScriptedClient(lambda prompt: writer_reply(prompt, next(counter)))


def _records(successes: int, failures: int, step: int = 1) -> list[RolloutRecord]:
    return ([RolloutRecord(f"ok problem {step}.{i}", f"so \\boxed{{{i}}}", 1.0, "math", step, str(i))
             for i in range(successes)]
            + [RolloutRecord(f"bad problem {step}.{i}", "\\boxed{0}", 0.0, "math", step, "1")
               for i in range(failures)])


@pytest.fixture
def bank(shipped_bank) -> SkillBank:
    return shipped_bank.with_items(general_skills=shipped_bank.general_skills[:6],
                                   common_mistakes=shipped_bank.common_mistakes[:6])


def _evolution(bank, tmp_path, *, n=5, c=8, client=None, tracker=True, max_memories=4) -> BankEvolution:
    updater = SkillUpdater(client or _writer(), UpdateConfig(max_new_items=n, capacity=c, max_memories=max_memories))
    return BankEvolution(bank, tmp_path / "bank_out", updater=updater, freq=2, max_memories=max_memories,
                         tracker=UtilityTracker() if tracker else None)


# ----------------------------------------------------------------------------- window
def test_window_counts_everything_but_keeps_a_bounded_sample():
    window = RecordWindow(sample_size=3, seed=1)
    assert window.add(_records(40, 25)) == 65
    assert window.add([RolloutRecord("", "x", 1.0)]) == 0  # no problem text: not a memory
    assert len(window) == 65 and window.success_rate == pytest.approx(40 / 65)
    kept = window.records()
    assert len(kept) == 6 and sum(r.success for r in kept) == 3
    window.clear()
    assert len(window) == 0 and window.records() == []


def test_window_sample_is_uniform_over_the_interval():
    # Algorithm R: every record of a 20-record stream is kept with probability 4/20.
    hits = Counter()
    for seed in range(3000):
        window = RecordWindow(sample_size=4, seed=seed)
        for i in range(20):
            window.add([RolloutRecord(f"p{i}", "r", 1.0)])
        hits.update(r.problem for r in window.records())
    freqs = [hits[f"p{i}"] / 3000 for i in range(20)]
    assert all(abs(f - 0.2) < 0.035 for f in freqs), freqs  # first and last alike


def test_window_state_round_trip():
    window = RecordWindow(sample_size=2, seed=3)
    window.add(_records(5, 3))
    state = json.loads(json.dumps(window.state_dict()))
    other = RecordWindow(sample_size=2)
    other.load_state_dict(state)
    assert len(other) == 8 and other.records() == window.records()


# ----------------------------------------------------------------------------- updates
def test_updates_grow_by_at_most_n_never_beyond_c_and_leave_static_items(bank, tmp_path):
    evo = _evolution(bank, tmp_path, n=5, c=8)
    evo.prepare_output_dir(resuming=False)
    sizes = []
    for step in (2, 4, 6):
        evo.add_records(_records(3, 5, step))
        before = evo.bank.counts()
        changed, metrics = evo.update(step)
        after = evo.bank.counts()
        assert changed and metrics["sgsd/update/applied"] == 1.0 and metrics["sgsd/update/failed"] == 0.0
        for kind in ("general_skills", "common_mistakes"):
            assert after[kind]["dynamic"] - before[kind]["dynamic"] <= 5
            assert after[kind]["dynamic"] <= 8
            assert after[kind]["static"] == 6
            assert evo.bank.items(kind)[:6] == bank.items(kind)  # static items untouched, in place
        sizes.append(after["general_skills"]["dynamic"])
        # latest and snapshot on disk, both loadable and equal to the live bank
        latest = SkillBank.load(evo.latest_path)
        snap = SkillBank.load(evo.output_dir / f"bank.step_{step:06d}.json")
        assert latest.to_dict() == snap.to_dict() == evo.bank.to_dict()
        assert len(evo.window) == 0  # the window restarts after each update
    assert sizes == [5, 8, 8]
    history = evo.bank.metadata["online_updates"]
    assert [h["step"] for h in history] == [2, 4, 6]


def test_skip_uses_the_whole_windows_success_rate_not_the_sample(bank, tmp_path):
    evo = _evolution(bank, tmp_path, max_memories=2)
    evo.add_records(_records(90, 10))  # the sample holds 2 + 2, the window 90% successes
    changed, metrics = evo.update(2)
    assert not changed and metrics["sgsd/update/skipped"] == 1.0
    assert metrics["sgsd/update/success_rate"] == pytest.approx(0.9)
    assert metrics["sgsd/update/window"] == 100
    assert evo.bank is bank and not evo.latest_path.exists()


def test_a_failing_writer_leaves_the_bank_and_training_alone(bank, tmp_path):
    class Broken:
        name, stats = "broken", None

        def generate(self, prompts, settings=None):
            raise ConnectionError("writer went away")

    evo = _evolution(bank, tmp_path, client=Broken())
    evo.prepare_output_dir(resuming=False)
    evo.add_records(_records(2, 6))
    changed, metrics = evo.update(2)
    assert not changed and evo.bank.to_dict() == bank.to_dict()
    assert metrics["sgsd/update/failed"] == 1.0 and metrics["sgsd/update/error_ConnectionError"] == 1.0
    assert list(evo.output_dir.iterdir()) == [] and evo.updates_failed == 1
    # garbage replies: counted, nothing added, nothing written
    evo = _evolution(bank, tmp_path / "g", client=ScriptedClient(lambda p: "<think>hmm</think> no json"))
    evo.add_records(_records(2, 6))
    changed, metrics = evo.update(2)
    assert not changed and metrics["sgsd/update/parse_failures"] > 0 and evo.bank.to_dict() == bank.to_dict()


def test_due_every_freq_steps_only_with_an_updater(bank, tmp_path):
    evo = _evolution(bank, tmp_path)
    assert [s for s in range(1, 9) if evo.due(s)] == [2, 4, 6, 8]
    assert not BankEvolution(bank, tmp_path / "x", updater=None, freq=2).due(2)


# ----------------------------------------------------------------------------- utility
def _observe(tracker, skill_ids, mistake_ids, support, outcome):
    k = len(skill_ids)
    tracker.observe([skill_ids], [mistake_ids], torch.tensor([support]), torch.full((1, k), 1.0 / k),
                    torch.tensor([outcome]), 0.05)


def test_utility_is_folded_in_before_pruning_so_the_least_useful_dynamic_item_goes(bank, tmp_path):
    evo = _evolution(bank, tmp_path, n=2, c=3)
    evo.add_records(_records(2, 4))
    evo.update(2)  # 2 dynamic skills: gen_dyn_0001 (older), gen_dyn_0002
    dyn = [s.skill_id for s in evo.bank.general_skills if s.origin == "dynamic"]
    assert dyn == ["gen_dyn_0001", "gen_dyn_0002"]
    mistake = evo.bank.common_mistakes[0].mistake_id
    # the NEWER item is misleading on failures, the older one helpful on successes
    for _ in range(5):
        _observe(evo.tracker, ["gen_dyn_0002"], [mistake], [0.9], 1.0 * -1)
        _observe(evo.tracker, ["gen_dyn_0001"], [mistake], [0.9], 1.0)
    evo.add_records(_records(2, 4, step=4))
    evo.update(4)
    kept = [s.skill_id for s in evo.bank.general_skills if s.origin == "dynamic"]
    # 4 dynamic items for C=3: the two new ones are protected; of the old, the reversed one goes
    assert kept == ["gen_dyn_0001", "gen_dyn_0003", "gen_dyn_0004"]  # by utility, not by age
    stored = utility_of(next(s for s in evo.bank.general_skills if s.skill_id == "gen_dyn_0001"))
    assert stored["helpful"] == pytest.approx(5.0) and stored["uses"] == 5
    assert SkillBank.load(evo.latest_path).to_dict() == evo.bank.to_dict()  # utility is on disk


def test_flush_writes_pending_utility_without_a_snapshot(bank, tmp_path):
    evo = _evolution(bank, tmp_path)
    evo.prepare_output_dir(resuming=False)
    skill, mistake = bank.general_skills[0].skill_id, bank.common_mistakes[0].mistake_id
    _observe(evo.tracker, [skill], [mistake], [-0.5], -1.0)  # a warning teacher
    evo.flush()
    saved = SkillBank.load(evo.latest_path)
    assert utility_of(saved.get(skill))["warning"] == pytest.approx(1.0)
    assert utility_of(saved.get(mistake))["warning"] == pytest.approx(1.0)
    assert sorted(p.name for p in evo.output_dir.iterdir()) == ["bank.json"]


# ----------------------------------------------------------------------------- resume
def test_checkpoint_round_trip_restores_bank_window_and_pending_utility(bank, tmp_path):
    evo = _evolution(bank, tmp_path)
    evo.add_records(_records(1, 6))
    evo.update(2)
    evo.add_records(_records(3, 2, step=3))
    skill, mistake = evo.bank.general_skills[-1].skill_id, evo.bank.common_mistakes[0].mistake_id
    _observe(evo.tracker, [skill], [mistake], [0.4], 1.0)
    folder = evo.save_checkpoint(tmp_path / "global_step_3" / "sgsd")

    fresh = _evolution(bank, tmp_path / "other")
    assert fresh.load_checkpoint(folder)
    assert fresh.bank.to_dict() == evo.bank.to_dict() and fresh.bank.counts() != bank.counts()
    assert len(fresh.window) == 5 and fresh.window.records() == evo.window.records()
    assert fresh.tracker.pending() == evo.tracker.pending() and fresh.updates_applied == 1
    assert not _evolution(bank, tmp_path / "x").load_checkpoint(tmp_path / "nowhere")


def test_a_corrupt_checkpoint_state_names_the_file(bank, tmp_path):
    evo = _evolution(bank, tmp_path)
    folder = evo.save_checkpoint(tmp_path / "ck")
    (folder / "evolution_state.json").write_text("{not json")
    with pytest.raises(ValueError, match="evolution_state.json"):
        _evolution(bank, tmp_path / "y").load_checkpoint(folder)


def test_a_new_run_moves_an_earlier_runs_files_aside(bank, tmp_path):
    evo = _evolution(bank, tmp_path)
    evo.prepare_output_dir(resuming=False)
    evo.save(7)
    again = _evolution(bank, tmp_path)
    moved = again.prepare_output_dir(resuming=False)
    assert moved is not None and (moved / "bank.step_000007.json").exists()
    assert again.output_dir.exists() and list(again.output_dir.iterdir()) == []
    # resuming keeps the files where they are
    again.save(9)
    assert _evolution(bank, tmp_path).prepare_output_dir(resuming=True) is None
    assert (again.output_dir / "bank.step_000009.json").exists()


def test_random_update_sequences_keep_every_invariant(bank, tmp_path):
    rng = random.Random(0)
    evo = _evolution(bank, tmp_path, n=3, c=5)
    for step in range(2, 22, 2):
        evo.add_records(_records(rng.randint(0, 4), rng.randint(0, 6), step))
        ids = [s.skill_id for s in evo.bank.general_skills]
        evo.update(step)
        counts = evo.bank.counts()
        assert counts["general_skills"]["dynamic"] <= 5 and counts["common_mistakes"]["dynamic"] <= 5
        assert counts["general_skills"]["static"] == 6
        new_ids = [s.skill_id for s in evo.bank.general_skills]
        assert len(set(new_ids)) == len(new_ids)
        assert len(set(new_ids) - set(ids)) <= 3


def test_an_empty_bank_is_a_cold_start_that_the_first_update_fills(tmp_path, shipped_bank):
    """SGSD on a task with no released bank (Sokoban) starts from the shipped empty bank: no
    teacher until the first update, which adds items from the run's own rollouts; a checkpoint
    taken before it restores the empty bank and the window."""
    from sgsd.bank import BankError
    from sgsd.datasets import resolve

    empty = SkillBank.load_start(resolve("empty", "bank"), grows=True)
    assert not empty.general_skills and not empty.common_mistakes
    with pytest.raises(BankError, match=r"empty skill bank.*cold start only .*sgsd\.update\.enable=true"):
        SkillBank.load_start(resolve("empty", "bank"), grows=False)
    half = tmp_path / "half.json"  # one collection empty: a broken bank, not a cold start
    shipped_bank.with_items(common_mistakes=()).save(half)
    with pytest.raises(BankError, match=r"empty skill bank \(\d+ general_skills, 0 common_mistakes\)"):
        SkillBank.load_start(half, grows=True)
    evo = _evolution(empty, tmp_path)
    evo.prepare_output_dir(resuming=False)
    evo.add_records(_records(3, 4))
    folder = evo.save_checkpoint(tmp_path / "global_step_1" / "sgsd")
    restored = _evolution(empty, tmp_path / "other")
    assert restored.load_checkpoint(folder) and restored.bank.counts() == empty.counts()
    assert len(restored.window) == 7
    changed, metrics = evo.update(2)
    assert changed and metrics["sgsd/update/applied"] == 1.0
    assert evo.bank.general_skills and evo.bank.common_mistakes  # teachers from now on
    assert SkillBank.load(evo.latest_path, require_nonempty=True).to_dict() == evo.bank.to_dict()
