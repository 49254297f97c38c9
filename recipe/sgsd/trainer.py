"""The SGSD trainer: verl 0.9.1's synchronous v1 trainer plus the teacher pass.

One step (paper Alg. 1) in verl terms — only the marked parts are SGSD's:

1. sample rollouts (student prompt, one per problem) and score them (verifier);
2. old log-probs  — at ``sgsd.logprob_temperature``            [temperature swapped]
3. advantages     — ``sgsd`` estimator: zero (n=1) or GRPO (n>1)
4. **teacher pass** — one batched retrieval, K teacher prompts per rollout with the SAME
   response ids appended, all scored in one call through verl's own log-prob machinery
   (live: the actor; frozen: the reference / LoRA-disabled actor); results stored per
   rollout in TransferQueue next to the rollout (``sgsd_*`` fields);
5. actor update  — verl's FSDP worker with :class:`recipe.sgsd.loss.SGSDActorLoss`
   installed through ``set_loss_fn``; its ``sgsd/*`` metrics surface unprefixed.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import transfer_queue as tq
from omegaconf import OmegaConf, open_dict
from tensordict import TensorDict

from recipe.sgsd import probe as memory_probe
from recipe.sgsd.loss import SGSDActorLoss
from recipe.sgsd.reward_hook import record_buffer
from recipe.sgsd.teacher_pass import (
    outcome_signs,
    plan_teachers,
    problem_text,
    scatter_teacher_log_probs,
    scoring_order,
)
from sgsd.bank import SkillBank
from sgsd.config import SGSDConfig
from sgsd.datasets import SKILL_BANKS, bank_path
from sgsd.prompts import ChatFormat
from sgsd.retrieval import SentenceTransformerEncoder, SkillRetriever
from sgsd.token_mask import TokenMaskBuilder
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.utils.padding import response_from_nested

logger = logging.getLogger(__name__)

TEACHER_PARTITION = "sgsd_teacher"


def resolve_bank_path(value: str) -> Path:
    """A bank path, or the name of a shipped bank (``qwen3_1.7b``)."""
    path = Path(value)
    return bank_path(value) if not path.exists() and value in SKILL_BANKS else path


@register_trainer("sgsd")
class SGSDTrainer(PPOTrainerSync):
    """``trainer.v1.trainer_mode=sgsd`` (set by ``recipe.sgsd.main_sgsd`` for ``adv_estimator=sgsd``)."""

    def __init__(self, config):
        super().__init__(config)
        self.sgsd_config = SGSDConfig.from_mapping(OmegaConf.to_container(config.sgsd, resolve=True))
        # Created here, before the reward workers exist, so this long-lived process owns the
        # buffer actor (a Ray actor dies with its owner) and every reward worker finds it.
        self.record_buffer = record_buffer(self.sgsd_config.record_buffer_size)

    # ----------------------------------------------------------------- set-up
    def on_init_end(self):
        super().on_init_end()
        cfg = self.sgsd_config
        self.skill_bank = SkillBank.load(resolve_bank_path(cfg.bank_path), require_nonempty=True)
        self.retriever = SkillRetriever(
            SentenceTransformerEncoder(cfg.encoder, device=cfg.encoder_device), self.skill_bank,
            top_k=cfg.top_k, temperature=cfg.alpha_temperature,
        )
        self.token_mask = TokenMaskBuilder(self.tokenizer, cfg.mask)
        self.teacher_format = ChatFormat(enable_thinking=cfg.teacher_thinking,
                                         prefill_empty_think=cfg.prefill_empty_think)
        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        loss = SGSDActorLoss(actor_config=actor_config, objective=cfg.objective_config(),
                             distill_coef=cfg.distill_coef, hybrid=self.config.actor_rollout_ref.rollout.n > 1,
                             debug_dump_dir=os.environ.get("SGSD_DEBUG_DUMP_DIR"))
        self.actor_rollout_wg.set_loss_fn(loss)
        logger.info("SGSD: bank %s (%s), K=%d, teacher=%s", self.skill_bank.source, self.skill_bank.counts(),
                    cfg.top_k, cfg.teacher)

    # ----------------------------------------------------------------- the step
    @contextmanager
    def _logprob_temperature(self):
        """verl passes ``rollout.temperature`` to every log-prob computation; SGSD scores
        teacher and student at ``sgsd.logprob_temperature`` (sampling is unaffected: the
        rollout servers hold their own copy of the config)."""
        rollout = self.config.actor_rollout_ref.rollout
        sampling = rollout.temperature
        with open_dict(rollout):
            rollout.temperature = self.sgsd_config.logprob_temperature
        try:
            yield
        finally:
            with open_dict(rollout):
                rollout.temperature = sampling

    def _compute_old_log_prob(self, batch, metrics):
        with self._logprob_temperature():
            return super()._compute_old_log_prob(batch, metrics)

    def _compute_advantage(self, batch, metrics):
        batch = super()._compute_advantage(batch, metrics)
        if self.sgsd_config.distill_coef > 0:
            batch = self._teacher_pass(batch, metrics)
        return batch

    def _update_actor(self, batch, metrics):
        actor_metrics: dict = {}
        with self._logprob_temperature():
            batch = super()._update_actor(batch, actor_metrics)
        for key, value in actor_metrics.items():
            metrics[key.replace("actor/sgsd/", "sgsd/", 1)] = value
        return batch

    # ----------------------------------------------------------------- teacher pass
    def _teacher_pass(self, batch, metrics):
        cfg = self.sgsd_config
        start = time.perf_counter()
        wanted = ["prompts", "responses", "response_mask", "rm_scores", "old_log_probs", "extra_info",
                  "raw_prompt", "reward_model"]
        available = set(batch.fields) if batch.fields else set(wanted)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=[f for f in wanted if f in available])
        responses = list(data["responses"].unbind())
        response_masks = list(data["response_mask"].unbind())
        student_lp = list(data["old_log_probs"].unbind())
        rewards = torch.stack([r.sum() for r in data["rm_scores"].unbind()]).float()
        extra = _non_tensor_list(data, "extra_info", len(responses))
        raw_prompts = _non_tensor_list(data, "raw_prompt", len(responses))
        problems = [problem_text(e, p) for e, p in zip(extra, raw_prompts)]
        answers = None
        if cfg.reference_answer_in_teacher:
            answers = [str((rm or {}).get("ground_truth", "")) for rm in _non_tensor_list(data, "reward_model",
                                                                                         len(responses))]

        t0 = time.perf_counter()
        retrievals = self.retriever.retrieve(problems)
        retrieval_time = time.perf_counter() - t0
        plan = plan_teachers(problems, retrievals, self.tokenizer, self.teacher_format, cfg.top_k,
                             cfg.max_teacher_prompt_length, answers)

        t0 = time.perf_counter()
        scored, teacher_tokens = self._score_teachers(plan, responses, response_masks)
        scoring_time = time.perf_counter() - t0
        teacher_lp = scatter_teacher_log_probs(plan, scored, student_lp)
        if os.environ.get("SGSD_DEBUG_DUMP_DIR"):
            self._dump_teacher_pass(plan, scored, responses, student_lp, list(data["prompts"].unbind()))
        token_mask = [self.token_mask(r, m).float() for r, m in zip(responses, response_masks)]
        fields = TensorDict({
            "sgsd_teacher_log_probs": torch.nested.as_nested_tensor(teacher_lp, layout=torch.jagged),
            "sgsd_token_mask": torch.nested.as_nested_tensor(token_mask, layout=torch.jagged),
            "sgsd_alpha": plan.alpha,
            "sgsd_outcome_sign": outcome_signs(rewards, cfg.outcome_threshold),
        }, batch_size=[len(responses)])
        batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields, tags=batch.tags)

        elapsed = time.perf_counter() - start
        if getattr(self, "_last_teacher_peak_mb", None) is not None:
            metrics["sgsd/teacher_pass_peak_extra_mb"] = self._last_teacher_peak_mb
        n_teachers = (plan.alpha > 0).sum(-1).float()
        metrics.update({
            "sgsd/teacher_pass_time": elapsed,
            "sgsd/retrieval_time": retrieval_time,
            "sgsd/teacher_tokens": float(teacher_tokens),
            "sgsd/teacher_tokens_per_s": teacher_tokens / max(elapsed, 1e-9),
            "sgsd/teacher_scoring_time": scoring_time,
            "sgsd/teachers_per_problem_retrieved": n_teachers.mean().item(),
            "sgsd/short_pool_problems": (n_teachers < cfg.top_k).float().mean().item(),
            "sgsd/truncated_teacher_prompts": float(plan.truncated),
            "sgsd/success_rate": (rewards > cfg.outcome_threshold).float().mean().item(),
            "sgsd/bank_general_skills": float(len(self.skill_bank.general_skills)),
            "sgsd/bank_common_mistakes": float(len(self.skill_bank.common_mistakes)),
        })
        return batch

    def _score_teachers(self, plan, responses, response_masks) -> tuple[list[torch.Tensor], int]:
        """All teacher sequences through verl's log-prob call at once; response-aligned results."""
        if len(plan) == 0:
            return [], 0
        order = scoring_order([len(p) + len(responses[o]) for p, o in zip(plan.prompt_ids, plan.owner)],
                               self._teacher_dp_size())
        rows, tags = [], []
        for j in order:
            owner, prompt = plan.owner[j], torch.tensor(plan.prompt_ids[j], dtype=torch.int64)
            input_ids = torch.cat([prompt, responses[owner]])
            rows.append({
                "prompts": prompt, "responses": responses[owner], "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids), "position_ids": torch.arange(len(input_ids)),
                "response_mask": response_masks[owner], "loss_mask": response_masks[owner],
            })
            tags.append({"status": "success", "prompt_len": len(prompt), "response_len": len(responses[owner]),
                         "seq_len": len(input_ids)})
        keys = [f"sgsd_t{self.global_steps}_{i}" for i in range(len(rows))]
        meta = tq.kv_batch_put(keys=keys, partition_id=TEACHER_PARTITION, fields=list_of_dict_to_tensordict(rows),
                               tags=tags)
        meta.extra_info = {"calculate_entropy": False, "compute_loss": False,
                           "temperature": self.sgsd_config.logprob_temperature}
        probe = None
        if memory_probe.enabled():
            probe = memory_probe.PeakMemoryProbe(self._teacher_worker_group())
            probe.start()
        try:
            if self.sgsd_config.teacher == "frozen":
                if self.ref_in_actor:
                    meta.extra_info["no_lora_adapter"] = True
                    self.actor_rollout_wg.compute_log_prob(meta)
                else:
                    self.ref_policy_wg.compute_ref_log_prob(meta)
            else:
                self.actor_rollout_wg.compute_log_prob(meta)
            if probe is not None:
                self._last_teacher_peak_mb = probe.stop()
            out = tq.kv_batch_get(keys=keys, partition_id=TEACHER_PARTITION, select_fields=["log_probs", "response_mask"])
            results = list(response_from_nested(out["log_probs"], out["response_mask"]).unbind())
            scored: list[torch.Tensor | None] = [None] * len(plan)
            for position, j in enumerate(order):
                if scored[j] is None:  # later copies are the DP padding
                    scored[j] = results[position]
        finally:
            tq.kv_clear(keys=keys, partition_id=TEACHER_PARTITION)
        teacher_tokens = sum(len(p) + len(responses[o]) for p, o in zip(plan.prompt_ids, plan.owner))
        return scored, teacher_tokens

    def _dump_teacher_pass(self, plan, scored, responses, student_lp, student_prompts) -> None:
        """Tests only: what the pass scored, to check it against an independent forward."""
        folder = Path(os.environ["SGSD_DEBUG_DUMP_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({
            "step": self.global_steps, "owner": plan.owner, "slot": plan.slot, "prompt_ids": plan.prompt_ids,
            "alpha": plan.alpha, "responses": [r.clone() for r in responses], "scored": [s.clone() for s in scored],
            "student_log_probs": [s.clone() for s in student_lp],
            "student_prompts": [p.clone() for p in student_prompts],
            "temperature": self.sgsd_config.logprob_temperature,
        }, folder / f"teacher_pass_step{self.global_steps:04d}.pt")

    def _teacher_worker_group(self):
        frozen_ref = self.sgsd_config.teacher == "frozen" and not self.ref_in_actor
        return self.ref_policy_wg if frozen_ref else self.actor_rollout_wg

    def _teacher_dp_size(self) -> int:
        return max(int(getattr(self._teacher_worker_group(), "world_size", 1)), 1)


def _non_tensor_list(data: TensorDict, key: str, n: int) -> list:
    if key not in data.keys():
        return [None] * n
    value = data[key]
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    return list(items) if len(items) == n else [None] * n
