"""The real verl launches of the default test tier: one per distinct trainer path, each run
once per session and read by every test that needs it (the fixtures are in tests/conftest.py).

========================  ===========================================================================
launch                    what it runs (tiny local Qwen3 and the shipped MATH rows, shared by all)
========================  ===========================================================================
``live_run``              SGSD, live teacher, 3 steps; validation after every step; the policy itself
                          writes skills at step 2 (online update through verl's rollout server)
``frozen_lora_run``       SGSD, frozen teacher = the actor with its LoRA adapter off, 2 steps; its
                          checkpoint has no hf_model copy (``sgsd eval --verl-checkpoint`` merges it)
``evolution_runs``        SGSD, frozen teacher = a separate reference model, a one-pair bank that an
                          OpenAI-compatible writer grows every 2 steps: 4 steps, then a resume to 6
GRPO                      verl's own ``verl.trainer.main_ppo`` with only the CPU backend
                          (tests/recipe/cpu/test_backend.py)
``sgsd_8b_simulation``    ``scripts/simulate_gpu_run.sh scripts/run_sgsd_qwen3_8b.sh``: ONE step of
                          the 8B script's own config on 2 CPU ranks (its 8 GPUs' per-rank counts)
``grpo_8b_simulation``    the same for ``run_grpo_qwen3_8b.sh`` (completions capped at 256 tokens)
(pre-fix geometry)        the 8B SGSD script on its old fixed micro-batches, geometry check off:
                          verl asserts (tests/recipe/cpu/test_simulate.py)
========================  ===========================================================================

Rewards come from ``tests/alternating_reward.py`` (even dataset index = success), so every
step holds both outcomes whatever the random model writes. ``SGSD_DEBUG_DUMP_DIR`` makes the
trainer dump what the teacher pass scored and every micro-batch the actor's loss saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recipe.sgsd.cpu.run import CPURun

REWARD = ("reward.custom_reward_function.path=pkg://tests.alternating_reward",
          "reward.custom_reward_function.name=compute_score")


def skip_on_gpu() -> None:
    from recipe.sgsd.cpu.backend import gpu_present

    if gpu_present():
        pytest.skip("the CPU backend stays off on GPU machines")


def launch(run: CPURun, timeout: float = 1200) -> CPURun:
    done = run.run(capture=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-5000:], done.stderr[-5000:])
    return run


def by_step(run: CPURun) -> dict[int, dict]:
    """The run's metrics file, ``{step: {key: value}}`` (lines of one step merged)."""
    from recipe.sgsd.cpu import run as cpu_run

    return cpu_run.by_step(run.metrics())


def _dumping(workdir: Path) -> dict[str, str]:
    return {"SGSD_DEBUG_DUMP_DIR": str(workdir / "dump")}


def live_run(workdir: Path, model_dir: Path, data_dir: Path) -> CPURun:
    skip_on_gpu()
    return launch(CPURun(workdir, steps=3, model_dir=model_dir, data_dir=data_dir, env=_dumping(workdir), extra=[
        *REWARD, "sgsd.update.enable=true", "sgsd.update.freq=2", "sgsd.update.writer=policy",
        "sgsd.update.max_memories=2", "sgsd.update.max_new_tokens=24", "sgsd.update.max_completion_chars=400",
        "trainer.test_freq=1",  # validation passes: their rollouts must not enter the bank's window
        "actor_rollout_ref.actor.optim.lr_scheduler_type=linear",  # the GPU scripts' schedule (lr_schedule.py)
    ]))


def frozen_lora_run(workdir: Path, model_dir: Path, data_dir: Path) -> CPURun:
    skip_on_gpu()
    # the hf rollout takes merged weights; the teacher is the actor with its adapter disabled
    return launch(CPURun(workdir, steps=2, model_dir=model_dir, data_dir=data_dir, env=_dumping(workdir), extra=[
        *REWARD, "sgsd.teacher=frozen", "actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
        "++actor_rollout_ref.model.lora.merge=true", "actor_rollout_ref.actor.optim.lr=5e-2",
        # what a real run keeps: the FSDP shards (and LoRA adapter), no merged hf_model copy
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra]",
    ]))


def small_bank(bank, path: Path) -> Path:
    """One static skill and one static mistake: one teacher per problem until the bank grows."""
    bank.with_items(general_skills=bank.general_skills[:1], common_mistakes=bank.common_mistakes[:1]).save(path)
    return path


def evolution_runs(workdir: Path, model_dir: Path, data_dir: Path, bank) -> dict:
    """4 steps, then the same command with 6 steps (verl resumes from global_step_4)."""
    from tests.skill_writer import WriterServer

    skip_on_gpu()
    bank_file = small_bank(bank, workdir / "small_bank.json")
    with WriterServer() as server:
        common = [*REWARD, f"sgsd.bank_path={bank_file}", "sgsd.update.enable=true", "sgsd.update.freq=2",
                  f'sgsd.update.writer="openai:{server.base_url}#skill-writer"',  # quoted: ':' and '#' for Hydra
                  "sgsd.update.max_new_items=2", "sgsd.update.capacity=3", "sgsd.update.max_memories=2",
                  "trainer.save_freq=2", "sgsd.teacher=frozen", "actor_rollout_ref.actor.optim.lr=1e-2"]
        first = launch(CPURun(workdir, steps=4, model_dir=model_dir, data_dir=data_dir, extra=common,
                              env=_dumping(workdir)))
        first_metrics = by_step(first)
        requests_first = len(server.requests)
        second = launch(CPURun(workdir, steps=6, model_dir=model_dir, data_dir=data_dir, extra=common,
                               env=_dumping(workdir)))
    return {"first": first, "first_metrics": first_metrics, "second": second, "resumed": by_step(second),
            "bank_file": bank_file, "requests_first": requests_first}


# ----------------------------------------------------------------------------- GPU scripts on CPU ranks
def simulate(script: str, workdir: Path, model_dir: Path, data_dir: Path, *args: str, env: dict | None = None,
             timeout: float = 1200):
    """``scripts/simulate_gpu_run.sh SCRIPT`` (its python entry, in this interpreter): ONE step
    of a GPU script's own config on 2 CPU ranks, on the session's tiny model and data."""
    import os
    import subprocess
    import sys

    from recipe.sgsd.cpu.overrides import cpu_env

    skip_on_gpu()
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "recipe.sgsd.cpu.simulate", str(root / "scripts" / script),
               "--workdir", str(workdir), "--model-dir", str(model_dir), "--data-dir", str(data_dir), *args]
    run_env = cpu_env(dict(os.environ), pythonpath=str(root))
    run_env.update(env or {})
    return subprocess.run(command, cwd=workdir.parent, env=run_env, text=True, capture_output=True, timeout=timeout)


def sgsd_8b_simulation(workdir: Path, model_dir: Path, data_dir: Path) -> Path:
    """run_sgsd_qwen3_8b.sh on 2 CPU ranks (16 problems on 8 GPUs -> 4 on 2 ranks), alternating
    rewards so both outcomes reach the loss, dumping what the teacher pass and the loss saw."""
    done = simulate("run_sgsd_qwen3_8b.sh", workdir, model_dir, data_dir, *REWARD, env=_dumping(workdir))
    assert done.returncode == 0, (done.stdout[-5000:], done.stderr[-5000:])
    (workdir / "simulate.out").write_text(done.stdout)
    return workdir


def grpo_8b_simulation(workdir: Path, model_dir: Path, data_dir: Path) -> Path:
    """run_grpo_qwen3_8b.sh on 2 CPU ranks (16 x 8 rollouts on 8 GPUs -> 4 x 8 on 2 ranks),
    completions capped at 256 tokens (the script's 16000: CPU generation time)."""
    done = simulate("run_grpo_qwen3_8b.sh", workdir, model_dir, data_dir, "--max-response-length", "256",
                    REWARD[0], "reward.custom_reward_function.name=compute_score_by_response")  # varies in a group
    assert done.returncode == 0, (done.stdout[-5000:], done.stderr[-5000:])
    (workdir / "simulate.out").write_text(done.stdout)
    return workdir
