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
from sgsd.teacher_schedule import TEACHERS, TeacherSchedule
from sgsd.token_mask import TokenMaskConfig

__all__ = ["ConfigError", "AblationSettings", "UpdateSettings", "SGSDConfig"]


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
    # The teacher's top-k distribution (ids + full-vocabulary log-probs per response position),
    # read by the distribution loss types (sgsd.ablation.loss_type=local_gated | fkl | jsd); 0: the
    # sampled token's log-prob only (gated, sampled_rkl).
    teacher_topk: int = 0
    divergence_clip: float | None = None  # fkl / jsd: upper clip of each id's term (release OPSD: 0.05)
    jsd_beta: float = 0.5
    record_buffer_size: int = 8192
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
        distribution = self.ablation.loss_type in DISTRIBUTION_LOSSES
        if distribution and self.teacher_topk == 0:
            raise ConfigError(f"sgsd.ablation.loss_type={self.ablation.loss_type} reads the teacher's top-k "
                              "distribution: set sgsd.teacher_topk >= 1 (the paper's Fig. 3a uses 100)")
        if not distribution and self.teacher_topk:
            raise ConfigError(f"sgsd.teacher_topk={self.teacher_topk} is read only by the loss types "
                              f"{', '.join(DISTRIBUTION_LOSSES)}; sgsd.ablation.loss_type={self.ablation.loss_type} "
                              "uses the sampled token alone: set sgsd.teacher_topk=0")
        _check("sgsd.record_buffer_size", self.record_buffer_size, self.record_buffer_size >= 1, ">= 1")
        _choice("sgsd.teacher", self.teacher, TEACHERS)
        with _out_of_range("sgsd", {"decay": "teacher_ema_decay", "period": "teacher_period"}):
            self.teacher_schedule()  # the EMA decay and the copy period
        _choice("sgsd.teacher_context", self.teacher_context, ("skills", "answer", "answer_skills"))
        if not self.bank_path:
            raise ConfigError("sgsd.bank_path is empty: give a skill bank JSON path or a shipped name (qwen3_1.7b)")

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
