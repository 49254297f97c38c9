"""Hydra overrides and environment for running verl 0.9.1's trainer on CPU.

One list shared by scripts and tests. It holds only what the CPU backend
(``recipe.sgsd.cpu.backend``) needs, nothing about the algorithm or batch sizes::

    from recipe.sgsd.cpu.overrides import CPU_OVERRIDES, cpu_env
    subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", *CPU_OVERRIDES, *mine],
                   env=cpu_env(), check=True)

Later overrides of the same key win in Hydra, except that a key may be ``++``-set only
once per command line: pass your own values for the keys below as plain ``key=value``
after this list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

BACKEND_MODULE = "recipe.sgsd.cpu.backend"

CPU_OVERRIDES: list[str] = [
    # Placement: one worker process; Ray gets one logical GPU (a scheduling slot, see
    # PlatformCPU) because verl's resource pools count GPUs, and enough logical CPUs for
    # TransferQueue's controller/storage actors, the reward and agent-loop workers.
    "trainer.device=cpu",
    "trainer.nnodes=1",
    "trainer.n_gpus_per_node=1",
    "++ray_kwargs.ray_init.num_gpus=1",
    "ray_kwargs.ray_init.num_cpus=8",
    # Each TransferQueue storage unit is a Ray actor holding a CPU: 8 of them starve the run.
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    # FSDP1's sync_module_states refuses CPU parameters; FSDP2 runs on CPU.
    "actor_rollout_ref.actor.strategy=fsdp2",
    "critic.strategy=fsdp2",
    # No flash-attention or inductor on CPU.
    "++actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "++critic.model.override_config.attn_implementation=sdpa",
    "actor_rollout_ref.model.use_remove_padding=false",
    "critic.model.use_remove_padding=false",
    "actor_rollout_ref.actor.use_torch_compile=false",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
    "actor_rollout_ref.ref.fsdp_config.use_torch_compile=false",
    "critic.fsdp.use_torch_compile=false",
    # The transformers generate() rollout from recipe/sgsd/cpu/hf_rollout.py, one process.
    "actor_rollout_ref.rollout.name=hf",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    # Few processes on a small machine.
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "reward.num_workers=1",
    "data.dataloader_num_workers=0",
]


def cpu_env(base: Mapping[str, str] | None = None, pythonpath: str | None = None) -> dict[str, str]:
    """Environment for a CPU run: select the backend and let every verl process import it.

    ``pythonpath`` (default: the project root) is prepended to ``PYTHONPATH`` so Ray
    workers can import ``recipe.sgsd``.
    """
    env = dict(os.environ if base is None else base)
    root = pythonpath or str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["VERL_PLATFORM"] = "cpu"
    modules = [m for m in env.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    if BACKEND_MODULE not in modules:
        modules.insert(0, BACKEND_MODULE)
    env["VERL_USE_EXTERNAL_MODULES"] = ",".join(modules)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env
