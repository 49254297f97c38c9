"""Online bank evolution inside verl 0.9.1's real trainer on CPU (issue 4, section 6), on the
session's shared launches (tests/launches.py):

* the live run (the rulebook model, real outcomes): the policy itself writes skills through
  verl's rollout server (whatever it writes is parsed or counted; the bank stays valid;
  validation rollouts stay out of the window, which holds the run's real successes);
* the evolution runs: a well-behaved writer behind an OpenAI-compatible endpoint: the bank
  grows by at most N per update and never beyond C, static items stay, snapshots are
  written, retrieval sees the new items at the next step, and a resumed run starts from the
  evolved bank and keeps every earlier step's metrics.
"""

from __future__ import annotations

import pytest

from sgsd.bank import SkillBank
from sgsd.item_utility import utility_of
from tests.launches import by_step

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- the policy writes
def test_the_policy_writes_through_the_rollout_server_and_every_reply_is_counted(live_run):
    from sgsd.rulebook import rulebook_bank

    steps = by_step(live_run)
    assert sorted(steps) == [1, 2, 3]
    update = steps[2]
    assert "sgsd/update/requests" not in steps[1]  # updates only every freq steps
    # 2 steps x 8 training rollouts; the 60 validation rollouts after step 1 are not in it
    assert update["sgsd/update/window"] == 16
    # real outcomes: the window holds the model's own successes (and failures) on the rulebook
    assert 0 < update["sgsd/update/success_rate"] < 1
    # a success and a failure sampled at least -> 2 extraction requests (+ merges if anything parsed)
    assert update["sgsd/update/requests"] >= 2
    assert update["sgsd/update/request_failures"] == 0  # the rollout server answered every one
    assert update["sgsd/update/failed"] == 0.0
    # the policy's replies: either parsed into items or counted as parse failures
    parsed_or_counted = update["sgsd/update/parse_failures"] + update.get("sgsd/update/candidates_general_skills", 0)
    assert parsed_or_counted >= 1
    saved = SkillBank.load(live_run.checkpoint_dir / "global_step_3" / "sgsd" / "bank.json",
                           require_nonempty=True)
    for kind in ("general_skills", "common_mistakes"):  # static items untouched, whatever was written
        assert [it for it in saved.items(kind) if it.origin != "dynamic"] == list(rulebook_bank().items(kind))
    latest = live_run.checkpoint_dir / "sgsd_bank" / "bank.json"
    assert SkillBank.load(latest).to_dict() == saved.to_dict()


# ----------------------------------------------------------------------------- a good writer, resume
def test_bank_grows_by_at_most_n_never_beyond_c_static_items_stay(evolution_runs):
    runs = evolution_runs
    first, steps, bank_file, requests = runs["first"], runs["first_metrics"], runs["bank_file"], runs["requests_first"]
    assert requests > 0
    assert steps[2]["sgsd/update/applied"] == 1.0
    assert steps[2]["sgsd/update/added_general_skills"] == 2 and steps[2]["sgsd/update/added_common_mistakes"] == 2
    assert steps[2]["sgsd/bank/general_skills_dynamic"] == 2
    assert steps[4]["sgsd/update/added_general_skills"] <= 2
    assert steps[4]["sgsd/bank/general_skills_dynamic"] == 3 and steps[4]["sgsd/bank/common_mistakes_dynamic"] == 3
    assert steps[4]["sgsd/update/pruned_general_skills"] == 1
    initial = SkillBank.load(bank_file)
    out = first.checkpoint_dir / "sgsd_bank"
    for step in (2, 4):
        snap = SkillBank.load(out / f"bank.step_{step:06d}.json")
        assert snap.general_skills[0] == initial.general_skills[0]
        assert snap.common_mistakes[0] == initial.common_mistakes[0]
        assert snap.counts()["general_skills"]["static"] == 1


def test_retrieval_sees_the_new_items_at_the_next_step(evolution_runs):
    first, steps = evolution_runs["first"], evolution_runs["first_metrics"]
    # 1 static pair -> 1 teacher; after the step-2 update 3 skills x 3 mistakes -> 3 teachers
    assert steps[1]["sgsd/teachers_per_problem_retrieved"] == 1
    assert steps[2]["sgsd/teachers_per_problem_retrieved"] == 1
    assert steps[3]["sgsd/teachers_per_problem_retrieved"] == 3
    assert steps[4]["sgsd/teachers_per_problem_retrieved"] == 3
    # the new items were used as teachers, and their utility is in the checkpointed bank
    saved = SkillBank.load(first.checkpoint_dir / "global_step_4" / "sgsd" / "bank.json")
    used = [utility_of(s)["uses"] for s in saved.general_skills if s.origin == "dynamic"]
    assert sum(used) > 0


def test_a_resumed_run_starts_from_the_evolved_bank_and_keeps_the_earlier_metrics(evolution_runs):
    steps, second, resumed = evolution_runs["first_metrics"], evolution_runs["second"], evolution_runs["resumed"]
    # verl resumed from global_step_4 and emptied its metrics file; steps 1-4 are back, as logged
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert all(resumed[s] == steps[s] for s in (1, 2, 3, 4))
    assert resumed[5]["training/global_step"] == 5 and not (second.metrics_file.parent / "metrics.jsonl.resume").exists()
    # 1 + 3 skills, 1 + 3 mistakes restored -> 4 teachers (top_k=4) from the first resumed step
    assert resumed[5]["sgsd/teachers_per_problem_retrieved"] == 4
    assert resumed[5]["sgsd/bank/general_skills_dynamic"] == 3
    assert resumed[6]["sgsd/bank/general_skills_dynamic"] <= 3
    out = second.checkpoint_dir / "sgsd_bank"
    assert (out / "bank.step_000002.json").exists()  # resuming kept the first run's snapshots
    assert (out / "bank.step_000006.json").exists()
    assert not any(p.name.startswith("sgsd_bank.previous") for p in second.checkpoint_dir.iterdir())


def test_sgsd_plot_draws_the_evolved_run(evolution_runs, tmp_path):
    """`sgsd plot` on this real run: its metrics (the resumed steps), snapshots and utility."""
    from sgsd.plot import PANELS, build_figures, render
    from sgsd.run_metrics import load_run

    second, resumed = evolution_runs["second"], evolution_runs["resumed"]
    run = load_run(second.workdir)
    assert [s.step for s in run.snapshots] == [2, 4, 6, None]
    rendered = render([run], tmp_path)
    # the sibling methods' panels and the episodes panel: a math SGSD run logs neither; nor
    # learning curves: this run never validates
    sgsd_panels = tuple(p for p in PANELS if p not in ("skill_sd", "sdar", "rlsd", "episodes", "learning"))
    assert rendered.files == tuple(tmp_path / f"{p}.png" for p in sgsd_panels)
    assert [n.split(":")[0] for n in rendered.notes] == ["skill_sd.png", "sdar.png", "rlsd.png", "learning.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 15_000 for f in rendered.files)
    figures, _ = build_figures([run])
    general, _ = figures["bank"].axes
    dynamic = next(line for line in general.lines if line.get_linestyle() == "-")
    assert list(dynamic.get_xdata()) == [1, 2, 3, 4, 5, 6]  # the whole run, its resume included
    assert list(dynamic.get_ydata()) == [resumed[s]["sgsd/bank/general_skills_dynamic"] for s in range(1, 7)]
    labels = [t.get_text() for t in figures["utility"].axes[0].get_yticklabels()]
    assert any("(dyn)" in label for label in labels)  # the online items were used as teachers
