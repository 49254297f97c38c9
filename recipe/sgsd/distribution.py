"""The teacher's top-k distribution through verl's own logits hook, teacher side and student side.

verl 0.9.1's FSDP engine (``FSDPEngineWithLMHead.prepare_model_outputs``) hands the
installed loss function the packed logits of every micro-batch when the batch carries the
non-tensor flag ``distillation_use_topk`` — the hook its own top-k distillation uses —
as ``loss_fn(student_logits=[1, N, V], data=micro_batch)``, and stores each returned
per-token tensor ``[1, N]`` in ``model_output`` as a nested tensor beside the log-probs
(``N`` = the micro-batch's packed tokens, plus the engine's tail padding). Row ``p`` of
those logits predicts packed token ``p + 1``, as verl's log-probs are laid out.

* Teacher pass (forward only, the worker's ``compute_loss=True``): :func:`teacher_topk_outputs`
  takes, at every response position, the k largest logits and their full-vocabulary
  log-probs (``logit - logsumexp``, fp32, streamed over row chunks) and returns them as
  ``2k`` per-token outputs (verl's hook carries one scalar per token and key), which verl
  writes back next to the teacher sequence's log-probs.
* Actor update: :func:`student_divergence_outputs` reads each teacher's top-k ids and
  log-probs from the micro-batch (``sgsd_topk_*``, stored by the teacher pass like the other
  ``sgsd_*`` fields), takes the student's log-probs at the SAME ids from the SAME logits
  whose sampled-token log-probs verl computes for the loss, and returns per teacher slot the
  per-token divergence (with gradient) and, for ``local_gated``, the local gap. The loss then
  reads them with verl's response slicing, like ``log_probs``.

Nothing here allocates a ``[N, V]`` copy of the logits, and nothing reads them in the
backward pass (verl's flash-attn cross-entropy overwrites them there with its own gradient):
rows are gathered at ``K x k`` ids (whose backward needs only the ids), the log-normaliser is
computed chunk by chunk without gradient, and its share of the gradient is restored in the
loss from verl's own sampled-token log-prob (:func:`with_normaliser_gradient`).

No verl import here (torch only): the same functions run in-process in the tests.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sgsd.objective import ObjectiveConfig, local_support, topk_forward_kl, topk_jsd

TOPK_FLAG = "sgsd_teacher_topk"  # non-tensor key: this forward is a teacher pass asking for k ids
TOPK_ID, TOPK_LP = "sgsd_topk_id_", "sgsd_topk_lp_"  # per-rank teacher outputs (rank j of the top-k)
DIVERGENCE, LOCAL_GAP, DNORM = "sgsd_div_", "sgsd_gap_", "sgsd_dnorm_"  # per-teacher-slot student outputs
SAMPLED_LOGIT = "sgsd_zy"  # the student's logit of the sampled token, per position
CHUNK_ROWS = 1024  # rows of [V] logits upcast to fp32 at a time (Qwen3: 0.6 GB)


def response_rows(data: Any, total_rows: int) -> torch.Tensor:
    """Rows of the packed logits that predict each response token, in the micro-batch's order
    (sequence by sequence, position by position): row ``end_b - T_b - 1 + j`` predicts response
    token ``j`` of sequence ``b`` (verl's ``no_padding_2_padding`` rule)."""
    prompts, responses = data["prompts"], data["responses"]
    if not (prompts.is_nested and responses.is_nested):
        raise ValueError("the teacher's top-k distribution needs verl's no-padding batch layout "
                         "(nested prompts and responses)")
    response_lens = responses.offsets().diff()
    ends = (prompts.offsets().diff() + response_lens).cumsum(0)
    starts = ends - response_lens - 1
    rows = torch.cat([torch.arange(int(s), int(s) + int(n)) for s, n in zip(starts, response_lens)]) \
        if len(response_lens) else torch.zeros(0, dtype=torch.long)
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= total_rows):
        raise ValueError(f"response rows {int(rows.min())}..{int(rows.max())} fall outside the {total_rows} packed "
                         "logits: sequence parallelism (logits sharded across ranks) is not supported with "
                         "sgsd.teacher_topk")
    return rows


def _per_token(values: torch.Tensor, rows: torch.Tensor, total_rows: int) -> torch.Tensor:
    """``[1, total_rows]``: ``values`` at ``rows``, 0 elsewhere (differentiable in ``values``)."""
    out = values.new_zeros(total_rows)
    return out.index_put((rows.to(values.device),), values).unsqueeze(0)


def teacher_topk_outputs(logits: torch.Tensor, data: Any, k: int) -> dict[str, torch.Tensor]:
    """Teacher side: the top-k ids and full-vocabulary log-probs of every response position.

    Args:
        logits: ``[N, V]`` packed logits of the micro-batch, already at the scoring temperature.
        data: the micro-batch (nested ``prompts`` / ``responses``).
        k: ids per position (<= V).

    Returns:
        ``{sgsd_topk_id_j, sgsd_topk_lp_j: [1, N]}`` for ``j < k`` (rank j: the j-th largest).
    """
    n, vocab = logits.shape
    if not 1 <= k <= vocab:
        raise ValueError(f"sgsd.teacher_topk={k} must be in [1, {vocab}] (the model's vocabulary)")
    rows = response_rows(data, n).to(logits.device)
    ids = torch.empty(len(rows), k, dtype=torch.long, device=logits.device)
    log_probs = torch.empty(len(rows), k, dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        for s in range(0, len(rows), CHUNK_ROWS):
            chunk = logits[rows[s:s + CHUNK_ROWS]].float()
            top = chunk.topk(k, dim=-1)
            ids[s:s + CHUNK_ROWS] = top.indices
            log_probs[s:s + CHUNK_ROWS] = top.values - torch.logsumexp(chunk, dim=-1, keepdim=True)
    out = {}
    for j in range(k):
        out[f"{TOPK_ID}{j}"] = _per_token(ids[:, j].to(torch.int32), rows, n)  # exact: vocabularies < 2^31
        out[f"{TOPK_LP}{j}"] = _per_token(log_probs[:, j], rows, n)
    return out


def _row_logsumexp(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``logsumexp(logits[rows], -1)`` in fp32, streamed over row chunks, without gradient."""
    out = torch.empty(len(rows), dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        for s in range(0, len(rows), CHUNK_ROWS):
            out[s:s + CHUNK_ROWS] = torch.logsumexp(logits[rows[s:s + CHUNK_ROWS]].float(), dim=-1)
    return out


def _divergence(objective: ObjectiveConfig, teacher: torch.Tensor, student: torch.Tensor, ids: torch.Tensor,
                sampled: torch.Tensor, data: Any, student_sampled: torch.Tensor):
    """``(divergence [R, K], local gap [R, K] or None)`` of one loss type on the top-k."""
    if objective.loss_type == "fkl":
        return topk_forward_kl(teacher, student, objective.divergence_clip), None
    if objective.loss_type == "jsd":
        return topk_jsd(teacher, student, objective.jsd_beta, objective.divergence_clip), None
    if objective.loss_type == "local_gated":
        teacher_sampled = data["sgsd_teacher_log_probs"].values().to(teacher.device).float()  # [R, K]
        gap, kl = local_support(teacher, student, teacher_sampled, student_sampled,
                                (ids == sampled[:, None, None]).any(-1))
        return kl, gap
    raise ValueError(f"loss_type={objective.loss_type!r} does not read the teacher's top-k distribution")


def student_divergence_outputs(logits: torch.Tensor, data: Any, objective: ObjectiveConfig) -> dict[str, torch.Tensor]:
    """Student side: per teacher slot, the per-token divergence on that teacher's top-k ids.

    Reads ``sgsd_topk_ids`` / ``sgsd_topk_log_probs`` ``[T_i, K, k]``, ``sgsd_teacher_log_probs``
    ``[T_i, K]`` and the sampled ``responses`` of the micro-batch. Returns, per slot ``j``,
    ``sgsd_div_<j>`` (the divergence, with gradient through the gathered logits only),
    ``sgsd_dnorm_<j>`` (its derivative with respect to the log-normaliser, detached) and, for
    ``local_gated``, ``sgsd_gap_<j>`` (detached); and ``sgsd_zy`` (the sampled token's logit).

    The backward pass never reads the logits: verl's flash-attn cross-entropy (its sampled-token
    log-probs, ``inplace_backward=True``) overwrites them with its own gradient during backward,
    so a saved-logits softmax would read garbage. The log-normaliser is taken without gradient
    here, and its part of the gradient, ``-(dD/dlse) softmax``, is rebuilt in the loss from the
    sampled-token log-prob verl computes (:func:`with_normaliser_gradient`): ``lse = z_y - log pS(y)``.
    """
    n = logits.shape[0]
    rows = response_rows(data, n).to(logits.device)
    ids = data["sgsd_topk_ids"].values().to(logits.device).long()  # [R, K, k]
    teacher = data["sgsd_topk_log_probs"].values().to(logits.device).float()
    if ids.shape[0] != len(rows):
        raise ValueError(f"the teacher's top-k covers {ids.shape[0]} response tokens, the micro-batch has {len(rows)}")
    r, slots, k = ids.shape
    lse = _row_logsumexp(logits, rows)[:, None, None]  # [R, 1, 1], no gradient
    z = logits[rows[:, None], ids.reshape(r, slots * k)].float().reshape(r, slots, k)  # gathers: index backward
    sampled = data["responses"].values().to(logits.device).long()
    z_y = logits[rows, sampled].float()  # [R]
    with torch.enable_grad():  # dD/dlse = -(the sum of dD/ds over the support), from the same forward
        student = z - lse
        student_sampled = (z_y - lse[:, 0, 0])[:, None].expand(r, slots).clone()  # one per teacher slot
        wanted = student.requires_grad
        if not wanted:  # a caller without gradient: leaves, for dD/ds alone
            student, student_sampled = student.requires_grad_(), student_sampled.requires_grad_()
        divergence, gap = _divergence(objective, teacher, student, ids, sampled, data, student_sampled)
        ds, dy = torch.autograd.grad(divergence.sum(), (student, student_sampled), retain_graph=wanted,
                                     allow_unused=True)
    if not wanted:
        divergence = divergence.detach()
    dnorm = -(ds.sum(-1) + (dy if dy is not None else 0.0))  # [R, K]
    out = {f"{DIVERGENCE}{j}": _per_token(divergence[:, j], rows, n) for j in range(slots)}
    out.update({f"{DNORM}{j}": _per_token(dnorm[:, j].detach(), rows, n) for j in range(slots)})
    out[SAMPLED_LOGIT] = _per_token(z_y, rows, n)
    if gap is not None:
        out.update({f"{LOCAL_GAP}{j}": _per_token(gap[:, j].detach(), rows, n) for j in range(slots)})
    return out


def with_normaliser_gradient(divergence: torch.Tensor, dnorm: torch.Tensor, sampled_logit: torch.Tensor,
                             student_log_probs: torch.Tensor) -> torch.Tensor:
    """The divergence ``[B, K, T]`` with the log-normaliser's part of its gradient restored.

    ``lse = z_y - log pS(y)`` per position, where ``log pS(y)`` (``[B, T]``) is verl's live
    sampled-token log-prob (``d lse / d logits = softmax``): adding ``dnorm * lse`` minus its own
    value leaves the divergence's value unchanged and adds ``dnorm * softmax`` to its gradient,
    exactly the term the gradient-free normaliser left out.
    """
    lse = (sampled_logit - student_log_probs).unsqueeze(1)  # [B, 1, T], with gradient
    term = dnorm * lse
    return divergence + term - term.detach()


def uniform_topk(length: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What an absent teacher's slot holds: ids 0..k-1 at log(1/k) each (finite; weight 0)."""
    return (torch.arange(k, dtype=torch.int32).expand(length, k).clone(),
            torch.full((length, k), -math.log(k), dtype=torch.float32))
