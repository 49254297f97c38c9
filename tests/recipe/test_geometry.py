"""The batch geometry check (recipe/sgsd/geometry.py): what verl 0.9.1 asserts on at step 1,
refused at start with the key, its value and one that works. The shipped scripts pass it for
1, 2, 4 and 8 GPUs and every variant (tests/recipe/test_launch_scripts.py); what verl itself
does on the refused geometry is shown on two CPU ranks (tests/recipe/cpu/test_simulate.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recipe.sgsd.geometry import GeometryError

ROOT = Path(__file__).resolve().parents[2]
AR = "actor_rollout_ref"
# the SGSD scripts' geometry before the fix: 16 problems x 1 rollout, fixed micro-batches
PRE_FIX = ["data.train_batch_size=16", f"{AR}.actor.ppo_mini_batch_size=16", f"{AR}.rollout.n=1",
           f"{AR}.actor.ppo_micro_batch_size_per_gpu=2", f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=4",
           f"{AR}.ref.log_prob_micro_batch_size_per_gpu=4", "trainer.n_gpus_per_node=8"]


def geometry(overrides: list[str]):
    """main_sgsd's start-up check on the prepared config ``overrides`` compose to."""
    from recipe.sgsd.cpu.simulate import compose, geometry_of

    return geometry_of(compose(overrides))


def test_the_pre_fix_scripts_geometry_is_refused_naming_the_key_its_value_and_one_that_works():
    with pytest.raises(GeometryError) as refused:
        geometry(PRE_FIX)
    message = str(refused.value)
    assert f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=4 does not divide the 2 sequences each rank holds " \
           "in the old log-prob" in message
    assert f"works: {AR}.rollout.log_prob_micro_batch_size_per_gpu=2" in message
    assert "use_dynamic_bsz=true" in message and "trainer.n_gpus_per_node=8" in message
    # the same numbers on 4 GPUs divide: 4 per rank
    assert geometry([*PRE_FIX, "trainer.n_gpus_per_node=4"]).passes


def test_a_frozen_reference_model_is_checked_with_the_ref_sections_micro_batch():
    frozen = [*PRE_FIX, f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=2", "sgsd.teacher=frozen"]
    with pytest.raises(GeometryError, match=rf"{AR}\.ref\.log_prob_micro_batch_size_per_gpu=4 does not divide "
                                            "the 2 sequences each rank holds in the reference log-prob"):
        geometry(frozen)
    # with LoRA the frozen teacher is the actor with its adapter off: no reference model, the
    # rollout section's micro-batch (2) for the teacher pass, so this geometry passes
    names = {p.name for p in geometry([*frozen, f"{AR}.model.lora_rank=8"]).passes}
    assert "reference log-prob" not in names and "teacher pass (<= 8 per rollout)" in names


def test_the_teacher_pass_pads_to_whole_micro_batches_per_rank_so_it_never_fails():
    # one teacher per rollout (OPSD): 16 sequences, micro-batches of 2 over 8 ranks -> 2 each
    passes = {p.name: p for p in geometry([*PRE_FIX, f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=2",
                                           "sgsd.teacher_context=answer"]).passes}
    assert passes["teacher pass (<= 1 per rollout)"].per_rank == 2
    # K=6 at micro-batch 4 on 8 ranks: 96 sequences padded to 128, 16 per rank
    passes = {p.name: p for p in geometry(["data.train_batch_size=16", f"{AR}.actor.ppo_mini_batch_size=16",
                                           f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=4",
                                           "trainer.n_gpus_per_node=2", "sgsd.top_k=6"]).passes}
    assert passes["teacher pass (<= 6 per rollout)"].per_rank == 48  # 96 on 2 ranks, already whole


def test_a_mini_batch_that_does_not_divide_over_the_ranks_is_refused():
    with pytest.raises(GeometryError, match=rf"{AR}\.actor\.ppo_mini_batch_size=6 x {AR}\.rollout\.n=1 = 6 .* "
                                            rf"\(works: {AR}\.actor\.ppo_mini_batch_size=8\)"):
        geometry(["data.train_batch_size=24", f"{AR}.actor.ppo_mini_batch_size=6", "trainer.n_gpus_per_node=8",
                  f"{AR}.actor.ppo_micro_batch_size_per_gpu=1", f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=1"])


def test_the_actor_micro_batch_must_divide_its_per_rank_mini_batch():
    with pytest.raises(GeometryError, match=rf"{AR}\.actor\.ppo_micro_batch_size_per_gpu=4 does not divide the 2 "
                                            r"sequences each rank holds in the actor update mini-batch"):
        geometry([*PRE_FIX, f"{AR}.actor.ppo_micro_batch_size_per_gpu=4",
                  f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=2"])


def test_dynamic_batch_sizing_must_agree_between_actor_and_rollout_and_hold_a_sequence():
    with pytest.raises(GeometryError, match=rf"{AR}\.actor\.use_dynamic_bsz=True but {AR}\.rollout\."
                                            "log_prob_use_dynamic_bsz=False"):
        geometry([*PRE_FIX, f"{AR}.actor.use_dynamic_bsz=true", f"{AR}.rollout.log_prob_use_dynamic_bsz=false"])
    # a teacher sequence (prompt budget + response) must fit one micro-batch
    with pytest.raises(GeometryError, match=rf"{AR}\.rollout\.log_prob_max_token_len_per_gpu=1024 tokens cannot "
                                            r"hold one sequence of the teacher pass .* = 1536\).* \(works: "
                                            rf"{AR}\.rollout\.log_prob_max_token_len_per_gpu=2048\)"):
        geometry([*PRE_FIX, f"{AR}.actor.use_dynamic_bsz=true", f"{AR}.rollout.log_prob_max_token_len_per_gpu=1024",
                  "data.max_response_length=512", "data.max_prompt_length=256", "sgsd.max_teacher_prompt_length=1024"])
    # dynamic batch sizing takes any per-rank count
    assert geometry([*PRE_FIX, f"{AR}.actor.use_dynamic_bsz=true"]).passes


def test_grpo_through_main_sgsd_is_checked_too():
    with pytest.raises(GeometryError, match="old log-prob"):
        geometry(["algorithm.adv_estimator=grpo", f"{AR}.rollout.n=3", "data.train_batch_size=4",
                  f"{AR}.actor.ppo_mini_batch_size=4", "trainer.n_gpus_per_node=4",
                  f"{AR}.actor.ppo_micro_batch_size_per_gpu=1", f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=2"])


def test_the_dry_run_refuses_a_bad_geometry_naming_the_key(tmp_path):
    """SGSD_DRY_RUN=1 of a script on the pre-fix geometry: exit non-zero, the key in the message."""
    env = {**__import__("os").environ, "SGSD_DRY_RUN": "1", "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"}
    bad = [f"{AR}.actor.use_dynamic_bsz=false", f"{AR}.rollout.log_prob_use_dynamic_bsz=false",
           f"{AR}.ref.log_prob_use_dynamic_bsz=false", f"{AR}.actor.ppo_micro_batch_size_per_gpu=2",
           f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=4", f"{AR}.ref.log_prob_micro_batch_size_per_gpu=4"]
    done = subprocess.run(["bash", str(ROOT / "scripts" / "run_sgsd_qwen3_8b.sh"), *bad], cwd=tmp_path, env=env,
                          text=True, capture_output=True, timeout=300)
    assert done.returncode != 0
    assert f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=4 does not divide the 2 sequences" in done.stderr
    assert "config OK" not in done.stdout


def test_a_critic_is_checked_too():
    with pytest.raises(GeometryError, match=r"critic\.ppo_micro_batch_size_per_gpu=4 does not divide the 2 sequences "
                                            "each rank holds in the critic update mini-batch"):
        geometry(["algorithm.adv_estimator=gae", *PRE_FIX, f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=2",
                  "critic.ppo_micro_batch_size_per_gpu=4", "critic.forward_micro_batch_size_per_gpu=2"])
    passes = geometry(["algorithm.adv_estimator=gae", *PRE_FIX, f"{AR}.rollout.log_prob_micro_batch_size_per_gpu=2",
                       "critic.ppo_micro_batch_size_per_gpu=2", "critic.forward_micro_batch_size_per_gpu=1"]).passes
    assert {"critic update mini-batch", "critic values"} <= {p.name for p in passes}
