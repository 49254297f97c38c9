"""The teacher pass's pure parts: which teacher sequences to score, and how results land.

For a batch of B student rollouts the trainer retrieves teachers once for all problems,
then asks :func:`plan_teachers` for one token sequence per present teacher
(teacher prompt + the SAME response ids). All of them go through verl's log-prob
machinery in one call; :func:`scatter_teacher_log_probs` puts the scored log-probs back
as one ``[T_i, K]`` tensor per rollout (absent teachers hold the student's own
log-probs, i.e. a zero gap, and weight 0).

No verl import here: these functions are unit-tested on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sgsd.prompts import ChatFormat, guidance_block, teacher_prompt_ids
from sgsd.retrieval import ProblemRetrieval


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
    fmt: ChatFormat,
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
    distinct prompt is rendered and tokenised once.
    """
    if len(problems) != len(retrievals):
        raise ValueError(f"{len(problems)} problems but {len(retrievals)} retrievals")
    if context != "skills":
        return _plan_answer_teachers(problems, retrievals, tokenizer, fmt, top_k, max_prompt_tokens,
                                     reference_answers, with_skills=context == "answer_skills")
    plan = TeacherPlan(alpha=torch.zeros(len(problems), top_k))
    cache: dict[tuple, tuple[list[int], bool]] = {}
    for row, (problem, retrieval) in enumerate(zip(problems, retrievals)):
        answer = reference_answers[row] if reference_answers is not None else None
        for pair in retrieval.teachers[:top_k]:
            key = (problem, pair.skill.skill_id, pair.mistake.mistake_id, answer)
            if key not in cache:
                guidance = guidance_block([pair.skill], [pair.mistake], reference_answer=answer)
                cache[key] = teacher_prompt_ids(tokenizer, guidance, problem, fmt, max_prompt_tokens)
            ids, truncated = cache[key]
            plan.owner.append(row)
            plan.slot.append(pair.rank)
            plan.prompt_ids.append(ids)
            plan.truncated += int(truncated)
            plan.alpha[row, pair.rank] = pair.alpha
    return plan


def _plan_answer_teachers(problems, retrievals, tokenizer, fmt, top_k, max_prompt_tokens, reference_answers,
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
        key = (problem, answer, tuple((p.skill.skill_id, p.mistake.mistake_id) for p in pairs))
        if key not in cache:
            # Too long: drop the weakest pairs first; the answer (at the block's end) stays whole.
            for n in range(len(pairs), -1, -1):
                guidance = guidance_block([p.skill for p in pairs[:n]], [p.mistake for p in pairs[:n]],
                                          reference_answer=answer)
                ids, cut = teacher_prompt_ids(tokenizer, guidance, problem, fmt, max_prompt_tokens)
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


def scoring_order(lengths: list[int], dp: int) -> list[int]:
    """Scoring order of the teacher sequences (indices; some repeated as DP padding).

    verl hands rank r the r-th contiguous chunk and cuts it into micro-batches in order.
    Sorting longest-first and dealing round-robin gives every rank a similar token load
    and micro-batches of similar lengths (little padding in an unpacked forward); the
    list is padded with repeats of the shortest sequence to a multiple of ``dp``.
    """
    ranked = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    ranked += [ranked[-1]] * ((-len(ranked)) % dp)  # pad with the cheapest sequence
    return [ranked[i] for r in range(dp) for i in range(r, len(ranked), dp)]


def outcome_signs(rewards: torch.Tensor, threshold: float) -> torch.Tensor:
    """``+1`` where the verifier reward exceeds ``threshold``, else ``-1`` (decisions table)."""
    return torch.where(rewards > threshold, 1.0, -1.0)
