"""Run SGSD (or GRPO) through verl's real trainer on a CPU, on the embedded defaults.

This is the main job of ``bash scripts/run_sgsd_cpu.sh`` and the launcher the end-to-end
tests and the teacher-pass benchmark share: it builds the tiny local Qwen3 (no hub),
writes a verl parquet from the shipped MATH subset, and runs
``python -m recipe.sgsd.main_sgsd`` with the CPU backend's overrides, the shipped
Qwen3-1.7B skill bank and the packaged MiniLM encoder, logging with verl's ``console``
and ``file`` loggers (one JSON object per step).

    python -m recipe.sgsd.cpu.run --workdir outputs/sgsd_cpu [--steps 4] [--estimator grpo] [override ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from recipe.sgsd.cpu.overrides import CPU_OVERRIDES, cpu_env

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class CPURun:
    """One CPU training run: where it lives and how big it is."""

    workdir: Path
    steps: int = 3
    estimator: str = "sgsd"
    batch_size: int = 4
    rollout_n: int = 1
    response_length: int = 48
    top_k: int = 4
    train_rows: int = 64
    model_dir: Path | None = None
    # A random model with Qwen3's init (0.02) is nearly blind to its prompt, so every
    # teacher would sit in the neutral zone; a wider init makes context matter.
    initializer_range: float = 0.3
    variant: str | None = None  # a baseline/ablation of recipe.sgsd.variants (sets the estimator too)
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant is not None:
            from recipe.sgsd.variants import get_variant

            self.estimator = get_variant(self.variant).estimator

    @property
    def _student_skills(self) -> bool:
        from recipe.sgsd.variants import get_variant

        return self.variant is not None and get_variant(self.variant).student_skills

    @property
    def metrics_file(self) -> Path:
        return self.workdir / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / "checkpoints"

    def prepare(self) -> None:
        """Tiny model and parquet data, built once per workdir."""
        from sgsd.datasets import load_problems, shipped_path
        from sgsd.tiny_model import build_tiny_model
        from sgsd.verl_data import to_verl_rows, write_parquet

        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.model_dir is None:
            self.model_dir = self.workdir / "tiny_qwen3"
            if not (self.model_dir / "config.json").exists():
                build_tiny_model(self.model_dir, initializer_range=self.initializer_range)
        train = self.workdir / "data" / "train.parquet"
        problems = load_problems(shipped_path("train", "math_train.jsonl"), require_answer=True)
        if not train.exists():
            write_parquet(to_verl_rows(problems[: self.train_rows], "math", "train"), train)
            write_parquet(to_verl_rows(problems[self.train_rows: self.train_rows + self.batch_size], "math",
                                       "test"), self.workdir / "data" / "val.parquet")
        skills_train = self.workdir / "data" / "train_skills.parquet"
        if self._student_skills and not skills_train.exists():  # GRPO+Skill / OPSD+Skill
            from sgsd.bank import SkillBank
            from sgsd.datasets import bank_path
            from sgsd.retrieval import SentenceTransformerEncoder, SkillRetriever
            from sgsd.verl_data import retrieve_student_guidance

            retriever = SkillRetriever(SentenceTransformerEncoder(), SkillBank.load(bank_path("qwen3_1.7b")),
                                       top_k=self.top_k)
            rows = problems[: self.train_rows]
            write_parquet(to_verl_rows(rows, "math", "train",
                                       student_guidance=retrieve_student_guidance(rows, retriever)), skills_train)

    def overrides(self) -> list[str]:
        data = self.workdir / "data"
        variant = ()
        if self.variant is not None:
            from recipe.sgsd.variants import get_variant

            variant = get_variant(self.variant).overrides
        train = data / ("train_skills.parquet" if self._student_skills else "train.parquet")
        return [
            f"algorithm.adv_estimator={self.estimator}",
            f"data.train_files={train}", f"data.val_files={data / 'val.parquet'}",
            f"data.train_batch_size={self.batch_size}",
            # a student prompt that carries 4 skill-mistake pairs is ~1k tiny-tokenizer tokens
            f"data.max_prompt_length={1536 if self._student_skills else 256}",
            f"data.max_response_length={self.response_length}", "data.shuffle=false",
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

    def run(self, *, timeout: float | None = None, capture: bool = False) -> subprocess.CompletedProcess:
        self.prepare()
        if self.metrics_file.exists():
            self.metrics_file.unlink()  # verl's file logger appends
        env = cpu_env(pythonpath=str(ROOT))
        env["VERL_FILE_LOGGER_PATH"] = str(self.metrics_file)
        env.update(self.env)
        return subprocess.run(self.command(), cwd=self.workdir, env=env, timeout=timeout,
                              capture_output=capture, text=True)

    def metrics(self) -> list[dict]:
        """One ``{"step": n, "data": {...}}`` per training step, from verl's file logger."""
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]


# The demo shows one online bank update (Alg. 4) with the policy as its writer: every 2
# steps, on a small sample, with a short reply budget (the random tiny model writes noise,
# which the updater counts as parse failures; the bank stays valid).
DEMO_OVERRIDES = ("sgsd.update.freq=2", "sgsd.update.max_memories=2", "sgsd.update.max_new_tokens=48",
                  "sgsd.update.max_completion_chars=600")


def demo_overrides(user: list[str]) -> list[str]:
    """DEMO_OVERRIDES minus the keys the user set (Hydra refuses a key given twice)."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in user}
    return [o for o in DEMO_OVERRIDES if o.split("=", 1)[0] not in given]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.environ.get("SGSD_CPU_WORKDIR", "outputs/sgsd_cpu"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--estimator", default="sgsd", help="sgsd (default) or grpo")
    parser.add_argument("--variant", default=None,
                        help="a baseline/ablation by name (python -m recipe.sgsd.variants list); sets the estimator")
    parser.add_argument("--rollout-n", type=int, default=None, help="rollouts per problem (sgsd 1, grpo 4)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. sgsd.top_k=8")
    args = parser.parse_args(argv)
    estimator = args.estimator
    if args.variant is not None:
        from recipe.sgsd.variants import get_variant

        try:
            estimator = get_variant(args.variant).estimator
        except ValueError as exc:
            parser.error(str(exc))
    n = args.rollout_n or (1 if estimator == "sgsd" else 4)
    extra = [*demo_overrides(args.overrides), *args.overrides] if estimator == "sgsd" else args.overrides
    run = CPURun(Path(args.workdir).resolve(), steps=args.steps, estimator=estimator, rollout_n=n, extra=extra,
                 variant=args.variant)
    done = run.run()
    if done.returncode != 0:
        print(f"[cpu_run] training failed with exit code {done.returncode}", file=sys.stderr)
        return done.returncode
    steps = run.metrics()
    last = steps[-1]["data"] if steps else {}
    summary = {k: round(v, 4) for k, v in last.items()
               if k.startswith("sgsd/") and not k.startswith(("sgsd/update/", "sgsd/utility/", "sgsd/bank/"))
               and isinstance(v, (int, float))}
    print(f"[cpu_run] {len(steps)} steps done; last step sgsd/*: {json.dumps(summary)}")
    updates = [s for s in steps if "sgsd/update/requests" in s["data"] or "sgsd/update/skipped" in s["data"]]
    for s in updates:
        d = s["data"]
        print(f"[cpu_run] bank update at step {s['step']}: window {int(d.get('sgsd/update/window', 0))} rollouts, "
              f"{int(d.get('sgsd/update/requests', 0))} writer requests, "
              f"{int(d.get('sgsd/update/parse_failures', 0))} unparseable, applied={bool(d.get('sgsd/update/applied'))}")
    if estimator == "sgsd":
        print(f"[cpu_run] skill bank: {run.checkpoint_dir / 'sgsd_bank' / 'bank.json'}")
    print(f"[cpu_run] metrics file: {run.metrics_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
