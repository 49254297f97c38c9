"""Skill-SD, SDAR and RLSD objectives and the two reductions, against the formulas written out.

Expected values come from ``math`` on plain floats (or an independent torch expression of the
formula); gradients from autograd are checked against the closed forms, also where the clamps
bind.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from sgsd.checks import SettingError
from sgsd.sd_objectives import (GlobalBatch, RLSDConfig, SDARConfig, SkillSDConfig, aggregate, problem_mean,
                                rlsd_advantages, rlsd_lambda, sdar_gate, sdar_loss, skill_sd_loss,
                                skill_sd_token_grad, skill_sd_token_loss, token_mean, topk_divergence)

F64 = torch.float64
NAN, INF = float("nan"), float("inf")


def t(rows):
    return torch.tensor(rows, dtype=F64)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- Skill-SD
def hand_sdl(s: float, te: float, o: float) -> float:
    """rho * k3 with the release's clamps, from the formula."""
    ell = s - te
    k3 = math.exp(min(-ell, 20.0)) - 1.0 + ell
    return math.exp(min(s - o, 10.0)) * k3


S = [[-1.0, -2.0, -0.5, -3.0]]
TEACHER = [[-1.5, -1.0, -0.5, NAN]]  # the masked 4th position holds garbage
OLD = [[-1.2, -2.0, -0.3, INF]]
MASK = [[1.0, 1.0, 1.0, 0.0]]


def test_skill_sd_token_loss_and_token_mean_hand_values():
    out = skill_sd_loss(t(S), t(TEACHER), t(OLD), t(MASK))
    per_token = [hand_sdl(S[0][i], TEACHER[0][i], OLD[0][i]) for i in range(3)]
    assert_close(out.token_loss[0, :3], t(per_token))
    assert out.token_loss[0, 3].item() == 0.0
    assert out.loss.item() == pytest.approx(sum(per_token) / 3, rel=1e-12)
    # the pieces: l = (0.5, -1, 0); rho = (e^0.2, 1, e^-0.2); k3(0) = 0
    assert per_token[2] == 0.0
    assert per_token[0] == pytest.approx(math.exp(0.2) * (math.exp(-0.5) - 0.5), rel=1e-12)
    assert out.metrics["rho_mean"] == pytest.approx((math.exp(0.2) + 1 + math.exp(-0.2)) / 3)
    assert out.metrics["log_ratio_teacher_mean"] == pytest.approx(-0.5 / 3)
    assert out.metrics["rho_clipped_frac"] == 0.0 and out.metrics["k3_clipped_frac"] == 0.0


def test_k3_is_nonnegative_and_zero_only_where_student_equals_teacher():
    s = torch.linspace(-15, 0, 301, dtype=F64)
    te = torch.full_like(s, -3.0)
    k3 = skill_sd_token_loss(s[None], te[None], s[None], torch.ones(1, 301, dtype=F64))  # rho = 1
    assert torch.all(k3 >= 0)
    assert torch.all((k3 == 0) == (s == -3.0)[None])


def test_skill_sd_autograd_is_rho_times_l_where_no_clamp_binds():
    g = torch.Generator().manual_seed(0)
    s = (-torch.rand(3, 7, generator=g, dtype=F64) * 6).requires_grad_(True)
    te = -torch.rand(3, 7, generator=g, dtype=F64) * 6
    old = s.detach() + torch.randn(3, 7, generator=g, dtype=F64)
    mask = torch.ones(3, 7, dtype=F64)
    skill_sd_token_loss(s, te, old, mask).sum().backward()
    expected = torch.exp(s.detach() - old) * (s.detach() - te)  # rho_t * l_t
    assert_close(s.grad, expected)
    assert_close(skill_sd_token_grad(s, te, old, mask), expected)


@pytest.mark.parametrize("s, te, o, expected_grad, name", [
    # s - o = 12 > 10: rho is the constant e^10, only dk3 = 1 - e^-l remains
    (-1.0, -1.5, -13.0, math.exp(10) * (1 - math.exp(-0.5)), "rho clamp"),
    # -l = 25 > 20: k3 = e^20 - 1 + l, dk3 = 1, grad = rho (e^20 + l) > 0 (rho l would be < 0)
    (-26.0, -1.0, -26.3, math.exp(0.3) * (math.exp(20) - 25), "k3 clamp"),
    (-26.0, -1.0, -37.0, math.exp(10), "both clamps"),
    # exactly at the bound torch's clamp passes the gradient: the unclamped rho l
    (-1.0, -1.5, -11.0, math.exp(10) * 0.5, "rho bound"),
])
def test_skill_sd_gradient_where_the_clamps_bind(s, te, o, expected_grad, name):
    st = t([[s]]).requires_grad_(True)
    loss = skill_sd_token_loss(st, t([[te]]), t([[o]]), t([[1.0]]))
    assert loss.item() == pytest.approx(hand_sdl(s, te, o), rel=1e-12)
    loss.sum().backward()
    assert st.grad.item() == pytest.approx(expected_grad, rel=1e-10), name
    assert skill_sd_token_grad(st, t([[te]]), t([[o]]), t([[1.0]])).item() == pytest.approx(expected_grad, rel=1e-10)


def test_where_the_k3_clamp_binds_the_gradient_sign_flips():
    """Documented behaviour of the release's clamp: a student > 20 nats below the teacher is
    pushed further DOWN (descent on +rho (e^20 + l)); just inside the clamp it is pulled up."""
    s = t([[-20.5, -21.5]]).requires_grad_(True)  # l = -19.5 (inside) and -20.5 (clamped)
    skill_sd_token_loss(s, t([[-1.0, -1.0]]), s.detach(), t([[1.0, 1.0]])).sum().backward()
    assert s.grad[0, 0].item() == pytest.approx(-19.5) and s.grad[0, 1].item() > 4e8
    out = skill_sd_loss(s.detach(), t([[-1.0, -1.0]]), s.detach(), t([[1.0, 1.0]]))
    assert out.metrics["k3_clipped_frac"] == 0.5


def test_skill_sd_all_masked_row_is_a_finite_zero_and_teacher_old_get_no_gradient():
    s = t([[-1.0, -2.0], [NAN, -INF]]).requires_grad_(True)
    te = t([[-0.5, -2.5], [INF, NAN]]).requires_grad_(True)
    old = t([[-1.1, -1.9], [NAN, NAN]]).requires_grad_(True)
    mask = t([[1.0, 1.0], [0.0, 0.0]])
    for mode in ("token_mean", "problem_mean"):
        out = skill_sd_loss(s, te, old, mask, SkillSDConfig(aggregation=mode))
        assert torch.isfinite(out.loss) and torch.equal(out.token_loss[1], torch.zeros(2, dtype=F64))
        s.grad = None
        out.loss.backward()
        assert torch.isfinite(s.grad).all() and torch.equal(s.grad[1], torch.zeros(2, dtype=F64))
        assert te.grad is None and old.grad is None
    nothing = skill_sd_loss(s, te, old, torch.zeros(2, 2, dtype=F64))
    assert nothing.loss.item() == 0.0 and all(math.isfinite(v) for v in nothing.metrics.values())


# ---------------------------------------------------------------- SDAR
def test_sdar_reverse_kl_value_gradient_and_metrics_by_hand():
    s_vals, t_vals = [-1.0, -2.0, -0.3, -5.0], [-0.6, -2.5, -0.3, NAN]
    s = t([s_vals]).requires_grad_(True)
    mask = t([[1.0, 1.0, 1.0, 0.0]])
    out = sdar_loss(s, t([t_vals]), mask)
    gaps = [t_vals[i] - s_vals[i] for i in range(3)]  # 0.4, -0.5, 0
    gates = [sigmoid(5.0 * d) for d in gaps]  # 0.881, 0.076, 0.5
    assert out.loss.item() == pytest.approx(sum(g * d for g, d in zip(gates, gaps)) / 3, rel=1e-12)
    out.loss.backward()
    # -g_t / N_tokens: no Delta factor, the gate is a constant
    assert_close(s.grad, t([[-gates[0] / 3, -gates[1] / 3, -gates[2] / 3, 0.0]]))
    assert out.metrics["gate_mean"] == pytest.approx(sum(gates) / 3)
    assert out.metrics["gate_active_frac"] == pytest.approx(1 / 3)  # only 0.881 > 0.5
    assert out.metrics["gap_mean"] == pytest.approx(-0.1 / 3)


def test_beta_zero_is_grpo_plus_opsd_with_a_uniform_half_gate():
    s = t([[-1.0, -2.0, -0.5]]).requires_grad_(True)
    te = t([[-3.0, -0.5, -0.5]])
    out = sdar_loss(s, te, torch.ones(1, 3, dtype=F64), SDARConfig(beta=0.0))
    assert out.loss.item() == pytest.approx(0.5 * (-2.0 + 1.5 + 0.0) / 3, rel=1e-12)
    out.loss.backward()
    assert_close(s.grad, torch.full((1, 3), -0.5 / 3, dtype=F64))
    assert out.metrics["gate_mean"] == 0.5 and out.metrics["gate_active_frac"] == 0.0


def test_teacher_gets_no_gradient_and_padding_garbage_is_ignored():
    s = t([[-1.0, NAN], [-INF, INF]]).requires_grad_(True)
    te = t([[-0.5, INF], [NAN, NAN]]).requires_grad_(True)
    mask = t([[1.0, 0.0], [0.0, 0.0]])
    out = sdar_loss(s, te, mask, SDARConfig(aggregation="problem_mean"))
    out.loss.backward()
    assert te.grad is None
    assert torch.isfinite(out.loss) and torch.isfinite(s.grad).all()
    # problem mean over both rollouts (the empty one counts as a zero): g * 0.5 / (1 + eps) / 2
    assert out.loss.item() == pytest.approx(sigmoid(2.5) * 0.5 / (1 + 1e-6) / 2, rel=1e-12)
    assert torch.equal(s.grad[1], torch.zeros(2, dtype=F64)) and s.grad[0, 1].item() == 0.0


def test_entropy_gate_and_soft_or_by_hand():
    delta, entropy = t([[0.4, -0.5, 0.0]]), t([[0.2, 2.0, 1.0]])
    gap = [sigmoid(5 * d) for d in (0.4, -0.5, 0.0)]
    ent = [sigmoid(5 * (h - 1.0)) for h in (0.2, 2.0, 1.0)]
    assert_close(sdar_gate(delta, SDARConfig()), t([gap]))
    assert_close(sdar_gate(delta, SDARConfig(gate="entropy"), entropy), t([ent]))
    soft_or = [1 - (1 - a) * (1 - b) for a, b in zip(gap, ent)]
    assert_close(sdar_gate(delta, SDARConfig(gate="soft_or"), entropy), t([soft_or]))
    # the soft OR opens where either gate does, and is at least as open as both
    assert all(o >= max(a, b) for o, a, b in zip(soft_or, gap, ent))
    cfg = SDARConfig(gate="entropy", entropy_beta=2.0, entropy_center=0.5)
    assert sdar_gate(t([[0.0]]), cfg, t([[1.5]])).item() == pytest.approx(sigmoid(2.0))
    # in the loss: the entropy gate weights the reverse-KL surrogate, gradient -g_ent / N
    s = t([[-1.0, -2.0, -0.3]]).requires_grad_(True)
    out = sdar_loss(s, s.detach() + delta, torch.ones(1, 3, dtype=F64), SDARConfig(gate="entropy"), entropy=entropy)
    out.loss.backward()
    assert_close(s.grad, -t([ent]) / 3)
    with pytest.raises(ValueError, match="entropy"):
        sdar_loss(s, s.detach(), torch.ones(1, 3, dtype=F64), SDARConfig(gate="soft_or"))


P_T = [0.50, 0.25, 0.15, 0.06, 0.04]  # teacher over 5 tokens; its top-3 are ids 0, 1, 2
P_S = [0.20, 0.30, 0.10, 0.25, 0.15]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_forward_kl_and_jsd_are_the_top_k_divergences_under_the_same_gate(kind):
    cfg = SDARConfig(divergence=kind)
    teacher_topk = t([[[math.log(p) for p in P_T[:3]]]])  # [B=1, T=1, k=3]
    student_topk = t([[[math.log(p) for p in P_S[:3]]]]).requires_grad_(True)
    coarse_t, coarse_s = [0.50, 0.25, 0.15, 0.10], [0.20, 0.30, 0.10, 0.40]  # + one tail bin
    if kind == "forward_kl":
        expected = _kl(coarse_t, coarse_s)
    else:
        mix = [(a + b) / 2 for a, b in zip(coarse_t, coarse_s)]
        expected = 0.5 * _kl(coarse_t, mix) + 0.5 * _kl(coarse_s, mix)
    div = topk_divergence(cfg, teacher_topk, student_topk)
    assert div.item() == pytest.approx(expected, rel=1e-12)
    # sampled token id 0: the gate reads its gap log 0.5 - log 0.2
    out = sdar_loss(t([[math.log(0.2)]]), t([[math.log(0.5)]]), t([[1.0]]), cfg, divergence=div)
    gate = sigmoid(5 * math.log(0.5 / 0.2))
    assert out.loss.item() == pytest.approx(gate * expected, rel=1e-12)
    out.loss.backward()
    assert student_topk.grad is not None and student_topk.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="top-k"):
        sdar_loss(t([[-1.0]]), t([[-1.0]]), t([[1.0]]), cfg)


# ---------------------------------------------------------------- RLSD
def test_rlsd_lambda_decays_linearly_to_zero():
    assert [rlsd_lambda(s) for s in (0, 1, 50, 99, 100, 150)] == pytest.approx([0.5, 0.495, 0.25, 0.005, 0.0, 0.0])
    assert rlsd_lambda(5, RLSDConfig(lam=0.2, decay_steps=10)) == pytest.approx(0.1)
    with pytest.raises(SettingError, match="step"):
        rlsd_lambda(-1)


def test_rlsd_advantages_by_hand():
    adv = t([1.0, -2.0, 0.0])
    delta = t([[0.1, -0.5, 1.0], [0.1, -0.5, NAN], [3.0, -3.0, 0.0]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])

    def w(a, d):
        return min(max(math.exp(math.copysign(1.0, a) * d), 0.8), 1.2)

    lam = 0.5  # step 0
    expected = [[1.0 * ((1 - lam) + lam * w(1.0, d)) for d in (0.1, -0.5, 1.0)],
                [-2.0 * ((1 - lam) + lam * w(-2.0, d)) for d in (0.1, -0.5)] + [0.0],
                [0.0, 0.0, 0.0]]
    got = rlsd_advantages(adv, delta, mask, step=0)
    assert_close(got, t(expected))
    # e.g. row 0: exp(0.1) = 1.105 kept, exp(-0.5) = 0.607 -> 0.8, e = 2.718 -> 1.2
    assert got[0].tolist() == pytest.approx([0.5 + 0.5 * math.exp(0.1), 0.9, 1.1])
    # [B, T] advantages (constant rows) give the same
    assert_close(rlsd_advantages(adv[:, None].expand(3, 3), delta, mask, step=0), got)


def test_rlsd_is_grpo_once_lambda_reaches_zero_and_keeps_sign_and_bound():
    g = torch.Generator().manual_seed(4)
    adv, delta = torch.randn(5, generator=g, dtype=F64), torch.randn(5, 6, generator=g, dtype=F64) * 3
    mask = (torch.rand(5, 6, generator=g) > 0.3).to(F64)
    assert_close(rlsd_advantages(adv, delta, mask, step=100), adv[:, None] * mask)
    got = rlsd_advantages(adv, delta, mask, step=10)
    lam, a = rlsd_lambda(10), adv[:, None].expand(5, 6)
    live = mask > 0
    assert torch.all(torch.sign(got[live]) == torch.sign(a[live]))
    assert torch.all(got[live].abs() <= (1 + lam * 0.2) * a[live].abs() + 1e-12)
    assert torch.all(got[live].abs() >= (1 - lam * 0.2) * a[live].abs() - 1e-12)


# ---------------------------------------------------------------- reductions
def test_token_mean_and_problem_mean_hand_values():
    loss = t([[1.0, 2.0, NAN], [4.0, INF, INF], [NAN, NAN, NAN]])
    mask = t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert token_mean(loss, mask).item() == pytest.approx(7.0 / 3)
    assert problem_mean(loss, mask, eps=1e-12).item() == pytest.approx((1.5 + 4.0 + 0.0) / 3)
    # a micro-batch of a larger global batch: its share, times dp for FSDP's average
    part = GlobalBatch(dp_size=2, global_batch_size=8, batch_num_tokens=12)
    assert token_mean(loss, mask, part).item() == pytest.approx(7.0 / 12 * 2)
    per_problem = [3.0 / (2 + 1e-6), 4.0 / (1 + 1e-6), 0.0]  # default eps 1e-6
    assert aggregate(loss, mask, "problem_mean", part).item() == pytest.approx(sum(per_problem) / 8 * 2)
    assert token_mean(loss, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(SettingError, match="eps"):
        problem_mean(loss, mask, eps=0.0)
    with pytest.raises(ValueError, match="batch_num_tokens"):
        token_mean(loss, mask, GlobalBatch(dp_size=2, global_batch_size=8))
    with pytest.raises(ValueError, match="global_batch_size"):
        problem_mean(loss, mask, GlobalBatch(dp_size=2, batch_num_tokens=3))


def _rollouts(B=6, T=5, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, generator=g, dtype=F64)
    te = -torch.rand(B, T, generator=g, dtype=F64) * 3
    lengths = torch.tensor([5, 2, 4, 1, 3, 5])
    mask = (torch.arange(T) < lengths[:, None]).to(F64)
    mask[3] = 0.0  # one rollout with nothing to learn from
    te = torch.where(mask > 0, te, NAN)
    return x, te, mask


def _student(params, x):
    return -torch.nn.functional.softplus(params[:, None] * x)  # a differentiable "model"


@pytest.mark.parametrize("loss_kind", ["skill_sd", "sdar"])
@pytest.mark.parametrize("mode", ["token_mean", "problem_mean"])
@pytest.mark.parametrize("dp, splits", [(1, [6]), (1, [3, 3]), (1, [1, 2, 3]), (1, [1] * 6),
                                        (2, [3]), (2, [1, 2]), (2, [2, 1])])
def test_any_micro_batch_split_and_dp_size_give_the_mini_batch_loss_and_gradient(loss_kind, mode, dp, splits):
    x, te, mask = _rollouts()
    B = x.shape[0]
    base = torch.linspace(0.6, 1.1, B, dtype=F64)
    old = _student(base + 0.05, x).detach()
    info = GlobalBatch(dp_size=dp, global_batch_size=B, batch_num_tokens=mask.sum().item())

    def micro_loss(params, rows):
        s = _student(params[rows], x[rows])
        if loss_kind == "skill_sd":
            return skill_sd_loss(s, te[rows], old[rows], mask[rows], SkillSDConfig(aggregation=mode), info).loss
        return sdar_loss(s, te[rows], mask[rows], SDARConfig(aggregation=mode), info).loss

    params = base.clone().requires_grad_(True)
    total = 0.0
    per_rank = B // dp
    for rank in range(dp):  # each rank sums its micro-batches; FSDP then averages ranks
        start = rank * per_rank
        for size in splits:
            loss = micro_loss(params, slice(start, start + size))
            (loss / dp).backward()
            total += loss.item() / dp
            start += size
        assert start == (rank + 1) * per_rank

    # reference: the formula over the whole mini-batch, written independently of aggregate()
    ref_params = base.clone().requires_grad_(True)
    s = _student(ref_params, x)
    live = mask > 0
    if loss_kind == "skill_sd":
        ell = torch.where(live, s - te, 0.0)
        rho = torch.exp(torch.where(live, s - old, 0.0).clamp(max=10))
        per_token = rho * (torch.exp((-ell).clamp(max=20)) - 1 + ell)
    else:
        gap = torch.where(live, te - s, 0.0)
        per_token = torch.sigmoid(5 * gap.detach()) * gap
    per_token = per_token * mask
    if mode == "token_mean":
        reference = per_token.sum() / mask.sum()
    else:
        reference = (per_token.sum(-1) / (mask.sum(-1) + 1e-6)).mean()
    reference.backward()
    assert total == pytest.approx(reference.item(), rel=1e-10)
    assert_close(params.grad, ref_params.grad)
    assert params.grad.abs().sum() > 0 and params.grad[3].item() == 0.0


@pytest.mark.parametrize("ours, verls", [("token_mean", "token-mean"), ("problem_mean", "seq-mean-token-mean")])
def test_the_reductions_agree_with_verls_agg_loss(ours, verls):
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    x, te, mask = _rollouts()
    loss = torch.where(mask > 0, x.exp(), 0.0)
    for rows, info in ((slice(0, 6), GlobalBatch()), (slice(2, 5), GlobalBatch(2, 12, 31.0))):
        theirs = core_algos.agg_loss(loss[rows], mask[rows], verls, dp_size=info.dp_size,
                                     batch_num_tokens=info.batch_num_tokens, global_batch_size=info.global_batch_size)
        if info.global_batch_size is None and ours == "problem_mean":
            # without a global size verl's seq-mean skips fully-masked rows; ours counts every rollout
            kept = (mask[rows].sum(-1) > 0).sum().item()
            theirs = theirs * kept / mask[rows].shape[0]
        assert aggregate(loss[rows], mask[rows], ours, info).item() == pytest.approx(theirs.item(), rel=1e-5)


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize("make, name", [
    (lambda: SkillSDConfig(k3_clip=0.0), "k3_clip"),
    (lambda: SkillSDConfig(log_ratio_clip=-1.0), "log_ratio_clip"),
    (lambda: SkillSDConfig(aggregation="seq-mean"), "aggregation"),
    (lambda: SDARConfig(beta=-1.0), "beta"),
    (lambda: SDARConfig(gate="max"), "gate"),
    (lambda: SDARConfig(divergence="tv"), "divergence"),
    (lambda: SDARConfig(jsd_beta=1.0), "jsd_beta"),
    (lambda: SDARConfig(divergence_clip=0.0), "divergence_clip"),
    (lambda: SDARConfig(entropy_center=-0.1), "entropy_center"),
    (lambda: RLSDConfig(lam=1.5), "lam"),
    (lambda: RLSDConfig(decay_steps=0), "decay_steps"),
    (lambda: RLSDConfig(clip_eps=1.0), "clip_eps"),
    (lambda: GlobalBatch(dp_size=0), "dp_size"),
])
def test_settings_are_validated_and_name_the_field(make, name):
    with pytest.raises(SettingError) as err:
        make()
    assert err.value.name == name


def test_shape_errors_name_the_tensor():
    with pytest.raises(ValueError, match="teacher_logp"):
        sdar_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="advantages"):
        rlsd_advantages(torch.zeros(3), torch.zeros(2, 3), torch.ones(2, 3), step=0)
