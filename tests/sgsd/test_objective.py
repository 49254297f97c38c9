"""The SGSD objective against numbers computed by hand from the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from sgsd.objective import (
    ObjectiveConfig,
    gated_loss,
    gated_loss_grad,
    robust_support,
    sgsd_objective,
    teacher_polarity,
)


def hand_gate(d: float, tau: float = 1.0) -> float:
    """eq. 14 written out."""
    return math.log(2.0) - math.log(1.0 + math.exp(-d * d / (2.0 * tau)))


def hand_grad(d: float, tau: float = 1.0) -> float:
    """eq. 17 written out."""
    return d / (tau * (1.0 + math.exp(d * d / (2.0 * tau))))


# ---------------------------------------------------------------- gated loss (eq. 14, 17)
def test_gated_loss_hand_values():
    x = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.2190702, 0.2190702, 0.5662192, 0.0605481], dtype=torch.float64)
    assert_close(gated_loss(x, 1.0), expected, atol=1e-6, rtol=0)
    assert gated_loss(torch.tensor(0.0)).item() == 0.0
    # tau widens the informative region: l(2; tau=2) = log 2 - log(1 + e^-1)
    assert_close(gated_loss(torch.tensor(2.0, dtype=torch.float64), 2.0).item(), hand_gate(2.0, 2.0))


def test_gated_loss_symmetric_monotone_and_saturates_at_log2():
    x = torch.linspace(0, 30, 301, dtype=torch.float64)
    loss = gated_loss(x)
    assert_close(loss, gated_loss(-x))
    assert torch.all(loss[1:] >= loss[:-1])
    assert torch.all(loss <= math.log(2.0))  # reaches log 2 in floating point far out
    assert torch.all(loss[:30] < math.log(2.0) - 1e-2)  # |D| < 3: still informative
    assert gated_loss(torch.tensor(100.0, dtype=torch.float64)).item() == pytest.approx(math.log(2.0), abs=1e-12)
    # finite for absurd gaps (softplus form, no overflow)
    huge = torch.tensor([1e4, -1e30, 1e30])
    assert torch.isfinite(gated_loss(huge)).all() and torch.isfinite(gated_loss_grad(huge)).all()


@pytest.mark.parametrize("tau", [0.25, 1.0, 4.0])
def test_autograd_equals_closed_form_gradient(tau):
    x = torch.linspace(-12, 12, 481, dtype=torch.float64, requires_grad=True)
    gated_loss(x, tau).sum().backward()
    assert_close(x.grad, gated_loss_grad(x.detach(), tau))
    for d in (-3.0, -0.7, 0.0, 0.4, 1.0, 2.5):
        assert gated_loss_grad(torch.tensor(d, dtype=torch.float64), tau).item() == pytest.approx(hand_grad(d, tau))


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0, 10.0])
def test_gradient_bound_prop_3_1(tau):
    bound = 1.0 / math.sqrt(math.e * tau)
    x = torch.linspace(-60, 60, 200_001, dtype=torch.float64)
    g = gated_loss_grad(x, tau)
    assert g.abs().max().item() <= bound
    # sign consistency (eq. 21); far tails underflow to exactly 0, which is fine
    nonzero = g != 0
    assert torch.equal(torch.sign(g[nonzero]), torch.sign(x[nonzero]))
    assert nonzero[(x.abs() > 0) & (x.abs() < 5 * math.sqrt(tau))].all()
    # The proof's envelope |D|/tau * exp(-D^2 / (2 tau)) (eq. 37) dominates |g| and reaches
    # the bound exactly at |D| = sqrt(tau) (eq. 38).
    envelope = x.abs() / tau * torch.exp(-x * x / (2 * tau))
    assert torch.all(g.abs() <= envelope + 1e-15)
    at = torch.tensor(math.sqrt(tau), dtype=torch.float64)
    assert (at / tau * torch.exp(-at * at / (2 * tau))).item() == pytest.approx(bound, rel=1e-12)
    assert gated_loss_grad(at, tau).item() < bound
    # local reverse-KL regime (eq. 23): g ~ D / (2 tau) near 0
    small = torch.tensor(1e-3 * math.sqrt(tau), dtype=torch.float64)
    assert gated_loss_grad(small, tau).item() == pytest.approx(small.item() / (2 * tau), rel=1e-5)


def test_tau_must_be_positive():
    with pytest.raises(ValueError, match="tau"):
        gated_loss(torch.zeros(1), 0.0)
    with pytest.raises(ValueError, match="tau"):
        ObjectiveConfig(tau=-1.0)


# ---------------------------------------------------------------- support and polarity
def test_robust_support_hand_values():
    delta = torch.tensor([[0.5, 5.0, -1.0, 2.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # clip 3: (0.5 + 3 - 1) / 3
    assert robust_support(delta, mask, clip=3.0, eps=1e-6).item() == pytest.approx(2.5 / 3, rel=1e-5)
    assert robust_support(delta, mask, clip=None, eps=1e-6).item() == pytest.approx(4.5 / 3, rel=1e-5)
    # padding may hold anything (even inf / NaN) without reaching the score
    garbage = torch.tensor([[0.5, 5.0, -1.0, float("nan")]])
    assert robust_support(garbage, mask, clip=3.0).item() == pytest.approx(2.5 / 3, rel=1e-5)


def test_clipping_stops_one_outlier_from_flipping_the_stance():
    delta = torch.tensor([[10.0, -1.5, -1.5, -1.5]])
    mask = torch.ones_like(delta)
    assert robust_support(delta, mask, clip=3.0).item() == pytest.approx(-1.5 / 4, rel=1e-5)
    assert robust_support(delta, mask, clip=None).item() == pytest.approx(5.5 / 4, rel=1e-5)


def test_polarity_table_2_and_neutral_zone():
    # columns: helpful, warning, over-suppressive, misleading, neutral(+), neutral(-)
    support = torch.tensor([[0.4, -0.4, -0.4, 0.4, 0.05, -0.01]])
    outcome = torch.tensor([1.0])
    failure = torch.tensor([-1.0])
    rho_success = teacher_polarity(support, outcome, threshold=0.05)
    rho_failure = teacher_polarity(support, failure, threshold=0.05)
    assert rho_success.tolist() == [[1.0, -1.0, -1.0, 1.0, 0.0, 0.0]]
    assert rho_failure.tolist() == [[-1.0, 1.0, 1.0, -1.0, 0.0, 0.0]]
    # threshold 0 keeps weak evidence; only an exactly-zero support stays neutral
    assert teacher_polarity(torch.tensor([[0.01, 0.0]]), outcome, threshold=0.0).tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError):
        teacher_polarity(support, outcome, threshold=-0.1)


# ---------------------------------------------------------------- the whole objective
def _hand_case():
    """B=1, K=2, T=3: teacher 0 supports (a=+0.5), teacher 1 suppresses (a=-0.5)."""
    student = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    teacher = torch.tensor([[[-0.5, -1.0, -0.5], [-1.5, -2.5, -1.0]]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.float64)
    alpha = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    return student, teacher, mask, alpha


def test_objective_hand_computed_success_and_failure():
    student, teacher, mask, alpha = _hand_case()
    eps = 1e-6
    cfg = ObjectiveConfig(eps=eps)
    lbar0 = (hand_gate(0.5) + hand_gate(1.0) + hand_gate(0.0)) / (3 + eps)
    lbar1 = 3 * hand_gate(-0.5) / (3 + eps)
    # success: teacher 0 helpful (rho=+1), teacher 1 over-suppressive (rho=-1)
    out = sgsd_objective(student, teacher, mask, alpha, torch.tensor([1.0]), cfg)
    assert out.loss.item() == pytest.approx(0.6 * lbar0 - 0.4 * lbar1, rel=1e-9)
    assert out.polarity.tolist() == [[1.0, -1.0]]
    assert out.support[0].tolist() == pytest.approx([1.5 / (3 + eps), -1.5 / (3 + eps)])
    # failure: teacher 0 misleading (rho=-1), teacher 1 warning (rho=+1)
    out = sgsd_objective(student, teacher, mask, alpha, torch.tensor([-1.0]), cfg)
    assert out.loss.item() == pytest.approx(-0.6 * lbar0 + 0.4 * lbar1, rel=1e-9)
    assert out.metrics["misleading_frac"] == 0.5 and out.metrics["warning_frac"] == 0.5


def test_gradient_matches_eq_19_and_flows_only_through_student():
    student, teacher, mask, alpha = _hand_case()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    eps = 1e-6
    out = sgsd_objective(student, teacher, mask, alpha, torch.tensor([1.0]), ObjectiveConfig(eps=eps))
    out.loss.sum().backward()
    assert teacher.grad is None  # stop-gradient teachers
    assert not out.support.requires_grad and not out.polarity.requires_grad
    delta = teacher.detach() - student.detach().unsqueeze(1)
    rho = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    expected = -(alpha[0].unsqueeze(-1) * rho * gated_loss_grad(delta[0]) / (3 + eps)).sum(0)
    assert_close(student.grad[0], expected)


@pytest.mark.parametrize("outcome, supports", [(1.0, True), (-1.0, False)])
def test_a_gradient_step_moves_the_student_toward_a_distilled_teacher_and_away_from_a_reversed_one(
    outcome, supports
):
    """A real (tiny) policy: logits -> log-softmax -> sampled-token log-probs."""
    torch.manual_seed(0)
    T, V = 6, 11
    tokens = torch.randint(0, V, (1, T))
    logits = torch.randn(1, T, V, requires_grad=True)
    teacher_logits = torch.randn(1, T, V)
    teacher_logits.scatter_(-1, tokens.unsqueeze(-1), 4.0)  # teacher strongly supports y
    teacher_lp = torch.log_softmax(teacher_logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def student_lp():
        return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    before = student_lp().detach()
    assert torch.all(teacher_lp > before)  # the teacher supports every token
    out = sgsd_objective(student_lp(), teacher_lp.unsqueeze(1), torch.ones(1, T),
                         torch.ones(1, 1), torch.tensor([outcome]))
    # success + support -> helpful (distill: move toward the teacher);
    # failure + support -> misleading (reverse: move away)
    assert out.polarity.item() == (1.0 if supports else -1.0)
    out.loss.sum().backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    after = student_lp().detach()
    gap_before = (teacher_lp - before).abs()
    gap_after = (teacher_lp - after).abs()
    if supports:
        assert torch.all(gap_after < gap_before)
    else:
        assert torch.all(gap_after > gap_before)


def test_all_tokens_masked_is_a_finite_zero():
    student, teacher, _, alpha = _hand_case()
    student.requires_grad_(True)
    out = sgsd_objective(student, teacher, torch.zeros(1, 3, dtype=torch.float64), alpha, torch.tensor([1.0]))
    assert out.loss.item() == 0.0 and torch.isfinite(out.loss).all()
    out.loss.sum().backward()
    assert torch.equal(student.grad, torch.zeros_like(student))
    assert out.metrics["neutral_frac"] == 1.0


def test_absent_teachers_contribute_nothing_even_if_their_slot_holds_garbage():
    student, teacher, mask, _ = _hand_case()
    one = sgsd_objective(student, teacher[:, :1], mask, torch.tensor([[1.0]], dtype=torch.float64),
                         torch.tensor([1.0]))
    padded_teacher = teacher.clone()
    padded_teacher[:, 1] = float("nan")
    two = sgsd_objective(student, padded_teacher, mask, torch.tensor([[1.0, 0.0]], dtype=torch.float64),
                         torch.tensor([1.0]))
    assert two.loss.item() == pytest.approx(one.loss.item(), rel=1e-12)
    assert two.metrics["teachers_per_problem"] == 1.0 and two.metrics["short_pool_frac"] == 1.0
    assert two.polarity[0, 1].item() == 0.0


def test_padding_length_does_not_change_loss_or_gradient():
    student, teacher, mask, alpha = _hand_case()
    s1 = student.clone().requires_grad_(True)
    out1 = sgsd_objective(s1, teacher, mask, alpha, torch.tensor([1.0]))
    out1.loss.sum().backward()
    pad = 5
    s2 = torch.cat([student, torch.full((1, pad), -7.0, dtype=torch.float64)], 1).requires_grad_(True)
    t2 = torch.cat([teacher, torch.full((1, 2, pad), float("-inf"), dtype=torch.float64)], 2)
    m2 = torch.cat([mask, torch.zeros(1, pad, dtype=torch.float64)], 1)
    out2 = sgsd_objective(s2, t2, m2, alpha, torch.tensor([1.0]))
    out2.loss.sum().backward()
    assert out2.loss.item() == pytest.approx(out1.loss.item(), rel=1e-12)
    assert_close(s2.grad[:, :3], s1.grad)
    assert torch.equal(s2.grad[:, 3:], torch.zeros(1, pad, dtype=torch.float64))


def test_batch_rows_are_independent():
    torch.manual_seed(1)
    B, K, T = 4, 3, 7
    student = -torch.rand(B, T) * 3
    teacher = -torch.rand(B, K, T) * 3
    mask = (torch.rand(B, T) > 0.2).float()
    alpha = torch.softmax(torch.randn(B, K), -1)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    full = sgsd_objective(student, teacher, mask, alpha, sign).loss
    rows = torch.cat([sgsd_objective(student[i:i + 1], teacher[i:i + 1], mask[i:i + 1], alpha[i:i + 1],
                                     sign[i:i + 1]).loss for i in range(B)])
    assert_close(full, rows)


# ---------------------------------------------------------------- ablation switches
def test_no_polarity_distills_every_present_teacher():
    student, teacher, mask, alpha = _hand_case()
    out = sgsd_objective(student, teacher, mask, alpha, torch.tensor([-1.0]), ObjectiveConfig(use_polarity=False))
    assert out.polarity.tolist() == [[1.0, 1.0]]
    assert out.loss.item() == pytest.approx((alpha * out.token_loss_mean).sum().item())
    # the diagnostic still reports what validation would have said
    assert out.metrics["misleading_frac"] == 0.5


def test_no_threshold_and_no_clip_switches():
    student = torch.zeros(1, 4)
    mask = torch.ones(1, 4)
    weak = torch.full((1, 1, 4), 0.03)
    cfg = ObjectiveConfig()
    assert sgsd_objective(student, weak, mask, torch.ones(1, 1), torch.tensor([1.0]), cfg).polarity.item() == 0
    assert sgsd_objective(student, weak, mask, torch.ones(1, 1), torch.tensor([1.0]),
                          ObjectiveConfig(use_threshold=False)).polarity.item() == 1
    outlier = torch.tensor([[[10.0, -1.5, -1.5, -1.5]]])
    assert sgsd_objective(student, outlier, mask, torch.ones(1, 1), torch.tensor([1.0]), cfg).polarity.item() == -1
    out = sgsd_objective(student, outlier, mask, torch.ones(1, 1), torch.tensor([1.0]), ObjectiveConfig(use_clip=False))
    assert out.polarity.item() == 1
    assert out.metrics["clipped_frac"] == 0.25  # the diagnostic counts |Delta| > c either way


def test_no_token_mask_uses_the_response_mask_and_requires_it():
    student, teacher, _, alpha = _hand_case()
    token_mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    response_mask = torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="response_mask"):
        sgsd_objective(student, teacher, token_mask, alpha, torch.tensor([1.0]), ObjectiveConfig(use_token_mask=False))
    masked = sgsd_objective(student, teacher, token_mask, alpha, torch.tensor([1.0]), response_mask=response_mask)
    unmasked = sgsd_objective(student, teacher, token_mask, alpha, torch.tensor([1.0]),
                              ObjectiveConfig(use_token_mask=False), response_mask=response_mask)
    full = sgsd_objective(student, teacher, response_mask, alpha, torch.tensor([1.0]))
    assert unmasked.loss.item() == pytest.approx(full.loss.item())
    assert masked.loss.item() != pytest.approx(full.loss.item())
    assert masked.metrics["mask_keep_frac"] == pytest.approx(2 / 3)


def test_sampled_rkl_variant_is_unbounded_delta_squared_over_two():
    student = torch.zeros(1, 2, dtype=torch.float64)
    teacher = torch.tensor([[[2.0, 4.0]]], dtype=torch.float64)
    out = sgsd_objective(student, teacher, torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                         torch.tensor([1.0]), ObjectiveConfig(loss_type="sampled_rkl", eps=1e-12))
    assert out.loss.item() == pytest.approx((2.0 + 8.0) / 2)
    with pytest.raises(ValueError, match="loss_type"):
        ObjectiveConfig(loss_type="forward_kl")  # type: ignore[arg-type]


def test_metrics_partition_the_present_teachers():
    torch.manual_seed(3)
    B, K, T = 16, 8, 20
    alpha = torch.softmax(torch.randn(B, K), -1)
    alpha[:4, 5:] = 0.0  # four problems with a short teacher pool
    out = sgsd_objective(-torch.rand(B, T) * 2, -torch.rand(B, K, T) * 2, torch.ones(B, T), alpha,
                         torch.where(torch.rand(B) > 0.5, 1.0, -1.0))
    m = out.metrics
    total = m["helpful_frac"] + m["warning_frac"] + m["over_suppressive_frac"] + m["misleading_frac"] + m["neutral_frac"]
    assert total == pytest.approx(1.0)
    assert m["teachers_per_problem"] == pytest.approx((B * K - 12) / B)
    assert m["short_pool_frac"] == pytest.approx(4 / B)
    assert all(math.isfinite(v) for v in m.values())


def test_shape_errors_name_the_tensor():
    student, teacher, mask, alpha = _hand_case()
    with pytest.raises(ValueError, match="teacher_logp"):
        sgsd_objective(student, teacher[0], mask, alpha, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="alpha"):
        sgsd_objective(student, teacher, mask, alpha[:, :1], torch.tensor([1.0]))


def test_support_quantiles_cover_only_present_teachers():
    from sgsd.objective import support_quantiles

    support = torch.tensor([[0.0, 1.0, 99.0], [2.0, 3.0, 4.0]])
    present = torch.tensor([[True, True, False], [True, True, True]])
    q = support_quantiles(support, present)
    assert set(q) == {"support_p10", "support_p25", "support_p50", "support_p75", "support_p90"}
    assert q["support_p50"] == pytest.approx(2.0)  # median of 0,1,2,3,4: the absent 99 is ignored
    assert q["support_p90"] == pytest.approx(3.6) and q["support_p10"] == pytest.approx(0.4)
    assert support_quantiles(support, torch.zeros_like(present)) == {}
