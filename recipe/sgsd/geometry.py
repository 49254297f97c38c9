"""The batch geometry of a run, checked before a single worker starts.

verl 0.9.1 cuts every pass into per-rank chunks and then into micro-batches, and asserts on
the way, at step 1, after minutes of start-up (model loading, vLLM warm-up, the first
rollout). :func:`run_geometry` computes, from the composed config alone, what each rank
holds in every pass of a training step and refuses a config verl would assert on, with one
message naming the keys, their values and a value that works. What it mirrors, file by file
(``verl/`` of verl 0.9.1):

* ``trainer/ppo/v1/trainer_base.py`` ``_balance_batch``: the step's rollouts
  (``data.train_batch_size x rollout.n``) are padded to a multiple of
  lcm(DP, ``ppo_mini_batch_size x n`` [, the critic's]) and dealt to DP ranks in equal,
  contiguous chunks;
* ``workers/engine_workers.py`` ``train_mini_batch``: the global mini-batch must divide by DP;
  each rank's chunk is cut into mini-batches of ``mini / DP``;
* ``workers/engine/utils.py`` ``prepare_micro_batches``: with fixed micro-batches a rank's
  count must divide by ``*micro_batch_size_per_gpu``; with dynamic batch sizing
  (``utils/seqlen_balancing.py``) one micro-batch must hold the longest sequence;
* ``workers/engine_workers.py`` (actor init): ``actor.use_dynamic_bsz`` must equal
  ``rollout.log_prob_use_dynamic_bsz``.

The SGSD teacher pass pads its own sequence list to whole micro-batches per rank
(:func:`recipe.sgsd.teacher_pass.scoring_order`), so only its token budget can fail; its
per-rank count is reported with the rest. The FSDP strategies are checked; Megatron's
geometry (TP/PP/CP) is left to verl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sgsd.config import ConfigError

_AR = "actor_rollout_ref"


class GeometryError(ConfigError):
    """A batch geometry verl would assert on; the message names keys, values and a fix."""


@dataclass(frozen=True)
class PassGeometry:
    """What one rank holds in one pass of a training step."""

    name: str
    per_rank: int  # sequences per rank (padding included)
    batching: str  # "micro-batches of 2" or "<= 24576 tokens per micro-batch"

    def line(self) -> str:
        return f"{self.name}: {self.per_rank} per rank, {self.batching}"


@dataclass
class Geometry:
    """A run's batch geometry: ranks, rollouts, and every pass's per-rank count."""

    world: int
    dp: int
    rollouts: int  # per step, train_batch_size x n
    padded_rollouts: int  # after verl's padding to its batch multiple
    passes: list[PassGeometry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        padded = f" (verl pads to {self.padded_rollouts})" if self.padded_rollouts != self.rollouts else ""
        head = f"{self.world} ranks, DP {self.dp}, {self.rollouts} rollouts per step{padded}"
        return "; ".join([head, *(p.line() for p in self.passes)])


def run_geometry(config, sgsd_config=None, *, use_reference_policy: bool = False,
                 use_critic: bool = False) -> Geometry | None:
    """The geometry of ``config`` (a composed verl config; ``sgsd_config`` for SGSD runs).

    Raises :class:`GeometryError` listing every pass verl would assert on. Returns ``None``
    for strategies it does not model (Megatron).
    """
    actor = config[_AR].actor
    rollout = config[_AR].rollout
    if actor.get("strategy", "fsdp") not in ("fsdp", "fsdp2"):
        return None
    world = int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)
    sp = _sequence_parallel(actor)
    if world < 1 or world % sp:
        raise GeometryError(
            f"trainer.nnodes x trainer.n_gpus_per_node = {world} ranks cannot hold Ulysses sequence parallel "
            f"groups of {sp} (actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size)")
    dp = world // sp
    n = int(rollout.n)
    rollouts = int(config.data.train_batch_size) * n
    where = (f"data.train_batch_size={config.data.train_batch_size} x {_AR}.rollout.n={n} over "
             f"trainer.nnodes={config.trainer.nnodes} x trainer.n_gpus_per_node={config.trainer.n_gpus_per_node}"
             + (f" / sequence parallel {sp}" if sp > 1 else ""))
    geometry = Geometry(world=world, dp=dp, rollouts=rollouts, padded_rollouts=rollouts)
    problems = geometry.problems

    mini = int(actor.ppo_mini_batch_size) * n
    multiple = math.lcm(dp, mini)
    critic = config.get("critic") if use_critic else None
    if critic is not None:
        multiple = math.lcm(multiple, int(critic.ppo_mini_batch_size) * n)
    padded = -(-rollouts // multiple) * multiple
    geometry.padded_rollouts = padded
    per_rank = padded // dp
    student_tokens = int(config.data.max_prompt_length) + int(config.data.max_response_length)

    dynamic = bool(actor.get("use_dynamic_bsz", False))
    if bool(rollout.get("log_prob_use_dynamic_bsz", dynamic)) != dynamic:
        problems.append(
            f"{_AR}.actor.use_dynamic_bsz={dynamic} but {_AR}.rollout.log_prob_use_dynamic_bsz="
            f"{not dynamic}: verl's actor worker asserts they agree; set both to the same value "
            f"(works: {_AR}.rollout.log_prob_use_dynamic_bsz={dynamic})")

    # the actor update: mini-batches, then micro-batches (or token budgets)
    for role, section in (("actor", actor), ("critic", critic)):
        if section is None:
            continue
        prefix = f"{_AR}.actor" if role == "actor" else "critic"
        role_mini = int(section.ppo_mini_batch_size) * n
        if role_mini % dp:
            step = dp // math.gcd(dp, n)
            fix = -(-int(section.ppo_mini_batch_size) // step) * step
            problems.append(
                f"{prefix}.ppo_mini_batch_size={section.ppo_mini_batch_size} x {_AR}.rollout.n={n} = {role_mini} "
                f"sequences per mini-batch do not divide over {dp} data-parallel ranks ({where}); verl asserts in "
                f"train_mini_batch (works: {prefix}.ppo_mini_batch_size={fix})")
            continue
        geometry.passes.append(_pass(
            problems, f"{role} update mini-batch", role_mini // dp, where,
            dynamic=bool(section.get("use_dynamic_bsz", False)),
            micro_key=f"{prefix}.ppo_micro_batch_size_per_gpu", micro=section.get("ppo_micro_batch_size_per_gpu"),
            budget_key=f"{prefix}.ppo_max_token_len_per_gpu", budget=section.get("ppo_max_token_len_per_gpu"),
            sp=sp, longest=student_tokens, longest_what="data.max_prompt_length + data.max_response_length"))

    # forward-only passes over the step's rollouts
    bypass = (config.algorithm.get("rollout_correction") or {}).get("bypass_mode", False)
    log_prob = [("old log-prob", "rollout")] if not bypass else []
    if use_reference_policy:
        log_prob.append(("reference log-prob", "rollout" if uses_lora(config) else "ref"))
    for name, section_name in log_prob:
        geometry.passes.append(_log_prob_pass(problems, config, name, section_name, per_rank, where, sp,
                                              student_tokens, "data.max_prompt_length + data.max_response_length"))
    if critic is not None:
        geometry.passes.append(_pass(
            problems, "critic values", per_rank, where, dynamic=bool(critic.get("use_dynamic_bsz", False)),
            micro_key="critic.forward_micro_batch_size_per_gpu", micro=critic.get("forward_micro_batch_size_per_gpu"),
            budget_key="critic.forward_max_token_len_per_gpu", budget=critic.get("forward_max_token_len_per_gpu"),
            sp=sp, longest=student_tokens, longest_what="data.max_prompt_length + data.max_response_length"))

    # the SGSD teacher pass: <= K teachers per rollout, padded to whole micro-batches per rank
    if sgsd_config is not None and (sgsd_config.distills or sgsd_config.method == "rlsd"):
        from recipe.sgsd.teacher_pass import per_rank_multiple

        from recipe.sgsd.teacher_weights import teacher_on_reference

        frozen_reference = teacher_on_reference(sgsd_config.teacher, uses_lora(config))  # frozen / ema / periodic
        teachers = int(sgsd_config.teacher_slots)
        chunk = dp * per_rank_multiple(config, frozen_reference)
        sequences = -(-padded * teachers // chunk) * chunk
        geometry.passes.append(_log_prob_pass(
            problems, config, f"teacher pass (<= {teachers} per rollout)", "ref" if frozen_reference else "rollout",
            sequences // dp, where, sp, sgsd_config.max_teacher_prompt_length + int(config.data.max_response_length),
            "sgsd.max_teacher_prompt_length + data.max_response_length"))

    if problems:
        raise GeometryError("batch geometry verl would assert on at step 1:\n  - " + "\n  - ".join(problems))
    return geometry


def uses_lora(config) -> bool:
    """verl's ``ref_in_actor``: with a LoRA adapter the reference is the actor with it off."""
    model = config[_AR].model
    rank = (model.get("lora") or {}).get("rank", 0) or model.get("lora_rank", 0)
    return bool(rank) or model.get("lora_adapter_path") is not None


def _sequence_parallel(actor) -> int:
    fsdp = actor.get("fsdp_config") or {}
    return max(int(fsdp.get("ulysses_sequence_parallel_size", 1) or 1),
               int(actor.get("ulysses_sequence_parallel_size", 1) or 1))


def _log_prob_pass(problems, config, name, section_name, per_rank, where, sp, longest, longest_what):
    section = config[_AR][section_name]
    prefix = f"{_AR}.{section_name}"
    dynamic = section.get("log_prob_use_dynamic_bsz", config[_AR].actor.get("use_dynamic_bsz", False))
    return _pass(problems, name, per_rank, where, dynamic=bool(dynamic),
                 micro_key=f"{prefix}.log_prob_micro_batch_size_per_gpu",
                 micro=section.get("log_prob_micro_batch_size_per_gpu"),
                 budget_key=f"{prefix}.log_prob_max_token_len_per_gpu",
                 budget=section.get("log_prob_max_token_len_per_gpu"), sp=sp, longest=longest,
                 longest_what=longest_what)


def _pass(problems, name, per_rank, where, *, dynamic, micro_key, micro, budget_key, budget, sp, longest,
          longest_what) -> PassGeometry:
    if dynamic:
        if budget is not None and int(budget) * sp < longest:
            fix = -(-longest // (1024 * sp)) * 1024
            problems.append(
                f"{budget_key}={budget} tokens cannot hold one sequence of the {name} ({longest_what} = {longest}); "
                f"verl asserts in rearrange_micro_batches (works: {budget_key}={fix})")
        return PassGeometry(name, per_rank, f"<= {budget} tokens per micro-batch")
    if micro is None:  # verl's own config check names the missing key
        return PassGeometry(name, per_rank, "micro-batch size unset")
    micro = int(micro)
    if per_rank % micro:
        fix = max(d for d in range(1, micro + 1) if per_rank % d == 0)
        problems.append(
            f"{micro_key}={micro} does not divide the {per_rank} sequences each rank holds in the {name} ({where}); "
            f"verl asserts in prepare_micro_batches (works: {micro_key}={fix}, or dynamic batch sizing: "
            f"{_AR}.actor.use_dynamic_bsz=true with token budgets)")
    return PassGeometry(name, per_rank, f"micro-batches of {micro}")
