"""The teacher pass: planning (one sequence per present teacher, shared prompts, exact
scatter) and the whole pass in-process on the real tiny model — its record, the one reader
the loss and the support statistics share, and the loss the actor computes from it."""

from __future__ import annotations

import pytest
import torch

from recipe.sgsd.teacher_pass import (
    TeacherFields,
    outcome_signs,
    plan_teachers,
    read_loss_inputs,
    rollout_loss_inputs,
    scatter_teacher_log_probs,
)
from sgsd.objective import sgsd_objective
from tests.tiny_policy import HFScorer, actor_loss
from sgsd.prompts import ChatFormat, apply_chat, student_prompt, teacher_prompt
from sgsd.retrieval import SkillRetriever


@pytest.fixture(scope="module")
def small_bank(shipped_bank):
    return shipped_bank.with_items(general_skills=shipped_bank.general_skills[:3],
                                   common_mistakes=shipped_bank.common_mistakes[:2])


def test_plan_one_sequence_per_present_teacher_with_rendered_prompts(encoder, small_bank, tiny_tokenizer):
    problems = ["Find x if 2x + 3 = 7.", "Find x if 2x + 3 = 7.", "How many primes are below 20?"]
    retrievals = SkillRetriever(encoder, small_bank, top_k=4).retrieve(problems)
    fmt = ChatFormat(enable_thinking=True)
    plan = plan_teachers(problems, retrievals, tiny_tokenizer, fmt, top_k=4, max_prompt_tokens=None)
    # K_x = min(4, 3 skills, 2 mistakes) = 2 per rollout
    assert len(plan) == 6 and plan.owner == [0, 0, 1, 1, 2, 2] and plan.slot == [0, 1] * 3
    assert plan.alpha.shape == (3, 4) and torch.all(plan.alpha[:, 2:] == 0)
    assert plan.alpha[:, :2].sum(-1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    first = retrievals[0].teachers[0]
    expected = tiny_tokenizer.encode(apply_chat(tiny_tokenizer, teacher_prompt(problems[0], first.skill, first.mistake),
                                                fmt), add_special_tokens=False)
    assert plan.prompt_ids[0] == expected
    assert plan.prompt_ids[0] == plan.prompt_ids[2]  # same problem, same teacher, same prompt
    assert plan.truncated == 0


def test_plan_truncates_and_counts(encoder, small_bank, tiny_tokenizer):
    problems = ["Find x if 2x + 3 = 7."]
    retrievals = SkillRetriever(encoder, small_bank, top_k=2).retrieve(problems)
    fmt = ChatFormat(enable_thinking=False)
    floor = len(tiny_tokenizer.encode(apply_chat(tiny_tokenizer, student_prompt(problems[0]), fmt)))
    plan = plan_teachers(problems, retrievals, tiny_tokenizer, fmt, top_k=2, max_prompt_tokens=floor + 10)
    assert plan.truncated == 2 and all(len(ids) <= floor + 10 for ids in plan.prompt_ids)


def test_reference_answer_reaches_the_teacher_prompt(encoder, small_bank, tiny_tokenizer):
    problems = ["Find x if 2x + 3 = 7."]
    retrievals = SkillRetriever(encoder, small_bank, top_k=1).retrieve(problems)
    plan = plan_teachers(problems, retrievals, tiny_tokenizer, ChatFormat(True), 1, None, reference_answers=["2"])
    assert "The verified final answer is: 2" in tiny_tokenizer.decode(plan.prompt_ids[0])


def test_scatter_places_each_teacher_and_fills_absent_slots_with_the_student():
    from recipe.sgsd.teacher_pass import TeacherPlan

    plan = TeacherPlan(owner=[0, 0, 1], slot=[0, 1, 0], prompt_ids=[[1], [2], [3]],
                       alpha=torch.tensor([[0.6, 0.4, 0.0], [1.0, 0.0, 0.0]]))
    student = [torch.tensor([-1.0, -2.0]), torch.tensor([-0.5, -0.5, -0.5])]
    scored = [torch.tensor([-0.1, -0.2]), torch.tensor([-3.0, -4.0]), torch.tensor([-9.0, -8.0, -7.0])]
    out = scatter_teacher_log_probs(plan, scored, student)
    torch.testing.assert_close(out[0], torch.tensor([[-0.1, -3.0, -1.0], [-0.2, -4.0, -2.0]]))
    assert out[1][:, 0].tolist() == [-9.0, -8.0, -7.0] and out[1][:, 1:].tolist() == [[-0.5, -0.5]] * 3
    with pytest.raises(ValueError, match="must score exactly the student's response"):
        scatter_teacher_log_probs(plan, [scored[0], scored[1], torch.zeros(2)], student)
    with pytest.raises(ValueError, match="scored teacher sequences"):
        scatter_teacher_log_probs(plan, scored[:2], student)


def test_outcome_sign_threshold():
    assert outcome_signs(torch.tensor([1.0, 0.0, -1.0, 0.5]), 0.0).tolist() == [1.0, -1.0, -1.0, 1.0]
    assert outcome_signs(torch.tensor([0.5]), 0.5).tolist() == [-1.0]


@pytest.mark.parametrize("dp", [1, 2, 3])
def test_scoring_order_balances_ranks_sorts_micro_batches_and_covers_every_sequence(dp):
    from recipe.sgsd.teacher_pass import scoring_order

    lengths = [5, 90, 40, 41, 300, 7, 88, 12, 150, 60, 61]
    order = scoring_order(lengths, dp)
    assert len(order) % dp == 0 and set(order) == set(range(len(lengths)))
    assert len(order) - len(lengths) < dp  # only padding repeats
    chunk = len(order) // dp
    per_rank = [order[r * chunk:(r + 1) * chunk] for r in range(dp)]
    for ids in per_rank:  # each rank's micro-batches see longest-first sequences
        assert [lengths[j] for j in ids] == sorted((lengths[j] for j in ids), reverse=True)
    loads = [sum(lengths[j] for j in ids) for ids in per_rank]
    assert max(loads) - min(loads) <= max(lengths)


@pytest.mark.parametrize(("dp", "micro"), [(8, 4), (8, 8), (2, 3), (1, 4)])
def test_every_rank_gets_whole_log_prob_micro_batches(dp, micro):
    """16 teacher sequences (single_teacher / OPSD on the 8-GPU scripts: 16 rollouts) over
    ``dp`` ranks with fixed micro-batches: each rank's contiguous chunk passes verl's own
    micro-batch split, which asserts on the padding to a multiple of dp alone."""
    from tensordict import TensorDict

    from recipe.sgsd.teacher_pass import scoring_order
    from verl.utils.tensordict_utils import assign_non_tensor
    from verl.workers.engine.utils import prepare_micro_batches

    lengths = [100 + 7 * i for i in range(16)]

    def split_on_every_rank(order):
        chunk = len(order) // dp
        for r in range(dp):
            data = TensorDict({"ids": torch.tensor(order[r * chunk:(r + 1) * chunk])}, batch_size=[chunk])
            assign_non_tensor(data, use_dynamic_bsz=False, micro_batch_size_per_gpu=micro)
            prepare_micro_batches(data)

    order = scoring_order(lengths, dp, micro)
    assert set(order) == set(range(16)) and len(order) % (dp * micro) == 0 and len(order) - 16 < dp * micro
    assert all(j == order[-1] or order.count(j) == 1 for j in order)  # only the shortest is repeated
    split_on_every_rank(order)
    if 16 % (dp * micro):  # padding to the DP size alone is what verl refuses
        with pytest.raises(AssertionError, match="divisible by force_group_size"):
            split_on_every_rank(scoring_order(lengths, dp))


def test_the_scoring_worker_decides_the_per_rank_multiple():
    from omegaconf import OmegaConf

    from recipe.sgsd.teacher_pass import per_rank_multiple

    config = OmegaConf.create({"actor_rollout_ref": {
        "rollout": {"log_prob_micro_batch_size_per_gpu": 4, "log_prob_use_dynamic_bsz": False},
        "ref": {"log_prob_micro_batch_size_per_gpu": 2, "log_prob_use_dynamic_bsz": False}}})
    assert per_rank_multiple(config, frozen_reference=False) == 4  # the actor: live, or LoRA off
    assert per_rank_multiple(config, frozen_reference=True) == 2  # a separate reference model
    config.actor_rollout_ref.rollout.log_prob_use_dynamic_bsz = True
    assert per_rank_multiple(config, frozen_reference=False) == 1  # cut by tokens: any count


def test_answer_context_is_one_answer_teacher_per_rollout(encoder, small_bank, tiny_tokenizer):
    from sgsd.prompts import answer_teacher_prompt
    from sgsd.retrieval import ProblemRetrieval

    problems = ["Find x if 2x + 3 = 7.", "How many primes are below 20?", "No answer here."]
    fmt = ChatFormat(enable_thinking=True)
    plan = plan_teachers(problems, [ProblemRetrieval(teachers=())] * 3, tiny_tokenizer, fmt, top_k=8,
                         max_prompt_tokens=None, reference_answers=["2", "8", ""], context="answer")
    assert plan.alpha.shape == (3, 1) and plan.alpha[:, 0].tolist() == [1.0, 1.0, 0.0]  # no answer, no teacher
    assert plan.owner == [0, 1] and plan.slot == [0, 0]
    expected = tiny_tokenizer.encode(apply_chat(tiny_tokenizer, answer_teacher_prompt(problems[0], "2"), fmt),
                                     add_special_tokens=False)
    assert plan.prompt_ids[0] == expected and "General Principles" not in tiny_tokenizer.decode(plan.prompt_ids[0])
    with pytest.raises(ValueError, match="reference answers"):
        plan_teachers(problems, [ProblemRetrieval(teachers=())] * 3, tiny_tokenizer, fmt, 8, None, context="answer")


def test_answer_skills_context_sees_every_pair_and_drops_pairs_before_the_answer(encoder, small_bank,
                                                                                tiny_tokenizer):
    problems = ["Find x if 2x + 3 = 7."]
    retrievals = SkillRetriever(encoder, small_bank, top_k=4).retrieve(problems)
    fmt = ChatFormat(enable_thinking=False)
    plan = plan_teachers(problems, retrievals, tiny_tokenizer, fmt, top_k=4, max_prompt_tokens=None,
                         reference_answers=["2"], context="answer_skills")
    text = tiny_tokenizer.decode(plan.prompt_ids[0])
    assert len(plan) == 1 and plan.alpha.tolist() == [[1.0]] and plan.truncated == 0
    assert all(t.skill.title in text and t.mistake.description in text for t in retrievals[0].teachers)
    assert "The verified final answer is: 2" in text
    # a budget too small for both pairs: the weakest pair goes, the answer stays whole
    full = len(plan.prompt_ids[0])
    tight = plan_teachers(problems, retrievals, tiny_tokenizer, fmt, 4, full - 5, ["2"], context="answer_skills")
    cut = tiny_tokenizer.decode(tight.prompt_ids[0])
    assert tight.truncated == 1 and len(tight.prompt_ids[0]) <= full - 5
    assert "The verified final answer is: 2" in cut
    assert retrievals[0].teachers[0].skill.title in cut and retrievals[0].teachers[1].skill.title not in cut


def test_student_guidance_rows_carry_the_skills_but_extra_info_stays_plain(encoder, small_bank):
    from sgsd.datasets import Problem
    from sgsd.verl_data import retrieve_student_guidance, to_verl_rows

    problems = [Problem(problem="Find x if 2x + 3 = 7.", answer="2")]
    retriever = SkillRetriever(encoder, small_bank, top_k=2)
    rows = to_verl_rows(problems, "math", "train", student_guidance=retrieve_student_guidance(problems, retriever))
    content = rows[0]["prompt"][0]["content"]
    first = retriever.retrieve([problems[0].problem])[0].teachers[0]
    assert "### General Principles" in content and first.skill.title in content
    assert content.endswith(student_prompt(problems[0].problem))
    assert rows[0]["extra_info"]["problem"] == problems[0].problem
    from sgsd.verl_data import problem_text

    assert problem_text(rows[0]["extra_info"], rows[0]["prompt"]) == problems[0].problem
    # the ids of the pairs shown, for the OPSD+Skill teacher (and no record without a source)
    pairs = retriever.retrieve([problems[0].problem])[0].teachers
    assert rows[0]["extra_info"]["skill_ids"] == [t.skill.skill_id for t in pairs]
    assert rows[0]["extra_info"]["mistake_ids"] == [t.mistake.mistake_id for t in pairs]
    assert rows[0]["extra_info"]["skills_from"] == ""


def test_the_opsd_skill_teacher_sees_exactly_the_pairs_the_student_saw(tiny_batch, policy, run_config,
                                                                       make_teacher_pass, run_tokenizer,
                                                                       shipped_bank):
    """Not a re-retrieval (another encoder at training time would pick other pairs): the row's ids."""
    import dataclasses

    chosen = ([s.skill_id for s in shipped_bank.general_skills[-2:]],
              [m.mistake_id for m in shipped_bank.common_mistakes[-2:]])
    rollouts = dataclasses.replace(tiny_batch.rollouts, student_pairs=[chosen] * len(tiny_batch.rollouts))
    teacher_pass = make_teacher_pass(run_config(variant="opsd_skill"))
    result = teacher_pass(rollouts, HFScorer(policy))
    for j, owner in enumerate(result.plan.owner):
        text = run_tokenizer.decode(result.plan.prompt_ids[j])
        for skill in shipped_bank.general_skills[-2:]:
            assert skill.title in text
        assert "The verified final answer is: " + rollouts.answers[owner] in text
    retrieved = teacher_pass.retriever.retrieve(rollouts.problems[:1])[0].teachers[0].skill
    assert retrieved not in shipped_bank.general_skills[-2:]  # (so the check above means something)
    assert retrieved.title not in run_tokenizer.decode(result.plan.prompt_ids[0])


# ----------------------------------------------------------------------------- the whole pass, in-process
def test_the_record_names_its_batch_keys_once():
    assert TeacherFields.keys() == ("sgsd_teacher_log_probs", "sgsd_token_mask", "sgsd_alpha", "sgsd_outcome_sign")
    from recipe.sgsd.loss import SGSD_FIELDS

    assert SGSD_FIELDS == TeacherFields.keys()


@pytest.fixture(scope="module")
def live(tiny_batch, policy, run_config, make_teacher_pass):
    scorer = HFScorer(policy)
    result = make_teacher_pass(run_config())(tiny_batch.rollouts, scorer)
    return result, scorer


def test_every_present_teacher_is_scored_in_one_call_on_the_same_response(live, tiny_batch, run_tokenizer):
    result, scorer = live
    rollouts, K = tiny_batch.rollouts, 4  # the CPU runs' sgsd.top_k
    assert scorer.calls == [len(rollouts) * K]  # 4 rollouts x 4 teachers, one call
    assert result.plan.owner == [b for b in range(len(rollouts)) for _ in range(K)]
    record = result.fields
    assert [tuple(t.shape) for t in record.teacher_log_probs] == [(len(r), K) for r in rollouts.responses]
    assert record.alpha.shape == (len(rollouts), K) and torch.allclose(record.alpha.sum(-1), torch.ones(len(rollouts)))
    assert record.outcome_sign.tolist() == [1.0, -1.0, 1.0, -1.0]
    for j, (owner, slot) in enumerate(zip(result.plan.owner, result.plan.slot)):
        text = run_tokenizer.decode(result.plan.prompt_ids[j])
        pair = result.retrievals[owner].teachers[slot]
        assert pair.skill.title in text and rollouts.problems[owner] in text
        torch.testing.assert_close(record.teacher_log_probs[owner][:, slot], result.scored[j].float())
    # the context matters on this model: a teacher's log-probs are not the student's
    assert all((t - s[:, None]).abs().mean() > 0.05 for t, s in zip(record.teacher_log_probs, rollouts.log_probs))
    # m_t: the closing <|im_end|> of every response is removed, the text tokens kept
    assert all(m[-1] == 0 and m[:-1].sum() > 0 for m in record.token_mask)


def test_a_short_pool_leaves_slots_absent_with_the_students_own_log_probs(tiny_batch, policy, run_config,
                                                                           make_teacher_pass, shipped_bank):
    bank = shipped_bank.with_items(general_skills=shipped_bank.general_skills[:2],
                                   common_mistakes=shipped_bank.common_mistakes[:3])
    result = make_teacher_pass(run_config(), bank)(tiny_batch.rollouts, HFScorer(policy))
    assert (result.fields.alpha > 0).sum(-1).tolist() == [2] * len(tiny_batch.rollouts)
    assert result.metrics["sgsd/teachers_per_problem_retrieved"] == 2.0
    assert result.metrics["sgsd/short_pool_problems"] == 1.0
    for teacher, student in zip(result.fields.teacher_log_probs, tiny_batch.rollouts.log_probs):
        torch.testing.assert_close(teacher[:, 2:], student[:, None].expand(-1, 2).float())


def test_support_statistics_read_the_record_as_the_loss_reads_it(live, tiny_batch, run_config):
    """The pass's support (and quantiles) through the shared reader equal the objective on
    tensors padded here by hand, straight from the scored sequences."""
    from tests.recipe.conftest import sgsd_config_of

    result, _ = live
    rollouts, K = tiny_batch.rollouts, 4
    B, T = len(rollouts), max(len(r) for r in rollouts.responses)
    student, teacher, mask = torch.zeros(B, T), torch.zeros(B, K, T), torch.zeros(B, T)
    for b, (lp, m) in enumerate(zip(rollouts.log_probs, result.fields.token_mask)):
        student[b, :len(lp)], mask[b, :len(lp)] = lp, m
    for j, (owner, slot) in enumerate(zip(result.plan.owner, result.plan.slot)):
        teacher[owner, slot, :len(result.scored[j])] = result.scored[j]
    lengths = torch.tensor([len(r) for r in rollouts.responses])[:, None]
    expected = sgsd_objective(student, teacher, mask, result.fields.alpha, result.fields.outcome_sign,
                              sgsd_config_of(run_config()).objective_config(),
                              response_mask=(torch.arange(T) < lengths).float())
    torch.testing.assert_close(result.support, expected.support)
    quantiles = [result.metrics[f"sgsd/support_p{q}"] for q in ("10", "25", "50", "75", "90")]
    by_hand = torch.quantile(expected.support.flatten(), torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])).tolist()
    assert quantiles == pytest.approx(by_hand, abs=1e-6)


def test_the_reader_pads_a_record_and_cuts_it_to_the_micro_batch_width():
    record = TeacherFields(teacher_log_probs=[torch.full((2, 3), -1.0), torch.full((4, 3), -2.0)],
                           token_mask=[torch.ones(2), torch.tensor([1.0, 0.0, 1.0, 1.0])],
                           alpha=torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]), outcome_sign=torch.tensor([1.0, -1.0]))
    data = record.to_tensordict()
    data["response_mask"] = torch.nested.as_nested_tensor([torch.ones(2), torch.ones(4)], layout=torch.jagged)
    wide = read_loss_inputs(data, 6)
    assert wide.teacher.shape == (2, 3, 6) and wide.teacher[0, :, 2:].abs().sum() == 0
    assert wide.token_mask.tolist() == [[1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0]]
    narrow = read_loss_inputs(data, 3)
    assert narrow.teacher.shape == (2, 3, 3) and narrow.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_the_actor_loss_on_the_stored_record_is_the_objective_and_moves_the_policy(live, tiny_batch, policy):
    """The trainer's record -> verl's micro-batch layout -> SGSDActorLoss, with the tiny model
    as the live policy: the loss equals the objective on the pass's own tensors, and its
    gradient reaches the weights."""
    from recipe.sgsd.loss import SGSDActorLoss
    from sgsd.config import SGSDConfig

    result, _ = live
    objective = SGSDConfig.from_mapping({"top_k": 4}).objective_config()
    policy.zero_grad()
    loss, metrics = actor_loss(policy, SGSDActorLoss(actor_config=None, objective=objective), tiny_batch.prompts,
                               tiny_batch.rollouts, result.fields)
    loss.backward()
    grad = sum(p.grad.abs().sum().item() for p in policy.parameters() if p.grad is not None)
    policy.zero_grad()
    # on-policy: the live log-probs are the rollout's, so the objective on the pass's inputs is the same number
    x = rollout_loss_inputs(result.fields, tiny_batch.rollouts)
    expected = sgsd_objective(x.student, x.teacher, x.token_mask, x.alpha, x.outcome_sign, objective)
    assert loss.item() == pytest.approx(expected.loss.mean().item(), rel=1e-4)
    assert metrics["sgsd/neutral_frac"].aggregate() == pytest.approx(expected.metrics["neutral_frac"])
    assert grad > 0 and torch.isfinite(loss)
