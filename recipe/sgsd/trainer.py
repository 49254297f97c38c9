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

from recipe.sgsd import memory_probe
from recipe.sgsd.loss import SGSDActorLoss
from recipe.sgsd.policy_writer import PolicyWriterClient
from recipe.sgsd.reward_hook import record_buffer
from recipe.sgsd.teacher_pass import (
    outcome_signs,
    plan_teachers,
    scatter_teacher_log_probs,
    scoring_order,
)
from sgsd.bank import SkillBank
from sgsd.config import SGSDConfig
from sgsd.datasets import SKILL_BANKS, bank_path
from sgsd.evolution import BankEvolution
from sgsd.llm.base import GenerationSettings
from sgsd.llm.factory import make_client
from sgsd.objective import sgsd_objective, support_quantiles
from sgsd.prompts import ChatFormat
from sgsd.retrieval import ProblemRetrieval, SentenceTransformerEncoder, SkillRetriever
from sgsd.token_mask import TokenMaskBuilder
from sgsd.updater import SkillUpdater, UpdateConfig
from sgsd.verl_data import problem_text
from sgsd.item_utility import UtilityTracker
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.utils.debug import marked_timer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.utils.padding import response_from_nested

logger = logging.getLogger(__name__)

TEACHER_PARTITION = "sgsd_teacher"
CHECKPOINT_SUBDIR = "sgsd"


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
        self.evolution = self._make_evolution()
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

    # ----------------------------------------------------------------- the bank's life
    @property
    def skill_bank(self) -> SkillBank:
        return self.evolution.bank

    def _make_evolution(self) -> BankEvolution:
        """The run's bank: restored from the checkpoint being resumed, else ``sgsd.bank_path``."""
        cfg, up = self.sgsd_config, self.sgsd_config.update
        bank = SkillBank.load(resolve_bank_path(cfg.bank_path), require_nonempty=True)
        output_dir = Path(cfg.bank_output_dir or os.path.join(self.config.trainer.default_local_dir, "sgsd_bank"))
        updater = None
        if up.enable:
            settings = GenerationSettings(max_new_tokens=up.max_new_tokens, temperature=up.temperature,
                                          top_p=up.top_p, enable_thinking=up.enable_thinking, timeout_s=up.timeout_s)
            updater = SkillUpdater(self._make_writer(), UpdateConfig(
                success_threshold=up.success_threshold, max_new_items=up.max_new_items, capacity=up.capacity,
                max_memories=up.max_memories, max_completion_chars=up.max_completion_chars, seed=up.seed,
                settings=settings))
        evolution = BankEvolution(bank, output_dir, updater=updater, freq=up.freq, max_memories=up.max_memories,
                                  tracker=UtilityTracker() if up.track_utility else None, seed=up.seed)
        resumed_from = getattr(self, "_sgsd_resume_folder", None)
        if resumed_from is not None:
            if evolution.load_checkpoint(Path(resumed_from) / CHECKPOINT_SUBDIR):
                logger.info("SGSD: resumed the evolved bank from %s (%s)", resumed_from, evolution.bank.counts())
            else:
                logger.warning("SGSD: checkpoint %s has no SGSD bank state; starting from %s", resumed_from,
                               cfg.bank_path)
        evolution.prepare_output_dir(resuming=resumed_from is not None)
        return evolution

    def _make_writer(self):
        spec = self.sgsd_config.update.writer
        if spec != "policy":
            return make_client(spec)
        context = self.config.actor_rollout_ref.rollout.get("max_model_len") or self._model_context_length()
        return PolicyWriterClient(self.get_llm_client(), self.tokenizer,
                                  max_prompt_tokens=int(context) - 1 if context else None)

    def _model_context_length(self) -> int | None:
        """What a rollout server uses when ``rollout.max_model_len`` is unset: the model's own."""
        from transformers import AutoConfig

        model = self.config.actor_rollout_ref.model
        try:
            hf_config = AutoConfig.from_pretrained(model.path, trust_remote_code=model.get("trust_remote_code", False))
        except Exception:  # the engine still rejects what does not fit; the request is then counted
            return None
        return getattr(hf_config, "max_position_embeddings", None)

    def _load_checkpoint(self):
        super()._load_checkpoint()
        self._sgsd_resume_folder = None
        if self.global_steps > 0:
            trainer = self.config.trainer
            folder = (trainer.resume_from_path if trainer.resume_mode == "resume_path"
                      else os.path.join(trainer.default_local_dir, f"global_step_{self.global_steps}"))
            self._sgsd_resume_folder = os.path.abspath(folder)

    def _save_checkpoint(self):
        # The bank first: verl writes its "latest checkpointed iteration" marker last, so a
        # checkpoint that verl would resume from always carries its bank.
        folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        self.evolution.flush()
        self.evolution.save_checkpoint(Path(folder) / CHECKPOINT_SUBDIR)
        super()._save_checkpoint()

    def step(self, metrics, timing_raw):
        batch = super().step(metrics, timing_raw)
        with marked_timer("sgsd_bank", timing_raw, color="magenta"):
            self._bank_step_end(metrics)
        return batch

    def on_validate_end(self):
        super().on_validate_end()
        # Validation rollouts pass through the same reward manager; in the synchronous
        # trainer nothing else is generating now, so the buffer holds only theirs.
        import ray

        ray.get(self.record_buffer.drain.remote())

    def _bank_step_end(self, metrics: dict) -> None:
        """Window the step's rollouts; every ``sgsd.update.freq`` steps evolve the bank."""
        import ray

        records = ray.get(self.record_buffer.drain.remote())
        self.evolution.add_records(records)
        step = self.global_steps
        if self.evolution.due(step):
            policy_writer = self.sgsd_config.update.writer == "policy"
            if policy_writer:  # the writer is the policy of this step: push the weights, wake the replicas
                self.checkpoint_manager.update_weights(step)
            try:
                changed, update_metrics = self.evolution.update(step)
            finally:
                if policy_writer:  # verl's own step end syncs and wakes them again as usual
                    self.checkpoint_manager.sleep_replicas()
            metrics.update(update_metrics)
            if changed:
                encoded = self.retriever.set_bank(self.skill_bank)
                metrics["sgsd/update/items_encoded"] = float(encoded)
        if step >= self.total_training_steps:
            self.evolution.flush()  # the tracked utility of the last steps reaches bank.json
        metrics.update(self.evolution.metrics())
        stats = ray.get(self.record_buffer.stats.remote())
        metrics["sgsd/record_buffer_dropped"] = float(stats["dropped"])

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
        if cfg.reference_answer_in_teacher or cfg.teacher_context != "skills":
            answers = [str((rm or {}).get("ground_truth", "")) for rm in _non_tensor_list(data, "reward_model",
                                                                                         len(responses))]

        t0 = time.perf_counter()
        if cfg.teacher_context == "answer":  # OPSD: the answer alone, nothing to retrieve
            retrievals = [ProblemRetrieval(teachers=())] * len(problems)
        else:
            retrievals = self.retriever.retrieve(problems)
        retrieval_time = time.perf_counter() - t0
        plan = plan_teachers(problems, retrievals, self.tokenizer, self.teacher_format, cfg.top_k,
                             cfg.max_teacher_prompt_length, answers, context=cfg.teacher_context)

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
        if len(responses):  # the batch's support distribution, and per-item utility (counted in the pass's time)
            support = self._rollout_support(teacher_lp, student_lp, token_mask, response_masks, plan.alpha,
                                            fields["sgsd_outcome_sign"])
            metrics.update({f"sgsd/{k}": v for k, v in support_quantiles(support, plan.alpha > 0).items()})
            if self.evolution.tracker is not None and cfg.teacher_context == "skills":
                self._observe_utility(retrievals, support, plan.alpha, fields["sgsd_outcome_sign"])

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
            "sgsd/short_pool_problems": (n_teachers < plan.alpha.shape[1]).float().mean().item(),
            "sgsd/truncated_teacher_prompts": float(plan.truncated),
            "sgsd/success_rate": (rewards > cfg.outcome_threshold).float().mean().item(),
        })  # bank sizes: sgsd/bank/* from BankEvolution.metrics
        return batch

    def _rollout_support(self, teacher_lp, student_lp, token_mask, response_masks, alpha, sign) -> torch.Tensor:
        """Robust support ``a_k`` [B, K] of the whole batch, decided exactly as the loss decides
        it (same function, same config) on the rollout-time log-probs — what the first
        mini-batch of an on-policy update sees."""
        width = max(len(t) for t in student_lp)
        pad = lambda rows, value: torch.nn.utils.rnn.pad_sequence(  # noqa: E731
            [r.float() for r in rows], batch_first=True, padding_value=value)[:, :width]
        response_mask = pad(response_masks, 0.0)
        with torch.no_grad():
            out = sgsd_objective(pad(student_lp, 0.0), pad(teacher_lp, 0.0).transpose(1, 2),
                                 pad(token_mask, 0.0) * response_mask, alpha, sign,
                                 self.sgsd_config.objective_config(), response_mask=response_mask)
        return out.support

    def _observe_utility(self, retrievals, support, alpha, sign) -> None:
        """Credit each retrieved item with its teacher's polarity category (alpha-weighted)."""
        k = self.sgsd_config.top_k
        skill_ids = [[None] * k for _ in retrievals]
        mistake_ids = [[None] * k for _ in retrievals]
        for row, retrieval in enumerate(retrievals):
            for pair in retrieval.teachers[:k]:
                skill_ids[row][pair.rank] = pair.skill.skill_id
                mistake_ids[row][pair.rank] = pair.mistake.mistake_id
        threshold = self.sgsd_config.threshold if self.sgsd_config.ablation.use_threshold else 0.0
        self.evolution.tracker.observe(skill_ids, mistake_ids, support, alpha, sign, threshold)

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
