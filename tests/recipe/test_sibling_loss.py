"""Skill-SD's and SDAR's terms of the actor loss on verl's own micro-batch format: equal to the
library formulas on the same tensors, and the same loss and gradient however the global
mini-batch is cut into micro-batches and data-parallel ranks, for both aggregations."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from recipe.sgsd.loss import SGSDActorLoss
from sgsd.objective import ObjectiveConfig
from sgsd.sd_objectives import GlobalBatch, SDARConfig, SkillSDConfig, sdar_loss, skill_sd_loss

verl_tu = pytest.importorskip("verl.utils.tensordict_utils")

nested = lambda ts: torch.nested.as_nested_tensor(list(ts), layout=torch.jagged)  # noqa: E731


def _rollouts(seed: int = 0, B: int = 6):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(B):
        P, T = int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(3, 8, (1,), generator=g))
        rows.append({
            "prompt": torch.randint(0, 50, (P,), generator=g), "response": torch.randint(0, 50, (T,), generator=g),
            "seq_logits": torch.randn(P + T, generator=g),
            "teacher": -torch.rand(T, 1, generator=g) * 3,
            "old": -torch.rand(T, generator=g) * 2,
            "entropy_logits": torch.rand(P + T, generator=g) * 3,
            "alpha": torch.tensor([0.0 if i == 2 else 1.0]),  # rollout 2 has no teacher (no skill yet)
        })
    return rows


def _student(p, r):
    return -torch.nn.functional.softplus(p * r["seq_logits"])


def _micro_batch(rows, params, global_batch_size, batch_num_tokens, dp_size=1):
    data = TensorDict({
        "prompts": nested(r["prompt"] for r in rows), "responses": nested(r["response"] for r in rows),
        "input_ids": nested(torch.cat([r["prompt"], r["response"]]) for r in rows),
        "response_mask": nested(torch.ones(len(r["response"])) for r in rows),
        "old_log_probs": nested(r["old"] for r in rows),
        "sgsd_teacher_log_probs": nested(r["teacher"] for r in rows),
        "sgsd_token_mask": nested(torch.ones(len(r["response"])) for r in rows),
        "sgsd_alpha": torch.stack([r["alpha"] for r in rows]),
        "sgsd_outcome_sign": torch.ones(len(rows)),
    }, batch_size=[len(rows)])
    verl_tu.assign_non_tensor(data, global_batch_size=global_batch_size, dp_size=dp_size,
                              batch_num_tokens=batch_num_tokens)
    return {"log_probs": nested(_student(p, r) for p, r in zip(params, rows)),
            "entropy": nested(r["entropy_logits"] for r in rows)}, data


def _by_hand(rows, params):
    """[B, T] student (live), teacher, old, entropy and the response mask, sliced independently
    (verl's layout: position t of the sequence scores token t+1)."""
    B, T = len(rows), max(len(r["response"]) for r in rows)
    student, teacher, old, entropy, mask = (torch.zeros(B, T) for _ in range(5))
    student = list(student)
    for i, (p, r) in enumerate(zip(params, rows)):
        P, L = len(r["prompt"]), len(r["response"])
        row = torch.zeros(T)
        student[i] = torch.cat([_student(p, r)[P - 1:P + L - 1], row[L:]])
        teacher[i, :L], old[i, :L], mask[i, :L] = r["teacher"][:, 0], r["old"], 1.0
        entropy[i, :L] = r["entropy_logits"][P - 1:P + L - 1]
    return torch.stack(student), teacher, old, entropy, mask


def _loss(method: str, aggregation: str = "token_mean", gate: str = "gap") -> SGSDActorLoss:
    return SGSDActorLoss(actor_config=None, objective=ObjectiveConfig(), method=method,
                         skill_sd=SkillSDConfig(aggregation=aggregation) if method == "skill_sd" else None,
                         sdar=SDARConfig(aggregation=aggregation, gate=gate) if method == "sdar" else None)


def _tokens(rows) -> float:
    return float(sum(len(r["response"]) for r in rows))


@pytest.mark.parametrize("aggregation", ["token_mean", "problem_mean"])
def test_skill_sd_term_is_the_library_l_sdl(aggregation):
    rows = _rollouts()
    params = [torch.tensor(1.0 + 0.1 * i, requires_grad=True) for i in range(len(rows))]
    model_output, data = _micro_batch(rows, params, len(rows), _tokens(rows))
    loss, metrics = _loss("skill_sd", aggregation)(model_output, data)
    student, teacher, old, _, mask = _by_hand(rows, params)
    mask[2] = 0.0  # no teacher: no loss
    batch = GlobalBatch(global_batch_size=len(rows), batch_num_tokens=_tokens(rows))
    ref = skill_sd_loss(student, teacher, old, mask, SkillSDConfig(aggregation=aggregation), batch)
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert metrics["sgsd/skill_sd/loss"].aggregate() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert metrics["sgsd/skill_sd/rho_mean"].aggregate() == pytest.approx(ref.metrics["rho_mean"], rel=1e-5)
    grad_ours = torch.autograd.grad(loss, params)
    grad_ref = torch.autograd.grad(ref.loss, params)
    torch.testing.assert_close(torch.stack(grad_ours), torch.stack(grad_ref))
    assert grad_ours[2].item() == 0.0 and abs(grad_ours[0].item()) > 0


@pytest.mark.parametrize("gate", ["gap", "entropy", "soft_or"])
def test_sdar_term_is_the_library_l_sdar(gate):
    rows = _rollouts(seed=1)
    params = [torch.tensor(0.8 + 0.1 * i, requires_grad=True) for i in range(len(rows))]
    model_output, data = _micro_batch(rows, params, len(rows), _tokens(rows))
    loss, metrics = _loss("sdar", gate=gate)(model_output, data)
    student, teacher, _, entropy, mask = _by_hand(rows, params)
    mask[2] = 0.0
    ref = sdar_loss(student, teacher, mask, SDARConfig(gate=gate),
                    GlobalBatch(global_batch_size=len(rows), batch_num_tokens=_tokens(rows)), entropy=entropy)
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert metrics["sgsd/sdar/gate_mean"].aggregate() == pytest.approx(ref.metrics["gate_mean"], rel=1e-5)
    torch.testing.assert_close(torch.stack(torch.autograd.grad(loss, params)),
                               torch.stack(torch.autograd.grad(ref.loss, params)))


def test_an_entropy_gate_without_verl_entropy_names_the_switch():
    rows = _rollouts()
    params = [torch.tensor(1.0, requires_grad=True) for _ in rows]
    model_output, data = _micro_batch(rows, params, len(rows), _tokens(rows))
    del model_output["entropy"]
    with pytest.raises(RuntimeError, match="calculate_entropy=true"):
        _loss("sdar", gate="entropy")(model_output, data)


CASES = [(m, a) for m in ("skill_sd", "sdar") for a in ("token_mean", "problem_mean")]


@pytest.mark.parametrize("method, aggregation", CASES)
@pytest.mark.parametrize("splits", [[3, 3], [1, 2, 3], [1] * 6])
def test_any_micro_batch_split_gives_the_same_loss_and_gradient(method, aggregation, splits):
    rows = _rollouts(seed=3)
    tokens = _tokens(rows)
    params = [torch.tensor(0.7 + 0.05 * i, requires_grad=True) for i in range(len(rows))]
    total, start = 0.0, 0
    for size in splits:
        part = slice(start, start + size)
        model_output, data = _micro_batch(rows[part], params[part], len(rows), tokens)
        loss, _ = _loss(method, aggregation)(model_output, data)
        loss.backward()  # accumulated like verl's micro-batch loop
        total += loss.item()
        start += size
    whole = [torch.tensor(0.7 + 0.05 * i, requires_grad=True) for i in range(len(rows))]
    model_output, data = _micro_batch(rows, whole, len(rows), tokens)
    reference, _ = _loss(method, aggregation)(model_output, data)
    reference.backward()
    assert total == pytest.approx(reference.item(), rel=1e-6)
    torch.testing.assert_close(torch.stack([p.grad for p in params]), torch.stack([p.grad for p in whole]))
    assert torch.stack([p.grad for p in whole]).abs().sum() > 0


@pytest.mark.parametrize("method, aggregation", CASES)
def test_two_data_parallel_ranks_average_to_the_single_rank_gradient(method, aggregation):
    rows = _rollouts(seed=5)
    tokens = _tokens(rows)
    params = [torch.tensor(1.0, requires_grad=True) for _ in rows]
    for half in (slice(0, 3), slice(3, 6)):
        model_output, data = _micro_batch(rows[half], params[half], 6, tokens, dp_size=2)
        loss, _ = _loss(method, aggregation)(model_output, data)
        (loss / 2).backward()  # FSDP's all-reduce mean
    single = [torch.tensor(1.0, requires_grad=True) for _ in rows]
    model_output, data = _micro_batch(rows, single, 6, tokens)
    _loss(method, aggregation)(model_output, data)[0].backward()
    torch.testing.assert_close(torch.stack([p.grad for p in params]), torch.stack([p.grad for p in single]))


def test_the_two_aggregations_differ_when_responses_differ_in_length():
    """The switch is real: a token mean weighs long responses more than the per-problem mean."""
    rows = _rollouts(seed=7)
    params = [torch.tensor(1.0, requires_grad=True) for _ in rows]
    values = {}
    for aggregation in ("token_mean", "problem_mean"):
        model_output, data = _micro_batch(rows, params, len(rows), _tokens(rows))
        values[aggregation] = _loss("sdar", aggregation)(model_output, data)[0].item()
    assert values["token_mean"] != pytest.approx(values["problem_mean"], rel=1e-3)


def test_rlsd_adds_no_distillation_term():
    """RLSD reweights the advantages; its actor loss is verl's alone (no hybrid: nothing to return)."""
    rows = _rollouts()
    params = [torch.tensor(1.0, requires_grad=True) for _ in rows]
    model_output, data = _micro_batch(rows, params, len(rows), _tokens(rows))
    with pytest.raises(RuntimeError, match="hybrid"):
        SGSDActorLoss(actor_config=None, objective=ObjectiveConfig(), method="rlsd")(model_output, data)
