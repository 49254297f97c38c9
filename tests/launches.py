"""The real verl launches of the default test tier: one per distinct trainer path, each run
once per session and read by every test that needs it (the fixtures are in tests/conftest.py).

========================  ===========================================================================
launch                    what it runs (tiny local Qwen3 and the shipped MATH rows, shared by all)
========================  ===========================================================================
``live_run``              SGSD, live teacher, 3 steps on the rulebook task and its pretrained model
                          (real outcomes); validation after every step; the policy itself writes
                          skills at step 2 (online update through verl's rollout server)
``frozen_lora_run``       SGSD, frozen teacher = the actor with its LoRA adapter off, 2 steps; its
                          checkpoint has no hf_model copy (``sgsd eval --verl-checkpoint`` merges it)
``evolution_runs``        SGSD, frozen teacher = a separate reference model, a one-pair bank that an
                          OpenAI-compatible writer grows every 2 steps: 4 steps, then a resume to 6
``learning_runs``         SGSD (n = 1) and GRPO (n = 4) on the rulebook as the learning benchmark
                          runs them (seed 0), 4 steps, validation every 2 (test_learning_e2e.py),
                          launched side by side
``moving_teacher_run``    SGSD, EMA teacher (decay 0.5) in the reference model, 2 steps, a checkpoint
                          after each; ``--all`` adds its resume to 3 steps and a periodic LoRA teacher
GRPO                      verl's own ``verl.trainer.main_ppo`` with only the CPU backend
                          (tests/recipe/cpu/test_backend.py)
``sgsd_8b_simulation``    ``scripts/simulate_gpu_run.sh scripts/run_sgsd_qwen3_8b.sh``: ONE step of
                          the 8B script's own config on 2 CPU ranks (its 8 GPUs' per-rank counts)
``grpo_8b_simulation``    the same for ``run_grpo_qwen3_8b.sh`` (completions capped at 256 tokens)
(pre-fix geometry)        the 8B SGSD script on its old fixed micro-batches, geometry check off:
                          verl asserts (tests/recipe/cpu/test_simulate.py)
========================  ===========================================================================

``live_run`` and verl's own GRPO run train the rulebook model (sgsd/task_model.py) on its task and
are graded by the project's verifier: real outcomes. The others train the random tiny Qwen3 on the
shipped MATH rows, their mechanics the point; their rewards come from ``tests/alternating_reward.py``
(even dataset index = success), so every step holds both outcomes whatever the random model writes. ``SGSD_DEBUG_DUMP_DIR`` makes the
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
    """On the rulebook and its pretrained model (``rulebook_model_dir``/``rulebook_data_dir``): the
    verifier's real outcomes on 8 problems a step, the rulebook bank's right and misleading items."""
    skip_on_gpu()
    return launch(CPURun(workdir, steps=3, batch_size=8, task="rulebook", model_dir=model_dir, data_dir=data_dir,
                         env=_dumping(workdir), extra=[
        "sgsd.update.enable=true", "sgsd.update.freq=2", "sgsd.update.writer=policy",
        "sgsd.update.max_memories=2", "sgsd.update.max_new_tokens=24", "sgsd.update.max_completion_chars=400",
        "trainer.test_freq=1",  # validation passes: their rollouts must not enter the bank's window
        "actor_rollout_ref.actor.optim.lr_scheduler_type=linear",  # the GPU scripts' schedule (lr_schedule.py)
    ]))


# The learning tests (tests/recipe/test_learning_e2e.py): the benchmark's configuration for its seed 0
# (scripts/bench_learning.py, recipe.sgsd.cpu.run.rulebook_method_run), its first 4 steps
LEARNING_STEPS = 4
LEARNING_METHODS = {"sgsd": 1, "grpo": 4}  # variant -> rollouts per problem, as the benchmark runs them


def learning_runs(workdir: Path, data_dir: Path) -> dict[str, CPURun]:
    """SGSD and GRPO launched side by side (their start-ups overlap on the 2 cores), both awaited."""
    from recipe.sgsd.cpu.run import rulebook_method_run

    skip_on_gpu()
    runs = {name: rulebook_method_run(workdir / name, name, n, 0, data_dir, steps=LEARNING_STEPS)
            for name, n in LEARNING_METHODS.items()}
    logs, processes = {}, {}
    for name, run in runs.items():
        run.workdir.mkdir(parents=True)
        logs[name] = open(run.workdir / "train.log", "wb")
        processes[name] = run.start(logs[name])
    for name, process in processes.items():
        code = process.wait(timeout=1500)
        logs[name].close()
        assert code == 0, (runs[name].workdir / "train.log").read_text()[-5000:]
    return runs


FROZEN_LORA_TOPK = 8


def frozen_lora_run(workdir: Path, model_dir: Path, data_dir: Path) -> CPURun:
    skip_on_gpu()
    # the hf rollout takes merged weights; the teacher is the actor with its adapter disabled, and
    # it hands the loss its top-k distribution (forward KL: the OPSD baseline's objective)
    return launch(CPURun(workdir, steps=2, model_dir=model_dir, data_dir=data_dir, env=_dumping(workdir), extra=[
        *REWARD, "sgsd.teacher=frozen", f"sgsd.teacher_topk={FROZEN_LORA_TOPK}", "sgsd.ablation.loss_type=fkl",
        "actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
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


# A moving teacher (recipe/sgsd/teacher_weights.py): a decay of 0.5 and a rate of 1e-2 make each
# step's update visible in the teacher's log-probs; a checkpoint after every step keeps each
# step's student (hf_model) and teacher (sgsd/teacher/) for the tests to recompute.
EMA_TEACHER = ("sgsd.teacher=ema", "sgsd.teacher_ema_decay=0.5", "trainer.save_freq=1",
               "actor_rollout_ref.actor.optim.lr=1e-2")
PERIODIC_LORA_TEACHER = ("sgsd.teacher=periodic", "sgsd.teacher_period=2", "trainer.save_freq=1",
                         "actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
                         "++actor_rollout_ref.model.lora.merge=true", "actor_rollout_ref.actor.optim.lr=5e-2")


def moving_teacher_run(workdir: Path, model_dir: Path, data_dir: Path) -> CPURun:
    """SGSD with an EMA teacher in the reference model (full fine-tuning), 2 steps."""
    skip_on_gpu()
    return launch(CPURun(workdir, steps=2, model_dir=model_dir, data_dir=data_dir, env=_dumping(workdir),
                         extra=[*REWARD, *EMA_TEACHER]))


def moving_teacher_resumed(run: CPURun, workdir: Path) -> CPURun:
    """``moving_teacher_run``'s folder copied, then trained on to step 3 (verl resumes from step 2)."""
    import shutil

    skip_on_gpu()
    shutil.copytree(run.workdir, workdir, dirs_exist_ok=True)
    return launch(CPURun(workdir, steps=3, model_dir=run.model_dir, data_dir=run.data_dir, env=_dumping(workdir),
                         extra=[*REWARD, *EMA_TEACHER]))


def periodic_lora_run(workdir: Path, model_dir: Path, data_dir: Path) -> CPURun:
    """SGSD with a periodic teacher (period 2) kept as a copy of the LoRA adapter, 3 steps."""
    skip_on_gpu()
    return launch(CPURun(workdir, steps=3, model_dir=model_dir, data_dir=data_dir, env=_dumping(workdir),
                         extra=[*REWARD, *PERIODIC_LORA_TEACHER]))


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
