"""The teacher pass (paper Alg. 1 lines 5-9) as one function of the rollouts, and the
record it hands the actor loss.

For a batch of B student rollouts, :class:`TeacherPass` retrieves teachers once for all
problems, asks :func:`plan_teachers` for one token sequence per present teacher (teacher
prompt + the SAME response ids), has an injected :class:`TeacherScorer` score them all in
one call, and returns a :class:`TeacherPassResult` whose :class:`TeacherFields` is the
typed record of the ``sgsd_*`` batch fields. The scorer is verl's worker group in the
trainer (:mod:`recipe.sgsd.trainer`) and a plain forward of a real model in tests.

:func:`read_loss_inputs` is the ONE reader of that record: the actor loss reads its
micro-batch with it, and the pass computes the batch's support statistics with it, so the
two cannot disagree on layout.

No verl import here (torch, tensordict and the ``sgsd`` library only): the whole pass runs
in-process on a real tiny model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Protocol

import torch
from tensordict import TensorDict

from recipe.sgsd.distribution import uniform_topk
from sgsd.config import SGSDConfig
from sgsd.objective import sgsd_objective, support_quantiles
from sgsd.sd_objectives import RLSDConfig, rlsd_advantages, rlsd_lambda, rlsd_weight
from sgsd.prompts import ChatFormat, guidance_block, teacher_prompt_ids
from sgsd.retrieval import ProblemRetrieval, TeacherPair
from sgsd.teacher_contexts import TeacherContext, TeacherGuidance, teacher_context
from sgsd.token_mask import TokenMaskBuilder


# ----------------------------------------------------------------------------- the record
@dataclass
class TeacherFields:
    """What the teacher pass adds to each rollout of the batch (the ``sgsd_*`` fields).

    Per rollout ``i`` with ``T_i`` response tokens and ``K = sgsd.top_k`` (1 for the
    answer-conditioned teachers) teacher slots:

    * ``teacher_log_probs`` ``[T_i, K]`` log-probs of the response tokens under each teacher;
      an absent slot holds the student's own (a zero gap) and weight 0;
    * ``token_mask`` ``[T_i]`` ``m_t`` (0/1), not yet ANDed with the response mask;
    * ``alpha`` ``[B, K]`` teacher weights (eq. 6), 0 = absent teacher;
    * ``outcome_sign`` ``[B]`` +1 verified success, -1 failure (eq. 9);
    * with ``sgsd.teacher_topk = k > 0`` (the distribution loss types), ``topk_ids`` (int32)
      and ``topk_log_probs`` ``[T_i, K, k]``: each teacher's k most likely ids per position
      and their full-vocabulary log-probs; an absent slot holds ids 0..k-1 at ``log(1/k)``.
    """

    teacher_log_probs: list[torch.Tensor]
    token_mask: list[torch.Tensor]
    alpha: torch.Tensor
    outcome_sign: torch.Tensor
    topk_ids: list[torch.Tensor] | None = None
    topk_log_probs: list[torch.Tensor] | None = None

    PREFIX = "sgsd_"

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The batch keys every record has, spelled once: ``sgsd_teacher_log_probs``, ..."""
        return tuple(cls.PREFIX + f.name for f in fields(cls) if f.default is MISSING)

    @classmethod
    def topk_keys(cls) -> tuple[str, str]:
        """``sgsd_topk_ids``, ``sgsd_topk_log_probs``: present when the teacher's top-k was asked for."""
        return cls.PREFIX + "topk_ids", cls.PREFIX + "topk_log_probs"

    def to_tensordict(self) -> TensorDict:
        """verl's layout: per-token fields as jagged nested tensors, the rest dense."""
        values = {"teacher_log_probs": jagged(self.teacher_log_probs), "token_mask": jagged(self.token_mask),
                  "alpha": self.alpha, "outcome_sign": self.outcome_sign}
        if self.topk_ids is not None:
            values.update(topk_ids=jagged(self.topk_ids), topk_log_probs=jagged(self.topk_log_probs))
        return TensorDict({self.PREFIX + k: v for k, v in values.items()}, batch_size=[len(self.alpha)])


@dataclass
class LossInputs:
    """The record padded to ``[B, ..., T]`` for :func:`sgsd.objective.sgsd_objective`."""

    teacher: torch.Tensor  # [B, K, T]
    token_mask: torch.Tensor  # [B, T], m_t AND the response mask
    alpha: torch.Tensor  # [B, K]
    outcome_sign: torch.Tensor  # [B]
    response_mask: torch.Tensor  # [B, T]
    student: torch.Tensor | None = None  # [B, T], when read from a key (the old log-probs)


def read_loss_inputs(data: TensorDict, width: int, dtype: torch.dtype = torch.float32,
                     student_key: str | None = None) -> LossInputs:
    """Pad the ``sgsd_*`` fields (and ``response_mask``, and ``student_key`` if given) of a
    batch or micro-batch to ``width`` response positions."""
    teacher_key, mask_key, alpha_key, sign_key = TeacherFields.keys()
    per_token = ["response_mask", teacher_key, mask_key] + ([student_key] if student_key else [])
    padded = data.select(*per_token).to_padded_tensor()
    response_mask = fit_width(padded["response_mask"], width).to(dtype)
    return LossInputs(
        teacher=fit_width(padded[teacher_key], width).transpose(1, 2).to(dtype),
        token_mask=fit_width(padded[mask_key], width).to(dtype) * response_mask,
        alpha=_dense(data[alpha_key]).to(dtype),
        outcome_sign=_dense(data[sign_key]).reshape(-1).to(dtype),
        response_mask=response_mask,
        student=fit_width(padded[student_key], width).to(dtype) if student_key else None,
    )


def jagged(rows) -> torch.Tensor:
    """Per-rollout rows of different lengths as one jagged nested tensor (verl's batch layout)."""
    return torch.nested.as_nested_tensor(list(rows), layout=torch.jagged)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """TransferQueue may hand per-sample fixed-size fields back as a jagged tensor."""
    return torch.stack(list(t.unbind())) if t.is_nested else t


def fit_width(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad/cut dim 1 to ``width`` (a micro-batch's nested max length equals the model's)."""
    if t.shape[1] == width:
        return t
    if t.shape[1] > width:
        return t[:, :width]
    pad = [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]
    return torch.nn.functional.pad(t, pad)


# ----------------------------------------------------------------------------- the pass
@dataclass
class Rollouts:
    """What the teacher pass reads of B student rollouts (one row per rollout)."""

    responses: list[torch.Tensor]  # [T_i] response token ids
    response_masks: list[torch.Tensor]  # [T_i]
    log_probs: list[torch.Tensor]  # [T_i] the student's (old) log-probs
    rewards: torch.Tensor  # [B] verifier rewards
    problems: list[str]  # the plain problem statements
    answers: list[str | None] | None = None  # reference answers (answer-conditioned teachers)
    # per rollout, the (skill ids, mistake ids) its student prompt showed (OPSD+Skill data), else None
    student_pairs: list[tuple[Sequence[str], Sequence[str]] | None] | None = None
    # per rollout, True for an agent episode: its problem is the task message the student saw,
    # and its response the whole trajectory (assistant turns and observations, the latter outside
    # the response mask); None: no episodes
    episodes: list[bool] | None = None

    def formats(self, fmt: ChatFormat) -> list[ChatFormat]:
        """``fmt`` per rollout, the episodes' with :attr:`ChatFormat.verbatim_problem`."""
        if not self.episodes:
            return [fmt] * len(self)
        verbatim = replace(fmt, verbatim_problem=True)
        return [verbatim if e else fmt for e in self.episodes]

    def __len__(self) -> int:
        return len(self.responses)


class TeacherScorer(Protocol):
    """Scores teacher sequences: ``prompt_ids[j] + responses[j]`` for every j, returning the
    response-aligned log-probs ``[T_j]`` of each, in the order given. Asked for ``topk=k``
    (called so only when k > 0), it returns one :class:`TeacherScores` per sequence instead."""

    def __call__(self, prompt_ids: Sequence[Sequence[int]], responses: Sequence[torch.Tensor],
                 response_masks: Sequence[torch.Tensor], **kwargs: Any) -> list: ...


@dataclass
class TeacherScores:
    """One teacher sequence scored with its top-k distribution (response-aligned)."""

    log_probs: torch.Tensor  # [T] the sampled tokens'
    topk_ids: torch.Tensor  # [T, k]
    topk_log_probs: torch.Tensor  # [T, k] full-vocabulary log-probs of those ids


@dataclass
class TeacherPassResult:
    fields: TeacherFields
    plan: TeacherPlan
    retrievals: list[ProblemRetrieval]
    scored: list[torch.Tensor]  # one [T] per planned sequence, in plan order
    support: torch.Tensor  # [B, K] robust support a_k, decided exactly as the loss decides it
    metrics: dict[str, float] = field(default_factory=dict)  # sgsd/* keys
    skills: list[tuple] | None = None  # skill_sd / sdar: each rollout's teacher skills (sgsd.skill_sources.Skill)


class TeacherPass:
    """The teacher pass of one run: settings, tokenizer and retriever bound once.

    ``TeacherPass(config, tokenizer, retriever)(rollouts, scorer)`` -> :class:`TeacherPassResult`.
    The token mask's vocabulary table is built once here.
    """

    def __init__(self, config: SGSDConfig, tokenizer: Any, retriever: Any, skills: Any = None):
        if config.sibling and skills is None:
            raise ValueError(f"sgsd.method={config.method} needs its skills (sgsd.sibling_skills.SiblingSkills)")
        self.config = config
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.skills = skills  # skill_sd / sdar: sgsd.sibling_skills.SiblingSkills
        self.token_mask = TokenMaskBuilder(tokenizer, config.mask)
        self.format = ChatFormat(enable_thinking=config.teacher_thinking,
                                 prefill_empty_think=config.prefill_empty_think)

    @property
    def needs_answers(self) -> bool:
        return self.config.reference_answer_in_teacher or self.config.teacher_context != "skills"

    def __call__(self, rollouts: Rollouts, scorer: TeacherScorer) -> TeacherPassResult:
        cfg, n = self.config, len(rollouts)
        t0 = time.perf_counter()
        selections = None
        if cfg.sibling:  # Skill-SD / SDAR: one teacher on the method's own skills
            retrievals = [ProblemRetrieval(teachers=())] * n
            selections = self.skills.select(rollouts.problems)
        elif cfg.teacher_context == "answer":  # OPSD: the answer alone, nothing to retrieve
            retrievals = [ProblemRetrieval(teachers=())] * n
        elif cfg.teacher_context == "answer_skills" and rollouts.student_pairs and all(rollouts.student_pairs):
            # OPSD+Skill: exactly the pairs the student was shown, not a re-retrieval
            retrievals = pairs_from_ids(self.retriever.bank, rollouts.student_pairs)
        else:
            retrievals = list(self.retriever.retrieve(rollouts.problems))
        retrieval_time = time.perf_counter() - t0
        formats = rollouts.formats(self.format)
        if selections is not None:
            plan = plan_context_teachers(rollouts.problems, [TeacherGuidance(skills=tuple(s)) for s in selections],
                                         self.tokenizer, formats, teacher_context(cfg.context),
                                         cfg.max_teacher_prompt_length)
        else:
            plan = plan_teachers(rollouts.problems, retrievals, self.tokenizer, formats, cfg.top_k,
                                 cfg.max_teacher_prompt_length, rollouts.answers if self.needs_answers else None,
                                 context=cfg.teacher_context)

        t0 = time.perf_counter()
        k = cfg.teacher_topk
        args = (plan.prompt_ids, [rollouts.responses[o] for o in plan.owner],
                [rollouts.response_masks[o] for o in plan.owner])
        scored = (scorer(*args, topk=k) if k else scorer(*args)) if len(plan) else []
        scoring_time = time.perf_counter() - t0
        distributions = None
        if k:
            distributions = scatter_teacher_topk(plan, scored, [len(r) for r in rollouts.responses], k)
            scored = [s.log_probs for s in scored]
        record = TeacherFields(
            teacher_log_probs=scatter_teacher_log_probs(plan, scored, rollouts.log_probs),
            token_mask=[self.token_mask(r, m).float() for r, m in zip(rollouts.responses, rollouts.response_masks)],
            alpha=plan.alpha,
            outcome_sign=outcome_signs(rollouts.rewards.float(), cfg.outcome_threshold),
            topk_ids=distributions[0] if k else None,
            topk_log_probs=distributions[1] if k else None,
        )
        support = self.support(record, rollouts) if not cfg.sibling else torch.zeros(n, 1)
        n_teachers = (plan.alpha > 0).sum(-1).float()
        metrics = {
            "sgsd/retrieval_time": retrieval_time,
            "sgsd/teacher_scoring_time": scoring_time,
            "sgsd/teacher_tokens": float(sum(len(p) + len(rollouts.responses[o])
                                             for p, o in zip(plan.prompt_ids, plan.owner))),
            "sgsd/teachers_per_problem_retrieved": n_teachers.mean().item() if n else 0.0,
            "sgsd/short_pool_problems": (n_teachers < plan.alpha.shape[1]).float().mean().item() if n else 0.0,
            "sgsd/truncated_teacher_prompts": float(plan.truncated),
            "sgsd/success_rate": (rollouts.rewards.float() > cfg.outcome_threshold).float().mean().item() if n else 0.0,
        }
        if selections is None:
            metrics.update({f"sgsd/{k}": v for k, v in support_quantiles(support, plan.alpha > 0).items()})
        else:
            counts = torch.tensor([float(len(s)) for s in selections])
            metrics["sgsd/skills/selected_per_rollout"] = counts.mean().item() if n else 0.0
            metrics["sgsd/skills/no_skill_frac"] = (counts == 0).float().mean().item() if n else 0.0
        if k and len(plan):  # how much of the teachers' mass their top-k holds (1: the truncation is exact)
            metrics["sgsd/teacher_topk_mass"] = torch.cat([
                record.topk_log_probs[o][:, slot].exp().sum(-1) for o, slot in zip(plan.owner, plan.slot)]).mean().item()
        return TeacherPassResult(record, plan, retrievals, list(scored), support, metrics,
                                 skills=[tuple(x) for x in selections] if selections is not None else None)

    def support(self, record: TeacherFields, rollouts: Rollouts) -> torch.Tensor:
        """Robust support ``a_k`` ``[B, K]`` of the batch on the rollout-time log-probs, read
        and decided exactly as the loss reads and decides it (what the first mini-batch of
        an on-policy update sees). ``local_gated`` decides on the local gap, which needs the
        student's distribution: here (metrics, per-item utility) its support is the
        full-vocabulary sampled-token gap's, as for the other loss types."""
        if not len(rollouts):
            return torch.zeros(0, record.alpha.shape[1])
        inputs = rollout_loss_inputs(record, rollouts)
        objective = self.config.objective_config()
        if objective.uses_distribution:
            objective = replace(objective, loss_type="gated")  # the support does not read the loss
        with torch.no_grad():
            out = sgsd_objective(inputs.student, inputs.teacher, inputs.token_mask, inputs.alpha, inputs.outcome_sign,
                                 objective, response_mask=inputs.response_mask)
        return out.support


def pairs_from_ids(bank, student_pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[ProblemRetrieval]:
    """Per rollout, the rank-wise pairs of the bank items its student prompt showed (their ids)."""
    skills = {s.skill_id: s for s in bank.general_skills}
    mistakes = {m.mistake_id: m for m in bank.common_mistakes}
    out = []
    for skill_ids, mistake_ids in student_pairs:
        missing = [i for i in skill_ids if i not in skills] + [i for i in mistake_ids if i not in mistakes]
        if missing:
            raise ValueError(f"the student's skill pairs name items {missing} that are not in the bank "
                             f"{getattr(bank, 'source', '')}: the data was prepared with another bank")
        count = min(len(skill_ids), len(mistake_ids))
        out.append(ProblemRetrieval(teachers=tuple(
            TeacherPair(rank=k, skill=skills[skill_ids[k]], mistake=mistakes[mistake_ids[k]], skill_score=0.0,
                        mistake_score=0.0, alpha=1.0 / count) for k in range(count))))
    return out


def rollout_loss_inputs(record: TeacherFields, rollouts: Rollouts) -> LossInputs:
    """The record of ``rollouts`` read as the loss reads a micro-batch, with the rollouts'
    own (old) log-probs as the student: what an on-policy update's first pass sees."""
    data = record.to_tensordict()
    data["response_mask"] = jagged(r.float() for r in rollouts.response_masks)
    data["old_log_probs"] = jagged(r.float() for r in rollouts.log_probs)
    return read_loss_inputs(data, max(len(t) for t in rollouts.log_probs), student_key="old_log_probs")


def rlsd_token_advantages(record: TeacherFields, rollouts: Rollouts, advantages: Sequence[torch.Tensor], step: int,
                          config: RLSDConfig) -> tuple[list[torch.Tensor], dict[str, float]]:
    """RLSD: each rollout's GRPO advantages ``[T_i]`` reweighted per token by its teacher's gap
    ``log pi_T - log pi_old`` (:func:`sgsd.sd_objectives.rlsd_advantages`); a rollout without a
    teacher keeps its advantages. Metrics ``sgsd/rlsd/*``: ``lambda``, ``weight_mean`` (the
    mean of ``A_t / A`` over response tokens with ``A != 0``) and ``weight_clipped_frac`` (the
    share of those whose ``exp(sign(A) Delta)`` fell outside ``[1 - eps, 1 + eps]``)."""
    if not len(rollouts):
        return [], {"sgsd/rlsd/lambda": rlsd_lambda(step, config)}
    inputs = rollout_loss_inputs(record, rollouts)
    width = inputs.response_mask.shape[1]
    adv = fit_width(torch.nn.utils.rnn.pad_sequence([a.float() for a in advantages], batch_first=True), width)
    present = (inputs.alpha[:, :1] > 0).float()
    delta = (inputs.teacher[:, 0] - inputs.student) * present
    new = rlsd_advantages(adv, delta, inputs.response_mask, step, config)
    lam = rlsd_lambda(step, config)
    live = (inputs.response_mask > 0) & (adv != 0)
    ratio = torch.where(live, new / torch.where(live, adv, 1.0), 0.0)
    weight = rlsd_weight(adv, delta)
    clipped = live & ((weight < 1 - config.clip_eps) | (weight > 1 + config.clip_eps))
    count = max(live.sum().item(), 1)
    metrics = {"sgsd/rlsd/lambda": lam, "sgsd/rlsd/weight_mean": ratio.sum().item() / count if live.any() else 1.0,
               "sgsd/rlsd/weight_clipped_frac": clipped.sum().item() / count}
    return [new[i, : len(a)].to(a.dtype) for i, a in enumerate(advantages)], metrics


def teacher_item_ids(retrievals: Sequence[ProblemRetrieval], top_k: int) -> tuple[list[list], list[list]]:
    """``[B][K]`` skill ids and mistake ids of each teacher slot (None where absent), for
    crediting per-item utility (:class:`sgsd.item_utility.UtilityTracker`)."""
    skills = [[None] * top_k for _ in retrievals]
    mistakes = [[None] * top_k for _ in retrievals]
    for row, retrieval in enumerate(retrievals):
        for pair in retrieval.teachers[:top_k]:
            skills[row][pair.rank] = pair.skill.skill_id
            mistakes[row][pair.rank] = pair.mistake.mistake_id
    return skills, mistakes


# ----------------------------------------------------------------------------- planning
@dataclass
class TeacherPlan:
    """Teacher sequences of one batch, flattened (row-major over rollouts, then rank)."""

    owner: list[int] = field(default_factory=list)  # rollout index of each teacher sequence
    slot: list[int] = field(default_factory=list)  # its rank k < K
    prompt_ids: list[list[int]] = field(default_factory=list)
    alpha: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))  # [B, K], 0 = absent
    truncated: int = 0  # teacher prompts whose guidance block was cut to fit

    def __len__(self) -> int:
        return len(self.owner)


def plan_teachers(
    problems: Sequence[str],
    retrievals: Sequence[ProblemRetrieval],
    tokenizer,
    fmt: ChatFormat | Sequence[ChatFormat],
    top_k: int,
    max_prompt_tokens: int | None,
    reference_answers: Sequence[str | None] | None = None,
    context: str = "skills",
) -> TeacherPlan:
    """Teacher prompt ids for every present (rollout, teacher) pair.

    ``context`` (``sgsd.teacher_context``): ``skills`` — one teacher per retrieved
    skill-mistake pair (SGSD; ``reference_answers`` adds the answer to each, Fig. 3d);
    ``answer`` — ONE teacher that sees the reference answer (the OPSD baseline);
    ``answer_skills`` — ONE teacher that sees the answer and every retrieved pair
    (OPSD+Skill: what the student saw, plus the answer). Single-teacher plans are
    ``[B, 1]`` wide with alpha 1.

    Rollouts of the same problem (``rollout.n > 1``) share their teachers' prompts, so each
    distinct prompt is rendered and tokenised once. ``fmt``: one chat format, or one per rollout
    (:meth:`Rollouts.formats`: an agent episode's problem is its task message, as it is).
    """
    if len(problems) != len(retrievals):
        raise ValueError(f"{len(problems)} problems but {len(retrievals)} retrievals")
    formats = per_rollout(fmt, len(problems))
    if context != "skills":
        return _plan_answer_teachers(problems, retrievals, tokenizer, formats, top_k, max_prompt_tokens,
                                     reference_answers, with_skills=context == "answer_skills")
    plan = TeacherPlan(alpha=torch.zeros(len(problems), top_k))
    cache: dict[tuple, tuple[list[int], bool]] = {}
    for row, (problem, retrieval) in enumerate(zip(problems, retrievals)):
        answer = reference_answers[row] if reference_answers is not None else None
        for pair in retrieval.teachers[:top_k]:
            key = (problem, pair.skill.skill_id, pair.mistake.mistake_id, answer, formats[row])
            if key not in cache:
                guidance = guidance_block([pair.skill], [pair.mistake], reference_answer=answer)
                cache[key] = teacher_prompt_ids(tokenizer, guidance, problem, formats[row], max_prompt_tokens)
            ids, truncated = cache[key]
            plan.owner.append(row)
            plan.slot.append(pair.rank)
            plan.prompt_ids.append(ids)
            plan.truncated += int(truncated)
            plan.alpha[row, pair.rank] = pair.alpha
    return plan


def per_rollout(fmt: ChatFormat | Sequence[ChatFormat], n: int) -> list[ChatFormat]:
    """One chat format per rollout: ``fmt`` repeated, or ``fmt`` itself when it is one per rollout."""
    if isinstance(fmt, ChatFormat):
        return [fmt] * n
    formats = list(fmt)
    if len(formats) != n:
        raise ValueError(f"{n} rollouts but {len(formats)} chat formats")
    return formats


def plan_context_teachers(problems: Sequence[str], guidances: Sequence[TeacherGuidance], tokenizer,
                          fmt: ChatFormat | Sequence[ChatFormat], context: TeacherContext,
                          max_prompt_tokens: int | None) -> TeacherPlan:
    """ONE teacher per rollout whose guidance gives ``context`` a teacher (``context.present``),
    ``[B, 1]`` wide, alpha 1 (0: no teacher, no loss); prompts rendered once per distinct
    (problem, guidance) with the context's truncation contract (:mod:`sgsd.teacher_contexts`)."""
    if len(problems) != len(guidances):
        raise ValueError(f"{len(problems)} problems but {len(guidances)} teacher guidances")
    formats = per_rollout(fmt, len(problems))
    plan = TeacherPlan(alpha=torch.zeros(len(problems), 1))
    cache: dict[tuple, tuple[list[int], bool]] = {}
    for row, (problem, guidance) in enumerate(zip(problems, guidances)):
        if not context.present(guidance):
            continue
        key = (problem, tuple((s.name, s.text) for s in guidance.skills), guidance.reference_answer,
               None if guidance.pair is None else (guidance.pair.skill.skill_id, guidance.pair.mistake.mistake_id),
               formats[row])
        if key not in cache:
            cache[key] = context.prompt_ids(tokenizer, problem, guidance, formats[row], max_prompt_tokens)
        ids, truncated = cache[key]
        plan.owner.append(row)
        plan.slot.append(0)
        plan.prompt_ids.append(list(ids))
        plan.truncated += int(truncated)
        plan.alpha[row, 0] = 1.0
    return plan


def _plan_answer_teachers(problems, retrievals, tokenizer, formats, top_k, max_prompt_tokens, reference_answers,
                          with_skills: bool) -> TeacherPlan:
    if reference_answers is None:
        raise ValueError("an answer-conditioned teacher needs the reference answers")
    plan = TeacherPlan(alpha=torch.zeros(len(problems), 1))
    cache: dict[tuple, tuple[list[int], bool]] = {}
    for row, (problem, retrieval) in enumerate(zip(problems, retrievals)):
        answer = reference_answers[row]
        if not answer:
            continue  # nothing to condition on: no teacher, no loss for this rollout
        pairs = retrieval.teachers[:top_k] if with_skills else ()
        key = (problem, answer, tuple((p.skill.skill_id, p.mistake.mistake_id) for p in pairs), formats[row])
        if key not in cache:
            # Too long: drop the weakest pairs first; the answer (at the block's end) stays whole.
            for n in range(len(pairs), -1, -1):
                guidance = guidance_block([p.skill for p in pairs[:n]], [p.mistake for p in pairs[:n]],
                                          reference_answer=answer)
                ids, cut = teacher_prompt_ids(tokenizer, guidance, problem, formats[row], max_prompt_tokens)
                if not cut or n == 0:
                    break
            cache[key] = (ids, cut or n < len(pairs))
        ids, truncated = cache[key]
        plan.owner.append(row)
        plan.slot.append(0)
        plan.prompt_ids.append(ids)
        plan.truncated += int(truncated)
        plan.alpha[row, 0] = 1.0
    return plan


def scatter_teacher_log_probs(
    plan: TeacherPlan,
    scored: Sequence[torch.Tensor],
    student_log_probs: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """One ``[T_i, K]`` tensor per rollout from the flat list of scored teachers.

    Args:
        plan: the plan the sequences were built from.
        scored: response-aligned teacher log-probs, one ``[T_i]`` per planned sequence.
        student_log_probs: the rollouts' own log-probs ``[T_i]``, used for absent slots.
    """
    if len(scored) != len(plan):
        raise ValueError(f"{len(scored)} scored teacher sequences for a plan of {len(plan)}")
    K = plan.alpha.shape[1]
    out = [s.detach().float().unsqueeze(-1).repeat(1, K) for s in student_log_probs]
    for owner, slot, logp in zip(plan.owner, plan.slot, scored):
        if logp.shape[0] != out[owner].shape[0]:
            raise ValueError(
                f"teacher log-probs for rollout {owner} cover {logp.shape[0]} tokens, its response has "
                f"{out[owner].shape[0]}: the teacher must score exactly the student's response"
            )
        out[owner][:, slot] = logp.float()
    return out


def scatter_teacher_topk(plan: TeacherPlan, scored: Sequence[TeacherScores], lengths: Sequence[int],
                         k: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per rollout, ``[T_i, K, k]`` top-k ids (int32) and log-probs of every teacher slot;
    an absent slot holds :func:`~recipe.sgsd.distribution.uniform_topk` (weight 0)."""
    if len(scored) != len(plan):
        raise ValueError(f"{len(scored)} scored teacher sequences for a plan of {len(plan)}")
    K = plan.alpha.shape[1]
    ids, log_probs = [], []
    for length in lengths:
        uniform_ids, uniform_lp = uniform_topk(length, k)
        ids.append(uniform_ids.unsqueeze(1).repeat(1, K, 1))
        log_probs.append(uniform_lp.unsqueeze(1).repeat(1, K, 1))
    for owner, slot, s in zip(plan.owner, plan.slot, scored):
        if tuple(s.topk_ids.shape) != (lengths[owner], k) or s.topk_log_probs.shape != s.topk_ids.shape:
            raise ValueError(f"teacher top-k for rollout {owner} is {tuple(s.topk_ids.shape)}, expected "
                             f"[{lengths[owner]}, {k}] (its response tokens x sgsd.teacher_topk)")
        ids[owner][:, slot] = s.topk_ids.to(torch.int32)
        log_probs[owner][:, slot] = s.topk_log_probs.float()
    return ids, log_probs


def scoring_order(lengths: list[int], dp: int, per_rank_multiple: int = 1) -> list[int]:
    """Scoring order of the teacher sequences (indices; some repeated as padding).

    verl hands rank r the r-th contiguous chunk and cuts it into micro-batches in order;
    with fixed micro-batches it asserts that each rank's count divides by the micro-batch
    size (``workers/engine/utils.py:prepare_micro_batches``). Sorting longest-first and
    dealing round-robin gives every rank a similar token load and micro-batches of similar
    lengths (little padding in an unpacked forward); the list is padded with repeats of the
    shortest sequence to a multiple of ``dp * per_rank_multiple``
    (:func:`per_rank_multiple` of the scoring worker group).
    """
    if dp < 1 or per_rank_multiple < 1:
        raise ValueError(f"dp and per_rank_multiple must be >= 1, got {dp} and {per_rank_multiple}")
    ranked = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    ranked += [ranked[-1]] * ((-len(ranked)) % (dp * per_rank_multiple))  # pad with the cheapest sequence
    return [ranked[i] for r in range(dp) for i in range(r, len(ranked), dp)]


def per_rank_multiple(config, frozen_reference: bool) -> int:
    """What each rank's teacher-sequence count must divide by in verl's log-prob pass: the
    scoring worker's fixed log-prob micro-batch (``actor_rollout_ref.rollout.*`` for the actor,
    live or LoRA-off; ``actor_rollout_ref.ref.*`` for a separate reference model), or 1 with
    dynamic batch sizing (any count is cut by tokens)."""
    section = config.actor_rollout_ref.ref if frozen_reference else config.actor_rollout_ref.rollout
    micro = section.get("log_prob_micro_batch_size_per_gpu")
    return 1 if section.get("log_prob_use_dynamic_bsz", False) or not micro else int(micro)


def outcome_signs(rewards: torch.Tensor, threshold: float) -> torch.Tensor:
    """``+1`` where the verifier reward exceeds ``threshold``, else ``-1`` (decisions table)."""
    return torch.where(rewards > threshold, 1.0, -1.0)
