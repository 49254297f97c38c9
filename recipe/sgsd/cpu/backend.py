"""A CPU backend for verl 0.9.1: run the real PPO/GRPO trainer without an accelerator.

verl imports every module named in ``VERL_USE_EXTERNAL_MODULES`` in every process it
starts (driver, TaskRunner, FSDP workers, reward and agent-loop workers), from inside
``import verl``. Loading this module that way, with ``VERL_PLATFORM=cpu`` (or
``SGSD_CPU_BACKEND=1``, which sets it), makes the trainer run on CPU::

    VERL_PLATFORM=cpu VERL_USE_EXTERNAL_MODULES=recipe.sgsd.cpu.backend \\
        python -m verl.trainer.main_ppo <overrides from recipe.sgsd.cpu.overrides>

What it does, and only when the CPU backend is selected and no CUDA GPU is present
(otherwise importing it changes nothing):

* registers a ``cpu`` platform (``verl/plugin/platform``), so ``get_platform()`` stops
  falling back to ``nvidia``;
* registers verl's FSDP engines for device ``cpu`` (they are registered for cuda/npu
  only) once ``verl/workers/engine/fsdp/transformer_impl.py`` is imported;
* registers the ``hf`` rollout (``recipe.sgsd.cpu.hf_rollout``) once verl's rollout
  registries are imported;
* applies four small runtime patches (process-group backend string, unpinned FSDP2
  CPU offload, the critic's hard-coded flash-attention, the replay buffer's 2 s poll),
  each documented where applied.

Registrations into modules that are expensive to import (the FSDP engine takes seconds)
are deferred with a post-import hook instead of importing those modules here: the
driver and reward workers never need them. Nothing in this module depends on the RL
algorithm, so GRPO and SGSD share it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import threading
import types

from recipe.sgsd.import_hooks import post_import_hooks

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"
ALIAS_ENV = "SGSD_CPU_BACKEND"
_TRUE = {"1", "true", "yes", "on"}

_installed = False
_install_lock = threading.Lock()


# --------------------------------------------------------------------------- selection


def cpu_backend_requested() -> bool:
    """True when the environment asks for the CPU backend (``VERL_PLATFORM`` or the alias)."""
    if os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME:
        return True
    return os.environ.get(ALIAS_ENV, "").strip().lower() in _TRUE


def gpu_present() -> bool:
    """True on a machine with a usable CUDA GPU (where this backend must stay out of the way)."""
    import torch

    return bool(torch.cuda.is_available()) or shutil.which("nvidia-smi") is not None


def is_enabled() -> bool:
    """Whether this process should run verl on CPU."""
    return cpu_backend_requested() and not gpu_present()


# --------------------------------------------------------------------------- platform


def _ignore(*args, **kwargs) -> None:
    """Device-state calls (caches, streams, allocator, profiler) with nothing to do on CPU."""
    return None


class _CPUDeviceModule(types.ModuleType):
    """``torch.cpu`` plus the ``torch.cuda``-style calls verl makes without checking the
    device (``empty_cache``, memory statistics, RNG state, ``get_device_name`` for the
    flops counter). Anything else is looked up on ``torch.cpu``."""

    def __getattr__(self, name):
        import torch

        return getattr(torch.cpu, name)

    empty_cache = ipc_collect = set_per_process_memory_fraction = reset_peak_memory_stats = staticmethod(_ignore)

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def get_device_name(self, device=None) -> str:
        return "CPU"  # the key utils/flops_counter.py:get_device_flops has for CPUs

    def mem_get_info(self, device=None) -> tuple[int, int]:
        import psutil

        vm = psutil.virtual_memory()
        return vm.available, vm.total

    def memory_allocated(self, device=None) -> int:  # reported as this process's RSS
        import psutil

        return psutil.Process().memory_info().rss

    def max_memory_allocated(self, device=None) -> int:  # peak RSS (ru_maxrss is KiB on Linux)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    memory_reserved, max_memory_reserved = memory_allocated, max_memory_allocated

    def get_rng_state(self, device=None):
        import torch

        return torch.get_rng_state()

    def set_rng_state(self, state, device=None) -> None:
        import torch

        torch.set_rng_state(state)

    def manual_seed(self, seed: int) -> None:
        import torch

        torch.manual_seed(seed)

    manual_seed_all = manual_seed


_device_module = _CPUDeviceModule("sgsd_cpu_device")


def _make_platform_cls():
    """Build the ``PlatformBase`` subclass (verl is imported only once the backend is on)."""
    from verl.plugin.platform import PlatformBase

    class PlatformCPU(PlatformBase):
        """verl platform for CPU-only hosts.

        Ray bookkeeping: verl's resource pools (single_controller/ray/base.py) reserve one
        accelerator per worker and check the cluster's ``GPU`` count, so this platform
        names Ray's ``GPU`` resource and the run starts Ray with logical GPUs
        (``ray_kwargs.ray_init.num_gpus``): they are scheduling slots, not devices.
        """

        device_name = "cpu"
        vendor_name = "cpu"
        device_module = _device_module
        set_device = synchronize = set_allocator_settings = empty_cache = _ignore
        profiler_start = profiler_stop = _ignore

        def is_available(self) -> bool:
            return True

        def current_device(self):
            # A device spec for ``tensor.to(...)`` / ``torch.device(...)``; an int would
            # mean cuda:<int> there.
            return "cpu"

        def device_count(self) -> int:
            return 1

        def manual_seed(self, seed: int) -> None:
            _device_module.manual_seed(seed)

        manual_seed_all = manual_seed

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"  # what Ray sets for its (logical) GPU resource

        @contextlib.contextmanager
        def nvtx_range(self, msg: str):
            yield

        def ray_resource_name(self) -> str:
            return "GPU"

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self):
            return None

    PlatformCPU.__qualname__ = "PlatformCPU"
    return PlatformCPU


# --------------------------------------------------------------------------- registrations


def _register_fsdp_engines(module: types.ModuleType) -> None:
    """workers/engine/fsdp/transformer_impl.py registers ``FSDPEngineWithLMHead`` and
    ``FSDPEngineWithValueHead`` for devices cuda/npu only, so ``EngineRegistry.new`` finds
    nothing for ``cpu``. The engines use ``get_device_name()`` throughout and run on CPU
    as they are: register the same classes for ``cpu``.

    Patch (same module): the FSDP2 path builds ``CPUOffloadPolicy(pin_memory=True)`` for
    forward-only models (the reference policy) and for ``offload_policy=True``; pinning
    needs an accelerator. The module-level name is replaced by a subclass that never pins.
    """
    from verl.workers.engine.base import EngineRegistry

    for model_type, engine_cls in (
        ("language_model", module.FSDPEngineWithLMHead),
        ("value_model", module.FSDPEngineWithValueHead),
    ):
        for backend in ("fsdp", "fsdp2"):
            if PLATFORM_NAME not in EngineRegistry._engines.get(model_type, {}).get(backend, {}):
                EngineRegistry.register(model_type=model_type, backend=backend, device=PLATFORM_NAME)(engine_cls)

    policy_cls = module.CPUOffloadPolicy
    if policy_cls is not None and not getattr(policy_cls, "_sgsd_unpinned", False):

        class UnpinnedCPUOffloadPolicy(policy_cls):
            _sgsd_unpinned = True

            def __init__(self, pin_memory: bool = False):
                super().__init__(pin_memory=False)

        module.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


def _use_plain_gloo(module: types.ModuleType) -> None:
    """utils/distributed.py:initialize_global_process_group_ray builds the backend string
    ``f"cpu:gloo,{device}:{backend}"``, i.e. ``cpu:gloo,cpu:gloo`` here, which
    ``torch.distributed.init_process_group`` rejects (duplicate device type). Default the
    ``backend`` argument to plain ``gloo`` instead. Applied to verl.utils.distributed and
    to verl.workers.engine_workers, which binds the function by name at import.
    """
    fn = getattr(module, "initialize_global_process_group_ray", None)
    if fn is None or getattr(fn, "_sgsd_plain_gloo", False):
        return

    @functools.wraps(fn)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return fn(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_global_process_group_ray._sgsd_plain_gloo = True
    module.initialize_global_process_group_ray = initialize_global_process_group_ray


def _value_model_with_config_attention(module: types.ModuleType) -> None:
    """utils/model.py:load_valuehead_model, the critic's loader, passes
    ``attn_implementation="flash_attention_2"`` explicitly, which overrides the model
    config's choice (``sdpa`` from ``critic.model.override_config``) and fails without
    flash-attn. Load the token-classification value model with the config's own
    attention instead; architectures without such a head fall back to verl's loader.
    """
    original = module.load_valuehead_model
    if getattr(original, "_sgsd_cpu", False):
        return

    @functools.wraps(original)
    def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
        from transformers import AutoModelForTokenClassification

        try:
            return AutoModelForTokenClassification.from_pretrained(
                local_path,
                dtype=torch_dtype,
                config=model_config,
                attn_implementation=getattr(model_config, "_attn_implementation", None) or "sdpa",
                trust_remote_code=trust_remote_code,
            )
        except ValueError:  # no AutoModelForTokenClassification mapping for this config
            return original(local_path, torch_dtype, model_config, trust_remote_code)

    load_valuehead_model._sgsd_cpu = True
    module.load_valuehead_model = load_valuehead_model


POLL_INTERVAL_ENV = "SGSD_CPU_POLL_INTERVAL"
DEFAULT_POLL_INTERVAL = 0.1


def _short_replay_buffer_poll(module: types.ModuleType) -> None:
    """trainer/ppo/v1/replay_buffer.py: the v1 trainers build their ``ReplayBuffer`` without
    a ``poll_interval`` (no config key reaches it), so it sleeps its default 2 s between
    looks at TransferQueue: every training step and every validation pass waits at least
    2 s for rollouts a CPU run generates in well under that. Shorten the default to
    ``$SGSD_CPU_POLL_INTERVAL`` seconds (0.1); an explicit ``poll_interval`` still wins.
    """
    cls = module.ReplayBuffer
    original = cls.__init__
    if getattr(original, "_sgsd_cpu", False):
        return
    interval = float(os.environ.get(POLL_INTERVAL_ENV, DEFAULT_POLL_INTERVAL))

    @functools.wraps(original)
    def __init__(self, *args, poll_interval: float = interval, **kwargs):
        original(self, *args, poll_interval=poll_interval, **kwargs)

    __init__._sgsd_cpu = True
    cls.__init__ = __init__  # ReplayBufferAsync inherits it


def _load_hf_replica():
    from recipe.sgsd.cpu.hf_rollout import HFReplica

    return HFReplica


def _register_hf_replica(module: types.ModuleType) -> None:
    """workers/rollout/replica.py knows vllm/sglang/trtllm only: add ``hf`` (the server side)."""
    module.RolloutReplicaRegistry.register("hf", _load_hf_replica)


def _register_hf_adapter(module: types.ModuleType) -> None:
    """workers/rollout/base.py:_ROLLOUT_REGISTRY maps (name, mode) to the in-worker adapter
    that receives weight updates; add ``hf`` (there is no register function)."""
    module._ROLLOUT_REGISTRY.setdefault(("hf", "async"), "recipe.sgsd.cpu.hf_rollout.HFServerAdapter")


# --------------------------------------------------------------------------- install


def install() -> bool:
    """Register the CPU backend in this process if it is selected; idempotent.

    Returns whether the backend is active.
    """
    global _installed
    if not cpu_backend_requested():
        return False
    if gpu_present():
        logger.warning("CPU backend requested but a CUDA GPU is present: not installing it.")
        return False
    with _install_lock:
        if _installed:
            return True
        # The alias selects verl's platform too; Ray workers inherit the variable.
        os.environ["VERL_PLATFORM"] = PLATFORM_NAME

        from verl.plugin.platform import PlatformRegistry, platform_manager

        PlatformRegistry.register(platform=PLATFORM_NAME)(_make_platform_cls())
        current = platform_manager._current_platform
        if current is not None and current.device_name != PLATFORM_NAME:
            logger.warning("verl platform was resolved as %r before the CPU backend loaded", current.device_name)

        post_import_hooks.add("verl.utils.distributed", _use_plain_gloo)
        post_import_hooks.add("verl.workers.engine_workers", _use_plain_gloo)
        post_import_hooks.add("verl.workers.engine.fsdp.transformer_impl", _register_fsdp_engines)
        post_import_hooks.add("verl.utils.model", _value_model_with_config_attention)
        post_import_hooks.add("verl.workers.rollout.replica", _register_hf_replica)
        post_import_hooks.add("verl.workers.rollout.base", _register_hf_adapter)
        post_import_hooks.add("verl.trainer.ppo.v1.replay_buffer", _short_replay_buffer_poll)
        _installed = True
    return True


install()
