"""Run SGSD (or GRPO) through verl's real trainer on a CPU, on the embedded defaults.

This is the main job of ``bash scripts/run_sgsd_cpu.sh`` and the launcher the end-to-end
tests and the teacher-pass benchmark share: it builds the tiny local Qwen3 (no hub),
writes a verl parquet from the shipped MATH subset, and runs
``python -m recipe.sgsd.main_sgsd`` with the CPU backend's overrides, the shipped
Qwen3-1.7B skill bank and the packaged MiniLM encoder, logging with verl's ``console``
and ``file`` loggers (one JSON object per step).

    python -m recipe.sgsd.cpu.run --workdir outputs/sgsd_cpu [--steps 4] [--estimator grpo] [override ...]
    python -m recipe.sgsd.cpu.run --workdir outputs/sgsd_cpu_sokoban --task sokoban   # multi-turn episodes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from recipe.sgsd.cpu.overrides import CPU_OVERRIDES, cpu_env

ROOT = Path(__file__).resolve().parents[3]


class RunFolder:
    """A CPU training run's folder: verl's file-logger metrics and its checkpoints (needs ``workdir``)."""

    workdir: Path

    @property
    def metrics_file(self) -> Path:
        return self.workdir / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / "checkpoints"

    def metrics(self) -> list[dict]:
        """One ``{"step": n, "data": {...}}`` per logged line, from verl's file logger."""
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]


@dataclass
class CPURun(RunFolder):
    """One CPU training run: where it lives and how big it is."""

    workdir: Path
    steps: int = 3
    estimator: str = "sgsd"
    batch_size: int = 4
    rollout_n: int = 1
    response_length: int = 48
    top_k: int = 4
    train_rows: int = 64
    val_rows: int | None = None  # validation problems (default: batch_size; rulebook: RULEBOOK_VAL_ROWS)
    model_dir: Path | None = None  # default: the task's model (run_model; math/sokoban: built once)
    data_dir: Path | None = None  # default: <workdir>/data, written once (write_run_data)
    variant: str | None = None  # a baseline/ablation of recipe.sgsd.variants (sets the estimator too)
    # math (the shipped MATH subset, the random tiny model) | rulebook (the learnable synthetic task
    # and its pretrained model) | sokoban (multi-turn episodes): TASKS
    task: str = "math"
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: one of {', '.join(TASKS)}")
        if self.variant is not None:
            from recipe.sgsd.variants import get_variant

            self.estimator = get_variant(self.variant).estimator

    @property
    def _student_skills(self) -> bool:
        from recipe.sgsd.variants import get_variant

        return self.variant is not None and get_variant(self.variant).student_skills

    def prepare(self) -> None:
        """Tiny model and parquet data, each built once (runs may share both)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.model_dir is None:
            self.model_dir = run_model(self.task, self.workdir)
        if self.data_dir is None:
            self.data_dir = self.workdir / "data"
        if self.task == "sokoban":
            write_episode_data(self.data_dir, self.train_rows, self.batch_size)
            return
        if self.task == "rulebook":
            write_rulebook_data(self.data_dir, self.train_rows, self.val_rows or RULEBOOK_VAL_ROWS,
                                student_skills=self._student_skills, top_k=self.top_k)
            return
        write_run_data(self.data_dir, self.train_rows, self.val_rows or self.batch_size,
                       student_skills=self._student_skills, top_k=self.top_k)

    def overrides(self) -> list[str]:
        data = self.data_dir or self.workdir / "data"
        variant = ()
        if self.variant is not None:
            from recipe.sgsd.variants import get_variant

            variant = get_variant(self.variant).overrides
        train = data / ("train_skills.parquet" if self._student_skills else "train.parquet")
        val = data / "val.parquet"
        # a student prompt that carries 4 skill-mistake pairs is ~1k tiny-tokenizer tokens
        prompt_length, response_length, task = (1536 if self._student_skills else 256), self.response_length, []
        if self.task == "sokoban":
            train, val = data / EPISODE_FILES[0], data / EPISODE_FILES[1]
            # the task message (rules, legend, board) is ~300 tokens; the response is the whole
            # trajectory: EPISODE_LEVEL's turns of max_turn_tokens each and the observations between
            prompt_length, response_length = 512, max(self.response_length, EPISODE_RESPONSE_LENGTH)
            # the skill files of a file-skill teacher (SDAR, RLSD): the shipped Sokoban ones
            task = [f"sgsd.agent.max_turn_tokens={EPISODE_TURN_TOKENS}", "sgsd.skills.files=sokoban"]
        elif self.task == "rulebook":  # its own guidance: the bank (right and misleading items), SDAR's files
            prompt_length = 640 if self._student_skills else 128
            task = ["sgsd.bank_path=rulebook", "sgsd.skills.files=rulebook"]
        return [
            f"algorithm.adv_estimator={self.estimator}",
            f"data.train_files={train}", f"data.val_files={val}",
            f"data.train_batch_size={self.batch_size}",
            f"data.max_prompt_length={prompt_length}",
            f"data.max_response_length={response_length}", "data.shuffle=false", *task,
            f"actor_rollout_ref.model.path={self.model_dir}",
            f"actor_rollout_ref.rollout.n={self.rollout_n}",
            f"actor_rollout_ref.actor.ppo_mini_batch_size={self.batch_size}",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
            "actor_rollout_ref.rollout.temperature=1.1", "actor_rollout_ref.rollout.top_p=0.95",
            "actor_rollout_ref.actor.optim.lr=1e-3",
            "actor_rollout_ref.actor.use_kl_loss=false", "algorithm.use_kl_in_reward=false",
            f"trainer.total_training_steps={self.steps}", "trainer.val_before_train=false", "trainer.test_freq=-1",
            "trainer.logger=[console,file]", "trainer.project_name=sgsd_cpu",
            f"trainer.experiment_name={self.estimator}", f"trainer.default_local_dir={self.checkpoint_dir}",
            f"trainer.save_freq={self.steps}",
            "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
            f"sgsd.top_k={self.top_k}", "sgsd.max_teacher_prompt_length=768",
            # the project's 0/1 verifier for every estimator (main_sgsd sets it only for sgsd;
            # verl's default math reward scores -1/1), so CPU runs compare on one scale
            "reward.custom_reward_function.path=pkg://sgsd.verifier",
            "reward.custom_reward_function.name=compute_score",
            *variant, *self.extra,
        ]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "recipe.sgsd.main_sgsd", *CPU_OVERRIDES, *self.overrides()]

    def environment(self) -> dict[str, str]:
        env = cpu_env(pythonpath=str(ROOT))
        env["VERL_FILE_LOGGER_PATH"] = str(self.metrics_file)
        env.update(self.env)
        return env

    def run(self, *, timeout: float | None = None, capture: bool = False) -> subprocess.CompletedProcess:
        """Train (or resume the workdir's checkpoint up to ``steps``: verl's ``resume_mode=auto``;
        the metrics of the steps already done stay in the metrics file)."""
        self.prepare()
        return subprocess.run(self.command(), cwd=self.workdir, env=self.environment(), timeout=timeout,
                              capture_output=capture, text=True)

    def start(self, log) -> subprocess.Popen:
        """Launch in the background, stdout and stderr into the open file ``log``."""
        self.prepare()
        return subprocess.Popen(self.command(), cwd=self.workdir, env=self.environment(), stdout=log,
                                stderr=subprocess.STDOUT)

    def checkpointed_step(self) -> int:
        """The step verl would resume from (its ``latest_checkpointed_iteration.txt``), 0 if none."""
        marker = self.checkpoint_dir / "latest_checkpointed_iteration.txt"
        try:
            return int(marker.read_text().strip())
        except (OSError, ValueError):
            return 0



# A random model with Qwen3's init (0.02) is nearly blind to its prompt, so every teacher
# would sit in the neutral zone; a wider init makes context matter.
RUN_MODEL_INIT = 0.3


def build_run_model(folder: Path) -> Path:
    """The tiny local Qwen3 CPU runs train (built unless ``folder`` already holds it)."""
    from sgsd.tiny_model import build_tiny_model

    if not (folder / "config.json").exists():
        build_tiny_model(folder, initializer_range=RUN_MODEL_INIT)
    return folder


def write_run_data(folder: Path, train_rows: int, val_rows: int, *, student_skills: bool = False,
                   top_k: int = 4) -> Path:
    """``train.parquet`` (the first ``train_rows`` shipped MATH problems), ``val.parquet``
    (the next ``val_rows``) and, for the skill-in-the-student variants, ``train_skills.parquet``
    (the same problems with their top-``top_k`` pairs from the shipped Qwen3-1.7B bank in
    the student prompt); files already there are kept."""
    from sgsd.datasets import load_problems, resolve
    from sgsd.verl_data import to_verl_rows, write_parquet

    problems = load_problems(resolve("math_train", "train"), require_answer=True)
    if not (folder / "train.parquet").exists():
        write_parquet(to_verl_rows(problems[:train_rows], "math", "train"), folder / "train.parquet")
        write_parquet(to_verl_rows(problems[train_rows: train_rows + val_rows], "math", "test"),
                      folder / "val.parquet")
    if student_skills and not (folder / "train_skills.parquet").exists():  # GRPO+Skill / OPSD+Skill
        _write_student_skills(problems[:train_rows], "math", "qwen3_1.7b", top_k, folder / "train_skills.parquet")
    return folder


TASKS = ("math", "rulebook", "sokoban")


def run_model(task: str, workdir: Path) -> Path:
    """The model a task's CPU runs train: the rulebook's pretrained one (shipped,
    :mod:`sgsd.task_model`), else the random tiny Qwen3 built in ``workdir`` once."""
    if task == "rulebook":
        from sgsd.task_model import shipped_model_dir

        return shipped_model_dir()
    return build_run_model(workdir / "tiny_qwen3")


#: Rulebook validation problems of the CPU runs (10 per operation): 60 sampled answers put the
#: standard error of an accuracy near 0.5 at 0.065
RULEBOOK_VAL_ROWS = 60


def write_rulebook_data(folder: Path, train_rows: int, val_rows: int = RULEBOOK_VAL_ROWS, *,
                        student_skills: bool = False, top_k: int = 4, seed: int = 0) -> Path:
    """``train.parquet`` / ``val.parquet`` of the rulebook task (:mod:`sgsd.rulebook`, problems of
    its train and validation splits drawn by ``seed``, the operations in turn) and, for the
    skill-in-the-student variants, ``train_skills.parquet`` with each problem's top-``top_k``
    pairs from the rulebook bank; files already there are kept."""
    from sgsd import rulebook
    from sgsd.verl_data import to_verl_rows, write_parquet

    train = rulebook.problems("train", train_rows, seed=seed)
    if not (folder / "train.parquet").exists():
        write_parquet(to_verl_rows(train, rulebook.DATA_SOURCE, "train"), folder / "train.parquet")
        write_parquet(to_verl_rows(rulebook.problems("val", val_rows, seed=seed), rulebook.DATA_SOURCE, "test"),
                      folder / "val.parquet")
    if student_skills and not (folder / "train_skills.parquet").exists():
        _write_student_skills(train, rulebook.DATA_SOURCE, "rulebook", top_k, folder / "train_skills.parquet")
    return folder


def _write_student_skills(problems, data_source: str, bank_name: str, top_k: int, path: Path) -> None:
    """GRPO+Skill / OPSD+Skill rows: ``problems`` with their top-``top_k`` pairs of the shipped bank
    ``bank_name`` in the student prompt (retrieved with the packaged MiniLM)."""
    from sgsd.bank import SkillBank
    from sgsd.datasets import resolve
    from sgsd.retrieval import DEFAULT_ENCODER, SentenceTransformerEncoder, SkillRetriever
    from sgsd.verl_data import guidance_source, retrieve_student_guidance, to_verl_rows, write_parquet

    bank = resolve(bank_name, "bank")
    retriever = SkillRetriever(SentenceTransformerEncoder(), SkillBank.load(bank), top_k=top_k)
    write_parquet(to_verl_rows(problems, data_source, "train", student_guidance=retrieve_student_guidance(problems,
                                                                                                       retriever),
                               guidance_source=guidance_source(bank, DEFAULT_ENCODER, top_k)), path)


# CPU episodes: small levels, few turns (the tiny random model rarely writes a valid move; the
# run shows the mechanics, and prepare_data's random-policy floor is the bar a real model beats)
EPISODE_LEVEL = {"size": (6, 6), "boxes": 1, "max_turns": 3}
EPISODE_TURN_TOKENS = 24
EPISODE_RESPONSE_LENGTH = 448
EPISODE_FILES = ("sokoban_train.parquet", "sokoban_test.parquet")


def write_episode_data(folder: Path, train_rows: int, val_rows: int) -> Path:
    """``sokoban_train.parquet`` / ``sokoban_test.parquet``: seeded levels (:data:`EPISODE_LEVEL`),
    the validation levels disjoint from the training ones; files already there are kept."""
    from sgsd.envs.data import episode_rows
    from sgsd.envs.sokoban import levels
    from sgsd.verl_data import write_parquet

    for name, split, count in ((EPISODE_FILES[0], "train", train_rows), (EPISODE_FILES[1], "test", val_rows)):
        if not (folder / name).exists():
            folder.mkdir(parents=True, exist_ok=True)
            write_parquet(episode_rows(levels(split, count, **EPISODE_LEVEL), split), folder / name)
    return folder


def episode_floor(folder: Path) -> str:
    """The reward signal's bar on the run's levels: the scripted solver solves them all (the
    reward is reachable), and the random policy's success on the validation levels."""
    import pyarrow.parquet as pq

    from sgsd.envs import level_from_spec
    from sgsd.envs.sokoban_solver import random_policy, solve

    found = {}
    for name in EPISODE_FILES:
        found[name] = [level_from_spec(row["env"]) for row in pq.read_table(folder / name, columns=["extra_info"])
                       .column("extra_info").to_pylist()]
    solved = sum(solve(level) is not None for group in found.values() for level in group)
    floor = random_policy(found[EPISODE_FILES[1]], seed=0)
    return (f"[cpu_run] levels: {len(found[EPISODE_FILES[0]])} train, {len(found[EPISODE_FILES[1]])} validation "
            f"(disjoint boards); the scripted solver solves {solved}/{sum(map(len, found.values()))}; a random policy "
            f"solves {floor['success_rate']:.2f} of the validation levels in {EPISODE_LEVEL['max_turns']} turns "
            f"(the floor)")


# The demo shows one online bank update (Alg. 4) with the policy as its writer: every 2
# steps, on a small sample, with a short reply budget (the random tiny model writes noise,
# which the updater counts as parse failures; the bank stays valid).
DEMO_OVERRIDES = ("sgsd.update.freq=2", "sgsd.update.max_memories=2", "sgsd.update.max_new_tokens=48",
                  "sgsd.update.max_completion_chars=600")


#: The rulebook demo's scale: 16 problems a step, a fresh one each time (the training split holds
#: ~12.7k). The learning benchmark (scripts/bench_learning.py) takes its steps and batch, and draws
#: from a smaller pool (BENCH_TRAIN_ROWS)
RULEBOOK_RUN = {"steps": 12, "batch_size": 16, "train_rows": 2048}


def rulebook_validation(steps: int, user: list[str] = ()) -> list[str]:
    """Validation of a rulebook run: before training and every 2 steps (and at the end), on the
    RULEBOOK_VAL_ROWS problems, sampled as training samples (temperature 1.1, top-p 0.95), so
    step 0 is the pretrained model's accuracy and the curve is on the scale the build measured;
    minus the keys the user set."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in user}
    wanted = ["trainer.val_before_train=true", f"trainer.test_freq={min(2, steps)}",
              "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
              "actor_rollout_ref.rollout.val_kwargs.temperature=1.1",
              "actor_rollout_ref.rollout.val_kwargs.top_p=0.95"]
    return [o for o in wanted if o.split("=", 1)[0] not in given]


#: The learning benchmark's training pool (scripts/bench_learning.py) and the learning tests': 96
#: problems, each back every 6 steps at 16 a step (Skill-SD's same-problem summaries get a problem to
#: return to)
BENCH_TRAIN_ROWS = 96


def rulebook_method_run(workdir: Path, variant: str, rollout_n: int, seed: int, data_dir: Path, *,
                        steps: int = RULEBOOK_RUN["steps"], batch_size: int = RULEBOOK_RUN["batch_size"],
                        train_rows: int = BENCH_TRAIN_ROWS) -> CPURun:
    """One method of the learning comparison (``variant`` of recipe.sgsd.variants) on the rulebook,
    as the benchmark and the learning tests run it: rollout seed ``seed``, sampled validation before
    training and every 2 steps, ``data_dir`` written by :func:`write_rulebook_data`."""
    return CPURun(workdir, steps=steps, batch_size=batch_size, train_rows=train_rows, rollout_n=rollout_n,
                  variant=variant, task="rulebook", data_dir=data_dir,
                  extra=[*rulebook_validation(steps), f"actor_rollout_ref.rollout.seed={seed}"])


def demo_overrides(user: list[str]) -> list[str]:
    """DEMO_OVERRIDES minus the keys the user set (Hydra refuses a key given twice)."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in user}
    return [o for o in DEMO_OVERRIDES if o.split("=", 1)[0] not in given]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.environ.get("SGSD_CPU_WORKDIR", "outputs/sgsd_cpu"))
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps (default: rulebook {RULEBOOK_RUN['steps']}, math and sokoban 4)")
    parser.add_argument("--estimator", default="sgsd", help="sgsd (default) or grpo")
    parser.add_argument("--variant", default=None,
                        help="a baseline/ablation by name (python -m recipe.sgsd.variants list); sets the estimator")
    parser.add_argument("--task", default=os.environ.get("TASK") or "rulebook", choices=TASKS,
                        help="rulebook (default: the synthetic task its pretrained model learns, sgsd/rulebook.py), "
                             "math (the shipped MATH subset, random tiny model) or sokoban (multi-turn episodes "
                             "through verl's agent loop)")
    parser.add_argument("--rollout-n", type=int, default=None,
                        help="rollouts per problem (sgsd 1; grpo and its variants: Skill-SD, SDAR, RLSD 4)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. sgsd.top_k=8")
    args = parser.parse_args(argv)
    estimator, launcher = args.estimator, args.estimator
    if args.variant is not None:
        from recipe.sgsd.variants import get_variant

        try:
            variant = get_variant(args.variant)
        except ValueError as exc:
            parser.error(str(exc))
        estimator, launcher = variant.estimator, variant.launcher
    n = args.rollout_n or (1 if launcher == "sgsd" else 4)  # the GRPO script's variants keep a group
    # the bank-update demo on the random model's tasks; a rulebook run keeps the recipe's schedule
    # (every 25 steps: none in its 12) and shows learning instead
    demo = launcher == "sgsd" and args.task != "rulebook"
    extra = [*demo_overrides(args.overrides), *args.overrides] if demo else args.overrides
    sizes = dict(RULEBOOK_RUN) if args.task == "rulebook" else {"steps": 4}
    if args.steps is not None:
        sizes["steps"] = args.steps
    if args.task == "rulebook":
        extra = [*rulebook_validation(sizes["steps"], extra), *extra]
    run = CPURun(Path(args.workdir).resolve(), estimator=estimator, rollout_n=n, extra=extra,
                 variant=args.variant, task=args.task, **sizes)
    done_steps = run.checkpointed_step()
    finished = settle_previous_run(run)
    if finished is not None:
        print(finished)
        return 0

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # building the tiny model: no bars on the demo's console
    log_path = run.workdir / "train.log"
    what = f"{args.variant or estimator} on CPU, {run.steps} steps" + (f", resuming after step {done_steps}"
                                                                       if done_steps else "")
    if run.task == "sokoban":
        run.prepare()
        print(episode_floor(run.data_dir))
    print(f"[cpu_run] {what}: verl's trainer starts (a minute or two); its full output goes to {log_path}")
    run.workdir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = run.start(log)
        returncode = follow(run, process, first_step=done_steps + 1)
    if returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        print(f"[cpu_run] training failed with exit code {returncode}; the whole log: {log_path}", file=sys.stderr)
        return returncode
    steps = by_step(run.metrics())
    if launcher == "sgsd":
        print(f"[cpu_run] skill bank: {run.checkpoint_dir / 'sgsd_bank' / 'bank.json'}")
    elif (run.checkpoint_dir / "sgsd_skills" / "summaries.json").exists():
        print(f"[cpu_run] trajectory summaries: {run.checkpoint_dir / 'sgsd_skills' / 'summaries.json'}")
    curve = [(step, validation_accuracy(data)) for step, data in steps.items() if validation_accuracy(data) is not None]
    if len(curve) >= 2:
        print(f"[cpu_run] validation accuracy: {curve[0][1]:.3f} at step {curve[0][0]} -> {curve[-1][1]:.3f} at step "
              f"{curve[-1][0]} ({', '.join(f'{a:.2f}' for _, a in curve)})")
    print(f"[cpu_run] {len(steps)} steps in the metrics file: {run.metrics_file}")
    return 0


def settle_previous_run(run: CPURun) -> str | None:
    """What an earlier run in ``run.workdir`` means for this one. Its checkpoint reached
    ``run.steps``: the run is finished, nothing to train (returns the line that says so and
    how to start over). Otherwise a checkpoint is resumed (verl's ``resume_mode=auto``, the
    earlier steps' metrics kept by the trainer); a metrics file without a checkpoint to resume
    is moved aside (``metrics.previous-<time>.jsonl``) before the fresh run empties it."""
    done_steps = run.checkpointed_step()
    if done_steps >= run.steps:
        return (f"[cpu_run] {run.workdir} already holds a finished {done_steps}-step run (metrics: {run.metrics_file}); "
                f"to start over remove that folder or pass another --workdir (WORKDIR=...), to train on raise "
                f"--steps (STEPS=...) above {done_steps}")
    if done_steps == 0 and run.metrics_file.exists():
        kept = run.metrics_file.with_name(f"metrics.previous-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        run.metrics_file.rename(kept)
        print(f"[cpu_run] no checkpoint to resume in {run.checkpoint_dir}: starting fresh; the earlier metrics "
              f"file is kept as {kept}")
    return None


def by_step(records: list[dict]) -> dict[int, dict]:
    """verl's file-logger records merged per step (a resumed run may log a step twice)."""
    steps: dict[int, dict] = {}
    for record in records:
        steps.setdefault(record["step"], {}).update(record["data"])
    return dict(sorted(steps.items()))


def step_line(step: int, data: dict, total: int) -> str:
    """One console line per training step: reward, the SGSD loss and teachers, a bank update."""
    line = f"[cpu_run] step {step}/{total}: score {data.get('critic/score/mean', float('nan')):.2f}"
    if "sgsd/loss" in data:
        line += (f", sgsd/loss {data['sgsd/loss']:.4f}, {data.get('sgsd/teachers_per_problem', 0):g} teachers, "
                 f"helpful/warning/neutral {data.get('sgsd/helpful_frac', 0):.2f}/{data.get('sgsd/warning_frac', 0):.2f}/"
                 f"{data.get('sgsd/neutral_frac', 0):.2f}, teacher pass {data.get('sgsd/teacher_pass_time', 0):.1f} s")
    line += f", step {data.get('timing_s/step', 0):.1f} s"
    accuracy = validation_accuracy(data)
    if accuracy is not None:
        line += f"\n[cpu_run]   validation accuracy {accuracy:.3f}"
    if "sgsd/update/window" in data:
        line += (f"\n[cpu_run]   bank update: window {int(data['sgsd/update/window'])} rollouts, "
                 f"{int(data.get('sgsd/update/requests', 0))} writer requests, "
                 f"{int(data.get('sgsd/update/parse_failures', 0))} unparseable, "
                 f"applied={bool(data.get('sgsd/update/applied'))}")
    return line


def validation_accuracy(data: dict) -> float | None:
    """The step's validation accuracy (verl's ``val-core/<source>/acc/mean@N``), if it validated."""
    for key, value in data.items():
        if key.startswith("val-core/") and "/acc/mean@" in key:
            return float(value)
    return None


def follow(run: CPURun, process: subprocess.Popen, first_step: int = 1, interval: float = 0.5) -> int:
    """Print each step as verl logs it, until the trainer exits; its exit code."""
    shown = first_step - 1 if first_step > 1 else -1  # -1: step 0's validation not shown yet
    while True:
        finished = process.poll() is not None
        if run.metrics_file.exists():
            try:
                steps = by_step(run.metrics())
            except ValueError:  # a line being written
                steps = {}
            for step, data in steps.items():
                if step == 0 and shown == -1 and validation_accuracy(data) is not None:  # val_before_train
                    print(f"[cpu_run] step 0: validation accuracy {validation_accuracy(data):.3f} (before "
                          "training)", flush=True)
                    shown = 0
                if step > shown and "timing_s/step" in data:
                    print(step_line(step, data, run.steps), flush=True)
                    shown = step
        if finished:
            return process.returncode
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
