"""Shared by the evaluation tests (tests/sgsd/eval/, tests/sgsd/cli/test_eval.py): toy
problem files, a scripted client that answers per problem, the saved samples."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sgsd.eval.runner import EvalConfig, evaluate
from sgsd.llm import ScriptedClient

SCRIPTED = {"model": "scripted"}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from intra-op threads; on 2 busy cores they spin-wait."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_problems(path: Path, answers: list[str]) -> Path:
    path.write_text("".join(json.dumps({"problem": f"Problem number {i}: find the value.", "answer": a}) + "\n"
                            for i, a in enumerate(answers)))
    return path


def per_problem_client(script: dict[int, list[str]]) -> ScriptedClient:
    """Replies to problem ``p``'s prompts with ``script[p]`` in order (sample j gets the j-th)."""
    seen: dict[int, int] = {}

    def reply(prompt: str) -> str:
        p = int(prompt.split("Problem number ")[1].split(":")[0])
        seen[p] = seen.get(p, 0) + 1
        return script[p][seen[p] - 1]

    return ScriptedClient(reply)


def sample_rows(out: Path, dataset: str) -> list[dict]:
    return [json.loads(line) for line in (out / dataset / "samples.jsonl").read_text().splitlines()]


def scored_run(path: Path, data: Path, replies: dict[int, list[str]]) -> Path:
    evaluate(path, None, [str(data)], EvalConfig(samples=2), client=per_problem_client(replies),
             model_identity=SCRIPTED, progress=False)
    return path
