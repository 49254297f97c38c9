"""The SGSD objective: robust support, outcome-validated polarity, gated distillation.

Pure functions of tensors (paper Sec. 2.3-2.5 and 3; equation numbers below are the
paper's). Notation, per problem ``x`` with one student rollout ``y`` of ``T`` tokens and
``K`` skill-conditioned teachers:

* ``Delta[k, t] = log pT_k(y_t) - log pS(y_t)``                    (eq. 7)
* robust support ``a_k = sum_t m_t clip(Delta, -c, c) / (sum_t m_t + eps)``  (eqs. 11-12)
* polarity ``rho_k = s * sign(a_k)`` if ``|a_k| > eps_a`` else 0             (eq. 13)
* gated loss ``l(D) = log 2 - log(1 + exp(-D^2 / (2 tau)))``                  (eq. 14)
* ``lbar_k = sum_t m_t l(Delta[k, t]) / (sum_t m_t + eps)``                   (eq. 15)
* ``L(x) = sum_k alpha_k rho_k lbar_k``                                        (eq. 16)

Teachers are stop-gradient: the gradient reaches the policy only through the student
log-probs, ``-dL/dlogpS_t = sum_k alpha_k rho_k m_t / Z * g(Delta[k, t])`` (eq. 19), with
``g`` the bounded derivative of eq. 17. Polarity is decided on *detached* student
log-probs; the loss uses the live ones.

Distribution losses (paper Sec. 4.4, Fig. 3a and 3c; the OPSD baseline) need more than the
sampled token: each teacher's top-k token ids per position with their full-vocabulary
log-probs, and the student's log-probs at the same ids. On that truncated support:

* :func:`topk_forward_kl` ``KL(pT || pS)`` and :func:`topk_jsd` (generalised JSD) over the
  k ids plus ONE tail bin holding the rest of each distribution's mass (``1 - sum_k p``),
  so the result is the divergence of the coarse-grained distributions (k ids + "other"):
  exact when the top-k holds all of the teacher's mass, and never above the full-vocabulary
  divergence (data processing inequality);
* :func:`local_support` (Fig. 3a): teacher and student renormalised on the teacher's top-k
  ids plus the sampled token, giving the local sampled-token gap (polarity) and the local
  forward KL (what the gate is applied to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from sgsd.checks import check

__all__ = [
    "DISTRIBUTION_LOSSES",
    "LOSS_TYPES",
    "LossType",
    "ObjectiveConfig",
    "SGSDOutput",
    "gated_loss",
    "gated_loss_grad",
    "local_support",
    "robust_support",
    "sampled_rkl_loss",
    "sgsd_objective",
    "support_quantiles",
    "tail_log_mass",
    "teacher_polarity",
    "topk_forward_kl",
    "topk_jsd",
]

LOG2 = math.log(2.0)
LossType = Literal["gated", "sampled_rkl", "local_gated", "fkl", "jsd"]
LOSS_TYPES: tuple[str, ...] = ("gated", "sampled_rkl", "local_gated", "fkl", "jsd")
# Loss types that read each teacher's top-k distribution (``divergence`` in sgsd_objective).
DISTRIBUTION_LOSSES: tuple[str, ...] = ("local_gated", "fkl", "jsd")
# Smallest tail mass a truncated distribution is given (its log is -27.6): the tail of a
# top-k that holds (to rounding) all the mass is 0, and log 0 must not reach a gradient.
TAIL_FLOOR = 1e-12


def gated_loss(delta: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Bounded gated token loss, eq. 14: ``log 2 - log(1 + exp(-delta^2 / (2 tau)))``.

    Elementwise, any shape. Zero at 0, symmetric, increasing in ``|delta|`` and
    saturating at ``log 2``. Written with ``softplus`` so it is finite for any gap.
    """
    _check_tau(tau)
    return LOG2 - torch.nn.functional.softplus(-(delta * delta) / (2.0 * tau))


def gated_loss_grad(delta: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Closed-form derivative of :func:`gated_loss`, eq. 17.

    ``g(delta) = delta / (tau (1 + exp(delta^2 / (2 tau))))``, computed as
    ``delta / tau * sigmoid(-delta^2 / (2 tau))`` (no overflow). Bounded by
    ``1 / sqrt(e tau)`` (Prop. 3.1, eq. 38).
    """
    _check_tau(tau)
    return delta / tau * torch.sigmoid(-(delta * delta) / (2.0 * tau))


def sampled_rkl_loss(delta: torch.Tensor) -> torch.Tensor:
    """Unbounded ablation of the gate: ``delta^2 / 2``, whose derivative is ``delta``.

    Plugged into eq. 19 this gives the sampled-token reverse-KL policy-gradient
    coefficient (``-d KL(pS||pT) ~ Delta * d log pS``), i.e. the update the gate is
    designed to bound (paper Sec. 2.5, Fig. 3c "divergence variants").
    """
    return 0.5 * delta * delta


def tail_log_mass(log_probs: torch.Tensor) -> torch.Tensor:
    """``log(1 - sum_i exp(log_probs[..., i]))``: the log-mass outside a truncated support.

    ``log_probs`` are full-vocabulary log-probs of some ids (last dim). The mass is floored
    at :data:`TAIL_FLOOR` (rounding can put the sum of a near-complete top-k at or above 1).
    Differentiable: ``d/d lp_i = -p_i / tail``.
    """
    inside = torch.logsumexp(log_probs, dim=-1).clamp(max=math.log1p(-TAIL_FLOOR))
    return torch.log(-torch.expm1(inside))


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Elementwise ``p (log p - log q)``, 0 where ``p`` is 0 (``log p = -inf``)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


def topk_forward_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor,
                    term_clip: float | None = None) -> torch.Tensor:
    """Forward KL ``KL(pT || pS)`` on the teacher's top-k ids plus a tail bin.

    Args:
        teacher_logp: ``[..., k]`` the teacher's full-vocabulary log-probs of its top-k ids
            (treated as constants).
        student_logp: ``[..., k]`` the student's full-vocabulary log-probs of the SAME ids
            (with gradient).
        term_clip: upper clip of each id's term ``pT_i (log pT_i - log pS_i)`` before the
            sum (the official release's OPSD ``jsd_token_clip``, which clamps its elementwise
            ``kl_div`` output, i.e. per vocabulary entry); None: no clip. The tail bin's term
            is not clipped (it stands for the ids outside the top-k, whose own terms are unknown).

    Returns:
        ``[...]``: ``sum_i pT_i (log pT_i - log pS_i) + tT (log tT - log tS)``, with ``t`` the
        mass outside the ids (:func:`tail_log_mass`). >= 0 without a clip.
    """
    teacher_logp = teacher_logp.detach()
    terms = _kl_terms(teacher_logp, student_logp)
    if term_clip is not None:
        terms = terms.clamp(max=term_clip)
    tail = _kl_terms(tail_log_mass(teacher_logp), tail_log_mass(student_logp))
    return terms.sum(-1) + tail


def topk_jsd(teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float = 0.5,
             term_clip: float | None = None) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence on the teacher's top-k ids plus a tail bin.

    ``JSD_beta = beta KL(pT || M) + (1 - beta) KL(pS || M)`` with the mixture
    ``M = beta pT + (1 - beta) pS`` (Agarwal et al.'s GKD; ``beta = 0.5`` is the symmetric
    JSD, bounded by ``log 2``). Inputs as :func:`topk_forward_kl`; ``term_clip`` clips each
    id's combined term; the tail bin (mixture of the two tails) is not clipped.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    teacher_logp = teacher_logp.detach()

    def mixed(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        m = torch.logaddexp(t + math.log(beta), s + math.log1p(-beta))
        return beta * _kl_terms(t, m) + (1.0 - beta) * _kl_terms(s, m)

    terms = mixed(teacher_logp, student_logp)
    if term_clip is not None:
        terms = terms.clamp(max=term_clip)
    return terms.sum(-1) + mixed(tail_log_mass(teacher_logp), tail_log_mass(student_logp))


def local_support(teacher_logp: torch.Tensor, student_logp: torch.Tensor, teacher_sampled: torch.Tensor,
                  student_sampled: torch.Tensor, sampled_in_topk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student renormalised on a local support (paper Sec. 4.4, Fig. 3a).

    The support of a position is the teacher's top-k ids plus the sampled token ``y_t``
    when it is not among them (it must stay scorable for the polarity); both distributions
    are renormalised on it: ``p~(v) = p(v) / sum_{u in S} p(u)``.

    Args:
        teacher_logp, student_logp: ``[..., k]`` full-vocabulary log-probs of the teacher's
            top-k ids under each (teacher constant, student with gradient).
        teacher_sampled, student_sampled: ``[...]`` full-vocabulary log-probs of ``y_t``.
        sampled_in_topk: ``[...]`` bool, ``y_t`` is one of the k ids.

    Returns:
        ``(gap, kl)``, each ``[...]``: the local sampled-token gap
        ``log p~T(y_t) - log p~S(y_t)`` (what the support score and polarity read, in place
        of eq. 7's full-vocabulary gap) and the local forward KL ``KL(p~T || p~S)`` over the
        support (what the gate of eq. 14 is applied to).
    """
    teacher_logp, teacher_sampled = teacher_logp.detach(), teacher_sampled.detach()
    extra = torch.full_like(teacher_sampled, -math.inf)
    t = torch.cat([teacher_logp, torch.where(sampled_in_topk, extra, teacher_sampled).unsqueeze(-1)], -1)
    s = torch.cat([student_logp, torch.where(sampled_in_topk, extra.to(student_logp.dtype),
                                             student_sampled).unsqueeze(-1)], -1)
    t_norm, s_norm = torch.logsumexp(t, -1), torch.logsumexp(s, -1)
    gap = (teacher_sampled - t_norm) - (student_sampled - s_norm)
    t_local = t - t_norm.unsqueeze(-1)
    s_local = torch.where(torch.isfinite(t_local), s - s_norm.unsqueeze(-1), torch.zeros_like(s))
    return gap, _kl_terms(t_local, s_local).sum(-1)


def robust_support(
    delta: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 3.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Robust teacher support score ``a_k``, eqs. 11-12.

    Args:
        delta: gaps ``[..., T]`` (e.g. ``[B, K, T]``); positions where ``mask`` is 0 are
            ignored even if they hold inf/NaN (padding).
        mask: ``m_t``, broadcastable to ``delta`` (e.g. ``[B, 1, T]``), 0/1 or bool.
        clip: ``c_Delta``; ``None`` disables clipping (ablation).
        eps: keeps an all-masked row finite (its support is 0).

    Returns:
        ``[...]``: the masked mean of the clipped gap.
    """
    m = mask.to(delta.dtype)
    d = torch.where(m > 0, delta, torch.zeros_like(delta))
    if clip is not None:
        if clip <= 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}")
        d = d.clamp(-clip, clip)
    return (d * m).sum(-1) / (m.sum(-1) + eps)


def teacher_polarity(
    support: torch.Tensor, outcome_sign: torch.Tensor, threshold: float = 0.05
) -> torch.Tensor:
    """Outcome-validated polarity ``rho_k``, eq. 13 and Tab. 2.

    Args:
        support: ``a_k``, ``[B, K]``.
        outcome_sign: ``s``, ``[B]``, +1 for a verified success and -1 for a failure.
        threshold: ``eps_a >= 0``; ``|a_k| <= eps_a`` is the neutral zone (rho = 0).

    Returns:
        ``[B, K]`` in {-1, 0, +1} (support's dtype): +1 distills the teacher (helpful:
        success & support, or warning: failure & suppression), -1 reverses it
        (over-suppressive: success & suppression, or misleading: failure & support).
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    s = torch.sign(outcome_sign.to(support.dtype)).unsqueeze(-1)
    rho = s * torch.sign(support)
    return torch.where(support.abs() > threshold, rho, torch.zeros_like(rho))


@dataclass(frozen=True)
class ObjectiveConfig:
    """SGSD objective settings (paper Tab. 12 defaults) and the ablation switches."""

    tau: float = 1.0  # gate width tau_g (> 0)
    clip: float = 3.0  # support clip c_Delta (> 0)
    threshold: float = 0.05  # polarity neutral zone eps_a (>= 0)
    eps: float = 1e-6  # denominator guard
    use_token_mask: bool = True  # False: aggregate over every response token
    use_clip: bool = True  # False: support on raw gaps
    use_threshold: bool = True  # False: eps_a = 0
    use_polarity: bool = True  # False: rho = +1 for every present teacher (collapses, Fig. 4)
    # gated (eq. 14 on the sampled-token gap) | sampled_rkl (unbounded delta^2/2) | local_gated
    # (eq. 14 on the local forward KL of the teacher's top-k support, Fig. 3a) | fkl | jsd
    # (the top-k divergence itself as the token loss, Fig. 3c; the OPSD baseline is fkl)
    loss_type: LossType = "gated"
    divergence_clip: float | None = None  # fkl / jsd: upper clip of each id's term (release OPSD: 0.05)
    jsd_beta: float = 0.5  # jsd: mixture weight of the teacher

    def __post_init__(self) -> None:
        check("tau", self.tau, self.tau > 0, "> 0")
        check("clip", self.clip, self.clip > 0, "> 0")
        check("threshold", self.threshold, self.threshold >= 0, ">= 0")
        check("eps", self.eps, self.eps > 0, "> 0")
        check("loss_type", self.loss_type, self.loss_type in LOSS_TYPES, "one of " + ", ".join(LOSS_TYPES))
        if self.divergence_clip is not None:
            check("divergence_clip", self.divergence_clip, self.divergence_clip > 0, "> 0 or null")
        check("jsd_beta", self.jsd_beta, 0.0 < self.jsd_beta < 1.0, "in (0, 1)")

    @property
    def uses_distribution(self) -> bool:
        """The loss reads each teacher's top-k distribution (``divergence`` in :func:`sgsd_objective`)."""
        return self.loss_type in DISTRIBUTION_LOSSES


@dataclass
class SGSDOutput:
    """What :func:`sgsd_objective` returns.

    ``loss``: ``[B]`` per-problem loss ``L(x)`` (eq. 16), differentiable w.r.t. the
    student log-probs. ``support``/``polarity``/``token_loss_mean``: ``[B, K]``, detached.
    ``metrics``: plain floats (fractions are over present teachers).
    """

    loss: torch.Tensor
    support: torch.Tensor
    polarity: torch.Tensor
    token_loss_mean: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def sgsd_objective(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    alpha: torch.Tensor,
    outcome_sign: torch.Tensor,
    config: ObjectiveConfig = ObjectiveConfig(),
    *,
    response_mask: torch.Tensor | None = None,
    divergence: torch.Tensor | None = None,
    support_gap: torch.Tensor | None = None,
) -> SGSDOutput:
    """Per-problem SGSD loss, eqs. 7 and 11-16.

    Args:
        student_logp: ``[B, T]`` log pS of the sampled tokens (with gradient).
        teacher_logp: ``[B, K, T]`` log pT_k of the same tokens (treated as constants).
        mask: ``[B, T]`` token mask ``m_t`` (response tokens minus special/template/think/
            formatting tokens; 0 on padding).
        alpha: ``[B, K]`` teacher weights (eq. 6); 0 marks an absent teacher
            (``K_x < K``), which then contributes nothing and is not counted.
        outcome_sign: ``[B]`` +1 success / -1 failure.
        config: see :class:`ObjectiveConfig`.
        response_mask: ``[B, T]`` valid response tokens; required when
            ``config.use_token_mask`` is False (then it replaces ``mask``), and used for
            the ``mask_keep_frac`` metric.
        divergence: ``[B, K, T]`` per-token divergence of each teacher on its top-k support
            (with gradient through the student), required by the distribution loss types:
            :func:`topk_forward_kl` / :func:`topk_jsd` for ``fkl`` / ``jsd`` (the token loss
            itself), the local KL of :func:`local_support` for ``local_gated`` (gated).
        support_gap: ``[B, K, T]`` the gap the support score reads instead of eq. 7's
            (``local_gated``: the local sampled-token gap of :func:`local_support`).
    """
    B, T = student_logp.shape
    if teacher_logp.dim() != 3 or teacher_logp.shape[0] != B or teacher_logp.shape[2] != T:
        raise ValueError(f"teacher_logp must be [B={B}, K, T={T}], got {tuple(teacher_logp.shape)}")
    K = teacher_logp.shape[1]
    if alpha.shape != (B, K):
        raise ValueError(f"alpha must be [B={B}, K={K}], got {tuple(alpha.shape)}")
    if mask.shape != (B, T) or outcome_sign.shape != (B,):
        raise ValueError(
            f"mask must be [B, T]=[{B}, {T}] and outcome_sign [B]=[{B}]; "
            f"got {tuple(mask.shape)} and {tuple(outcome_sign.shape)}"
        )
    if not config.use_token_mask:
        if response_mask is None:
            raise ValueError("use_token_mask=False needs response_mask (padding must stay excluded)")
        mask = response_mask
    dtype = student_logp.dtype
    m = mask.to(dtype).unsqueeze(1)  # [B, 1, T]
    present = alpha > 0  # [B, K]
    # An absent teacher's slot may hold anything (zeros, NaN): stand the student in for it,
    # so its gap is exactly 0 and it can neither count nor poison a sum (0 * NaN = NaN).
    teacher = torch.where(present.unsqueeze(-1), teacher_logp.detach().to(dtype),
                          student_logp.detach().unsqueeze(1))

    if config.uses_distribution and (divergence is None or divergence.shape != teacher_logp.shape):
        raise ValueError(f"loss_type={config.loss_type!r} needs divergence [B={B}, K={K}, T={T}], got "
                         f"{None if divergence is None else tuple(divergence.shape)}")
    if config.loss_type == "local_gated" and (support_gap is None or support_gap.shape != teacher_logp.shape):
        raise ValueError(f"loss_type='local_gated' needs support_gap [B={B}, K={K}, T={T}]")

    # Polarity from the detached gap (eqs. 11-13): a decision, not a differentiable path.
    with torch.no_grad():
        delta_detached = teacher - student_logp.detach().unsqueeze(1)
        if config.loss_type == "local_gated":
            delta_detached = torch.where(present.unsqueeze(-1), support_gap.detach().to(dtype), 0.0)
        support = robust_support(delta_detached, m, config.clip if config.use_clip else None, config.eps)
        threshold = config.threshold if config.use_threshold else 0.0
        validated = teacher_polarity(support, outcome_sign, threshold) * present
        rho = present.to(dtype) if not config.use_polarity else validated

    # Gated loss on the UNclipped live gap (eqs. 14-16); masked positions are zeroed
    # before the loss so inf/NaN in padding cannot leak in (0 * inf = NaN).
    delta = teacher - student_logp.unsqueeze(1)  # [B, K, T]
    if config.uses_distribution:  # the teacher's top-k divergence takes the sampled gap's place
        delta = torch.where(present.unsqueeze(-1), divergence.to(dtype), 0.0)
    delta = torch.where(m > 0, delta, torch.zeros_like(delta))
    if config.loss_type in ("gated", "local_gated"):
        token_loss = gated_loss(delta, config.tau)
    elif config.loss_type == "sampled_rkl":
        token_loss = sampled_rkl_loss(delta)
    else:  # fkl / jsd: the divergence is the token loss
        token_loss = delta
    lbar = (token_loss * m).sum(-1) / (m.sum(-1) + config.eps)  # [B, K]
    loss = (alpha.to(dtype) * rho * lbar).sum(-1)  # [B]

    metrics = _metrics(delta_detached, m, support, validated, present, outcome_sign, lbar, config,
                       response_mask)
    return SGSDOutput(loss=loss, support=support, polarity=rho, token_loss_mean=lbar.detach(),
                      metrics=metrics)


def _metrics(
    delta: torch.Tensor,
    m: torch.Tensor,
    support: torch.Tensor,
    validated: torch.Tensor,
    present: torch.Tensor,
    outcome_sign: torch.Tensor,
    lbar: torch.Tensor,
    config: ObjectiveConfig,
    response_mask: torch.Tensor | None,
) -> dict[str, float]:
    """Diagnostics of one batch (detached floats). Teacher fractions are over present teachers."""
    with torch.no_grad():
        n_teachers = present.sum().item()
        denom = max(n_teachers, 1)
        success = (outcome_sign > 0).unsqueeze(-1)
        failure = ~success

        def frac(cond: torch.Tensor) -> float:
            return (cond & present).sum().item() / denom

        live_tokens = (m > 0) & present.unsqueeze(-1)
        clipped = (delta.abs() > config.clip) & live_tokens
        out = {
            "helpful_frac": frac(success & (validated > 0)),
            "warning_frac": frac(failure & (validated > 0)),
            "over_suppressive_frac": frac(success & (validated < 0)),
            "misleading_frac": frac(failure & (validated < 0)),
            "neutral_frac": frac(validated == 0),
            "below_threshold_frac": frac(support.abs() <= config.threshold),
            "support_mean": (support * present).sum().item() / denom,
            "support_abs_mean": (support.abs() * present).sum().item() / denom,
            "clipped_frac": clipped.sum().item() / max(live_tokens.sum().item(), 1),
            "gate_loss": (lbar.detach() * present).sum().item() / denom,
            "teachers_per_problem": n_teachers / max(present.shape[0], 1),
            "short_pool_frac": (present.sum(-1) < present.shape[1]).to(torch.float32).mean().item()
            if present.numel() else 0.0,
        }
        if response_mask is not None:
            kept = m.squeeze(1).sum().item()
            out["mask_keep_frac"] = kept / max(response_mask.to(m.dtype).sum().item(), 1.0)
        return out


def support_quantiles(support: torch.Tensor, present: torch.Tensor,
                      qs: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float]:
    """Quantiles of the robust support ``a_k`` over the present teachers of a batch.

    ``{"support_p10": ..., "support_p50": ..., ...}`` (linear interpolation); empty when no
    teacher is present. Logged per step, they show the support *distribution* (where the
    neutral zone ``|a_k| <= eps_a`` and the clip ``c_Delta`` sit in it), not only its mean.
    """
    values = support.detach().float()[present.bool()]
    if values.numel() == 0:
        return {}
    found = torch.quantile(values, torch.tensor(qs, dtype=values.dtype))
    return {f"support_p{round(q * 100):02d}": v for q, v in zip(qs, found.tolist())}


def _check_tau(tau: float) -> None:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
