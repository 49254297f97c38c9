"""The ``hf`` rollout server of the CPU backend (recipe/sgsd/cpu/hf_rollout.py), alone (no
Ray): batching, greedy determinism, eos, lengths, weight sync."""

from __future__ import annotations

import pytest

from tests.recipe.cpu.test_backend import _ONLY_THE_BACKEND


@pytest.mark.slow
def test_hf_rollout_server_generates_and_takes_weights(tiny_model_dir, monkeypatch):
    """The server alone (no Ray): batching, greedy determinism, eos, lengths, weight sync."""
    import asyncio

    for key, value in _ONLY_THE_BACKEND.items():  # in case this imports verl first
        monkeypatch.setenv(key, value)
    import torch

    from recipe.sgsd.cpu.hf_rollout import HFRolloutServer
    from verl.workers.config import HFModelConfig, RolloutConfig

    config = RolloutConfig(name="hf", prompt_length=64, response_length=12, tensor_model_parallel_size=1)
    model_config = HFModelConfig(path=str(tiny_model_dir), override_config={"attn_implementation": "sdpa"})
    server = HFRolloutServer(config, model_config, replica_rank=0)
    batch_sizes = []
    generate_batch = server._generate_batch
    server._generate_batch = lambda requests, sampling: (batch_sizes.append(len(requests)),
                                                         generate_batch(requests, sampling))[1]
    sample = {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "logprobs": True}
    greedy = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": False}
    prompts = [list(range(5, 15 + i)) for i in range(4)]

    async def run(params, prompt_list):
        return await asyncio.gather(*[server.generate(p, dict(params), request_id=str(i))
                                      for i, p in enumerate(prompt_list)])

    sampled = asyncio.run(run(sample, prompts))
    assert batch_sizes == [4]  # concurrent requests with equal settings share one generate()
    for out in sampled:
        assert 1 <= len(out.token_ids) <= 12 and len(out.log_probs) == len(out.token_ids)
        assert all(lp <= 0 for lp in out.log_probs)
    first, second = asyncio.run(run(greedy, prompts[:1] * 2))
    assert first.token_ids == second.token_ids and first.log_probs is None
    assert len(asyncio.run(run({**greedy, "max_tokens": 3}, prompts[:1]))[0].token_ids) == 3

    stop = first.token_ids[2]  # make a token the greedy path emits an eos: output ends there
    server.eos_ids = [stop]
    assert asyncio.run(run(greedy, prompts[:1]))[0].token_ids == first.token_ids[: first.token_ids.index(stop) + 1]

    weights = {k: torch.zeros_like(v) for k, v in server.model.state_dict().items()}
    asyncio.run(server.load_weights(list(weights.items()), global_steps=7))
    assert all(float(p.detach().abs().sum()) == 0 for p in server.model.parameters())
    assert asyncio.run(run(greedy, prompts[:1]))[0].extra_fields["global_steps"] == 7
    with pytest.raises(RuntimeError, match="unexpected"):
        asyncio.run(server.load_weights([("not.a.weight", torch.zeros(1))], global_steps=8))
