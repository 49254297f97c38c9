"""The CPU backend for verl 0.9.1 (recipe/sgsd/cpu/backend.py).

Fast: importing the backend where it is not selected (or where a GPU exists) changes
nothing. Slow: the registrations land in verl's registries; and verl's real trainer (``python -m
verl.trainer.main_ppo``, v1 TransferQueue trainer) runs GRPO for two steps on a tiny
local Qwen3, updating the actor and syncing it into the rollout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
_SELECTORS = ("VERL_PLATFORM", "SGSD_CPU_BACKEND", "VERL_USE_EXTERNAL_MODULES")
# The backend alone: the SGSD recipe's `verl.plugins` entry point stays out of these runs.
_ONLY_THE_BACKEND = {"VERL_USE_EXTERNAL_PLUGINS": "none"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SELECTORS}
    env.update(_ONLY_THE_BACKEND)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _fresh(code: str, env: dict[str, str], timeout: int = 300) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON line last."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_SNAPSHOT_AFTER_IMPORT = """
import json, os, sys
{prelude}
env_before, hooks_before = dict(os.environ), list(sys.meta_path)
import recipe.sgsd.cpu.backend as cb
print(json.dumps({{
    "installed": cb._installed,
    "install_again": cb.install(),
    # Every registration goes into verl (and needs it imported): none can have happened.
    "verl_imported": "verl" in sys.modules,
    "meta_path_changed": sys.meta_path != hooks_before,
    "env_changed": dict(os.environ) != env_before,
}}))
"""


@pytest.mark.parametrize(
    ("prelude", "env"),
    [
        pytest.param("", {}, id="not-selected"),
        pytest.param("", {"VERL_PLATFORM": "nvidia"}, id="other-platform"),
        # A CUDA machine: selecting the CPU backend must still be a no-op there.
        pytest.param("import torch; torch.cuda.is_available = lambda: True", {"VERL_PLATFORM": "cpu"}, id="gpu"),
        pytest.param("import torch; torch.cuda.is_available = lambda: True", {"SGSD_CPU_BACKEND": "1"}, id="gpu-alias"),
    ],
)
def test_import_is_a_no_op_unless_selected_on_a_cpu_machine(prelude, env):
    report = _fresh(_SNAPSHOT_AFTER_IMPORT.format(prelude=prelude), _env(**env))
    assert report == {
        "installed": False, "install_again": False, "verl_imported": False,
        "meta_path_changed": False, "env_changed": False,
    }


@pytest.mark.slow
def test_selected_backend_registers_platform_engines_and_hf_rollout():
    code = """
import json
import verl  # imports the backend through VERL_USE_EXTERNAL_MODULES, like every verl process
from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device, get_resource_name
from verl.utils.flops_counter import get_device_flops
import verl.utils.distributed as dist
from verl.workers.engine import EngineRegistry
from verl.workers.rollout.base import _ROLLOUT_REGISTRY
from verl.workers.rollout.replica import RolloutReplicaRegistry
import verl.workers.engine.fsdp.transformer_impl as fsdp_impl
torch_dev = get_torch_device()
torch_dev.empty_cache()
print(json.dumps({
    "device": get_device_name(), "backend": get_nccl_backend(), "resource": get_resource_name(),
    "flops_finite": get_device_flops() != float("inf"),
    "max_mem": torch_dev.max_memory_allocated(),
    "gloo_patched": getattr(dist.initialize_global_process_group_ray, "_sgsd_plain_gloo", False),
    "engine": EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__,
    "value_engine": EngineRegistry.get_engine_cls("value_model", "fsdp2").__name__,
    "unpinned": fsdp_impl.CPUOffloadPolicy().pin_memory is False,
    "replica": RolloutReplicaRegistry.get("hf").__name__,
    "adapter": _ROLLOUT_REGISTRY[("hf", "async")],
}))
"""
    from recipe.sgsd.cpu.backend import gpu_present

    if gpu_present():
        pytest.skip("the CPU backend stays off on GPU machines")
    report = _fresh(code, _env(VERL_PLATFORM="cpu", VERL_USE_EXTERNAL_MODULES="recipe.sgsd.cpu.backend"))
    assert report == {
        "device": "cpu", "backend": "gloo", "resource": "GPU", "flops_finite": True,
        "max_mem": report["max_mem"], "gloo_patched": True,
        "engine": "FSDPEngineWithLMHead", "value_engine": "FSDPEngineWithValueHead", "unpinned": True,
        "replica": "HFReplica", "adapter": "recipe.sgsd.cpu.hf_rollout.HFServerAdapter",
    }
    assert report["max_mem"] > 0


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_grpo_two_steps_on_cpu_through_verl_main_ppo(tmp_path, rulebook_model_dir, rulebook_data_dir):
    """verl's own entry point and trainer with nothing of the recipe but the CPU backend, on
    the session's rulebook model and data (real outcomes)."""
    from safetensors.torch import load_file

    from recipe.sgsd.cpu.backend import gpu_present
    from recipe.sgsd.cpu.overrides import CPU_OVERRIDES, cpu_env

    if gpu_present():
        pytest.skip("the CPU backend stays off on GPU machines")
    train, metrics_file, ckpt = rulebook_data_dir / "train.parquet", tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    overrides = [
        f"data.train_files={train}", f"data.val_files={train}",
        "data.train_batch_size=8", "data.max_prompt_length=128", "data.max_response_length=48",
        f"actor_rollout_ref.model.path={rulebook_model_dir}",
        "actor_rollout_ref.rollout.n=4", "actor_rollout_ref.rollout.temperature=1.1",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        # the rulebook model (sgsd/task_model.py) is right on some samples of a problem and wrong
        # on others: real rewards, non-zero group advantages at step 1. The large learning rate
        # makes a missed weight sync show in the metrics below (and may leave step 2's groups all
        # wrong: the entropy bonus keeps a gradient flowing through the actor loss then too)
        "actor_rollout_ref.actor.entropy_coeff=0.01",
        "actor_rollout_ref.actor.optim.lr=2e-2",
        "actor_rollout_ref.actor.use_kl_loss=false",
        "algorithm.adv_estimator=grpo", "algorithm.use_kl_in_reward=false",
        # verl loads a file path without registering it in sys.modules, which breaks the
        # verifier's dataclasses; the pkg:// form imports it as a normal module.
        "reward.custom_reward_function.path=pkg://sgsd.verifier",
        "reward.custom_reward_function.name=compute_score",
        "trainer.total_training_steps=2", "trainer.val_before_train=false", "trainer.test_freq=-1",
        "trainer.logger=[console,file]", "trainer.project_name=sgsd_cpu", "trainer.experiment_name=grpo",
        f"trainer.default_local_dir={ckpt}", "trainer.save_freq=2",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
    ]
    env = {**cpu_env(pythonpath=str(ROOT)), **_ONLY_THE_BACKEND}
    env["VERL_FILE_LOGGER_PATH"] = str(metrics_file)  # verl's `file` logger: one JSON line per step
    done = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", *CPU_OVERRIDES, *overrides],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900,
    )
    assert done.returncode == 0, (done.stdout[-6000:], done.stderr[-6000:])

    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        metrics = record["data"]
        assert metrics["actor/grad_norm"] > 0
        assert metrics["response_length/mean"] > 0
        assert metrics["critic/score/mean"] >= 0  # the verifier graded every sample
    # real outcomes on the pretrained model: some rollouts of a group right, some wrong, so GRPO's
    # group advantages are not all zero
    first = records[0]["data"]
    assert 0 < first["critic/score/mean"] < 1
    assert first["critic/advantages/max"] > 0 > first["critic/advantages/min"]
    # Step 2 sampled after step 1's update: rollout (hf server) and actor log-probs agree
    # only if the updated weights reached the server (|kl| is ~0.03 when they do not).
    assert abs(records[1]["data"]["rollout_corr/kl"]) < 0.01

    initial = load_file(Path(rulebook_model_dir) / "model.safetensors")
    trained = load_file(ckpt / "global_step_2" / "actor" / "huggingface" / "model.safetensors")
    assert trained.keys() == initial.keys()
    assert max((trained[k].float() - initial[k].float()).abs().max().item() for k in initial) > 1e-3
