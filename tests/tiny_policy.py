"""The real tiny model as a policy, in-process: sample student rollouts, score sequences.

The teacher pass's scorer in tests (:class:`HFScorer`, a plain fp32 transformers forward)
and the independent reference the end-to-end runs are checked against
(:func:`response_log_probs`) are the same function, so "what the trainer's worker group
scored" and "what a fresh model computes" are compared on one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


# Log-probs a verl worker logged are bf16 forwards (verl's mixed precision) vs an fp32 forward
# here: ~0.04 mean abs difference. A wrong context or a one-token shift is ~2.4 (measured).
LOGGED_TOLERANCE = 0.15


def load_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def sequence_log_probs(model, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """verl's per-sequence layout: position ``t`` holds ``log p(ids[t + 1] | ids[:t + 1])``;
    the last position (nothing to predict) holds 0. Differentiable."""
    logits = model(ids[None]).logits[0].float() / temperature
    logp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None]).squeeze(-1)
    return torch.cat([logp, logp.new_zeros(1)])


def response_log_probs(model, prompt: torch.Tensor, response: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs ``[T]`` of ``response`` after ``prompt`` (no gradient)."""
    with torch.no_grad():
        full = sequence_log_probs(model, torch.cat([prompt, response]), temperature)
    return full[len(prompt) - 1: len(prompt) + len(response) - 1]


def response_distribution(model, prompt: torch.Tensor, response: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Full-vocabulary log-probs ``[T, V]`` at each response position (no gradient)."""
    with torch.no_grad():
        logits = model(torch.cat([prompt, response])[None]).logits[0].float() / temperature
    return torch.log_softmax(logits[len(prompt) - 1: len(prompt) + len(response) - 1], -1)


class HFScorer:
    """A :class:`recipe.sgsd.teacher_pass.TeacherScorer` over a transformers model."""

    def __init__(self, model, temperature: float = 1.0):
        self.model, self.temperature = model, temperature
        self.calls: list[int] = []  # sequences per call

    def __call__(self, prompt_ids: Sequence[Sequence[int]], responses, response_masks, topk: int = 0) -> list:
        from recipe.sgsd.teacher_pass import TeacherScores

        self.calls.append(len(prompt_ids))
        out = []
        for p, r in zip(prompt_ids, responses):
            if not topk:
                out.append(response_log_probs(self.model, torch.tensor(list(p)), r, self.temperature))
                continue
            full = response_distribution(self.model, torch.tensor(list(p)), r, self.temperature)
            top = full.topk(topk, -1)
            out.append(TeacherScores(full.gather(-1, r[:, None]).squeeze(-1), top.indices, top.values))
        return out


def student_prompt_ids(tokenizer, row: dict, enable_thinking: bool = False) -> torch.Tensor:
    """The prompt verl renders from a parquet row (``data.apply_chat_template_kwargs``)."""
    text = tokenizer.apply_chat_template(list(row["prompt"]), add_generation_prompt=True, tokenize=False,
                                         enable_thinking=enable_thinking)
    return torch.tensor(tokenizer.encode(text, add_special_tokens=False))


def sample_responses(model, tokenizer, prompts: Sequence[torch.Tensor], max_new_tokens: int, seed: int = 0,
                     temperature: float = 1.1, top_p: float = 0.95) -> list[torch.Tensor]:
    """One sampled response per prompt, cut after the first eos; a response that did not
    finish gets the eos appended, as a finished rollout ends (its log-prob is still scored)."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for i, prompt in enumerate(prompts):
        torch.manual_seed(seed + i)
        with torch.no_grad():
            ids = model.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 do_sample=True, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)[0, len(prompt):]
        ends = (ids == eos).nonzero()
        ids = ids[: int(ends[0]) + 1] if len(ends) else torch.cat([ids, torch.tensor([eos])])
        out.append(ids)
    return out


def actor_micro_batch(prompts: Sequence[torch.Tensor], rollouts, record, global_batch_size: int | None = None):
    """The micro-batch verl's FSDP actor hands the loss: nested prompts/responses/input_ids,
    the response mask, the teacher pass's ``sgsd_*`` fields as the trainer stored them, and
    verl's non-tensor batch info."""
    from tensordict import TensorDict

    from recipe.sgsd.teacher_pass import jagged
    from verl.utils.tensordict_utils import assign_non_tensor

    data = TensorDict({
        "prompts": jagged(prompts), "responses": jagged(rollouts.responses),
        "input_ids": jagged(torch.cat([p, r]) for p, r in zip(prompts, rollouts.responses)),
        "response_mask": jagged(m.float() for m in rollouts.response_masks),
        "old_log_probs": jagged(lp.float() for lp in rollouts.log_probs),
    }, batch_size=[len(prompts)])
    data.update(record.to_tensordict())
    assign_non_tensor(data, global_batch_size=global_batch_size or len(prompts), dp_size=1,
                      batch_num_tokens=float(sum(m.sum().item() for m in rollouts.response_masks)))
    return data


def actor_loss(model, loss_fn, prompts: Sequence[torch.Tensor], rollouts, record, temperature: float = 1.0):
    """What the actor's loss computes on this batch with ``model`` as the live policy (one
    micro-batch, gradient attached): ``(loss, metrics)``."""
    data = actor_micro_batch(prompts, rollouts, record)
    log_probs = [sequence_log_probs(model, torch.cat([p, r]), temperature) for p, r in zip(prompts, rollouts.responses)]
    from recipe.sgsd.teacher_pass import jagged

    model_output = {"log_probs": jagged(log_probs), **logits_hook(model, loss_fn, data, temperature)}
    if loss_fn.sdar is not None and loss_fn.sdar.uses_entropy:  # verl's calculate_entropy
        model_output["entropy"] = jagged(sequence_entropy(model, torch.cat([p, r]), temperature)
                                         for p, r in zip(prompts, rollouts.responses))
    return loss_fn(model_output, data)


def sequence_entropy(model, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position entropy of the next-token distribution, aligned as :func:`sequence_log_probs`."""
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[None]).logits[0].float() / temperature, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return torch.cat([entropy[:-1], entropy[-1:]])


def logits_hook(model, loss_fn, data, temperature: float = 1.0) -> dict:
    """What verl's FSDP engine adds to ``model_output`` when a distribution loss asks for its
    logits hook: the packed logits of the micro-batch go to ``loss_fn(student_logits=...)``,
    each per-token output comes back as a nested tensor over the packed sequences."""
    if not loss_fn.uses_distribution:
        return {}
    logits = torch.cat([model(ids[None]).logits[0].float() / temperature for ids in data["input_ids"].unbind()])
    offsets = data["input_ids"].offsets()
    return {key: torch.nested.nested_tensor_from_jagged(value.squeeze(0), offsets)
            for key, value in loss_fn(student_logits=logits[None], data=data).items()}


def full_distribution_objective(model, prompts, rollouts, result, objective, k: int):
    """The SGSD objective of a distribution loss from the full ``[T, V]`` distributions, as an
    independent reference: each teacher's top-k taken here from its own full log-softmax,
    the student's log-probs at those ids from its own (with gradient), the divergences from
    the library's pure functions (:mod:`sgsd.objective`, themselves checked by hand)."""
    from torch.nn.functional import pad

    from sgsd.objective import local_support, sgsd_objective, topk_forward_kl, topk_jsd

    fields, plan = result.fields, result.plan
    B, K = fields.alpha.shape
    T = max(len(r) for r in rollouts.responses)
    students = []
    for prompt, response in zip(prompts, rollouts.responses):
        logits = model(torch.cat([prompt, response])[None]).logits[0].float()
        students.append(torch.log_softmax(logits[len(prompt) - 1: len(prompt) + len(response) - 1], -1))
    divergence, gap = {}, {}
    for owner, slot, prompt_ids in zip(plan.owner, plan.slot, plan.prompt_ids):
        response, student = rollouts.responses[owner], students[owner]
        teacher = response_distribution(model, torch.tensor(prompt_ids), response)
        ids = teacher.topk(k, -1).indices
        t_top, s_top = teacher.gather(-1, ids), student.gather(-1, ids)
        if objective.loss_type == "fkl":
            divergence[owner, slot] = topk_forward_kl(t_top, s_top, objective.divergence_clip)
        elif objective.loss_type == "jsd":
            divergence[owner, slot] = topk_jsd(t_top, s_top, objective.jsd_beta, objective.divergence_clip)
        else:
            sampled = response[:, None]
            gap[owner, slot], divergence[owner, slot] = local_support(
                t_top, s_top, teacher.gather(-1, sampled)[:, 0], student.gather(-1, sampled)[:, 0],
                (ids == sampled).any(-1))

    def stack(rows: dict) -> torch.Tensor | None:
        if not rows:
            return None
        zero = torch.zeros(T)
        return torch.stack([torch.stack([pad(rows[b, j], (0, T - len(rows[b, j]))) if (b, j) in rows else zero
                                         for j in range(K)]) for b in range(B)])

    lengths = torch.tensor([len(r) for r in rollouts.responses])
    response_mask = (torch.arange(T)[None] < lengths[:, None]).float()
    student_sampled = torch.stack([pad(s.gather(-1, r[:, None])[:, 0], (0, T - len(r)))
                                   for s, r in zip(students, rollouts.responses)])
    teacher_lp = torch.stack([pad(t, (0, 0, 0, T - len(t))).T for t in fields.teacher_log_probs])
    token_mask = torch.stack([pad(m, (0, T - len(m))) for m in fields.token_mask]) * response_mask
    return sgsd_objective(student_sampled, teacher_lp, token_mask, fields.alpha, fields.outcome_sign, objective,
                          response_mask=response_mask, divergence=stack(divergence), support_gap=stack(gap))
