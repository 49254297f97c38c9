"""The SGSD loss inside verl's FSDP actor worker.

verl 0.9.1 calls the loss installed with ``ActorRolloutRefWorker.set_loss_fn`` as
``fn(model_output=..., data=<micro-batch TensorDict>, dp_group=...)`` for every
micro-batch of an actor update; unlike a registered policy-loss function it sees every
key of the batch, including the ``sgsd_*`` fields the teacher pass added
(:class:`recipe.sgsd.teacher_pass.TeacherFields`, read with the pass's own
:func:`~recipe.sgsd.teacher_pass.read_loss_inputs`).

The student log-probs are the live ones from this forward pass (with gradient); the
library's :func:`sgsd.objective.sgsd_objective` decides polarity on their detached copy.

Scale: the per-problem losses of a micro-batch are summed and divided by the number of
rollouts in the *global* mini-batch, times the data-parallel size (FSDP averages gradients
over ranks), so the accumulated gradient is the mean over the mini-batch however it is
split into micro-batches and ranks — the same contract as verl's ``agg_loss``.

Hybrid mode (``rollout.n > 1``): verl's own PPO/GRPO loss plus ``distill_coef`` times the
SGSD loss; with the coefficient at 0 (or no teacher fields in the batch) it is exactly
verl's loss.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from recipe.sgsd.distribution import (DIVERGENCE, DNORM, LOCAL_GAP, SAMPLED_LOGIT, TOPK_FLAG,
                                      student_divergence_outputs, teacher_topk_outputs, with_normaliser_gradient)
from recipe.sgsd.teacher_pass import TeacherFields, fit_width, read_loss_inputs
from sgsd.objective import ObjectiveConfig, sgsd_objective
from sgsd.sd_objectives import GlobalBatch, SDARConfig, SkillSDConfig, sdar_loss, skill_sd_loss

SGSD_FIELDS = TeacherFields.keys()


@dataclass
class SGSDActorLoss:
    """Picklable loss callable shipped to every actor worker (``set_loss_fn``).

    Args:
        actor_config: verl's ``ActorConfig`` (used only by the hybrid PPO/GRPO part).
        objective: SGSD objective settings and ablation switches.
        distill_coef: weight of the SGSD term.
        hybrid: add verl's ``ppo_loss`` (GRPO policy gradient) to the SGSD term.
        method: ``sgsd`` (K gated teachers), ``skill_sd`` / ``sdar`` (one teacher, the
            :mod:`sgsd.sd_objectives` loss with ``skill_sd`` / ``sdar`` settings) or ``rlsd``
            (no distillation term: verl's loss on reweighted advantages).
    """

    actor_config: Any
    objective: ObjectiveConfig
    distill_coef: float = 1.0
    hybrid: bool = False
    debug_dump_dir: str | None = None  # tests: save each micro-batch's inputs and loss here
    method: str = "sgsd"
    skill_sd: SkillSDConfig | None = None
    sdar: SDARConfig | None = None

    @classmethod
    def from_config(cls, config: Any, actor_config: Any = None, *, hybrid: bool = False,
                    debug_dump_dir: str | None = None) -> SGSDActorLoss:
        """The loss of a run's validated settings (:class:`sgsd.config.SGSDConfig`)."""
        return cls(actor_config=actor_config, objective=config.objective_config(), distill_coef=config.distill_coef,
                   hybrid=hybrid, debug_dump_dir=debug_dump_dir, method=config.method,
                   skill_sd=config.skill_sd_config() if config.method == "skill_sd" else None,
                   sdar=config.sdar_config() if config.method == "sdar" else None)

    def __call__(self, model_output: dict | None = None, data: Any = None, dp_group: Any = None,
                 student_logits: torch.Tensor | None = None):
        from verl.utils.metric import AggregationType, Metric
        from verl.workers.utils.losses import ppo_loss

        if student_logits is not None:  # verl's logits hook (distillation_use_topk): per-token outputs
            return self.logits_outputs(student_logits, data)
        if _non_tensor(data, TOPK_FLAG):  # the teacher pass's forward (compute_loss for the hook): no loss
            return torch.zeros((), device=model_output["log_probs"].device), {}
        metrics: dict[str, Any] = {}
        total = None
        if self.hybrid:
            total, metrics = ppo_loss(self.actor_config, model_output, data, dp_group)
        if self.distill_coef == 0 or self.method == "rlsd" or not all(k in data.keys() for k in SGSD_FIELDS):
            if total is None:
                raise RuntimeError(
                    "SGSD loss called without teacher fields in the batch and without the hybrid "
                    f"policy-gradient term; expected keys {SGSD_FIELDS}"
                )
            return total, metrics

        if self.method == "sgsd":
            loss, sgsd_metrics = self.sgsd_term(model_output, data)
            prefix = "sgsd/"
        else:
            loss, sgsd_metrics = self.sibling_term(model_output, data)
            prefix = f"sgsd/{self.method}/"
            metrics[f"{prefix}loss"] = Metric(value=loss.detach(), aggregation=AggregationType.SUM)
        total = self.distill_coef * loss if total is None else total + self.distill_coef * loss
        metrics["sgsd/loss"] = Metric(value=loss.detach(), aggregation=AggregationType.SUM)
        for name, value in sgsd_metrics.items():
            metrics[f"{prefix}{name}"] = Metric(value=value, aggregation=AggregationType.MEAN)
        return total, metrics

    def logits_outputs(self, logits: torch.Tensor, data: Any) -> dict[str, torch.Tensor]:
        """verl's logits hook (``loss_fn(student_logits=[1, N, V], data=...)``): the teacher's
        top-k in the teacher pass, the student's per-teacher divergences in the update
        (:mod:`recipe.sgsd.distribution`)."""
        k = _non_tensor(data, TOPK_FLAG)
        logits = logits.squeeze(0)
        if k:
            return teacher_topk_outputs(logits, data, int(k))
        if not self.uses_distribution or TeacherFields.topk_keys()[0] not in data.keys():
            raise RuntimeError(f"verl handed the SGSD loss the logits (distillation_use_topk) but loss_type="
                               f"{self.objective.loss_type!r} and the batch has no teacher top-k fields")
        return student_divergence_outputs(logits, data, self.divergence_objective)

    @property
    def uses_distribution(self) -> bool:
        if self.method == "sdar":
            return self.sdar is not None and self.sdar.uses_distribution
        return self.method == "sgsd" and self.objective.uses_distribution

    @property
    def divergence_objective(self) -> ObjectiveConfig:
        """What :func:`~recipe.sgsd.distribution.student_divergence_outputs` computes per teacher:
        SGSD's loss type, or SDAR's forward KL / JSD as the same top-k divergences."""
        if self.method != "sdar":
            return self.objective
        loss_type = {"forward_kl": "fkl", "jsd": "jsd"}[self.sdar.divergence]
        return replace(self.objective, loss_type=loss_type, divergence_clip=self.sdar.divergence_clip,
                       jsd_beta=self.sdar.jsd_beta)

    def sgsd_term(self, model_output: dict, data: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The globally-normalised SGSD loss of this micro-batch and its diagnostics."""
        from verl.workers.utils.padding import no_padding_2_padding

        # [B, T] live, in fp32: under verl's bf16 mixed precision the log-probs arrive in bf16,
        # where a token count above 256 is not exact (403 response tokens sum to 404)
        student = no_padding_2_padding(model_output["log_probs"], data).float()
        inputs = read_loss_inputs(data, student.shape[1])
        divergence, gap = self.distribution_inputs(model_output, data, inputs.teacher.shape[1], student)
        out = sgsd_objective(student, inputs.teacher, inputs.token_mask, inputs.alpha, inputs.outcome_sign,
                             self.objective, response_mask=inputs.response_mask, divergence=divergence,
                             support_gap=gap)
        loss = global_mean(out.loss, data)
        if self.debug_dump_dir:
            responses = fit_width(data["responses"].to_padded_tensor(-1) if data["responses"].is_nested
                             else data["responses"], student.shape[1])
            extra = {name: t for name, t in (("divergence", divergence), ("support_gap", gap)) if t is not None}
            self._dump(student=student, teacher=inputs.teacher, token_mask=inputs.token_mask, alpha=inputs.alpha,
                       sign=inputs.outcome_sign, response_mask=inputs.response_mask, responses=responses,
                       per_problem=out.loss, loss=loss, **extra,
                       global_batch_size=torch.tensor(float(_non_tensor(data, "global_batch_size") or 0)),
                       dp_size=torch.tensor(float(_non_tensor(data, "dp_size") or 1)))
        return loss, out.metrics

    def sibling_term(self, model_output: dict, data: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Skill-SD's L_SDL or SDAR's L_SDAR on this micro-batch (:mod:`sgsd.sd_objectives`): one
        teacher (slot 0), the response mask (no token mask), reduced over the global mini-batch
        with verl's own counts (``dp_size``, ``global_batch_size``, ``batch_num_tokens``). A rollout
        without a teacher (alpha 0: no skill for its problem yet) adds nothing and still counts in
        the token mean's denominator, as if its teacher were the student (Skill-SD's zero gap)."""
        from verl.workers.utils.padding import no_padding_2_padding

        student = no_padding_2_padding(model_output["log_probs"], data).float()
        width = student.shape[1]
        skill_sd = self.method == "skill_sd"
        inputs = read_loss_inputs(data, width, student_key="old_log_probs" if skill_sd else None)
        mask = inputs.response_mask * (inputs.alpha[:, :1] > 0).to(inputs.response_mask.dtype)
        teacher = inputs.teacher[:, 0]
        batch = global_batch(data)
        if skill_sd:
            out = skill_sd_loss(student, teacher, inputs.student, mask, self.skill_sd or SkillSDConfig(), batch)
        else:
            config = self.sdar or SDARConfig()
            entropy = None
            if config.uses_entropy:
                if model_output.get("entropy") is None:
                    raise RuntimeError(f"sgsd.sdar.gate={config.gate} needs the student's entropy, but verl's model "
                                       "output has none: set actor_rollout_ref.actor.calculate_entropy=true")
                entropy = fit_width(no_padding_2_padding(model_output["entropy"], data).float(), width)
            divergence = None
            if config.uses_distribution:
                divergence, _ = self.distribution_inputs(model_output, data, inputs.teacher.shape[1], student)
                divergence = divergence[:, 0]
            out = sdar_loss(student, teacher, mask, config, batch, entropy=entropy, divergence=divergence)
        if self.debug_dump_dir:
            self._dump(student=student, teacher=teacher, mask=mask, response_mask=inputs.response_mask,
                       loss=out.loss, token_loss=out.token_loss,
                       **({"old": inputs.student} if skill_sd else {}),
                       global_batch_size=torch.tensor(float(batch.global_batch_size or 0)),
                       batch_num_tokens=torch.tensor(float(batch.batch_num_tokens or 0)),
                       dp_size=torch.tensor(float(batch.dp_size)))
        return out.loss, out.metrics

    def distribution_inputs(self, model_output: dict, data: Any, slots: int,
                            student: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The logits hook's per-teacher ``[B, T]`` outputs as ``divergence`` (and, for
        ``local_gated``, ``support_gap``) ``[B, K, T]``; ``(None, None)`` for the sampled-token losses.
        ``student``: the live sampled-token log-probs ``[B, T]``, through which the divergence's
        log-normaliser gradient flows (:func:`recipe.sgsd.distribution.with_normaliser_gradient`)."""
        from verl.workers.utils.padding import no_padding_2_padding

        if not self.uses_distribution:
            return None, None
        width = student.shape[1]

        def padded(key: str) -> torch.Tensor:
            if key not in model_output:
                raise RuntimeError(f"loss_type={self.objective.loss_type!r} but verl's model output lacks "
                                   f"{key}: the actor update ran without distillation_use_topk")
            return fit_width(no_padding_2_padding(model_output[key], data).float(), width)

        def per_slot(prefix: str) -> torch.Tensor:
            return torch.stack([padded(f"{prefix}{j}") for j in range(slots)], 1)

        divergence = with_normaliser_gradient(per_slot(DIVERGENCE), per_slot(DNORM), padded(SAMPLED_LOGIT), student)
        return divergence, per_slot(LOCAL_GAP) if self.objective.loss_type == "local_gated" else None

    def _dump(self, **tensors: torch.Tensor) -> None:
        import os
        import uuid

        os.makedirs(self.debug_dump_dir, exist_ok=True)
        path = os.path.join(self.debug_dump_dir, f"loss_{os.getpid()}_{uuid.uuid4().hex[:8]}.pt")
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, path)


def loss_reaches_the_reference(module) -> None:
    """``ActorRolloutRefWorker.set_loss_fn`` (verl/workers/engine_workers.py) installs the loss
    on the actor's engine only; the teacher's top-k distribution from a frozen reference model
    comes out of the reference engine's logits hook, which calls that engine's loss function.
    Wrapped (registration attributes kept, idempotent) to install it on the reference engine
    too when the worker has one; the reference calls it only when asked (``compute_loss``)."""
    import functools

    worker = module.ActorRolloutRefWorker
    original = worker.set_loss_fn
    if getattr(original, "_sgsd_reference", False):
        return

    @functools.wraps(original)
    def set_loss_fn(self, loss_fn):
        if getattr(self, "actor", None) is not None:
            original(self, loss_fn)
        if getattr(self, "ref", None) is not None:
            self.ref.set_loss_fn(loss_fn=loss_fn)

    set_loss_fn._sgsd_reference = True
    worker.set_loss_fn = set_loss_fn


def global_mean(per_problem: torch.Tensor, data: Any) -> torch.Tensor:
    """``sum_b L_b / global_batch_size * dp_size``; the local mean when verl gives no global size."""
    global_batch_size = _non_tensor(data, "global_batch_size")
    dp_size = _non_tensor(data, "dp_size") or 1
    if global_batch_size is None:
        if dp_size > 1:
            raise ValueError("global_batch_size is required to scale the SGSD loss when dp_size > 1")
        return per_problem.mean()
    return per_problem.sum() / global_batch_size * dp_size


def global_batch(data: Any) -> GlobalBatch:
    """verl's description of the global mini-batch a micro-batch belongs to (its non-tensor keys)."""
    def number(key):
        value = _non_tensor(data, key)
        return None if value is None else float(value.item() if torch.is_tensor(value) else value)

    size, tokens = number("global_batch_size"), number("batch_num_tokens")
    return GlobalBatch(dp_size=int(_non_tensor(data, "dp_size") or 1),
                       global_batch_size=None if size is None else int(size), batch_num_tokens=tokens)


def _non_tensor(data: Any, key: str):
    try:
        value = data[key]
    except KeyError:
        return None
    return getattr(value, "data", value)
