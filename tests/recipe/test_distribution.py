"""The teacher's top-k distribution through verl's logits hook, in-process on the real tiny model.

Teacher side: the top-k ids and log-probs :func:`teacher_topk_outputs` reads off a packed
micro-batch (several sequences, verl's tail padding) are each sequence's own full softmax.
Student side: the actor loss of every distribution loss type, fed the way verl's FSDP engine
feeds it (packed logits to the hook, its per-token outputs back as nested tensors), equals the
objective computed from the full ``[T, V]`` distributions of both models, in value and in the
gradient it sends to the weights.
"""

from __future__ import annotations

import pytest
import torch

from recipe.sgsd.distribution import TOPK_ID, TOPK_LP, response_rows, teacher_topk_outputs
from recipe.sgsd.loss import SGSDActorLoss
from recipe.sgsd.teacher_pass import jagged
from tests.recipe.conftest import sgsd_config_of
from tests.tiny_policy import HFScorer, actor_loss, full_distribution_objective, response_distribution

K_IDS = 8


def _packed(policy, prompts, responses, pad_rows=3):
    from tensordict import TensorDict

    sequences = [torch.cat([p, r]) for p, r in zip(prompts, responses)]
    with torch.no_grad():
        logits = torch.cat([policy(s[None]).logits[0].float() for s in sequences])
    logits = torch.cat([logits, torch.randn(pad_rows, logits.shape[1]) * 50])  # verl's tail padding rows
    data = TensorDict({"prompts": jagged(prompts), "responses": jagged(responses),
                       "input_ids": jagged(sequences)}, batch_size=[len(prompts)])
    return logits, data


def test_teacher_topk_outputs_are_each_sequences_own_full_softmax(policy, tiny_batch):
    from verl.workers.utils.padding import response_from_nested

    prompts, responses = tiny_batch.prompts[:3], tiny_batch.rollouts.responses[:3]
    logits, data = _packed(policy, prompts, responses)
    out = teacher_topk_outputs(logits, data, K_IDS)
    assert set(out) == {f"{p}{j}" for p in (TOPK_ID, TOPK_LP) for j in range(K_IDS)}
    offsets = data["input_ids"].offsets()
    masks = jagged(torch.ones(len(r)) for r in responses)

    def per_sequence(prefix):
        cols = [response_from_nested(torch.nested.nested_tensor_from_jagged(out[f"{prefix}{j}"][0, :offsets[-1]],
                                                                            offsets), masks).unbind()
                for j in range(K_IDS)]
        return [torch.stack(c, -1) for c in zip(*cols)]

    for prompt, response, ids, lps in zip(prompts, responses, per_sequence(TOPK_ID), per_sequence(TOPK_LP)):
        full = response_distribution(policy, prompt, response)
        top = full.topk(K_IDS, -1)
        assert torch.equal(ids.long(), top.indices)
        assert torch.allclose(lps, top.values, atol=1e-5)
    with pytest.raises(ValueError, match="teacher_topk"):
        teacher_topk_outputs(logits, data, logits.shape[1] + 1)


def test_response_rows_follow_verls_response_slicing(tiny_batch):
    from tensordict import TensorDict

    prompts = [torch.arange(3), torch.arange(2)]
    responses = [torch.arange(2), torch.arange(4)]
    data = TensorDict({"prompts": jagged(prompts), "responses": jagged(responses)}, batch_size=[2])
    # sequence 0: 5 tokens (rows 0-4), response tokens predicted by rows 2, 3; sequence 1: rows 5-10 -> 6..9
    assert response_rows(data, 11).tolist() == [2, 3, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="sequence parallelism"):
        response_rows(data, 8)


@pytest.mark.parametrize("overrides", [
    ("sgsd.ablation.loss_type=fkl", "sgsd.divergence_clip=0.05"),
    ("sgsd.ablation.loss_type=jsd",),
    ("sgsd.ablation.loss_type=local_gated",),
], ids=["fkl_clipped", "jsd", "local_gated"])
def test_the_actor_loss_through_the_logits_hook_equals_the_full_distribution_objective(
        overrides, policy, tiny_batch, run_config, make_teacher_pass):
    config = run_config("sgsd.threshold=2.5", f"sgsd.teacher_topk={K_IDS}", *overrides)
    objective = sgsd_config_of(config).objective_config()
    result = make_teacher_pass(config)(tiny_batch.rollouts, HFScorer(policy))
    assert result.fields.topk_ids[0].shape[1:] == (result.fields.alpha.shape[1], K_IDS)

    def grads(loss):
        policy.zero_grad()
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        policy.zero_grad()
        return g

    hooked, _ = actor_loss(policy, SGSDActorLoss(actor_config=None, objective=objective), tiny_batch.prompts,
                           tiny_batch.rollouts, result.fields)
    hooked_grad = grads(hooked)
    expected = full_distribution_objective(policy, tiny_batch.prompts, tiny_batch.rollouts, result, objective,
                                           K_IDS).loss.mean()
    expected_grad = grads(expected)
    assert hooked.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert hooked.item() != 0.0 and hooked_grad.abs().sum() > 0
    assert torch.allclose(hooked_grad, expected_grad, rtol=1e-3, atol=1e-6)


def test_the_student_side_never_reads_the_logits_in_backward(policy, tiny_batch, run_config, make_teacher_pass):
    """verl's flash-attn cross-entropy (``inplace_backward=True``) overwrites the logits with its
    own gradient during backward: here they are overwritten (bypassing autograd's version
    counter, as a Triton kernel does) after the hook ran, and the gradient must be unchanged."""
    from tests.tiny_policy import actor_micro_batch, sequence_log_probs

    config = run_config("sgsd.threshold=2.5", f"sgsd.teacher_topk={K_IDS}", "sgsd.ablation.loss_type=fkl")
    objective = sgsd_config_of(config).objective_config()
    result = make_teacher_pass(config)(tiny_batch.rollouts, HFScorer(policy))
    loss_fn = SGSDActorLoss(actor_config=None, objective=objective)
    data = actor_micro_batch(tiny_batch.prompts, tiny_batch.rollouts, result.fields)

    def gradient(corrupt: bool) -> torch.Tensor:
        policy.zero_grad()
        logits = torch.cat([policy(ids[None]).logits[0].float() for ids in data["input_ids"].unbind()])
        offsets = data["input_ids"].offsets()
        out = {key: torch.nested.nested_tensor_from_jagged(v.squeeze(0), offsets)
               for key, v in loss_fn(student_logits=logits[None], data=data).items()}
        if corrupt:
            logits.data.normal_()  # what an in-place backward kernel leaves in the buffer
        out["log_probs"] = jagged(sequence_log_probs(policy, ids) for ids in data["input_ids"].unbind())
        loss, _ = loss_fn(out, data)
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        policy.zero_grad()
        return g

    clean = gradient(corrupt=False)
    assert clean.abs().sum() > 0 and torch.equal(clean, gradient(corrupt=True))
