"""``optim.lr_scheduler_type=linear`` for verl 0.9.1's FSDP engine: warm-up, then linear decay.

The official SGSD release trained with its trainer's defaults, a linear decay of the learning
rate to 0 (Hugging Face's ``get_linear_schedule_with_warmup``); verl's FSDP engine knows only
``constant`` and ``cosine``, and ``FSDPOptimizerConfig`` asserts one of them. Once verl imports
those modules (:mod:`recipe.sgsd.import_hooks`) the plugin lets the config hold ``linear`` and
wraps ``FSDPEngine._build_lr_scheduler`` so that ``linear`` builds
:func:`linear_schedule_with_warmup` from the same optimizer settings (``lr_warmup_steps`` /
``lr_warmup_steps_ratio``, ``total_training_steps``, ``min_lr_ratio``); every other type is
verl's own, untouched.
"""

from __future__ import annotations

import types

import torch

LINEAR = "linear"


def linear_factor(step: int, warmup: int, total: int, min_lr_ratio: float = 0.0) -> float:
    """The learning-rate multiplier at optimizer ``step`` (0-based): ``step / warmup`` during
    warm-up, then a straight line from 1 to ``min_lr_ratio`` at ``total``, held after."""
    if step < warmup:
        return step / max(1, warmup)
    remaining = max(0.0, (total - step) / max(1, total - warmup))
    return min_lr_ratio + (1.0 - min_lr_ratio) * remaining


def linear_schedule_with_warmup(optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int,
                                min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    if num_training_steps <= 0:
        raise ValueError(f"a linear learning-rate decay needs the run's total_training_steps, got {num_training_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_factor(step, num_warmup_steps, num_training_steps, min_lr_ratio))


def add_linear_scheduler(module: types.ModuleType) -> None:
    """Wrap ``FSDPEngine._build_lr_scheduler`` in verl's FSDP engine module (idempotent)."""
    engine = module.FSDPEngine
    original = engine._build_lr_scheduler
    if getattr(original, "_sgsd_linear", False):
        return

    def _build_lr_scheduler(self, optimizer):
        config = self.optimizer_config
        if config.lr_scheduler_type != LINEAR:
            return original(self, optimizer)
        total = config.total_training_steps
        warmup = config.lr_warmup_steps
        if warmup <= 0:
            warmup = int(config.lr_warmup_steps_ratio * total)
        return linear_schedule_with_warmup(optimizer, warmup, total, config.min_lr_ratio)

    _build_lr_scheduler._sgsd_linear = True
    engine._build_lr_scheduler = _build_lr_scheduler


def accept_linear_in_config(module: types.ModuleType) -> None:
    """Let ``FSDPOptimizerConfig`` hold ``lr_scheduler_type=linear`` (it asserts constant or
    cosine): validated as ``constant``, then set back (a field verl declares mutable)."""
    config_cls = module.FSDPOptimizerConfig
    original = config_cls.__post_init__
    if getattr(original, "_sgsd_linear", False):
        return

    def __post_init__(self):
        if self.lr_scheduler_type != LINEAR:
            return original(self)
        object.__setattr__(self, "lr_scheduler_type", "constant")
        try:
            return original(self)
        finally:
            object.__setattr__(self, "lr_scheduler_type", LINEAR)

    __post_init__._sgsd_linear = True
    config_cls.__post_init__ = __post_init__
