"""The actor-side SGSD loss on verl's own micro-batch format (nested tensors, non-tensor
batch info), checked against the library objective and for split invariance."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from recipe.sgsd.loss import SGSDActorLoss, global_mean
from sgsd.objective import ObjectiveConfig, sgsd_objective

verl_tu = pytest.importorskip("verl.utils.tensordict_utils")

K = 3


def _rollouts(seed: int = 0, B: int = 6):
    """B rollouts with ragged prompts/responses; student log-probs are model outputs over
    the whole sequence (verl's layout: position t scores token t+1)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        P = int(torch.randint(2, 5, (1,), generator=g))
        T = int(torch.randint(3, 8, (1,), generator=g))
        rows.append({
            "prompt": torch.randint(0, 50, (P,), generator=g),
            "response": torch.randint(0, 50, (T,), generator=g),
            "seq_logits": torch.randn(P + T, generator=g),  # stand-in for per-position log-probs
            "teacher": -torch.rand(T, K, generator=g) * 3,
            "mask": (torch.rand(T, generator=g) > 0.2).float(),
            "alpha": torch.softmax(torch.randn(K, generator=g), -1) * (torch.rand(K, generator=g) > 0.2),
            "sign": 1.0 if torch.rand(1, generator=g) > 0.5 else -1.0,
        })
    return rows


def _micro_batch(rows, params, global_batch_size, dp_size=1):
    nested = lambda ts: torch.nested.as_nested_tensor(ts, layout=torch.jagged)  # noqa: E731
    data = TensorDict({
        "prompts": nested([r["prompt"] for r in rows]),
        "responses": nested([r["response"] for r in rows]),
        "input_ids": nested([torch.cat([r["prompt"], r["response"]]) for r in rows]),
        "response_mask": nested([torch.ones(len(r["response"])) for r in rows]),
        "sgsd_teacher_log_probs": nested([r["teacher"] for r in rows]),
        "sgsd_token_mask": nested([r["mask"] for r in rows]),
        "sgsd_alpha": torch.stack([r["alpha"] for r in rows]),
        "sgsd_outcome_sign": torch.tensor([r["sign"] for r in rows]),
    }, batch_size=[len(rows)])
    verl_tu.assign_non_tensor(data, global_batch_size=global_batch_size, dp_size=dp_size)
    # a differentiable "model": log-probs = -softplus(param * logit), one param per rollout
    log_probs = nested([-torch.nn.functional.softplus(p * r["seq_logits"]) for p, r in zip(params, rows)])
    return {"log_probs": log_probs}, data


def _loss_fn():
    return SGSDActorLoss(actor_config=None, objective=ObjectiveConfig(), distill_coef=1.0, hybrid=False)


def test_equals_the_library_objective_on_the_same_tensors():
    rows = _rollouts()
    params = [torch.tensor(1.0 + 0.1 * i, requires_grad=True) for i in range(len(rows))]
    model_output, data = _micro_batch(rows, params, global_batch_size=len(rows))
    loss, metrics = _loss_fn()(model_output, data)
    # independent: slice the response log-probs by hand (position t scores token t+1)
    T = max(len(r["response"]) for r in rows)
    student = torch.zeros(len(rows), T)
    teacher = torch.zeros(len(rows), K, T)
    mask = torch.zeros(len(rows), T)
    for i, (p, r) in enumerate(zip(params, rows)):
        P, L = len(r["prompt"]), len(r["response"])
        lp = -torch.nn.functional.softplus(p * r["seq_logits"])
        student[i, :L] = lp[P - 1:P + L - 1]
        teacher[i, :, :L] = r["teacher"].T
        mask[i, :L] = r["mask"]
    lengths = torch.tensor([len(r["response"]) for r in rows]).unsqueeze(1)
    ref = sgsd_objective(student, teacher, mask, torch.stack([r["alpha"] for r in rows]),
                         torch.tensor([r["sign"] for r in rows]), ObjectiveConfig(),
                         response_mask=(torch.arange(T) < lengths).float())
    assert loss.item() == pytest.approx(ref.loss.mean().item(), rel=1e-5)
    assert metrics["sgsd/helpful_frac"].aggregate() == pytest.approx(ref.metrics["helpful_frac"])


@pytest.mark.parametrize("splits", [[6], [3, 3], [1, 2, 3], [1] * 6])
def test_same_global_batch_split_any_way_gives_the_same_loss_and_gradient(splits):
    rows = _rollouts(seed=3)
    reference = None
    params = [torch.tensor(0.7 + 0.05 * i, requires_grad=True) for i in range(len(rows))]
    total, start = 0.0, 0
    for size in splits:
        part = slice(start, start + size)
        model_output, data = _micro_batch(rows[part], params[part], global_batch_size=len(rows))
        loss, _ = _loss_fn()(model_output, data)
        loss.backward()  # accumulate like verl's micro-batch loop
        total += loss.item()
        start += size
    grads = torch.stack([p.grad for p in params])
    # the whole batch in one micro-batch is the reference
    ref_params = [torch.tensor(0.7 + 0.05 * i, requires_grad=True) for i in range(len(rows))]
    model_output, data = _micro_batch(rows, ref_params, global_batch_size=len(rows))
    reference, _ = _loss_fn()(model_output, data)
    reference.backward()
    assert total == pytest.approx(reference.item(), rel=1e-6)
    torch.testing.assert_close(grads, torch.stack([p.grad for p in ref_params]))
    assert grads.abs().sum() > 0


def test_two_data_parallel_ranks_average_to_the_single_rank_gradient():
    """FSDP averages gradients over ranks; the dp_size factor must undo that average."""
    rows = _rollouts(seed=5)
    params = [torch.tensor(1.0, requires_grad=True) for _ in rows]
    for half in (slice(0, 3), slice(3, 6)):
        model_output, data = _micro_batch(rows[half], params[half], global_batch_size=6, dp_size=2)
        loss, _ = _loss_fn()(model_output, data)
        (loss / 2).backward()  # what the all-reduce mean does to each rank's gradient
    single = [torch.tensor(1.0, requires_grad=True) for _ in rows]
    model_output, data = _micro_batch(rows, single, global_batch_size=6, dp_size=1)
    _loss_fn()(model_output, data)[0].backward()
    torch.testing.assert_close(torch.stack([p.grad for p in params]), torch.stack([p.grad for p in single]))


def test_global_mean_needs_the_global_size_with_several_ranks():
    data = TensorDict({}, batch_size=[2])
    verl_tu.assign_non_tensor(data, global_batch_size=None, dp_size=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        global_mean(torch.ones(2), data)


def test_without_teacher_fields_and_without_hybrid_is_an_error():
    rows = _rollouts()
    model_output, data = _micro_batch(rows, [torch.tensor(1.0)] * len(rows), global_batch_size=len(rows))
    del data["sgsd_alpha"]
    with pytest.raises(RuntimeError, match="without teacher fields"):
        _loss_fn()(model_output, data)


@pytest.fixture(scope="module")
def actor_config():
    from hydra import compose, initialize_config_dir

    from verl.utils.config import omega_conf_to_dataclass

    config_dir = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "recipe" / "sgsd" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="sgsd_trainer", overrides=["actor_rollout_ref.actor.ppo_mini_batch_size=6",
                                                                 "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"])
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


def _with_pg_fields(data, rows, batch_num_tokens):
    nested = lambda ts: torch.nested.as_nested_tensor(ts, layout=torch.jagged)  # noqa: E731
    g = torch.Generator().manual_seed(11)
    data["old_log_probs"] = nested([-torch.rand(len(r["response"]), generator=g) for r in rows])
    data["advantages"] = nested([torch.full((len(r["response"]),), float(torch.randn(1, generator=g))) for r in rows])
    verl_tu.assign_non_tensor(data, batch_num_tokens=batch_num_tokens)
    return data


@pytest.mark.parametrize("coef", [0.0, 0.5])
def test_hybrid_is_grpo_plus_coef_times_sgsd_and_exactly_grpo_at_zero(actor_config, coef):
    from verl.workers.utils.losses import ppo_loss

    rows = _rollouts(seed=7)
    tokens = sum(len(r["response"]) for r in rows)

    def forward(loss_fn):
        params = [torch.tensor(0.9, requires_grad=True) for _ in rows]
        model_output, data = _micro_batch(rows, params, global_batch_size=len(rows))
        loss, _ = loss_fn(model_output, _with_pg_fields(data, rows, tokens))
        loss.backward()
        return loss.detach(), torch.stack([p.grad for p in params])

    hybrid = SGSDActorLoss(actor_config=actor_config, objective=ObjectiveConfig(), distill_coef=coef, hybrid=True)
    grpo_loss, grpo_grad = forward(lambda mo, d: ppo_loss(actor_config, mo, d))
    sgsd_only, sgsd_grad = forward(_loss_fn())
    total, total_grad = forward(hybrid)
    if coef == 0:
        assert torch.equal(total, grpo_loss) and torch.equal(total_grad, grpo_grad)
    else:
        torch.testing.assert_close(total, grpo_loss + coef * sgsd_only)
        torch.testing.assert_close(total_grad, grpo_grad + coef * sgsd_grad)


def test_bf16_log_probs_are_scored_in_fp32_so_long_responses_count_every_token():
    """verl's bf16 mixed precision hands the loss bf16 log-probs; in bf16 the token count of a
    403-token response sums to 404 (found on two CPU ranks, tests/recipe/cpu/test_simulate.py)."""
    g = torch.Generator().manual_seed(3)
    P, T = 3, 403
    row = {"prompt": torch.randint(0, 50, (P,), generator=g), "response": torch.randint(0, 50, (T,), generator=g),
           "seq_logits": torch.randn(P + T, generator=g), "teacher": -torch.rand(T, K, generator=g) * 3,
           "mask": torch.ones(T), "alpha": torch.tensor([0.5, 0.3, 0.2]), "sign": -1.0}
    model_output, data = _micro_batch([row], [torch.tensor(1.0)], global_batch_size=1)
    model_output = {"log_probs": torch.nested.as_nested_tensor(
        [t.to(torch.bfloat16) for t in model_output["log_probs"].unbind()], layout=torch.jagged)}
    loss, _ = _loss_fn()(model_output, data)
    student = (-torch.nn.functional.softplus(row["seq_logits"])).to(torch.bfloat16).float()[P - 1:P + T - 1]
    ref = sgsd_objective(student[None], row["teacher"].T[None], row["mask"][None], row["alpha"][None],
                         torch.tensor([row["sign"]]), ObjectiveConfig(), response_mask=torch.ones(1, T))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
