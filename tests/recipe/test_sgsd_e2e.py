"""SGSD through verl 0.9.1's real trainer on CPU (tiny local Qwen3, shipped bank, MiniLM).

The runs are the session's shared launches (tests/launches.py): the live-teacher run, the
frozen teacher with LoRA, and the frozen teacher with a reference model (the evolution
runs, with their resume). The tests read what they logged and dumped
(``SGSD_DEBUG_DUMP_DIR``: what the teacher pass scored, and every micro-batch the actor's
loss saw) and check it against independent computations: a plain transformers forward
and the library objective.
"""

from __future__ import annotations

import glob
import math

import pytest
import torch

from recipe.sgsd.cpu.run import CPURun
from sgsd.objective import sgsd_objective
from tests.tiny_policy import LOGGED_TOLERANCE, load_model, response_log_probs

pytestmark = pytest.mark.slow


def _dump(run: CPURun, step: int) -> dict:
    return torch.load(run.workdir / "dump" / f"teacher_pass_step{step:04d}.pt")


TOLERANCE = LOGGED_TOLERANCE


def test_sgsd_runs_logs_finite_sgsd_metrics_and_changes_the_actor(live_run):
    from safetensors.torch import load_file

    steps = [s for s in live_run.metrics() if "timing_s/step" in s["data"]]
    assert [s["step"] for s in steps] == [1, 2, 3]
    required = ["helpful_frac", "warning_frac", "over_suppressive_frac", "misleading_frac", "neutral_frac",
                "support_mean", "gate_loss", "teachers_per_problem", "mask_keep_frac", "teacher_tokens",
                "teacher_pass_time", "retrieval_time", "loss"]
    for step in steps:
        data = step["data"]
        for name in required:
            value = data[f"sgsd/{name}"]
            assert isinstance(value, (int, float)) and math.isfinite(value), (name, value)
        fractions = sum(data[f"sgsd/{k}"] for k in required[:5])
        assert fractions == pytest.approx(1.0, abs=1e-5)
        assert data["sgsd/teachers_per_problem"] == pytest.approx(4.0)  # sgsd.top_k=4, K_x = 4
        assert data["actor/grad_norm"] > 0
        # the support distribution of the step: ordered quantiles within the clip
        q = [data[f"sgsd/support_p{p}"] for p in ("10", "25", "50", "75", "90")]
        assert q == sorted(q) and all(-3.0 <= v <= 3.0 for v in q)
    # real outcomes (the verifier on the rulebook model's answers): successes and failures over the
    # run, and every polarity of eq. 13: distilled (helpful, warning), reversed (over-suppressive,
    # misleading) and ignored (neutral) teachers
    rates = [step["data"]["sgsd/success_rate"] for step in steps]
    assert 0 < sum(rates) / len(rates) < 1, rates
    share = {k: sum(step["data"][f"sgsd/{k}"] for step in steps) for k in required[:5]}
    assert share["helpful_frac"] + share["warning_frac"] > 0, share
    assert share["over_suppressive_frac"] + share["misleading_frac"] > 0, share
    assert share["neutral_frac"] > 0, share
    initial = load_file(live_run.model_dir / "model.safetensors")
    trained = load_file(live_run.checkpoint_dir / "global_step_3" / "actor" / "huggingface" / "model.safetensors")
    assert max((trained[k].float() - initial[k].float()).abs().max().item() for k in initial) > 1e-4


def test_the_linear_schedule_decays_the_rate_step_by_step(live_run):
    """optim.lr_scheduler_type=linear (the release's schedule, the GPU scripts'): 1e-3 over 3 steps."""
    rates = [step["data"]["actor/lr"] for step in live_run.metrics()]
    assert len(rates) == 3 and rates[0] > rates[1] > rates[2] >= 0
    assert rates[0] - rates[1] == pytest.approx(rates[1] - rates[2], rel=1e-6)  # a straight line
    assert rates[0] - rates[1] == pytest.approx(1e-3 / 3, rel=1e-6)


def test_teacher_log_probs_equal_an_independent_forward_of_teacher_prompt_plus_response(live_run):
    """Step 1 scores with the initial weights, so a fresh transformers model must agree."""
    dump = _dump(live_run, 1)
    model = load_model(live_run.model_dir)
    checked, moved = set(), {}
    for j, (owner, slot) in enumerate(zip(dump["owner"], dump["slot"])):
        if owner >= 2:  # a few rollouts, all their K teachers
            continue
        response = dump["responses"][owner]
        prompt = torch.tensor(dump["prompt_ids"][j])
        reference = response_log_probs(model, prompt, response, dump["temperature"])
        assert (reference - dump["scored"][j].float()).abs().mean().item() < TOLERANCE
        student_view = response_log_probs(model, dump["student_prompts"][owner], response, dump["temperature"])
        gap = (student_view - dump["scored"][j].float()).abs().max().item()
        moved[owner] = max(moved.get(owner, 0.0), gap)
        checked.add((owner, slot))
    assert checked == {(o, k) for o in range(2) for k in range(4)}
    # ...and the teachers' context mattered: the student's own prompt gives other numbers, on the
    # tokens the guidance is about (the rule's words), for the teachers shown the problem's own
    # operation (those shown another operation's items score like the student: the model's prior)
    assert all(gap > 4 * TOLERANCE for gap in moved.values()), moved


def test_the_loss_the_actor_computed_is_the_library_objective_on_the_teacher_pass_tensors(live_run):
    from sgsd.config import SGSDConfig

    cfg = SGSDConfig.from_mapping({"top_k": 4}).objective_config()
    passes = [_dump(live_run, s) for s in (1, 2, 3)]
    by_response = {}
    for p in passes:
        for j, (owner, slot) in enumerate(zip(p["owner"], p["slot"])):
            key = tuple(p["responses"][owner].tolist())
            by_response.setdefault(key, {"alpha": p["alpha"][owner]})[slot] = p["scored"][j]
    micro_batches = [torch.load(f) for f in sorted(glob.glob(str(live_run.workdir / "dump" / "loss_*.pt")))]
    assert len(micro_batches) == 12  # 3 steps x (8 rollouts / micro-batch 2)
    for mb in micro_batches:
        out = sgsd_objective(mb["student"], mb["teacher"], mb["token_mask"], mb["alpha"], mb["sign"], cfg,
                             response_mask=mb["response_mask"])
        expected = out.loss.sum() / mb["global_batch_size"] * mb["dp_size"]
        assert mb["loss"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
        for b in range(mb["student"].shape[0]):
            length = int(mb["response_mask"][b].sum())
            entry = by_response[tuple(mb["responses"][b, :length].tolist())]
            torch.testing.assert_close(mb["alpha"][b], entry["alpha"].to(mb["alpha"].dtype))
            for k in range(4):  # the teacher log-probs reached the loss aligned, slot by slot
                torch.testing.assert_close(mb["teacher"][b, k, :length].float(), entry[k].float())


def _frozen_checks(run: CPURun, step: int) -> tuple[float, float]:
    """(teacher error vs the initial model, student error vs the initial model) at ``step``."""
    model = load_model(run.model_dir)
    dump = _dump(run, step)
    teacher_err = max(
        (response_log_probs(model, torch.tensor(dump["prompt_ids"][j]), dump["responses"][owner], dump["temperature"])
         - dump["scored"][j].float()).abs().mean().item()
        for j, owner in enumerate(dump["owner"])
    )
    student_err = max(
        (response_log_probs(model, dump["student_prompts"][i], dump["responses"][i], dump["temperature"])
         - dump["student_log_probs"][i].float()).abs().mean().item()
        for i in range(len(dump["responses"]))
    )
    return teacher_err, student_err


@pytest.mark.parametrize(("run_name", "step"), [("frozen_lora_run", 2), ("evolution_runs", 4), ("evolution_runs", 6)],
                         ids=["lora-adapter-off", "reference-model", "reference-model-after-resume"])
def test_frozen_teacher_scores_with_the_initial_weights_while_the_actor_moves(run_name, step, request):
    """LoRA-disabled actor (LoRA) and a separate reference model (full fine-tuning), the latter
    also after verl resumed the run from its step-4 checkpoint."""
    run = request.getfixturevalue(run_name)
    if isinstance(run, dict):
        run = run["second"]
    teacher_err, student_err = _frozen_checks(run, step)
    assert teacher_err < TOLERANCE  # frozen: still the initial model
    assert student_err > 2 * TOLERANCE  # the actor's own log-probs moved away from it


def test_frozen_lora_run_logged_two_steps(frozen_lora_run):
    steps = frozen_lora_run.metrics()
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["data"]["sgsd/loss"]) for s in steps)


def test_the_frozen_lora_teacher_hands_the_loss_its_top_k_distribution(frozen_lora_run):
    """sgsd.teacher_topk through verl's logits hook (distillation_use_topk), teacher side in the
    LoRA-off log-prob pass: every teacher's ids and log-probs per position are the initial
    model's own full softmax top-k (a plain forward); student side in the actor update: each
    micro-batch's loss is the objective on the divergences the hook returned, which are the
    forward KL (>= 0) of the stored top-k."""
    from tests.launches import FROZEN_LORA_TOPK
    from tests.tiny_policy import response_distribution

    model = load_model(frozen_lora_run.model_dir)
    for step in (1, 2):
        dump = _dump(frozen_lora_run, step)
        for j, (owner, slot) in enumerate(zip(dump["owner"], dump["slot"])):
            full = response_distribution(model, torch.tensor(dump["prompt_ids"][j]), dump["responses"][owner],
                                         dump["temperature"])
            top = full.topk(FROZEN_LORA_TOPK, -1)
            ids, lps = dump["topk_ids"][owner][:, slot].long(), dump["topk_log_probs"][owner][:, slot]
            # bf16 forwards in the worker: near-ties may swap ranks or trade the k-th id; the sets,
            # the ranked values and each id's own log-prob agree
            in_top = (ids[:, :, None] == top.indices[:, None, :]).any(-1)
            assert in_top.float().mean() > 0.9
            assert (lps - top.values).abs().mean() < TOLERANCE
            assert (full.gather(-1, ids) - lps).abs().mean() < TOLERANCE  # each id's own log-prob
    from sgsd.objective import ObjectiveConfig

    batches = [torch.load(p) for p in sorted(glob.glob(str(frozen_lora_run.workdir / "dump" / "loss_*.pt")))]
    assert batches and all("divergence" in mb for mb in batches)
    for mb in batches:
        present = (mb["alpha"] > 0)[..., None] & (mb["token_mask"] > 0)[:, None]
        assert torch.isfinite(mb["divergence"]).all() and (mb["divergence"][present] >= -1e-5).all()
        assert mb["divergence"][present].abs().sum() > 0
        out = sgsd_objective(mb["student"], mb["teacher"], mb["token_mask"], mb["alpha"], mb["sign"],
                             ObjectiveConfig(loss_type="fkl"), response_mask=mb["response_mask"],
                             divergence=mb["divergence"])
        expected = out.loss.sum() / mb["global_batch_size"] * mb["dp_size"]
        assert mb["loss"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


def test_teachers_with_the_right_rule_answer_better_than_the_student_and_misleading_ones_worse(live_run):
    """Teacher accuracy on real outcomes: the contexts the trainer retrieved at step 1 (the rulebook
    bank's right and misleading items), each sampled 8 times from the initial model at the training
    temperature and graded like the student's own prompts. The verifier's rewards the trainer logged
    are what the project's grader gives those responses."""
    from transformers import AutoTokenizer

    from sgsd import rulebook
    from sgsd.task_model import _generate
    from sgsd.verifier import grade

    dump = _dump(live_run, 1)
    model, tokenizer = load_model(live_run.model_dir), AutoTokenizer.from_pretrained(live_run.model_dir)
    answers = [rulebook.answer_of(rulebook.family_of(p).name, p.rsplit(" ", 1)[1].rstrip("?")) for p in
               dump["problems"]]
    for response, answer, reward in zip(dump["responses"], answers, dump["rewards"].tolist()):
        assert float(grade(tokenizer.decode(response, skip_special_tokens=True), answer).correct) == reward

    def accuracy(prompts: list[list[int]], owners: list[int]) -> float:
        texts = [tokenizer.decode(p) for p in prompts for _ in range(8)]
        replies = _generate(model, tokenizer, texts, temperature=1.1, top_p=0.95, max_new_tokens=48, seed=0)
        return sum(grade(r, answers[o]).correct for r, o in zip(replies, (o for o in owners for _ in range(8)))) / len(
            replies)

    groups = {"right": ([], []), "misleading": ([], [])}
    for prompt, owner in zip(dump["prompt_ids"], dump["owner"]):
        family = rulebook.family_of(dump["problems"][owner])
        guidance = tokenizer.decode(prompt).split("Problem: ")[0]
        at = guidance.find(f"{family.name} means: ")
        stated = rulebook.rule_used(guidance[at:], family.name) if at >= 0 else None
        which = "right" if stated == family.rule else "misleading" if stated is not None else None
        if which:
            groups[which][0].append(prompt)
            groups[which][1].append(owner)
    assert all(groups[k][0] for k in groups), {k: len(v[0]) for k, v in groups.items()}  # both were retrieved
    student = accuracy([p.tolist() for p in dump["student_prompts"]], list(range(len(dump["problems"]))))
    right, misleading = accuracy(*groups["right"]), accuracy(*groups["misleading"])
    assert right >= student + 0.2, (right, student)
    assert misleading < student, (misleading, student)
