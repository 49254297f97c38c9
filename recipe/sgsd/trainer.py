"""The SGSD trainer: verl 0.9.1's synchronous v1 trainer (as :mod:`recipe.sgsd.sync_trainer`
runs it) plus the teacher pass and the bank's life.

One step (paper Alg. 1) in verl terms — only the marked parts are SGSD's:

1. sample rollouts (student prompt, one per problem) and score them (verifier);
2. old log-probs  — at ``sgsd.logprob_temperature``            [temperature swapped]
3. advantages     — ``sgsd`` estimator: zero (n=1) or GRPO (n>1)
4. **teacher pass** — one batched retrieval, K teacher prompts per rollout with the SAME
   response ids appended, all scored in one call through verl's own log-prob machinery
   (live: the actor; frozen: the reference / LoRA-disabled actor; ema / periodic: their own
   weights, :mod:`recipe.sgsd.teacher_weights`); results stored per
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
from recipe.sgsd.sync_trainer import RecipeSyncTrainer
from recipe.sgsd.teacher_weights import TeacherWeightsMixin, teacher_on_reference  # sgsd.teacher=ema|periodic
from recipe.sgsd.distribution import TOPK_FLAG, TOPK_ID, TOPK_LP
from recipe.sgsd.teacher_pass import (Rollouts, TeacherPass, TeacherScores, jagged, per_rank_multiple,
                                      rlsd_token_advantages, scoring_order, teacher_item_ids)
from sgsd.bank import SkillBank
from sgsd.config import SGSDConfig
from sgsd.datasets import resolve
from sgsd.evolution import BankEvolution
from sgsd.llm.base import GenerationSettings
from sgsd.llm.factory import make_client
from sgsd.retrieval import SentenceTransformerEncoder, SkillRetriever
from sgsd.updater import SkillUpdater, UpdateConfig
from sgsd.envs.data import is_episode
from sgsd.verl_data import problem_text
from sgsd.item_utility import UtilityTracker
from sgsd.sibling_skills import SiblingSkills, make_sibling_skills
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.utils.debug import marked_timer
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.utils.padding import response_from_nested

logger = logging.getLogger(__name__)

TEACHER_PARTITION = "sgsd_teacher"
CHECKPOINT_SUBDIR = "sgsd"


@register_trainer("sgsd")
class SGSDTrainer(TeacherWeightsMixin, RecipeSyncTrainer):
    """``trainer.v1.trainer_mode=sgsd`` (set by ``recipe.sgsd.main_sgsd`` for ``adv_estimator=sgsd``)."""

    def __init__(self, config):
        super().__init__(config)
        self.sgsd_config = SGSDConfig.from_mapping(OmegaConf.to_container(config.sgsd, resolve=True))
        # Created here, before the reward workers exist, so this long-lived process owns the
        # buffer actor (a Ray actor dies with its owner) and every reward worker finds it.
        self.record_buffer = record_buffer(self.sgsd_config.record_buffer_size)
        self._scoring_ranks: list[int] = []  # the rank that scored each teacher of the last pass (dumps)

    # ----------------------------------------------------------------- set-up
    def on_init_end(self):
        super().on_init_end()
        cfg = self.sgsd_config
        encoder = None
        if not cfg.sibling or cfg.skill_strategy == "embedding":
            try:
                encoder = SentenceTransformerEncoder(cfg.encoder, device=cfg.encoder_device)
            except ValueError as exc:
                raise ValueError(f"sgsd.encoder_device={cfg.encoder_device}: {exc}") from None
        self.evolution, self.retriever, self.sibling_skills = None, None, None
        if cfg.sibling:  # Skill-SD / SDAR / RLSD: the method's own skills, no bank
            self.sibling_skills = self._make_sibling_skills(encoder)
        else:
            self.evolution = self._make_evolution()
            self.retriever = SkillRetriever(encoder, self.skill_bank, top_k=cfg.top_k,
                                            temperature=cfg.alpha_temperature)
        self.teacher_pass = TeacherPass(cfg, self.tokenizer, self.retriever, self.sibling_skills)
        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        hybrid = cfg.hybrid(int(self.config.actor_rollout_ref.rollout.n))  # + verl's GRPO loss
        loss = SGSDActorLoss.from_config(cfg, actor_config, hybrid=hybrid,
                                         debug_dump_dir=os.environ.get("SGSD_DEBUG_DUMP_DIR"))
        self.actor_rollout_wg.set_loss_fn(loss)
        reference = getattr(self, "ref_policy_wg", None)
        if reference is not None and reference is not self.actor_rollout_wg:  # a standalone reference worker
            reference.set_loss_fn(loss)  # its logits hook serves the teacher's top-k (recipe.sgsd.loss)
        if cfg.sibling:
            logger.info("SGSD: method=%s, skills from %s (%s), teacher=%s", cfg.method, cfg.skill_source,
                        cfg.skill_strategy, cfg.teacher)
        else:
            logger.info("SGSD: bank %s (%s), K=%d, teacher=%s", self.skill_bank.source, self.skill_bank.counts(),
                        cfg.top_k, cfg.teacher)

    def _make_sibling_skills(self, encoder) -> SiblingSkills:
        """Skill-SD's trajectory summaries (written by ``sgsd.update.writer``) or SDAR's skill files,
        with the run's retrieval strategy; restored from the checkpoint being resumed."""
        cfg = self.sgsd_config
        store_path, writer = None, None
        if cfg.skill_source == "summaries":
            output_dir = Path(cfg.bank_output_dir or os.path.join(self.config.trainer.default_local_dir, "sgsd_skills"))
            output_dir.mkdir(parents=True, exist_ok=True)
            store_path, writer = output_dir / "summaries.json", self._make_writer()
        skills = make_sibling_skills(cfg, encoder=encoder, writer=writer, store_path=store_path)
        resumed_from = getattr(self, "_sgsd_resume_folder", None)
        if resumed_from is not None and not skills.load_checkpoint(Path(resumed_from) / CHECKPOINT_SUBDIR / "skills"):
            logger.warning("SGSD: checkpoint %s has no skill-retrieval state; starting afresh", resumed_from)
        return skills

    # ----------------------------------------------------------------- the bank's life
    @property
    def skill_bank(self) -> SkillBank:
        return self.evolution.bank

    def _make_evolution(self) -> BankEvolution:
        """The run's bank: restored from the checkpoint being resumed, else ``sgsd.bank_path``."""
        cfg, up = self.sgsd_config, self.sgsd_config.update
        bank = SkillBank.load_start(resolve(cfg.bank_path, "bank"), grows=up.enable)
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
        return PolicyWriterClient(self.get_llm_client(), self.tokenizer, context_length=int(context) if context else None)

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
        if self.evolution is not None:
            self.evolution.flush()
            self.evolution.save_checkpoint(Path(folder) / CHECKPOINT_SUBDIR)
        if self.sibling_skills is not None:
            self.sibling_skills.save_checkpoint(Path(folder) / CHECKPOINT_SUBDIR / "skills")
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
        """Window the step's rollouts; every ``sgsd.update.freq`` steps evolve the bank (SGSD), or
        hand them to the trajectory summarizer (Skill-SD)."""
        import ray

        records = ray.get(self.record_buffer.drain.remote())
        if self.sibling_skills is not None:
            self._skills_step_end(records, metrics)
        else:
            self._evolution_step_end(records, metrics)
        stats = ray.get(self.record_buffer.stats.remote())
        metrics["sgsd/record_buffer_dropped"] = float(stats["dropped"])

    def _evolution_step_end(self, records, metrics: dict) -> None:
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

    def _skills_step_end(self, records, metrics: dict) -> None:
        """Skill-SD: this step's rollouts to the summarizer. An external writer works on its own
        thread while training goes on (what it finished is used from the next teacher pass on);
        the policy writer needs the rollout replicas, so the step waits for its summaries."""
        skills, step = self.sibling_skills, self.global_steps
        if skills.summarizer is not None and records:
            metrics["sgsd/skills/summaries_submitted"] = float(skills.submit(records, step))
            if self.sgsd_config.update.writer == "policy":
                self.checkpoint_manager.update_weights(step)
                try:
                    skills.collect(wait=True)
                finally:
                    self.checkpoint_manager.sleep_replicas()
        if step >= self.total_training_steps:  # the last summaries reach the saved store
            skills.collect(wait=True, timeout=self.sgsd_config.update.timeout_s)
        skills.collect()
        metrics.update(skills.metrics())

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

    @contextmanager
    def _logits_hook(self):
        """With a distribution loss, the actor update asks verl's FSDP engine for its logits
        hook (``distillation_use_topk``), which verl's ``_update_actor`` sets from its own
        distillation config only: the flag is added to the batch as it is handed to the workers."""
        wg = self.actor_rollout_wg
        if not self.sgsd_config.uses_distribution:
            yield
            return
        update_actor = wg.update_actor

        def with_hook(batch, *args, **kwargs):
            batch.extra_info["distillation_use_topk"] = True
            return update_actor(batch, *args, **kwargs)

        wg.update_actor = with_hook
        try:
            yield
        finally:
            wg.update_actor = update_actor

    def _compute_old_log_prob(self, batch, metrics):
        with self._logprob_temperature():
            return super()._compute_old_log_prob(batch, metrics)

    def _compute_ref_log_prob(self, batch, metrics):
        # the KL-to-reference term (Skill-SD, SDAR) compares the student's and the reference's
        # log-probs at the same temperature
        with self._logprob_temperature():
            return super()._compute_ref_log_prob(batch, metrics)

    def _compute_advantage(self, batch, metrics):
        batch = super()._compute_advantage(batch, metrics)
        if self.sgsd_config.distills or self.sgsd_config.method == "rlsd":
            batch = self._teacher_pass(batch, metrics)
        return batch

    def _update_actor(self, batch, metrics):
        actor_metrics: dict = {}
        with self._logprob_temperature(), self._logits_hook():
            batch = super()._update_actor(batch, actor_metrics)
        for key, value in actor_metrics.items():
            metrics[key.replace("actor/sgsd/", "sgsd/", 1)] = value
        return batch

    # ----------------------------------------------------------------- teacher pass
    def _teacher_pass(self, batch, metrics):
        """Read the rollouts from TransferQueue, run :class:`TeacherPass` with verl's worker
        group as the scorer, write the ``sgsd_*`` fields back next to the rollouts."""
        start = time.perf_counter()
        cfg = self.sgsd_config
        wanted = ["prompts", "responses", "response_mask", "rm_scores", "old_log_probs", "extra_info",
                  "raw_prompt", "reward_model"] + (["advantages"] if cfg.method == "rlsd" else [])
        available = set(batch.fields) if batch.fields else set(wanted)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=[f for f in wanted if f in available])
        n = len(data["responses"])
        extra, raw_prompts = _non_tensor_list(data, "extra_info", n), _non_tensor_list(data, "raw_prompt", n)
        rollouts = Rollouts(
            responses=list(data["responses"].unbind()), response_masks=list(data["response_mask"].unbind()),
            log_probs=list(data["old_log_probs"].unbind()),
            rewards=torch.stack([r.sum() for r in data["rm_scores"].unbind()]).float(),
            problems=[problem_text(e, p) for e, p in zip(extra, raw_prompts)],
            answers=[str((rm or {}).get("ground_truth", "")) for rm in _non_tensor_list(data, "reward_model", n)],
            student_pairs=[student_pairs(e) for e in extra],
            episodes=[is_episode(e) for e in extra],
        )
        result = self.teacher_pass(rollouts, self._score_teachers)
        if os.environ.get("SGSD_DEBUG_DUMP_DIR"):
            self._dump_teacher_pass(result, rollouts, list(data["prompts"].unbind()))
        fields = result.fields.to_tensordict()
        if cfg.method == "rlsd":  # GRPO's advantages reweighted per token by the teacher's gap
            advantages, rlsd_metrics = rlsd_token_advantages(
                result.fields, rollouts, list(data["advantages"].unbind()), self.global_steps, cfg.rlsd_config())
            fields["advantages"] = jagged(advantages)
            metrics.update(rlsd_metrics)
        batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields, tags=batch.tags)
        if self.sibling_skills is not None and n:  # UCB learns from each rollout's outcome
            self.sibling_skills.observe(rollouts.problems, result.skills, rollouts.rewards.tolist())
        if n and self.evolution is not None and self.evolution.tracker is not None \
                and cfg.teacher_context == "skills":  # per-item utility
            skill_ids, mistake_ids = teacher_item_ids(result.retrievals, cfg.top_k)
            threshold = cfg.threshold if cfg.ablation.use_threshold else 0.0
            self.evolution.tracker.observe(skill_ids, mistake_ids, result.support, result.fields.alpha,
                                           result.fields.outcome_sign, threshold)
        elapsed = time.perf_counter() - start
        metrics.update(result.metrics)  # bank sizes: sgsd/bank/* from BankEvolution.metrics
        metrics["sgsd/teacher_pass_time"] = elapsed
        metrics["sgsd/teacher_tokens_per_s"] = result.metrics["sgsd/teacher_tokens"] / max(elapsed, 1e-9)
        if getattr(self, "_last_teacher_peak_mb", None) is not None:
            metrics["sgsd/teacher_pass_peak_extra_mb"] = self._last_teacher_peak_mb
        return batch

    def _score_teachers(self, prompt_ids, responses, response_masks, topk: int = 0) -> list:
        """The trainer's :class:`~recipe.sgsd.teacher_pass.TeacherScorer`: every teacher
        sequence through verl's log-prob call at once (the actor when live; the reference
        model, or the actor with its LoRA adapter off, when frozen) via a TransferQueue side
        partition; response-aligned results in the order given. With ``topk`` the same call
        also returns each position's top-k ids and log-probs, through verl's logits hook
        (``distillation_use_topk``, :mod:`recipe.sgsd.distribution`): one
        :class:`~recipe.sgsd.teacher_pass.TeacherScores` per sequence."""
        order = scoring_order([len(p) + len(r) for p, r in zip(prompt_ids, responses)], self._teacher_dp_size(),
                              per_rank_multiple(self.config, self._frozen_reference))
        rows, tags = [], []
        for j in order:
            prompt = torch.tensor(prompt_ids[j], dtype=torch.int64)
            input_ids = torch.cat([prompt, responses[j]])
            rows.append({
                "prompts": prompt, "responses": responses[j], "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids), "position_ids": torch.arange(len(input_ids)),
                "response_mask": response_masks[j], "loss_mask": response_masks[j],
            })
            tags.append({"status": "success", "prompt_len": len(prompt), "response_len": len(responses[j]),
                         "seq_len": len(input_ids)})
        keys = [f"sgsd_t{self.global_steps}_{i}" for i in range(len(rows))]
        meta = tq.kv_batch_put(keys=keys, partition_id=TEACHER_PARTITION, fields=list_of_dict_to_tensordict(rows),
                               tags=tags)
        meta.extra_info = {"calculate_entropy": False, "compute_loss": False,
                           "temperature": self.sgsd_config.logprob_temperature}
        topk_fields = []
        if topk:  # the installed SGSD loss is verl's logits hook here and returns the top-k
            meta.extra_info.update(compute_loss=True, distillation_use_topk=True, **{TOPK_FLAG: topk})
            topk_fields = [f"{prefix}{j}" for prefix in (TOPK_ID, TOPK_LP) for j in range(topk)]
        probe = None
        if memory_probe.enabled():
            probe = memory_probe.PeakMemoryProbe(self._teacher_worker_group())
            probe.start()
        try:
            if self._frozen_reference:
                self.ref_policy_wg.compute_ref_log_prob(meta)
            elif self._moving_teacher:  # LoRA, ema / periodic: the teacher's adapter swapped in
                self.actor_rollout_wg.compute_teacher_log_prob(meta)
            else:
                if self.sgsd_config.teacher == "frozen":  # the actor with its LoRA adapter off
                    meta.extra_info["no_lora_adapter"] = True
                self.actor_rollout_wg.compute_log_prob(meta)
            if probe is not None:
                self._last_teacher_peak_mb = probe.stop()
            out = tq.kv_batch_get(keys=keys, partition_id=TEACHER_PARTITION,
                                  select_fields=["log_probs", "response_mask", *topk_fields])
            results = list(response_from_nested(out["log_probs"], out["response_mask"]).unbind())
            if topk:
                def ranks(prefix):  # k per-token outputs -> one [T, k] per sequence
                    return [torch.stack(cols, -1) for cols in zip(*(
                        response_from_nested(out[f"{prefix}{j}"], out["response_mask"]).unbind()
                        for j in range(topk)))]

                results = [TeacherScores(lp, ids.long(), lps.float())
                           for lp, ids, lps in zip(results, ranks(TOPK_ID), ranks(TOPK_LP))]
            scored: list[torch.Tensor | None] = [None] * len(prompt_ids)
            per_rank = len(order) // self._teacher_dp_size()  # verl's contiguous chunk per rank
            self._scoring_ranks = [0] * len(prompt_ids)
            for position, j in enumerate(order):
                if scored[j] is None:  # later copies are the padding
                    scored[j] = results[position]
                    self._scoring_ranks[j] = position // per_rank
        finally:
            tq.kv_clear(keys=keys, partition_id=TEACHER_PARTITION)
        return scored

    def _dump_teacher_pass(self, result, rollouts, student_prompts) -> None:
        """Tests only: what the pass scored, to check it against an independent forward."""
        folder = Path(os.environ["SGSD_DEBUG_DUMP_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        plan = result.plan
        torch.save({
            "step": self.global_steps, "owner": plan.owner, "slot": plan.slot, "prompt_ids": plan.prompt_ids,
            "alpha": plan.alpha, "responses": [r.clone() for r in rollouts.responses],
            "response_masks": [m.clone() for m in rollouts.response_masks],
            "scored": [s.clone() for s in result.scored],
            "student_log_probs": [s.clone() for s in rollouts.log_probs],
            "student_prompts": [p.clone() for p in student_prompts],
            "temperature": self.sgsd_config.logprob_temperature,
            "problems": list(rollouts.problems), "rewards": rollouts.rewards.clone(),
            "scoring_rank": list(self._scoring_ranks),
            "topk_ids": result.fields.topk_ids, "topk_log_probs": result.fields.topk_log_probs,
        }, folder / f"teacher_pass_step{self.global_steps:04d}.pt")

    @property
    def _frozen_reference(self) -> bool:
        """The teacher is a separate reference model (frozen, ema or periodic without LoRA)."""
        return teacher_on_reference(self.sgsd_config.teacher, self.ref_in_actor)

    def _teacher_worker_group(self):
        return self.ref_policy_wg if self._frozen_reference else self.actor_rollout_wg

    def _teacher_dp_size(self) -> int:
        return max(int(getattr(self._teacher_worker_group(), "world_size", 1)), 1)


def student_pairs(extra_info) -> tuple[list[str], list[str]] | None:
    """The (skill ids, mistake ids) a row's student prompt showed (``extra_info``, written by
    :func:`sgsd.verl_data.to_verl_rows`), or None for a plain-prompt row."""
    if not isinstance(extra_info, dict):
        return None
    skills, mistakes = extra_info.get("skill_ids"), extra_info.get("mistake_ids")
    if skills is None or mistakes is None or not len(skills) or not len(mistakes):
        return None
    return [str(i) for i in skills], [str(i) for i in mistakes]


def _non_tensor_list(data: TensorDict, key: str, n: int) -> list:
    if key not in data.keys():
        return [None] * n
    value = data[key]
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    return list(items) if len(items) == n else [None] * n
