"""A moving teacher's wiring (recipe/sgsd/teacher_weights.py, teacher_worker.py): what a run of it
composes, what it refuses at start (naming the key), and the worker class verl's trainer builds."""

from __future__ import annotations

import pytest

from recipe.sgsd.main_sgsd import check_geometry
from recipe.sgsd.teacher_weights import TEACHER_SUBDIR, TeacherWeightsMixin, teacher_on_reference
from sgsd.config import ConfigError

AR = "actor_rollout_ref"
LORA = (f"{AR}.model.lora_rank=8", f"{AR}.model.lora_alpha=16")


@pytest.mark.parametrize(("teacher", "lora", "on_reference"), [
    ("live", False, False), ("frozen", False, True), ("ema", False, True), ("periodic", False, True),
    ("live", True, False), ("frozen", True, False), ("ema", True, False), ("periodic", True, False)])
def test_which_teachers_score_on_the_reference_model(teacher, lora, on_reference):
    assert teacher_on_reference(teacher, lora) is on_reference


@pytest.mark.parametrize("teacher", ["ema", "periodic"])
def test_without_lora_a_moving_teacher_gets_a_reference_model_and_its_geometry(teacher, run_config):
    config = run_config(f"sgsd.teacher={teacher}")
    actor = config[AR].actor
    assert actor.use_kl_loss and actor.kl_loss_coef == 0.0  # verl builds a reference model, no KL term uses it
    passes = {p.name for p in check_geometry(config, True, False).passes}
    assert "reference log-prob" in passes and "teacher pass (<= 4 per rollout)" in passes


def test_with_lora_the_teacher_is_an_adapter_copy_and_a_kl_term_keeps_the_base_as_reference(run_config):
    config = run_config("sgsd.teacher=ema", *LORA, f"{AR}.actor.use_kl_loss=true", f"{AR}.actor.kl_loss_coef=0.1")
    assert config[AR].actor.kl_loss_coef == 0.1  # allowed: the reference is the base (adapter off)


@pytest.mark.parametrize(("overrides", "message"), [
    ((f"{AR}.actor.strategy=fsdp",),
     rf"sgsd\.teacher=ema updates the teacher on each rank's FSDP2 .* {AR}\.actor\.strategy='fsdp' is not "
     rf"supported \(works: {AR}\.actor\.strategy=fsdp2"),
    ((f"{AR}.actor.ppo_mini_batch_size=2",),
     rf"ONE optimizer step per training step, but .*{AR}\.actor\.ppo_mini_batch_size=2 \(data\.train_batch_size=4\)"
     r".* make 2"),
    ((f"{AR}.actor.ppo_epochs=2",), rf"{AR}\.actor\.ppo_epochs=2"),
    ((f"{AR}.actor.use_kl_loss=true", f"{AR}.actor.kl_loss_coef=0.1"),
     rf"keeps the teacher's weights in verl's reference model, which a KL term would then use .* "
     rf"{AR}\.actor\.kl_loss_coef=0"),
    (("algorithm.use_kl_in_reward=true",), r"algorithm\.use_kl_in_reward=false"),
    ((f"{AR}.ref.fsdp_config.model_dtype=bf16",), rf"{AR}\.ref\.fsdp_config\.model_dtype=bf16 would round away"),
])
def test_what_a_moving_teacher_cannot_do_is_refused_at_start_naming_the_key(overrides, message, run_config):
    with pytest.raises(ConfigError, match=message):
        run_config("sgsd.teacher=ema", *overrides)


def test_a_periodic_teacher_may_live_in_a_bf16_reference_a_copy_loses_nothing_the_forward_keeps(run_config):
    run_config("sgsd.teacher=periodic", f"{AR}.ref.fsdp_config.model_dtype=bf16")


@pytest.mark.parametrize("teacher", ["live", "frozen"])
def test_live_and_frozen_teachers_are_not_checked(teacher, run_config):
    run_config(f"sgsd.teacher={teacher}", f"{AR}.actor.strategy=fsdp", f"{AR}.actor.ppo_mini_batch_size=2")


class _VerlTrainer:
    """What the mixin needs of verl's v1 trainer: the role -> worker-class map it builds."""

    def _init_resource_pool_mgr(self):
        import ray

        from verl.trainer.ppo.utils import Role
        from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

        self.role_worker_mapping = {Role.ActorRolloutRef: ray.remote(ActorRolloutRefWorker),
                                    Role.Critic: ray.remote(TrainingWorker)}


class _Trainer(TeacherWeightsMixin, _VerlTrainer):
    def __init__(self, teacher: str):
        from sgsd.config import SGSDConfig

        self.sgsd_config = SGSDConfig.from_mapping({"teacher": teacher})


@pytest.mark.parametrize(("teacher", "swapped"), [("ema", True), ("periodic", True), ("live", False),
                                                  ("frozen", False)])
def test_the_trainer_builds_the_teacher_worker_only_for_a_moving_teacher(teacher, swapped):
    from recipe.sgsd.teacher_worker import TeacherWeightsWorker
    from verl.trainer.ppo.utils import Role
    from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

    trainer = _Trainer(teacher)
    trainer._init_resource_pool_mgr()
    classes = {role: cls.__ray_actor_class__ for role, cls in trainer.role_worker_mapping.items()}
    assert classes[Role.ActorRolloutRef] is (TeacherWeightsWorker if swapped else ActorRolloutRefWorker)
    assert classes[Role.Critic] is TrainingWorker


def test_the_teacher_workers_methods_are_registered_for_verls_worker_group():
    """verl binds to the worker group only methods carrying its registration (Dispatch modes)."""
    from recipe.sgsd.teacher_worker import TeacherWeightsWorker
    from verl.single_controller.base.decorator import MAGIC_ATTR, Dispatch

    modes = {name: getattr(getattr(TeacherWeightsWorker, name), MAGIC_ATTR)["dispatch_mode"]
             for name in ("init_model", "update_teacher", "save_teacher", "load_teacher", "compute_teacher_log_prob")}
    assert all(modes[n] == Dispatch.ONE_TO_ALL for n in ("init_model", "update_teacher", "save_teacher",
                                                          "load_teacher"))
    # the same data dispatch as verl's compute_log_prob: chunks of the batch over the actor's DP ranks
    assert modes["compute_teacher_log_prob"]["dispatch_fn"].args == ("actor",)


def test_the_teacher_state_sits_next_to_the_bank_in_each_checkpoint():
    from recipe.sgsd.trainer import CHECKPOINT_SUBDIR

    assert TEACHER_SUBDIR.split("/")[0] == CHECKPOINT_SUBDIR
