"""The top-k distribution losses (Fig. 3a, 3c, the OPSD baseline) against hand computations.

Each case writes the two full distributions over a 5-token vocabulary as plain numbers, picks
the teacher's top-3 ids, and computes the expected value with ``math`` alone: the id terms, the
tail bin (``1 - sum`` of the kept mass), the renormalised local support.
"""

from __future__ import annotations

import math

import pytest
import torch

from sgsd.objective import (ObjectiveConfig, local_support, sgsd_objective, tail_log_mass, topk_forward_kl,
                            topk_jsd)

P_T = [0.50, 0.25, 0.15, 0.06, 0.04]  # teacher over 5 tokens
P_S = [0.20, 0.30, 0.10, 0.25, 0.15]  # student
TOP = [0, 1, 2]  # the teacher's top-3 ids


def _lp(p, ids):
    return torch.tensor([math.log(p[i]) for i in ids], dtype=torch.float64)


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_tail_log_mass_is_the_log_of_the_mass_outside_and_floored():
    assert tail_log_mass(_lp(P_T, TOP)).item() == pytest.approx(math.log(0.10), rel=1e-12)
    full = tail_log_mass(_lp(P_T, range(5)))  # the whole distribution: nothing outside
    assert torch.isfinite(full) and full.item() == pytest.approx(math.log(1e-12), abs=1e-3)


def test_forward_kl_is_the_kl_of_the_top_k_plus_one_tail_bin():
    expected = _kl([0.50, 0.25, 0.15, 0.10], [0.20, 0.30, 0.10, 0.40])  # tail: 0.06+0.04 vs 0.25+0.15
    got = topk_forward_kl(_lp(P_T, TOP), _lp(P_S, TOP))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # never above the full-vocabulary divergence; equal to it when the top-k holds everything
    assert got.item() < _kl(P_T, P_S)
    assert topk_forward_kl(_lp(P_T, range(5)), _lp(P_S, range(5))).item() == pytest.approx(_kl(P_T, P_S), abs=1e-10)


def test_forward_kl_term_clip_caps_each_id_term_and_not_the_tail():
    terms = [P_T[i] * math.log(P_T[i] / P_S[i]) for i in TOP]  # 0.458, -0.046, 0.061
    tail = 0.10 * math.log(0.10 / 0.40)
    expected = sum(min(t, 0.05) for t in terms) + tail
    got = topk_forward_kl(_lp(P_T, TOP), _lp(P_S, TOP), term_clip=0.05)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_jsd_is_the_generalised_jsd_of_the_coarse_grained_distributions():
    t, s = [0.50, 0.25, 0.15, 0.10], [0.20, 0.30, 0.10, 0.40]
    for beta in (0.5, 0.2):
        m = [beta * a + (1 - beta) * b for a, b in zip(t, s)]
        expected = beta * _kl(t, m) + (1 - beta) * _kl(s, m)
        assert topk_jsd(_lp(P_T, TOP), _lp(P_S, TOP), beta=beta).item() == pytest.approx(expected, rel=1e-12)
    assert topk_jsd(_lp(P_T, TOP), _lp(P_T, TOP)).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="beta"):
        topk_jsd(_lp(P_T, TOP), _lp(P_S, TOP), beta=1.0)


@pytest.mark.parametrize("sampled", [1, 4])  # inside the teacher's top-3, and outside it
def test_local_support_renormalises_on_the_top_k_plus_the_sampled_token(sampled):
    support = TOP if sampled in TOP else TOP + [sampled]
    zt, zs = sum(P_T[i] for i in support), sum(P_S[i] for i in support)
    t_local, s_local = [P_T[i] / zt for i in support], [P_S[i] / zs for i in support]
    gap, kl = local_support(_lp(P_T, TOP), _lp(P_S, TOP), torch.tensor(math.log(P_T[sampled]), dtype=torch.float64),
                            torch.tensor(math.log(P_S[sampled]), dtype=torch.float64), torch.tensor(sampled in TOP))
    assert gap.item() == pytest.approx(math.log(P_T[sampled] / zt) - math.log(P_S[sampled] / zs), rel=1e-12)
    assert kl.item() == pytest.approx(_kl(t_local, s_local), rel=1e-12)


def _student_logits(seed=0, shape=(2, 3, 7)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_gradients_through_the_student_match_finite_differences():
    teacher = torch.log_softmax(_student_logits(1), -1)
    ids = teacher.topk(3, -1).indices
    t_top = teacher.gather(-1, ids)
    sampled = torch.tensor([[0, 5, 2], [6, 1, 3]])

    def losses(logits):
        lp = torch.log_softmax(logits, -1)
        s_top = lp.gather(-1, ids)
        gap, kl = local_support(t_top, s_top, teacher.gather(-1, sampled[..., None])[..., 0],
                                lp.gather(-1, sampled[..., None])[..., 0], (ids == sampled[..., None]).any(-1))
        return (topk_forward_kl(t_top, s_top).sum() + topk_jsd(t_top, s_top).sum() + kl.sum()
                + topk_forward_kl(t_top, s_top, term_clip=0.05).sum())

    assert torch.autograd.gradcheck(losses, (_student_logits(2).requires_grad_(),))


def _objective_inputs(divergence_value: float):
    B, K, T = 2, 2, 4
    student = torch.zeros(B, T, requires_grad=True)
    teacher = torch.full((B, K, T), -0.5)  # sampled gap -0.5 everywhere: suppression
    mask = torch.ones(B, T)
    alpha = torch.tensor([[0.6, 0.4], [1.0, 0.0]])  # rollout 1 has one teacher
    sign = torch.tensor([1.0, -1.0])
    divergence = torch.full((B, K, T), divergence_value)
    divergence[1, 1] = float("nan")  # an absent teacher's slot must not poison the sum
    return student, teacher, mask, alpha, sign, divergence


def test_fkl_loss_type_averages_the_divergence_with_polarity_from_the_sampled_gap():
    student, teacher, mask, alpha, sign, divergence = _objective_inputs(0.3)
    out = sgsd_objective(student, teacher, mask, alpha, sign, ObjectiveConfig(loss_type="fkl", eps=1e-12),
                         divergence=divergence)
    # success & suppression -> rho = -1; failure & suppression -> rho = +1 (Tab. 2)
    expected = torch.tensor([-(0.6 + 0.4) * 0.3, 1.0 * 0.3])
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert out.polarity.tolist() == [[-1.0, -1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="needs divergence"):
        sgsd_objective(student, teacher, mask, alpha, sign, ObjectiveConfig(loss_type="jsd"))


def test_local_gated_reads_the_local_gap_for_polarity_and_gates_the_local_kl():
    student, teacher, mask, alpha, sign, divergence = _objective_inputs(0.8)
    support_gap = torch.full_like(divergence, 0.4)  # local gap positive: support, unlike the sampled -0.5
    out = sgsd_objective(student, teacher, mask, alpha, sign, ObjectiveConfig(loss_type="local_gated", eps=1e-12),
                         divergence=divergence, support_gap=support_gap)
    gate = math.log(2) - math.log1p(math.exp(-0.8 ** 2 / 2))
    assert out.polarity.tolist() == [[1.0, 1.0], [-1.0, 0.0]]
    assert torch.allclose(out.loss, torch.tensor([1.0 * gate, -1.0 * gate]), atol=1e-6)
    assert out.support[0].tolist() == pytest.approx([0.4, 0.4])


def test_distribution_settings_are_checked():
    with pytest.raises(ValueError, match="divergence_clip"):
        ObjectiveConfig(loss_type="fkl", divergence_clip=0.0)
    with pytest.raises(ValueError, match="jsd_beta"):
        ObjectiveConfig(loss_type="jsd", jsd_beta=1.5)
    with pytest.raises(ValueError, match="loss_type"):
        ObjectiveConfig(loss_type="kl")  # type: ignore[arg-type]
    assert ObjectiveConfig(loss_type="fkl").uses_distribution and not ObjectiveConfig().uses_distribution
