"""The sibling self-distillation objectives as pure tensor functions: Skill-SD, SDAR, RLSD.

Beside :mod:`sgsd.objective` (SGSD); torch only. Notation per rollout of ``T`` response
tokens: ``s_t = log pi_theta(y_t)`` (live, with gradient), ``T_t = log pi_T(y_t)`` (one
skill-conditioned teacher, constant), ``o_t = log pi_old(y_t)`` (rollout policy, constant).

* **Skill-SD** (Wang et al. 2026), L_SDL: ``l_t = s_t - T_t``,
  ``k3_t = exp(min(-l_t, c_k3)) - 1 + l_t``, ``rho_t = exp(min(s_t - o_t, c_rho))`` (the
  gradient flows through rho), token loss ``rho_t k3_t``; ``c_k3 = 20``, ``c_rho = 10``.
* **SDAR** (Lu et al. 2026): ``Delta_t = T_t - sg(s_t)``, gate ``g_t = sg(sigmoid(beta Delta_t))``,
  token loss ``g_t (T_t - s_t)`` (reverse KL, sampled-token surrogate); ``beta = 0`` is GRPO+OPSD
  (``g = 0.5``). Also an entropy gate, their soft-OR, and forward-KL / JSD divergences.
* **RLSD**: ``A_t = A ((1 - l) + l clip(exp(sign(A) Delta_t), 1 - eps, 1 + eps))``.

Formulas and the clamps are from the SDAR authors' Apache-2.0 release (github.com/ZJU-REAL/SDAR,
``verl/trainer/ppo/skillsd_utils.py`` ``compute_sdl_loss``, ``sdar_utils.py`` ``compute_sdar_loss``,
``rlsd_utils.py`` ``compute_rlsd_token_advantage``, ``rlsd_ray_trainer.py`` ``_get_rlsd_lambda``),
which also carries their reproduction of Skill-SD (Skill-SD has no public code). Written anew.

Every ``[B, T]`` input may hold inf/NaN where ``mask`` is 0 (padding): inputs are replaced
there BEFORE any exp, so neither the value nor the gradient sees them (``0 * NaN`` is NaN, and
so is the backward of an ``exp`` that overflowed). An all-masked row gives a finite zero.

Reductions (:func:`aggregate`) return one micro-batch's share of the global mini-batch loss,
scaled with verl's non-tensor batch info (:class:`GlobalBatch`) so that summing micro-batches
and averaging over data-parallel ranks gives the mini-batch value and gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from sgsd.checks import check, check_int
from sgsd.objective import topk_forward_kl, topk_jsd

__all__ = [
    "AGGREGATIONS", "GATES", "SDAR_DIVERGENCES", "GlobalBatch", "RLSDConfig", "SDARConfig", "SDLoss",
    "SkillSDConfig", "aggregate", "problem_mean", "rlsd_advantages", "rlsd_lambda", "rlsd_weight", "sdar_gate",
    "sdar_loss", "skill_sd_loss", "skill_sd_token_grad", "skill_sd_token_loss", "token_mean", "topk_divergence",
]

Aggregation = Literal["token_mean", "problem_mean"]
AGGREGATIONS: tuple[str, ...] = ("token_mean", "problem_mean")
Gate = Literal["gap", "entropy", "soft_or"]
GATES: tuple[str, ...] = ("gap", "entropy", "soft_or")
Divergence = Literal["reverse_kl", "forward_kl", "jsd"]
SDAR_DIVERGENCES: tuple[str, ...] = ("reverse_kl", "forward_kl", "jsd")


# ---------------------------------------------------------------- aggregation
@dataclass(frozen=True)
class GlobalBatch:
    """What verl 0.9.1 tells a micro-batch about its global mini-batch: the non-tensor keys of
    the micro-batch TensorDict that ``verl/workers/utils/losses.py`` ``ppo_loss`` hands to
    ``agg_loss`` (``verl/trainer/ppo/core_algos.py``).

    ``dp_size``: data-parallel ranks (FSDP averages gradients over them; set with
    ``batch_num_tokens`` in ``FSDPEngine.forward_backward_batch``). ``global_batch_size``:
    rollouts in the mini-batch over all ranks (the trainer's ``ppo_mini_batch_size * rollout.n``).
    ``batch_num_tokens``: ``loss_mask`` (= response mask) tokens in the mini-batch, all-reduced
    over ranks. None: unknown (one rank only: the micro-batch is then the whole mini-batch).
    The SDAR release ran an older verl that took each micro-batch's OWN token mean and divided
    by the accumulation count (a mean of micro-batch means); this is the global token mean.
    """

    dp_size: int = 1
    global_batch_size: int | None = None
    batch_num_tokens: float | None = None

    def __post_init__(self) -> None:
        check_int("dp_size", self.dp_size, 1)
        for name in ("global_batch_size", "batch_num_tokens"):
            value = getattr(self, name)
            check(name, value, value is None or value >= 0, ">= 0 or None")


def token_mean(token_loss: torch.Tensor, mask: torch.Tensor, batch: GlobalBatch = GlobalBatch()) -> torch.Tensor:
    """verl's ``token-mean`` (``agg_loss``): ``sum_{b,t} m l / N_tokens * dp_size``.

    Args:
        token_loss: ``[B, T]``; anything where ``mask`` is 0.
        mask: ``[B, T]`` 0/1. ``batch.batch_num_tokens`` must count THIS mask over the global
            mini-batch: verl's own count is of the response mask, right for Skill-SD / SDAR.
    Returns:
        scalar; 0 when no token is counted.
    """
    m = mask.to(token_loss.dtype)
    total = torch.where(m > 0, token_loss, 0.0).mul(m).sum()
    count = batch.batch_num_tokens
    if count is None:
        if batch.dp_size > 1:
            raise ValueError("batch_num_tokens is required for the token mean when dp_size > 1")
        count = m.sum().item()
    return total / max(count, 1.0) * batch.dp_size


def problem_mean(token_loss: torch.Tensor, mask: torch.Tensor, batch: GlobalBatch = GlobalBatch(),
                 eps: float = 1e-6) -> torch.Tensor:
    """SGSD's reduction: each rollout's masked token mean ``sum_t m l / (sum_t m + eps)``, then
    ``sum_b / global_batch_size * dp_size`` (what ``sgsd_objective`` + the recipe's
    ``global_mean`` do; verl's ``seq-mean-token-mean`` with a global size). An all-masked rollout
    counts as one problem with loss 0 (``eps > 0`` keeps it finite). Shapes as :func:`token_mean`; scalar out.
    """
    check("eps", eps, eps > 0, "> 0")
    m = mask.to(token_loss.dtype)
    per_problem = torch.where(m > 0, token_loss, 0.0).mul(m).sum(-1) / (m.sum(-1) + eps)
    size = batch.global_batch_size
    if size is None:
        if batch.dp_size > 1:
            raise ValueError("global_batch_size is required for the problem mean when dp_size > 1")
        size = per_problem.shape[0]
    return per_problem.sum() / max(size, 1) * batch.dp_size


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, mode: Aggregation,
              batch: GlobalBatch = GlobalBatch()) -> torch.Tensor:
    """The aggregation switch: ``"token_mean"`` (:func:`token_mean`) or ``"problem_mean"``."""
    if mode == "token_mean":
        return token_mean(token_loss, mask, batch)
    if mode == "problem_mean":
        return problem_mean(token_loss, mask, batch)
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {mode!r}")


@dataclass
class SDLoss:
    """``loss``: scalar, this micro-batch's share (see :func:`aggregate`), differentiable w.r.t.
    the student. ``token_loss``: ``[B, T]`` detached, 0 where masked. ``metrics``: floats over
    this micro-batch's masked tokens (0 when none)."""

    loss: torch.Tensor
    token_loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> float:
    return (torch.where(m > 0, x, 0.0) * m).sum().item() / max(m.sum().item(), 1.0)


def _check_shapes(mask: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.shape != mask.shape:
            raise ValueError(f"{name} must be [B, T] like mask {tuple(mask.shape)}, got {tuple(t.shape)}")


# ---------------------------------------------------------------- Skill-SD
@dataclass(frozen=True)
class SkillSDConfig:
    """Skill-SD's L_SDL settings (the release's clamps)."""

    k3_clip: float = 20.0  # upper clamp of -l_t inside exp (> 0)
    log_ratio_clip: float = 10.0  # upper clamp of s_t - o_t inside rho's exp (> 0)
    aggregation: Aggregation = "token_mean"  # release: verl's token-mean

    def __post_init__(self) -> None:
        check("k3_clip", self.k3_clip, self.k3_clip > 0, "> 0")
        check("log_ratio_clip", self.log_ratio_clip, self.log_ratio_clip > 0, "> 0")
        check("aggregation", self.aggregation, self.aggregation in AGGREGATIONS, "one of " + ", ".join(AGGREGATIONS))


def _skill_sd_terms(student_logp, teacher_logp, old_logp, mask, config):
    live = mask > 0
    ell = torch.where(live, student_logp - teacher_logp.detach(), 0.0)  # l_t
    log_ratio = torch.where(live, student_logp - old_logp.detach(), 0.0)
    k3 = torch.exp((-ell).clamp(max=config.k3_clip)) - 1.0 + ell
    rho = torch.exp(log_ratio.clamp(max=config.log_ratio_clip))
    return ell, log_ratio, k3, rho


def skill_sd_token_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor, old_logp: torch.Tensor,
                        mask: torch.Tensor, config: SkillSDConfig = SkillSDConfig()) -> torch.Tensor:
    """``rho_t k3_t``, ``[B, T]`` (0 where masked): importance-weighted k3 estimate of
    ``KL(pi_theta || pi_T)`` on the sampled token. All inputs ``[B, T]``; teacher and old constant."""
    _check_shapes(mask, student_logp=student_logp, teacher_logp=teacher_logp, old_logp=old_logp)
    _, _, k3, rho = _skill_sd_terms(student_logp, teacher_logp, old_logp, mask, config)
    return torch.where(mask > 0, rho * k3, 0.0)


def skill_sd_token_grad(student_logp: torch.Tensor, teacher_logp: torch.Tensor, old_logp: torch.Tensor,
                        mask: torch.Tensor, config: SkillSDConfig = SkillSDConfig()) -> torch.Tensor:
    """Closed-form ``d(rho_t k3_t) / d s_t``, ``[B, T]`` (0 where masked).

    ``rho (1[s - o <= c_rho] k3 + dk3)`` with ``dk3 = 1 - exp(-l)`` if ``-l <= c_k3`` else 1
    (torch's clamp passes the gradient AT the bound). Where neither clamp binds the two big terms
    cancel to ``rho_t l_t``: the sampled reverse-KL gradient, importance-corrected. Where they bind:

    * ``s - o > c_rho``: rho is the constant ``e^c_rho``, gradient ``e^c_rho (1 - e^-l)``;
    * ``-l > c_k3`` (student > 20 nats below the teacher): k3 is ``e^20 - 1 + l``, gradient
      ``rho (e^20 + l)`` -- POSITIVE, ~4.9e8 rho: the update pushes the token DOWN, away from the
      teacher it lags, the opposite of ``rho l``; only the rho factor's own gradient stays (1e-8-scale
      probabilities only; the release's behaviour, kept);
    * both: ``e^c_rho``.
    """
    ell, log_ratio, k3, rho = _skill_sd_terms(student_logp.detach(), teacher_logp, old_logp, mask, config)
    dk3 = torch.where(-ell <= config.k3_clip, 1.0 - torch.exp((-ell).clamp(max=config.k3_clip)), 1.0)
    through_rho = torch.where(log_ratio <= config.log_ratio_clip, k3, 0.0)
    return torch.where(mask > 0, rho * (through_rho + dk3), 0.0)


def skill_sd_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor, old_logp: torch.Tensor,
                  mask: torch.Tensor, config: SkillSDConfig = SkillSDConfig(),
                  batch: GlobalBatch = GlobalBatch()) -> SDLoss:
    """L_SDL: :func:`skill_sd_token_loss` reduced by ``config.aggregation`` (release: token mean).

    Metrics: ``sdl_token_loss`` (mean rho k3), ``rho_mean``, ``rho_max``, ``rho_clipped_frac``
    (``s - o > c_rho``), ``k3_clipped_frac`` (``-l > c_k3``), ``log_ratio_teacher_mean`` (mean l).
    """
    token = skill_sd_token_loss(student_logp, teacher_logp, old_logp, mask, config)
    with torch.no_grad():
        m = mask.to(token.dtype)
        ell, log_ratio, _, rho = _skill_sd_terms(student_logp.detach(), teacher_logp, old_logp, mask, config)
        live = m > 0
        metrics = {
            "sdl_token_loss": _masked_mean(token, m),
            "rho_mean": _masked_mean(rho, m),
            "rho_max": rho[live].max().item() if live.any() else 0.0,
            "rho_clipped_frac": _masked_mean((log_ratio > config.log_ratio_clip).to(m.dtype), m),
            "k3_clipped_frac": _masked_mean((-ell > config.k3_clip).to(m.dtype), m),
            "log_ratio_teacher_mean": _masked_mean(ell, m),
        }
    return SDLoss(aggregate(token, mask, config.aggregation, batch), token.detach(), metrics)


# ---------------------------------------------------------------- SDAR
@dataclass(frozen=True)
class SDARConfig:
    """SDAR settings. ``beta = 0`` with the gap gate is GRPO+OPSD (``g = 0.5``)."""

    beta: float = 5.0  # gap-gate sharpness (>= 0); release default 5
    gate: Gate = "gap"  # gap | entropy | soft_or (1 - (1 - g_gap)(1 - g_ent)); see sdar_gate
    entropy_beta: float = 5.0  # entropy-gate sharpness (>= 0); OUR choice, not in the release
    entropy_center: float = 1.0  # entropy (nats) where the entropy gate is 0.5 (>= 0); OUR choice
    divergence: Divergence = "reverse_kl"  # reverse_kl (sampled token) | forward_kl | jsd (top-k)
    jsd_beta: float = 0.5  # jsd: teacher's mixture weight, in (0, 1)
    divergence_clip: float | None = None  # forward_kl / jsd: clip of each id's term (> 0 or None)
    aggregation: Aggregation = "token_mean"  # release: verl's token-mean

    def __post_init__(self) -> None:
        check("beta", self.beta, self.beta >= 0, ">= 0")
        check("gate", self.gate, self.gate in GATES, "one of " + ", ".join(GATES))
        check("entropy_beta", self.entropy_beta, self.entropy_beta >= 0, ">= 0")
        check("entropy_center", self.entropy_center, self.entropy_center >= 0, ">= 0")
        check("divergence", self.divergence, self.divergence in SDAR_DIVERGENCES,
              "one of " + ", ".join(SDAR_DIVERGENCES))
        check("jsd_beta", self.jsd_beta, 0.0 < self.jsd_beta < 1.0, "in (0, 1)")
        if self.divergence_clip is not None:
            check("divergence_clip", self.divergence_clip, self.divergence_clip > 0, "> 0 or null")
        check("aggregation", self.aggregation, self.aggregation in AGGREGATIONS, "one of " + ", ".join(AGGREGATIONS))

    @property
    def uses_entropy(self) -> bool:
        return self.gate in ("entropy", "soft_or")

    @property
    def uses_distribution(self) -> bool:
        return self.divergence != "reverse_kl"


def sdar_gate(delta: torch.Tensor, config: SDARConfig = SDARConfig(),
              entropy: torch.Tensor | None = None) -> torch.Tensor:
    """The detached gate ``g_t``, same shape as ``delta`` (any).

    * ``gap`` (release): ``sigmoid(beta Delta_t)``;
    * ``entropy``: ``sigmoid(entropy_beta (H_t - entropy_center))``, ``H_t`` the student's
      full-vocabulary entropy in nats (verl's ``entropy`` model output): open where the student is
      uncertain;
    * ``soft_or``: the probabilistic OR ``1 - (1 - g_gap)(1 - g_ent) = g_gap + g_ent - g_gap g_ent``.

    The entropy gate and the soft-OR are NOT in the public release (only the gap gate is) and the
    paper's equations were not reachable here; the paper reports three gates "entropy, gap,
    soft-OR". These definitions are ours (docs/decisions.md).
    """
    gap = torch.sigmoid(config.beta * delta.detach())
    if config.gate == "gap":
        return gap
    if entropy is None or entropy.shape != delta.shape:
        raise ValueError(f"gate={config.gate!r} needs the student entropy shaped like the gap {tuple(delta.shape)}, "
                         f"got {None if entropy is None else tuple(entropy.shape)}")
    ent = torch.sigmoid(config.entropy_beta * (entropy.detach() - config.entropy_center))
    return ent if config.gate == "entropy" else 1.0 - (1.0 - gap) * (1.0 - ent)


def topk_divergence(config: SDARConfig, teacher_topk_logp: torch.Tensor,
                    student_topk_logp: torch.Tensor) -> torch.Tensor:
    """Per-token top-k divergence for ``forward_kl`` / ``jsd``: ``[..., k]`` in, ``[...]`` out
    (:func:`sgsd.objective.topk_forward_kl` / :func:`~sgsd.objective.topk_jsd`, tail bin included)."""
    if config.divergence == "forward_kl":
        return topk_forward_kl(teacher_topk_logp, student_topk_logp, config.divergence_clip)
    if config.divergence == "jsd":
        return topk_jsd(teacher_topk_logp, student_topk_logp, config.jsd_beta, config.divergence_clip)
    raise ValueError(f"divergence={config.divergence!r} reads no top-k distribution")


def sdar_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor,
              config: SDARConfig = SDARConfig(), batch: GlobalBatch = GlobalBatch(), *,
              entropy: torch.Tensor | None = None, divergence: torch.Tensor | None = None) -> SDLoss:
    """L_SDAR, reduced by ``config.aggregation`` (release: token mean).

    Args:
        student_logp: ``[B, T]`` live ``s_t``. teacher_logp: ``[B, T]`` ``T_t`` (constant).
        mask: ``[B, T]`` response mask.
        entropy: ``[B, T]`` student entropy, for the entropy / soft-OR gates.
        divergence: ``[B, T]`` per-token top-k divergence with gradient through the student
            (:func:`topk_divergence`), for ``forward_kl`` / ``jsd``.

    Token loss ``g_t D_t`` with ``D_t = T_t - s_t`` (reverse KL: the token-mean gradient is
    ``-g_t / N_tokens`` per ``s_t``, no Delta factor) or the top-k divergence (the same detached
    gate on it: our reading of the paper's divergence ablation; the release has reverse KL only).
    Metrics (release's): ``gate_mean``, ``gate_active_frac`` (``g > 0.5``; 0 at ``beta = 0``),
    ``gap_mean``; plus ``token_loss``.
    """
    _check_shapes(mask, student_logp=student_logp, teacher_logp=teacher_logp, entropy=entropy,
                  divergence=divergence)
    live = mask > 0
    teacher = torch.where(live, teacher_logp.detach(), 0.0)
    delta = torch.where(live, teacher - student_logp.detach(), 0.0)  # Delta_t, detached
    ent = None if entropy is None else torch.where(live, entropy.detach(), 0.0)
    gate = sdar_gate(delta, config, ent)
    if config.uses_distribution:
        if divergence is None:
            raise ValueError(f"divergence={config.divergence!r} needs the per-token top-k divergence [B, T]")
        dist = torch.where(live, divergence, 0.0)
    else:
        dist = torch.where(live, teacher - student_logp, 0.0)
    token = torch.where(live, gate * dist, 0.0)
    with torch.no_grad():
        m = mask.to(token.dtype)
        metrics = {
            "gate_mean": _masked_mean(gate, m),
            "gate_active_frac": _masked_mean((gate > 0.5).to(m.dtype), m),
            "gap_mean": _masked_mean(delta, m),
            "token_loss": _masked_mean(token, m),
        }
    return SDLoss(aggregate(token, mask, config.aggregation, batch), token.detach(), metrics)


# ---------------------------------------------------------------- RLSD
@dataclass(frozen=True)
class RLSDConfig:
    """RLSD advantage reweighting (release: ``rlsd_lambda`` 0.5, ``warmdown_steps`` 100 in its
    scripts (50 in code), ``clip_eps`` 0.2)."""

    lam: float = 0.5  # initial mixing weight l_0, in [0, 1]
    decay_steps: int = 100  # l reaches 0 at this step (>= 1)
    clip_eps: float = 0.2  # weight clip, in [0, 1)

    def __post_init__(self) -> None:
        check("lam", self.lam, 0.0 <= self.lam <= 1.0, "in [0, 1]")
        check_int("decay_steps", self.decay_steps, 1)
        check("clip_eps", self.clip_eps, 0.0 <= self.clip_eps < 1.0, "in [0, 1)")


def rlsd_lambda(step: int, config: RLSDConfig = RLSDConfig()) -> float:
    """``l(step) = l_0 max(0, 1 - step / decay_steps)``; ``step`` as verl counts ``global_steps``
    (1 at the first update, so it trains with ``0.495`` first, as the release does)."""
    check_int("step", step, 0)
    return config.lam * max(0.0, 1.0 - step / config.decay_steps)


def rlsd_weight(advantages: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """RLSD's unclipped token weight ``exp(sign(A) Delta_t)`` (same shapes in and out)."""
    return torch.exp(torch.sign(advantages) * delta)


def rlsd_advantages(advantages: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor, step: int,
                    config: RLSDConfig = RLSDConfig()) -> torch.Tensor:
    """Token advantages ``A_t = A ((1 - l) + l clip(exp(sign(A) Delta_t), 1 - eps, 1 + eps))``.

    Args:
        advantages: ``[B]`` (one per rollout, GRPO) or ``[B, T]`` (then per token: ``sign(A_t)``;
            the release reads each row's first valid token, the same for GRPO's constant rows).
        delta: ``[B, T]`` ``T_t - o_t`` (teacher minus the rollout policy's recomputed log-probs,
            constant; detached here).
        mask: ``[B, T]``; the result is 0 there.
        step: the trainer step (:func:`rlsd_lambda`).

    Returns ``[B, T]``, detached. ``l = 0`` or ``Delta = 0`` gives back ``A``; the weight lies in
    ``[1 - eps, 1 + eps]``, so ``|A_t| <= (1 + l eps) |A|`` and ``sign(A_t) = sign(A)``.
    """
    _check_shapes(mask, delta=delta)
    lam = rlsd_lambda(step, config)
    with torch.no_grad():
        if advantages.shape == mask.shape[:1]:
            advantages = advantages.unsqueeze(-1).expand_as(delta)
        elif advantages.shape != mask.shape:
            raise ValueError(f"advantages must be [B] or [B, T] for mask {tuple(mask.shape)}, "
                             f"got {tuple(advantages.shape)}")
        live = mask > 0
        adv = torch.where(live, advantages.detach(), 0.0)
        d = torch.where(live, delta.detach(), 0.0)
        weight = rlsd_weight(adv, d).clamp(1.0 - config.clip_eps, 1.0 + config.clip_eps)
        return torch.where(live, adv * ((1.0 - lam) + lam * weight), 0.0)

