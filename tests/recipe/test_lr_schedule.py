"""``optim.lr_scheduler_type=linear`` (recipe/sgsd/lr_schedule.py): the release's linear decay
to 0, accepted by verl's optimizer config and built by its FSDP engine; on the real trainer in
tests/recipe/test_sgsd_e2e.py (the live run decays its rate)."""

from __future__ import annotations

import types

import pytest
import torch

from recipe.sgsd.lr_schedule import linear_factor, linear_schedule_with_warmup


def _rates(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_linear_decay_to_zero_with_and_without_warmup():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    assert _rates(linear_schedule_with_warmup(opt, 0, 4), opt, 5) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    opt = torch.optim.AdamW([param], lr=2.0)
    assert _rates(linear_schedule_with_warmup(opt, 2, 6, min_lr_ratio=0.5), opt, 7) == pytest.approx(
        [0.0, 1.0, 2.0, 1.75, 1.5, 1.25, 1.0])
    assert linear_factor(100, 2, 6) == 0.0  # held at the floor after the end
    with pytest.raises(ValueError, match="needs the run's total_training_steps"):
        linear_schedule_with_warmup(opt, 0, -1)


def test_verl_accepts_linear_in_its_optimizer_config_and_its_engine_builds_it():
    import recipe.sgsd.plugin  # noqa: F401  (the registrations every verl process gets)
    from verl.workers.config.optimizer import FSDPOptimizerConfig
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    config = FSDPOptimizerConfig(lr=1.0, lr_scheduler_type="linear", total_training_steps=4, min_lr_ratio=0.0)
    assert config.lr_scheduler_type == "linear"
    with pytest.raises(AssertionError):  # any other unknown type is still verl's refusal
        FSDPOptimizerConfig(lr=1.0, lr_scheduler_type="step")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    scheduler = FSDPEngine._build_lr_scheduler(types.SimpleNamespace(optimizer_config=config, rank=0), opt)
    assert _rates(scheduler, opt, 5) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    constant = FSDPOptimizerConfig(lr=1.0, total_training_steps=4)
    opt = torch.optim.AdamW([param], lr=1.0)
    scheduler = FSDPEngine._build_lr_scheduler(types.SimpleNamespace(optimizer_config=constant, rank=0), opt)
    assert _rates(scheduler, opt, 3) == [1.0, 1.0, 1.0]  # verl's own
