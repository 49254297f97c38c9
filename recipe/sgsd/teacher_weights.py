"""Teachers that are updated otherwise (paper Fig. 3b): ``sgsd.teacher=ema|periodic``, the trainer's side.

A live teacher is the actor and a frozen one the initial policy; a *moving* teacher has weights
of its own, updated after every actor step by :class:`sgsd.teacher_schedule.TeacherSchedule`:

========================  ==================================================================
``ema``                   ``theta_T <- d theta_T + (1 - d) theta_S``, d = ``sgsd.teacher_ema_decay``
``periodic``              ``theta_T <- theta_S`` after steps ``s`` with ``s % sgsd.teacher_period == 0``
========================  ==================================================================

both from ``theta_T = theta_0``. Where the weights live and how the teacher pass scores with
them (:mod:`recipe.sgsd.teacher_worker`):

* full fine-tuning: verl's reference model (so a reference is built, as for a frozen teacher;
  no KL term may then use it), scored by ``compute_ref_log_prob``;
* LoRA (``actor_rollout_ref.model.lora_rank > 0``): a copy of the adapter's shards on each
  rank (the base is shared), swapped into the actor for ``compute_teacher_log_prob``.

:class:`TeacherWeightsMixin` (mixed into :class:`recipe.sgsd.trainer.SGSDTrainer`) gives verl's
trainer the worker class, updates the teacher after verl's actor update in ``step()`` (before
the checkpoint of that step), saves it in every checkpoint (``global_step_N/sgsd/teacher/``: one
file of local shards per rank, then ``teacher.json``, all before verl's latest-iteration marker)
and restores it on resume. :func:`check_moving_teacher` refuses at start what it cannot do.

No verl import at module level: ``main_sgsd`` and ``geometry`` import this before verl loads.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from sgsd.config import ConfigError
from sgsd.teacher_schedule import MOVING_TEACHERS

logger = logging.getLogger(__name__)

TEACHER_SUBDIR = os.path.join("sgsd", "teacher")  # inside global_step_N/, next to the bank's sgsd/ files
REFERENCE_TEACHERS = ("frozen", *MOVING_TEACHERS)  # teachers that are not the actor's current weights

_AR = "actor_rollout_ref"


def teacher_on_reference(teacher: str, lora: bool) -> bool:
    """The teacher pass scores on verl's reference model: a teacher other than the live actor,
    in a full fine-tuning run (with LoRA the reference is the actor, adapter off or swapped)."""
    return teacher in REFERENCE_TEACHERS and not lora


def check_moving_teacher(config, sgsd_config) -> None:
    """What a moving teacher needs of the composed verl config, refused at start naming the key."""
    from recipe.sgsd.geometry import uses_lora

    teacher = sgsd_config.teacher
    if teacher not in MOVING_TEACHERS:
        return
    what = f"sgsd.teacher={teacher}"
    ar = config[_AR]
    strategy = ar.actor.get("strategy", "fsdp")
    if strategy != "fsdp2":
        raise ConfigError(
            f"{what} updates the teacher on each rank's FSDP2 (DTensor) shards; {_AR}.actor.strategy={strategy!r} "
            f"is not supported (works: {_AR}.actor.strategy=fsdp2; the reference model follows it)")
    ref_strategy = ar.ref.get("strategy", strategy)
    if not uses_lora(config) and ref_strategy != strategy:
        raise ConfigError(f"{what}: {_AR}.ref.strategy={ref_strategy!r} must equal {_AR}.actor.strategy={strategy!r} "
                          "(the teacher's shards are paired with the actor's)")
    # one actor step = one optimizer step: the schedule counts optimizer steps (the release updated
    # its EMA after each), and the trainer sees one actor update per training step.
    epochs = int(ar.actor.get("ppo_epochs", 1))
    mini, batch = int(ar.actor.ppo_mini_batch_size), int(config.data.train_batch_size)
    sync_steps = int((config.trainer.get("v1", {}).get("sync", {}) or {}).get("parameter_sync_step", 1))
    if epochs != 1 or mini < batch or sync_steps != 1:
        raise ConfigError(
            f"{what} updates the teacher after every optimizer step, once per training step: it needs ONE optimizer "
            f"step per training step, but {_AR}.actor.ppo_epochs={epochs}, {_AR}.actor.ppo_mini_batch_size={mini} "
            f"(data.train_batch_size={batch}) and trainer.v1.sync.parameter_sync_step={sync_steps} make "
            f"{epochs * math.ceil(batch / mini) * sync_steps} (works: ppo_epochs=1, ppo_mini_batch_size={batch}, "
            "parameter_sync_step=1)")
    if uses_lora(config):
        return
    actor, algorithm = ar.actor, config.algorithm
    if (actor.get("use_kl_loss") and float(actor.get("kl_loss_coef", 0.0)) != 0.0) or algorithm.get("use_kl_in_reward"):
        raise ConfigError(
            f"{what} keeps the teacher's weights in verl's reference model, which a KL term would then use as its "
            f"reference: set {_AR}.actor.kl_loss_coef=0 (or use_kl_loss=false) and algorithm.use_kl_in_reward=false, "
            f"or train with LoRA ({_AR}.model.lora_rank > 0), where the reference stays the base model")
    dtype = str((ar.ref.get("fsdp_config") or {}).get("model_dtype", "fp32"))
    if teacher == "ema" and dtype not in ("fp32", "float32"):
        raise ConfigError(
            f"sgsd.teacher=ema accumulates (1 - d) = {1 - sgsd_config.teacher_ema_decay:g} of the student per step "
            f"into the reference model's weights, which {_AR}.ref.fsdp_config.model_dtype={dtype} would round away "
            f"(works: {_AR}.ref.fsdp_config.model_dtype=fp32, verl's default)")


class TeacherWeightsMixin:
    """The moving teacher's life in verl's v1 trainer (mixed in before verl's trainer class)."""

    # ----------------------------------------------------------------- set-up
    @property
    def _moving_teacher(self) -> bool:
        return self.sgsd_config.teacher in MOVING_TEACHERS

    def _init_resource_pool_mgr(self):
        """verl builds its role -> worker-class map here; a moving teacher swaps in
        :class:`~recipe.sgsd.teacher_worker.TeacherWeightsWorker` for verl's ActorRolloutRefWorker."""
        super()._init_resource_pool_mgr()
        if not self._moving_teacher:
            return
        import ray

        from recipe.sgsd.teacher_worker import TeacherWeightsWorker
        from verl.workers.engine_workers import ActorRolloutRefWorker

        swapped = []
        for role, remote_cls in list(self.role_worker_mapping.items()):
            if getattr(remote_cls, "__ray_actor_class__", None) is ActorRolloutRefWorker:
                self.role_worker_mapping[role] = ray.remote(TeacherWeightsWorker)
                swapped.append(str(role))
        if not swapped:
            raise RuntimeError(f"sgsd.teacher={self.sgsd_config.teacher}: verl's role map holds no "
                               f"ActorRolloutRefWorker to extend ({self.role_worker_mapping})")

    def on_init_end(self):
        super().on_init_end()
        self.teacher_schedule = self.sgsd_config.teacher_schedule()
        self._teacher_updates = 0
        if not self._moving_teacher:
            return
        if not self.ref_in_actor and getattr(self, "ref_policy_wg", None) is not self.actor_rollout_wg:
            raise RuntimeError(f"sgsd.teacher={self.sgsd_config.teacher} without LoRA needs the reference model in "
                               "the actor's worker (verl's actor_rollout_ref role), to pair their shards per rank")
        resumed = getattr(self, "_sgsd_resume_folder", None)
        if resumed is not None:
            self._restore_teacher(Path(resumed) / TEACHER_SUBDIR)
        logger.info("SGSD: %s teacher in %s (%s)", self.sgsd_config.teacher, self._teacher_where,
                    self.teacher_schedule)

    @property
    def _teacher_where(self) -> str:
        return "lora_adapter" if self.ref_in_actor else "reference_model"

    # ----------------------------------------------------------------- the update
    def step(self, metrics, timing_raw):
        batch = super().step(metrics, timing_raw)
        if self._moving_teacher and self.config.trainer.critic_warmup <= self.global_steps:  # the actor moved
            self._update_teacher(metrics, timing_raw)
        return batch

    def _update_teacher(self, metrics: dict, timing_raw: dict) -> None:
        from verl.utils.debug import marked_timer

        weight = self.teacher_schedule.weight(self.global_steps)
        metrics["sgsd/teacher/update_weight"] = weight or 0.0
        if weight is None:
            return
        with marked_timer("sgsd_teacher_update", timing_raw, color="cyan"):
            per_rank = self.actor_rollout_wg.update_teacher(weight)
        self._teacher_updates += 1
        distance = sum(r["sq_distance"] for r in per_rank)
        norm = sum(r["sq_student"] for r in per_rank)
        # before this update: how far the teacher lagged behind the student of this step
        metrics["sgsd/teacher/rel_distance"] = math.sqrt(distance / norm) if norm > 0 else 0.0
        metrics["sgsd/teacher/updates"] = float(self._teacher_updates)

    # ----------------------------------------------------------------- checkpoints
    def _save_checkpoint(self):
        if self._moving_teacher:  # before verl's files: its latest-iteration marker comes last
            from recipe.sgsd.teacher_shards import write_meta

            folder = Path(self.config.trainer.default_local_dir) / f"global_step_{self.global_steps}" / TEACHER_SUBDIR
            self.actor_rollout_wg.save_teacher(str(folder))
            s = self.teacher_schedule
            write_meta(folder, {"kind": s.kind, "decay": s.decay, "period": s.period, "step": self.global_steps,
                                "updates": self._teacher_updates, "world": int(self.actor_rollout_wg.world_size),
                                "where": self._teacher_where})
        super()._save_checkpoint()

    def _restore_teacher(self, folder: Path) -> None:
        from recipe.sgsd.teacher_shards import read_meta

        kind, world = self.sgsd_config.teacher, int(self.actor_rollout_wg.world_size)
        meta = read_meta(folder)
        if meta is None:
            raise RuntimeError(
                f"{folder}: no teacher state in the checkpoint being resumed; it was written by a run with another "
                f"sgsd.teacher than {kind} (resume it with that teacher, or start a new run in another "
                "trainer.default_local_dir)")
        if meta["kind"] != kind or meta["where"] != self._teacher_where:
            raise RuntimeError(f"{folder}: the checkpoint's teacher is {meta['kind']} in its {meta['where']}, this "
                               f"run's sgsd.teacher={kind} in its {self._teacher_where}")
        if int(meta["world"]) != world:
            raise RuntimeError(f"{folder}: the teacher was saved as {meta['world']} ranks' shards; this run has "
                               f"{world} (a moving teacher resumes on the world size it was saved with)")
        s = self.teacher_schedule
        if (meta["decay"], meta["period"]) != (s.decay, s.period):
            logger.warning("SGSD: resuming a teacher saved with decay %s / period %s under decay %s / period %s",
                           meta["decay"], meta["period"], s.decay, s.period)
        self.actor_rollout_wg.load_teacher(str(folder))
        self._teacher_updates = int(meta["updates"])
        logger.info("SGSD: resumed the %s teacher of step %s from %s", kind, meta["step"], folder)
