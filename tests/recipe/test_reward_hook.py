"""The reward-manager hook with real Ray, the real verifier and a real tokenizer:
N scored rollouts become N records in the shared buffer, from several workers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


def _trajectory(tokenizer, problem: str, response: str, answer: str, step: int):
    from tensordict import TensorDict

    from sgsd.prompts import student_prompt
    from verl import DataProto

    prompt_ids = torch.tensor(tokenizer.encode(student_prompt(problem)))
    response_ids = torch.tensor(tokenizer.encode(response))
    input_ids = torch.cat([prompt_ids, response_ids])
    batch = TensorDict({"prompts": prompt_ids[None], "responses": response_ids[None], "input_ids": input_ids[None],
                        "attention_mask": torch.ones_like(input_ids)[None]}, batch_size=1)
    non_tensor = {
        "data_source": np.array(["math"]),
        "reward_model": np.array([{"style": "rule", "ground_truth": answer}], dtype=object),
        "extra_info": np.array([{"problem": problem, "answer": answer}], dtype=object),
        "global_steps": np.array([step]),
    }
    return DataProto(batch=batch, non_tensor_batch=non_tensor)


def test_n_scored_rollouts_make_n_records(ray_local, tiny_tokenizer):
    from omegaconf import OmegaConf

    from recipe.sgsd.reward_hook import SGSDRewardManager, record_buffer
    from sgsd.verifier import compute_score

    config = OmegaConf.create({"sgsd": {"record_buffer_size": 64}})
    buffer = record_buffer(64)  # the trainer creates (and so owns) it before any reward worker
    cases = [("What is 1+1?", "so \\boxed{2}", "2"), ("What is 2+2?", "I get \\boxed{5}", "4"),
             ("Half of 1?", "\\boxed{\\frac{1}{2}}", "0.5"), ("No box?", "it is 3", "3"), ("Seven?", "\\boxed{7}", "7")]

    async def run():
        # built inside the loop, as verl's RewardLoopWorker does (the manager keeps its loop)
        managers = [SGSDRewardManager(config, tiny_tokenizer, compute_score) for _ in range(2)]  # two "workers"
        results = []
        for i, (problem, response, answer) in enumerate(cases):
            manager = managers[i % 2]
            results.append(await manager.run_single(_trajectory(tiny_tokenizer, problem, response, answer, step=3)))
        return results

    results = asyncio.run(run())
    records = ray.get(buffer.drain.remote())
    assert len(records) == len(cases)
    assert [r.problem for r in records] == [c[0] for c in cases]
    assert [r.reward for r in records] == [res["reward_score"] for res in results] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert all(r.step == 3 and r.data_source == "math" for r in records)
    assert "\\boxed{2}" in records[0].response and records[1].answer == "4"
    assert ray.get(record_buffer().drain.remote()) == []  # the same actor by name; read once
