"""SGSD through verl 0.9.1's real trainer on CPU (tiny local Qwen3, shipped bank, MiniLM).

One SGSD run (3 steps, live teacher) and one frozen-teacher run (2 steps) are made once
per module; the tests read what they logged and dumped (``SGSD_DEBUG_DUMP_DIR``: what the
teacher pass scored, and every micro-batch the actor's loss saw) and check it against
independent computations: a plain transformers forward and the library objective.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path

import pytest
import torch

from recipe.sgsd.cpu.run import CPURun
from sgsd.objective import sgsd_objective

pytestmark = pytest.mark.slow


def _run(workdir: Path, steps: int, *extra: str) -> CPURun:
    from recipe.sgsd.cpu.backend import gpu_present

    if gpu_present():
        pytest.skip("the CPU backend stays off on GPU machines")
    run = CPURun(workdir, steps=steps, extra=list(extra), env={"SGSD_DEBUG_DUMP_DIR": str(workdir / "dump")})
    done = run.run(capture=True, timeout=1200)
    assert done.returncode == 0, (done.stdout[-5000:], done.stderr[-5000:])
    return run


@pytest.fixture(scope="module")
def live_run(tmp_path_factory) -> CPURun:
    return _run(tmp_path_factory.mktemp("sgsd_live"), 3)


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory) -> CPURun:
    return _run(tmp_path_factory.mktemp("sgsd_frozen"), 2, "sgsd.teacher=frozen", "actor_rollout_ref.actor.optim.lr=1e-2")


@pytest.fixture(scope="module")
def frozen_lora_run(tmp_path_factory) -> CPURun:
    # the hf rollout takes merged weights; the teacher is the actor with its adapter disabled
    return _run(tmp_path_factory.mktemp("sgsd_frozen_lora"), 2, "sgsd.teacher=frozen",
                "actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
                "++actor_rollout_ref.model.lora.merge=true", "actor_rollout_ref.actor.optim.lr=5e-2")


def _model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _response_log_probs(model, prompt: torch.Tensor, response: torch.Tensor, temperature: float) -> torch.Tensor:
    ids = torch.cat([prompt, response])[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float() / temperature, -1)
    return logp[len(prompt) - 1: len(ids[0]) - 1].gather(-1, response[:, None]).squeeze(-1)


def _dump(run: CPURun, step: int) -> dict:
    return torch.load(run.workdir / "dump" / f"teacher_pass_step{step:04d}.pt")


# Logged values are bf16 forwards on the actor (verl's mixed precision) vs an fp32 forward
# here: ~0.04 mean abs difference. A wrong context or a one-token shift is ~2.4 (measured).
TOLERANCE = 0.15


def test_sgsd_runs_logs_finite_sgsd_metrics_and_changes_the_actor(live_run):
    from safetensors.torch import load_file

    steps = live_run.metrics()
    assert [s["step"] for s in steps] == [1, 2, 3]
    required = ["helpful_frac", "warning_frac", "over_suppressive_frac", "misleading_frac", "neutral_frac",
                "support_mean", "gate_loss", "teachers_per_problem", "mask_keep_frac", "teacher_tokens",
                "teacher_pass_time", "retrieval_time", "loss"]
    for step in steps:
        data = step["data"]
        for name in required:
            value = data[f"sgsd/{name}"]
            assert isinstance(value, (int, float)) and math.isfinite(value), (name, value)
        fractions = sum(data[f"sgsd/{k}"] for k in required[:5])
        assert fractions == pytest.approx(1.0, abs=1e-5)
        assert data["sgsd/teachers_per_problem"] == pytest.approx(4.0)  # sgsd.top_k=4, K_x = 4
        assert data["actor/grad_norm"] > 0
        # the support distribution of the step: ordered quantiles within the clip
        q = [data[f"sgsd/support_p{p}"] for p in ("10", "25", "50", "75", "90")]
        assert q == sorted(q) and all(-3.0 <= v <= 3.0 for v in q)
    initial = load_file(live_run.model_dir / "model.safetensors")
    trained = load_file(live_run.checkpoint_dir / "global_step_3" / "actor" / "huggingface" / "model.safetensors")
    assert max((trained[k].float() - initial[k].float()).abs().max().item() for k in initial) > 1e-4


def test_teacher_log_probs_equal_an_independent_forward_of_teacher_prompt_plus_response(live_run):
    """Step 1 scores with the initial weights, so a fresh transformers model must agree."""
    dump = _dump(live_run, 1)
    model = _model(live_run.model_dir)
    checked = set()
    for j, (owner, slot) in enumerate(zip(dump["owner"], dump["slot"])):
        if owner >= 2:  # a few rollouts, all their K teachers
            continue
        response = dump["responses"][owner]
        prompt = torch.tensor(dump["prompt_ids"][j])
        reference = _response_log_probs(model, prompt, response, dump["temperature"])
        assert (reference - dump["scored"][j].float()).abs().mean().item() < TOLERANCE
        # ...and the teacher's context mattered: the student's own prompt gives other numbers
        student_view = _response_log_probs(model, dump["student_prompts"][owner], response, dump["temperature"])
        assert (student_view - dump["scored"][j].float()).abs().mean().item() > 4 * TOLERANCE
        checked.add((owner, slot))
    assert checked == {(o, k) for o in range(2) for k in range(4)}


def test_the_loss_the_actor_computed_is_the_library_objective_on_the_teacher_pass_tensors(live_run):
    from sgsd.config import SGSDConfig

    cfg = SGSDConfig.from_mapping({"top_k": 4}).objective_config()
    passes = [_dump(live_run, s) for s in (1, 2, 3)]
    by_response = {}
    for p in passes:
        for j, (owner, slot) in enumerate(zip(p["owner"], p["slot"])):
            key = tuple(p["responses"][owner].tolist())
            by_response.setdefault(key, {"alpha": p["alpha"][owner]})[slot] = p["scored"][j]
    micro_batches = [torch.load(f) for f in sorted(glob.glob(str(live_run.workdir / "dump" / "loss_*.pt")))]
    assert len(micro_batches) == 6  # 3 steps x (4 rollouts / micro-batch 2)
    for mb in micro_batches:
        out = sgsd_objective(mb["student"], mb["teacher"], mb["token_mask"], mb["alpha"], mb["sign"], cfg,
                             response_mask=mb["response_mask"])
        expected = out.loss.sum() / mb["global_batch_size"] * mb["dp_size"]
        assert mb["loss"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
        for b in range(mb["student"].shape[0]):
            length = int(mb["response_mask"][b].sum())
            entry = by_response[tuple(mb["responses"][b, :length].tolist())]
            torch.testing.assert_close(mb["alpha"][b], entry["alpha"].to(mb["alpha"].dtype))
            for k in range(4):  # the teacher log-probs reached the loss aligned, slot by slot
                torch.testing.assert_close(mb["teacher"][b, k, :length].float(), entry[k].float())


@pytest.mark.parametrize("run_name", ["frozen_run", "frozen_lora_run"])
def test_frozen_teacher_scores_with_the_initial_weights_while_the_actor_moves(run_name, request):
    """Separate reference model (full fine-tuning) and LoRA-disabled actor (LoRA)."""
    frozen_run = request.getfixturevalue(run_name)
    model = _model(frozen_run.model_dir)
    dump = _dump(frozen_run, 2)  # after one update of the actor
    teacher_err = max(
        (_response_log_probs(model, torch.tensor(dump["prompt_ids"][j]), dump["responses"][owner], dump["temperature"])
         - dump["scored"][j].float()).abs().mean().item()
        for j, owner in enumerate(dump["owner"])
    )
    student_err = max(
        (_response_log_probs(model, dump["student_prompts"][i], dump["responses"][i], dump["temperature"])
         - dump["student_log_probs"][i].float()).abs().mean().item()
        for i in range(len(dump["responses"]))
    )
    assert teacher_err < TOLERANCE  # frozen: still the initial model
    assert student_err > 2 * TOLERANCE  # the actor's own log-probs moved away from it


def test_frozen_run_logged_two_steps(frozen_run):
    steps = frozen_run.metrics()
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["data"]["sgsd/loss"]) for s in steps)
