"""Typed, validated SGSD settings: the ``sgsd:`` section of the recipe config.

Built from a plain mapping (``OmegaConf.to_container(cfg.sgsd)``) so the library stays
free of Hydra/verl. Every error names the full key (``sgsd.ablation.loss_type``), the bad
value and what is allowed; unknown keys are errors too (a typo must not silently
fall back to a default).
"""

from __future__ import annotations

import math

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, get_args, get_origin, get_type_hints

from sgsd.checks import raising
from sgsd.llm.base import GenerationSettings
from sgsd.objective import DISTRIBUTION_LOSSES, LOSS_TYPES, ObjectiveConfig
from sgsd.retrieval import RetrievalConfig
from sgsd.sd_objectives import (AGGREGATIONS, GATES, SDAR_DIVERGENCES, RLSDConfig, SDARConfig,
                                SkillSDConfig)
from sgsd.skill_strategies import STRATEGIES
from sgsd.teacher_schedule import TEACHERS, TeacherSchedule
from sgsd.token_mask import TokenMaskConfig

__all__ = ["ConfigError", "AblationSettings", "METHODS", "RLSDSettings", "SDARSettings", "SGSDConfig",
           "SkillSDSettings", "SkillSourceSettings", "UpdateSettings"]

# sgsd.method: the family one key apart (docs/methods.md). skill_sd / sdar / rlsd distil ONE teacher
# conditioned on the method's own skill source, on a GRPO backbone (rollout.n > 1).
METHODS: tuple[str, ...] = ("sgsd", "skill_sd", "sdar", "rlsd")
# What each sibling method reads by default: (skill source, retrieval strategy, teacher context)
_METHOD_SKILLS = {"skill_sd": ("summaries", "ucb", "skill_sd"), "sdar": ("files", "keyword", "sdar"),
                  "rlsd": ("files", "keyword", "sdar")}


class ConfigError(ValueError):
    """An invalid ``sgsd.*`` setting; the message names the key."""


@dataclass(frozen=True)
class AblationSettings:
    """The paper's ablation switches (``sgsd.ablation.*``)."""

    use_token_mask: bool = True
    use_clip: bool = True
    use_threshold: bool = True
    use_polarity: bool = True
    loss_type: str = "gated"

    def __post_init__(self) -> None:
        _choice("sgsd.ablation.loss_type", self.loss_type, LOSS_TYPES)


@dataclass(frozen=True)
class UpdateSettings:
    """Online bank evolution (``sgsd.update.*``, paper Alg. 4)."""

    enable: bool = True
    freq: int = 25
    success_threshold: float = 0.8
    max_new_items: int = 5
    capacity: int = 30
    writer: str = "policy"
    max_memories: int = 32
    max_new_tokens: int = 2048
    temperature: float = 0.6
    top_p: float = 0.95
    enable_thinking: bool = False
    timeout_s: float = 600.0
    max_completion_chars: int = 6000
    seed: int = 0
    track_utility: bool = True

    def __post_init__(self) -> None:
        _check("sgsd.update.freq", self.freq, self.freq >= 1, ">= 1")
        _check("sgsd.update.max_memories", self.max_memories, self.max_memories >= 1, ">= 1")
        with _out_of_range("sgsd.update"):  # the skill writer's sampling, checked where it is held
            GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)
        _check("sgsd.update.timeout_s", self.timeout_s, self.timeout_s > 0, "> 0")
        _check("sgsd.update.max_completion_chars", self.max_completion_chars, self.max_completion_chars >= 100,
               ">= 100")
        if not self.writer:
            raise ConfigError("sgsd.update.writer is empty: 'policy' (the model being trained) or an LLM spec "
                              "such as transformers:/path, vllm:NAME, openai:http://host/v1#MODEL")
        _check("sgsd.update.success_threshold", self.success_threshold, 0.0 <= self.success_threshold <= 1.0,
               "in [0, 1]")
        _check("sgsd.update.max_new_items", self.max_new_items, self.max_new_items >= 0, ">= 0")
        _check("sgsd.update.capacity", self.capacity, self.capacity >= 0, ">= 0")


@dataclass(frozen=True)
class SkillSourceSettings:
    """Where the sibling methods' teacher skills come from (``sgsd.skills.*``); SGSD reads its bank.

    ``source``: ``summaries`` (Skill-SD: one JSON summary per finished rollout, written by
    ``sgsd.update.writer``, kept per problem) or ``files`` (SDAR: static skill files, ``files``);
    ``strategy``: which of a problem's candidate skills the teacher sees
    (:mod:`sgsd.skill_strategies`). ``null``: the method's own (skill_sd: summaries + ucb;
    sdar, rlsd: files + keyword).
    """

    source: str | None = None
    files: str = "math"  # a folder of .md/.txt skills, a JSON list of {name, text, keywords}, or a shipped name
    strategy: str | None = None
    top_k: int = 1  # skills shown per teacher prompt (embedding, random, ucb)
    ucb_exploration: float = 1.4142135623730951  # UCB1's c (sqrt 2)
    max_per_task: int = 8  # summaries kept per problem (oldest dropped first)
    seed: int = 0  # random strategy

    def __post_init__(self) -> None:
        if self.source is not None:
            _choice("sgsd.skills.source", self.source, ("summaries", "files"))
        if self.strategy is not None:
            _choice("sgsd.skills.strategy", self.strategy, STRATEGIES)
        if not self.files:
            raise ConfigError("sgsd.skills.files is empty: a skill folder, a JSON skill list, or a shipped name (math)")
        _check("sgsd.skills.top_k", self.top_k, self.top_k >= 1, ">= 1")
        _check("sgsd.skills.ucb_exploration", self.ucb_exploration, self.ucb_exploration >= 0, ">= 0")
        _check("sgsd.skills.max_per_task", self.max_per_task, self.max_per_task >= 1, ">= 1")


@dataclass(frozen=True)
class SkillSDSettings:
    """Skill-SD's L_SDL clamps (``sgsd.skill_sd.*``; :class:`sgsd.sd_objectives.SkillSDConfig`)."""

    k3_clip: float = 20.0
    log_ratio_clip: float = 10.0


@dataclass(frozen=True)
class SDARSettings:
    """SDAR's gate and divergence (``sgsd.sdar.*``; :class:`sgsd.sd_objectives.SDARConfig`).
    ``forward_kl`` / ``jsd`` read the teacher's top-k (``sgsd.teacher_topk``, ``sgsd.divergence_clip``,
    ``sgsd.jsd_beta``)."""

    beta: float = 5.0
    gate: str = "gap"
    entropy_beta: float = 5.0
    entropy_center: float = 1.0
    divergence: str = "reverse_kl"

    def __post_init__(self) -> None:
        _choice("sgsd.sdar.gate", self.gate, GATES)
        _choice("sgsd.sdar.divergence", self.divergence, SDAR_DIVERGENCES)


@dataclass(frozen=True)
class RLSDSettings:
    """RLSD's advantage reweighting (``sgsd.rlsd.*``; :class:`sgsd.sd_objectives.RLSDConfig`)."""

    lam: float = 0.5
    decay_steps: int = 100
    clip_eps: float = 0.2


@dataclass(frozen=True)
class AgentSettings:
    """Multi-turn episodes (``sgsd.agent.*``): the agent loop that plays environment rows
    (``recipe.sgsd.agent_loop``, rows written by ``scripts/prepare_data.py --dataset sokoban``).

    ``max_turn_tokens``: each assistant turn's generation cap (also capped by what is left of
    ``data.max_response_length``, which bounds the whole trajectory: every assistant turn and
    every observation)."""

    max_turn_tokens: int = 256

    def __post_init__(self) -> None:
        _check("sgsd.agent.max_turn_tokens", self.max_turn_tokens, self.max_turn_tokens >= 1, ">= 1")


@dataclass(frozen=True)
class SGSDConfig:
    """Everything SGSD adds to a verl run. Defaults are the paper's (Tab. 11-12)."""

    bank_path: str = "qwen3_1.7b"
    bank_output_dir: str | None = None
    encoder: str = "all-MiniLM-L6-v2"
    encoder_device: str = "auto"
    top_k: int = 8
    alpha_temperature: float = 1.0
    tau: float = 1.0
    clip: float = 3.0
    threshold: float = 0.05
    eps: float = 1e-6
    outcome_threshold: float = 0.0
    teacher: str = "live"  # live | frozen | ema | periodic (TEACHERS)
    teacher_ema_decay: float = 0.999  # ema: theta_T <- d theta_T + (1 - d) theta_S after every actor step
    teacher_period: int = 50  # periodic: theta_T <- theta_S after every actor step s with s % period == 0
    student_thinking: bool = False
    teacher_thinking: bool = True
    prefill_empty_think: bool = False
    logprob_temperature: float = 1.0
    max_teacher_prompt_length: int = 2048
    reference_answer_in_teacher: bool = False
    teacher_context: str = "skills"
    distill_coef: float = 1.0
    # hybrid mode (rollout.n > 1): verl's policy loss (with its KL term) + distill_coef x the
    # distillation term; false: the distillation term alone (SDAR's OPSD baseline)
    policy_gradient: bool = True
    # The teacher's top-k distribution (ids + full-vocabulary log-probs per response position),
    # read by the distribution loss types (sgsd.ablation.loss_type=local_gated | fkl | jsd); 0: the
    # sampled token's log-prob only (gated, sampled_rkl).
    teacher_topk: int = 0
    divergence_clip: float | None = None  # fkl / jsd: upper clip of each id's term (release OPSD: 0.05)
    jsd_beta: float = 0.5
    record_buffer_size: int = 8192
    method: str = "sgsd"  # sgsd | skill_sd | sdar | rlsd (METHODS)
    aggregation: str | None = None  # problem_mean | token_mean; null: sgsd problem_mean, the others token_mean
    skills: SkillSourceSettings = field(default_factory=SkillSourceSettings)  # the sibling methods' skills
    skill_sd: SkillSDSettings = field(default_factory=SkillSDSettings)
    sdar: SDARSettings = field(default_factory=SDARSettings)
    rlsd: RLSDSettings = field(default_factory=RLSDSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)  # multi-turn episodes (agent loop)
    mask: TokenMaskConfig = field(default_factory=TokenMaskConfig)  # sgsd.mask.*: token classes removed
    ablation: AblationSettings = field(default_factory=AblationSettings)
    update: UpdateSettings = field(default_factory=UpdateSettings)

    def __post_init__(self) -> None:
        with _out_of_range("sgsd", {"temperature": "alpha_temperature"}):  # the retrieval's K and T
            RetrievalConfig(top_k=self.top_k, temperature=self.alpha_temperature)
        with _out_of_range("sgsd"):  # the objective's tau, clip, threshold and eps
            self.objective_config()
        _check("sgsd.logprob_temperature", self.logprob_temperature, self.logprob_temperature > 0, "> 0")
        _check("sgsd.max_teacher_prompt_length", self.max_teacher_prompt_length,
               self.max_teacher_prompt_length >= 16, ">= 16")
        _check("sgsd.distill_coef", self.distill_coef, self.distill_coef >= 0, ">= 0")
        _check("sgsd.teacher_topk", self.teacher_topk, self.teacher_topk >= 0, ">= 0")
        _choice("sgsd.method", self.method, METHODS)
        if self.aggregation is not None:
            _choice("sgsd.aggregation", self.aggregation, AGGREGATIONS)
        if self.sibling:
            self._check_sibling()
            return self._check_common()
        if self.aggregation == "token_mean":
            raise ConfigError("sgsd.aggregation=token_mean applies to sgsd.method=skill_sd | sdar; SGSD's objective is "
                              "a mean over each problem's teachers and tokens (eq. 15): leave it null or problem_mean")
        distribution = self.ablation.loss_type in DISTRIBUTION_LOSSES
        if distribution and self.teacher_topk == 0:
            raise ConfigError(f"sgsd.ablation.loss_type={self.ablation.loss_type} reads the teacher's top-k "
                              "distribution: set sgsd.teacher_topk >= 1 (the paper's Fig. 3a uses 100)")
        if not distribution and self.teacher_topk:
            raise ConfigError(f"sgsd.teacher_topk={self.teacher_topk} is read only by the loss types "
                              f"{', '.join(DISTRIBUTION_LOSSES)}; sgsd.ablation.loss_type={self.ablation.loss_type} "
                              "uses the sampled token alone: set sgsd.teacher_topk=0")
        self._check_common()

    def _check_common(self) -> None:
        _check("sgsd.record_buffer_size", self.record_buffer_size, self.record_buffer_size >= 1, ">= 1")
        _choice("sgsd.teacher", self.teacher, TEACHERS)
        with _out_of_range("sgsd", {"decay": "teacher_ema_decay", "period": "teacher_period"}):
            self.teacher_schedule()  # the EMA decay and the copy period
        _choice("sgsd.teacher_context", self.teacher_context, ("skills", "answer", "answer_skills"))
        if not self.bank_path:
            raise ConfigError("sgsd.bank_path is empty: give a skill bank JSON path or a shipped name (qwen3_1.7b)")

    def _check_sibling(self) -> None:
        m = f"sgsd.method={self.method}"
        if self.teacher_context != "skills":
            raise ConfigError(f"sgsd.teacher_context={self.teacher_context} is an SGSD setting; {m} conditions its "
                              f"one teacher on its own context ({_METHOD_SKILLS[self.method][2]}): leave it at skills")
        if self.reference_answer_in_teacher:
            raise ConfigError(f"sgsd.reference_answer_in_teacher=true is an SGSD ablation (Fig. 3d); {m} does not "
                              "read it")
        if self.ablation.loss_type != "gated":
            raise ConfigError(f"sgsd.ablation.loss_type={self.ablation.loss_type} is an SGSD setting; {m} has its own "
                              "loss (sgsd.sdar.divergence for SDAR's forward_kl / jsd)")
        with _out_of_range("sgsd.skill_sd"):
            self.skill_sd_config()
        with _out_of_range("sgsd.sdar"):
            self.sdar_config()
        with _out_of_range("sgsd.rlsd"):
            self.rlsd_config()
        if self.uses_distribution and self.teacher_topk == 0:
            raise ConfigError(f"sgsd.sdar.divergence={self.sdar.divergence} reads the teacher's top-k distribution: "
                              "set sgsd.teacher_topk >= 1 (100, as for SGSD's Fig. 3c)")
        if not self.uses_distribution and self.teacher_topk:
            why = (f"sgsd.sdar.divergence={self.sdar.divergence}" if self.method == "sdar" else m)
            raise ConfigError(f"sgsd.teacher_topk={self.teacher_topk} is not read: {why} uses the sampled token alone; "
                              "set sgsd.teacher_topk=0")
        if self.method == "rlsd" and not self.policy_gradient:
            raise ConfigError("sgsd.policy_gradient=false leaves sgsd.method=rlsd nothing to train: RLSD reweights "
                              "the policy gradient's advantages")
        if self.skill_source == "summaries" and self.skill_strategy == "keyword":
            raise ConfigError("sgsd.skills.strategy=keyword reads the keywords of skill files; trajectory summaries "
                              "(sgsd.skills.source=summaries) have none: use ucb, embedding, random or full")

    # ------------------------------------------------------------ the method's pieces
    @property
    def sibling(self) -> bool:
        """Skill-SD, SDAR or RLSD: one teacher on the method's own skills (not SGSD's bank pairs)."""
        return self.method != "sgsd"

    @property
    def skill_source(self) -> str:
        """``bank`` (SGSD), ``summaries`` or ``files``."""
        if not self.sibling:
            return "bank"
        return self.skills.source or _METHOD_SKILLS[self.method][0]

    @property
    def skill_strategy(self) -> str | None:
        return None if not self.sibling else self.skills.strategy or _METHOD_SKILLS[self.method][1]

    @property
    def context(self) -> str:
        """The teacher context (:mod:`sgsd.teacher_contexts`): ``teacher_context`` for SGSD, the method's else."""
        return _METHOD_SKILLS[self.method][2] if self.sibling else self.teacher_context

    @property
    def teacher_slots(self) -> int:
        """K of the ``[B, K]`` teacher record: SGSD's top_k, 1 for one-teacher contexts."""
        return self.top_k if self.context == "skills" else 1

    @property
    def loss_aggregation(self) -> str:
        return self.aggregation or ("problem_mean" if not self.sibling else "token_mean")

    @property
    def uses_distribution(self) -> bool:
        """The loss reads the teacher's top-k distribution (the logits hook in the update)."""
        if self.sibling:
            return self.method == "sdar" and self.sdar.divergence != "reverse_kl"
        return self.ablation.loss_type in DISTRIBUTION_LOSSES

    def hybrid(self, rollout_n: int) -> bool:
        """Does the actor loss add verl's policy loss (GRPO with n > 1) to the distillation term?"""
        return rollout_n > 1 and self.policy_gradient

    @property
    def distills(self) -> bool:
        """The actor loss has a distillation term (RLSD reweights advantages instead)."""
        return self.distill_coef > 0 and self.method != "rlsd"

    def skill_sd_config(self) -> SkillSDConfig:
        s = self.skill_sd
        return SkillSDConfig(k3_clip=s.k3_clip, log_ratio_clip=s.log_ratio_clip,
                             aggregation=self.loss_aggregation)  # type: ignore[arg-type]

    def sdar_config(self) -> SDARConfig:
        s = self.sdar
        return SDARConfig(beta=s.beta, gate=s.gate, entropy_beta=s.entropy_beta,  # type: ignore[arg-type]
                          entropy_center=s.entropy_center, divergence=s.divergence,  # type: ignore[arg-type]
                          jsd_beta=self.jsd_beta, divergence_clip=self.divergence_clip,
                          aggregation=self.loss_aggregation)  # type: ignore[arg-type]

    def rlsd_config(self) -> RLSDConfig:
        r = self.rlsd
        return RLSDConfig(lam=r.lam, decay_steps=r.decay_steps, clip_eps=r.clip_eps)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> SGSDConfig:
        """Build from a plain mapping; unknown keys and wrong types name the key."""
        return _build(cls, data or {}, "sgsd")

    def teacher_schedule(self) -> TeacherSchedule:
        return TeacherSchedule(self.teacher, decay=self.teacher_ema_decay, period=self.teacher_period)

    def objective_config(self) -> ObjectiveConfig:
        a = self.ablation
        return ObjectiveConfig(
            tau=self.tau, clip=self.clip, threshold=self.threshold, eps=self.eps,
            use_token_mask=a.use_token_mask, use_clip=a.use_clip, use_threshold=a.use_threshold,
            use_polarity=a.use_polarity, loss_type=a.loss_type,  # type: ignore[arg-type]
            divergence_clip=self.divergence_clip, jsd_beta=self.jsd_beta,
        )


def _check(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range: must be {allowed}")


def _out_of_range(prefix: str, keys: Mapping[str, str] | None = None):
    """A library object's own check (:class:`sgsd.checks.SettingError`) worded with the config key."""
    keys = keys or {}
    return raising(ConfigError, lambda exc: f"{prefix}.{keys.get(exc.name, exc.name)}={exc.value!r} is out of range: "
                                            f"must be {exc.rule}")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {prefix}.{unknown[0]} (valid keys under {prefix}: {', '.join(known)})")
    kwargs = {}
    for name, value in data.items():
        key, hint = f"{prefix}.{name}", hints[name]
        if is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, key)
        else:
            kwargs[name] = _coerce(key, value, hint, known[name].default)
    with _out_of_range(prefix):  # a library object's own check (TokenMaskConfig...), worded with its key
        return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any, default: Any) -> Any:
    allowed = get_args(hint) if get_origin(hint) is not None else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key} must not be null" + ("" if default is MISSING else f" (default {default!r})"))
    if bool in allowed:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # inf / nan passed every range check (inf > 0)
            raise ConfigError(f"{key}={value!r} is out of range: must be a finite number")
        return float(value)
    if str in allowed and isinstance(value, str):
        return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed if t is not type(None))
    raise ConfigError(f"{key}={value!r} must be {names}, got {type(value).__name__}")
