"""verl plugin entry point: what every verl process needs to know about SGSD.

verl 0.9.1 imports this module in every process — driver, TaskRunner, FSDP workers,
reward workers, agent-loop workers — through the ``verl.plugins`` entry point that
``pip install`` registers (import errors there are swallowed at debug level), and again
through ``VERL_USE_EXTERNAL_MODULES=recipe.sgsd.plugin``, which the launch scripts set so
an import error fails loudly. It registers:

* the advantage estimator ``sgsd`` (``algorithm.adv_estimator=sgsd``),
* the v1 trainer ``sgsd`` (teacher pass + the actor-side loss; chosen by ``main_sgsd``),
* the reward manager ``sgsd`` (the hook that feeds rollout records to the skill updater),
* the agent loop ``sgsd_episode`` (multi-turn environment episodes, :mod:`recipe.sgsd.agent_loop`),
  once verl imports its agent loop module,
* ``actor.optim.lr_scheduler_type=linear`` in verl's FSDP engine (the release's schedule,
  :mod:`recipe.sgsd.lr_schedule`), once verl imports the engine,
* the SGSD loss on the reference engine too (``set_loss_fn``), which the teacher's top-k
  distribution from a frozen reference model needs (:func:`recipe.sgsd.loss.loss_reaches_the_reference`),
* on CPU-only machines with ``VERL_PLATFORM=cpu``, the CPU backend (a no-op elsewhere).
"""

from __future__ import annotations

import numpy as np
import torch

from verl.trainer.ppo import core_algos

NAME = "sgsd"


@core_algos.register_adv_est(NAME)
def compute_sgsd_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, config=None,
                           index: np.ndarray | None = None, **kwargs):
    """SGSD's policy-gradient part: none with one rollout per problem, GRPO's with several.

    With ``rollout.n == 1`` every uid group has one member and the update is the SGSD loss
    alone, so advantages are zero (GRPO would return the raw reward for a singleton
    group, turning the run into REINFORCE). With ``n > 1`` (hybrid mode) this is exactly
    GRPO's outcome advantage; the actor loss adds ``sgsd.distill_coef`` times SGSD.
    """
    if index is None or len(set(index.tolist())) == len(index):
        zeros = torch.zeros_like(token_level_rewards)
        return zeros, zeros
    norm = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
    return core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=token_level_rewards, response_mask=response_mask, index=index,
        norm_adv_by_std_in_grpo=norm, config=config,
    )


def _register_components() -> None:
    from recipe.sgsd.cpu import backend  # noqa: F401  (registers only when VERL_PLATFORM=cpu)
    from recipe.sgsd.import_hooks import post_import_hooks
    from recipe.sgsd.lr_schedule import accept_linear_in_config, add_linear_scheduler

    post_import_hooks.add("verl.workers.config.optimizer", accept_linear_in_config)
    post_import_hooks.add("verl.workers.engine.fsdp.transformer_impl", add_linear_scheduler)
    from recipe.sgsd.loss import loss_reaches_the_reference

    post_import_hooks.add("verl.workers.engine_workers", loss_reaches_the_reference)
    post_import_hooks.add("verl.experimental.agent_loop.agent_loop", _register_agent_loop)
    from recipe.sgsd import reward_hook  # noqa: F401  (reward manager "sgsd")
    from recipe.sgsd import trainer  # noqa: F401  (v1 trainer "sgsd")


def _register_agent_loop(_module) -> None:
    import importlib

    importlib.import_module("recipe.sgsd.agent_loop")  # @register("sgsd_episode")


_register_components()
