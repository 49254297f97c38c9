"""One training step of a GPU launch script's own config, on CPU ranks.

``bash scripts/simulate_gpu_run.sh scripts/run_sgsd_qwen3_8b.sh [overrides]`` (this module's
``main``): the script's command line is recorded (``SGSD_ARGV_OUT``: the entry point writes
it and exits), its batch geometry is checked at the script's GPU count, and then ONE step
of that config runs through verl's real trainer on R CPU ranks (default 2) standing in for
the script's GPUs:

* scaled by R / GPUs: ``data.train_batch_size`` and the PPO mini-batch sizes, so every
  per-rank count (rollouts, old and reference log-prob, actor mini/micro-batches, the
  teacher pass) is the one the real run has per GPU - checked, the two geometries side by
  side before anything starts;
* swapped: the tiny local Qwen3 for the model, the ``hf`` rollout for vLLM, sdpa for
  flash-attention (and no remove-padding), the shipped MATH rows for the data, the
  packaged MiniLM for the retrieval encoder, merged LoRA weights for the ``hf`` rollout,
  completions capped at ``--max-response-length`` tokens (CPU generation time; the counts
  do not depend on it), one step without resuming, metrics in the run folder;
* everything else from the script: micro-batch sizes, dynamic batch sizing and its token
  budgets, ``n``, ``top_k``, the teacher mode, LoRA, the bank and its update settings,
  validation, checkpointing.

It prints what it scaled and what it swapped, one line per step as the CPU demo does, and
exits with the trainer's exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from recipe.sgsd.cpu.overrides import CPU_OVERRIDES, cpu_env
from recipe.sgsd.cpu.run import (EPISODE_FILES, EPISODE_RESPONSE_LENGTH, EPISODE_TURN_TOKENS, RunFolder,
                                 build_run_model, follow, write_episode_data, write_run_data)

ROOT = Path(__file__).resolve().parents[3]
ENTRY = "recipe.sgsd.main_sgsd"
ARGV_ENV = "SGSD_ARGV_OUT"
GEOMETRY_ENV = "SGSD_GEOMETRY_CHECK"  # 0: skip main_sgsd's geometry check (to watch verl assert)
CPU_RESPONSE_CAP = 1024


class SimulationError(ValueError):
    """A script whose config cannot be simulated as asked (the message says why)."""


def key_of(override: str) -> str:
    """``++a.b=c`` -> ``a.b`` (Hydra's add/force prefixes and a leading ``~`` dropped)."""
    return override.split("=", 1)[0].lstrip("+~")


def value_of(override: str) -> str:
    value = override.split("=", 1)[1] if "=" in override else ""
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def record_script(script: Path, args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The Hydra overrides ``bash script args`` hands the entry point (nothing is launched)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "argv.json"
        run_env = dict(os.environ if env is None else env)
        python_dir = str(Path(sys.executable).parent)  # the script's python3: this interpreter's
        run_env["PATH"] = os.pathsep.join([python_dir, run_env.get("PATH", "")])
        run_env.update({ARGV_ENV: str(out), "SGSD_DRY_RUN": "1"})
        done = subprocess.run(["bash", str(Path(script).resolve()), *args], cwd=tmp, env=run_env, text=True, capture_output=True)
        if done.returncode != 0 or not out.exists():
            raise SimulationError(f"{script} did not reach {ENTRY} (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


@dataclass
class Change:
    key: str
    before: str | None
    after: str
    why: str

    def line(self) -> str:
        return f"{self.key}: {self.before if self.before is not None else '(unset)'} -> {self.after}  ({self.why})"


@dataclass
class Simulation(RunFolder):
    """A GPU script's overrides rewritten for R CPU ranks (see the module docstring)."""

    script_overrides: list[str]
    workdir: Path
    ranks: int = 2
    model_dir: Path | None = None
    data_dir: Path | None = None
    max_response_length: int = CPU_RESPONSE_CAP
    env: dict[str, str] = field(default_factory=dict)
    steps: int = 1
    scaled: list[Change] = field(default_factory=list, init=False)
    swapped: list[Change] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self._given = {key_of(o): o for o in self.script_overrides}

    # ------------------------------------------------------------------ reading the script
    def script_value(self, key: str, default: str | None = None) -> str | None:
        override = self._given.get(key)
        return value_of(override) if override is not None else default

    @property
    def gpus(self) -> int:
        return int(self.script_value("trainer.nnodes", "1")) * int(self.script_value("trainer.n_gpus_per_node", "8"))

    @property
    def student_skills(self) -> bool:
        return (self.script_value("data.train_files") or "").endswith("_skills.parquet")

    @property
    def episodes(self) -> bool:
        """A Sokoban script (its training file is prepare_data's sokoban_train.parquet)."""
        return Path(self.script_value("data.train_files") or "").name.startswith("sokoban")

    # ------------------------------------------------------------------ the rewrite
    def _scale(self, key: str) -> str | None:
        raw = self.script_value(key)
        if raw is None:
            return None
        value = int(raw)
        scaled, rest = divmod(value * self.ranks, self.gpus)
        if rest or scaled < 1:
            raise SimulationError(
                f"{key}={value} on {self.gpus} GPUs does not scale to {self.ranks} CPU ranks ({value} x "
                f"{self.ranks} / {self.gpus} is not a whole number >= 1); pick --ranks dividing {self.gpus}")
        self.scaled.append(Change(key, raw, str(scaled), f"{self.ranks} CPU ranks for {self.gpus} GPUs"))
        return f"{key}={scaled}"

    def _swap(self, key: str, value: str, why: str, plus: bool = False) -> str:
        before = self.script_value(key)
        if before != value:
            self.swapped.append(Change(key, before, value, why))
        return f"{'++' if plus else ''}{key}={value}"

    def overrides(self) -> list[str]:
        """CPU_OVERRIDES, the script's own overrides minus what is rewritten, the rewrites."""
        self.scaled, self.swapped = [], []
        if self.gpus % self.ranks:
            raise SimulationError(f"{self.ranks} CPU ranks cannot stand in for {self.gpus} GPUs evenly; "
                                  f"pick --ranks dividing {self.gpus}")
        data = self.data_dir or self.workdir / "data"
        lora = int(self.script_value("actor_rollout_ref.model.lora_rank", "0") or 0) > 0
        response = int(self.script_value("data.max_response_length", str(self.max_response_length)))
        rewrites = [o for o in (self._scale("data.train_batch_size"),
                                self._scale("actor_rollout_ref.actor.ppo_mini_batch_size"),
                                self._scale("critic.ppo_mini_batch_size")) if o]
        gpu_only = "a GPU-only setting"
        rewrites += [
            self._swap("trainer.nnodes", "1", "one CPU machine"),
            self._swap("trainer.n_gpus_per_node", str(self.ranks), f"{self.ranks} CPU ranks"),
            self._swap("ray_kwargs.ray_init.num_gpus", str(self.ranks), "Ray's scheduling slots for the ranks"),
            self._swap("actor_rollout_ref.model.path", str(self.model_dir), "the tiny local Qwen3, no model hub"),
            self._swap("actor_rollout_ref.rollout.name", "hf", "transformers generate() in place of vLLM"),
            self._swap("actor_rollout_ref.model.override_config.attn_implementation", "sdpa",
                       "CPU attention in place of flash-attention"),
            self._swap("actor_rollout_ref.model.use_remove_padding", "false", gpu_only),
            self._swap("actor_rollout_ref.rollout.tensor_model_parallel_size", "1", "the hf rollout is one process"),
            *self._data_swaps(data),
            self._swap("trainer.total_training_steps", str(self.steps), "one training step"),
            self._swap("trainer.resume_mode", "disable", "a fresh run"),
            self._swap("trainer.default_local_dir", str(self.checkpoint_dir), "this run folder"),
            self._swap("trainer.logger", "[console,file]", "metrics to this run folder"),
        ]
        cap = min(self.max_response_length, EPISODE_RESPONSE_LENGTH) if self.episodes else self.max_response_length
        if response > cap:
            rewrites.append(self._swap("data.max_response_length", str(cap),
                                       "CPU generation time; no per-rank count depends on it"))
        turn = int(self.script_value("sgsd.agent.max_turn_tokens", "0") or 0)
        if self.episodes and turn > EPISODE_TURN_TOKENS:
            rewrites.append(self._swap("sgsd.agent.max_turn_tokens", str(EPISODE_TURN_TOKENS),
                                       "CPU generation time: short turns, several of them"))
        if lora:
            rewrites.append(self._swap("actor_rollout_ref.model.lora.merge", "true",
                                       "the hf rollout takes merged weights, vLLM the adapter", plus=True))
        if self.script_value("algorithm.adv_estimator") == "sgsd":
            rewrites += [self._swap("sgsd.encoder", "all-MiniLM-L6-v2", "the packaged encoder, no model hub"),
                         self._swap("sgsd.encoder_device", "cpu", "no GPU")]
        replaced = {key_of(o) for o in [*CPU_OVERRIDES, *rewrites]}
        kept = [o for o in self.script_overrides if key_of(o) not in replaced]
        swapped_cpu = [Change(key_of(o), self.script_value(key_of(o)), value_of(o), "the CPU backend")
                       for o in CPU_OVERRIDES if key_of(o) in self._given
                       and self.script_value(key_of(o)) != value_of(o)
                       and key_of(o) not in {c.key for c in self.swapped}]
        self.swapped += swapped_cpu
        return [*CPU_OVERRIDES, *kept, *rewrites]

    def _data_swaps(self, data: Path) -> list[str]:
        if self.episodes:
            why = "seeded Sokoban levels written here (6x6, one box, 3 turns)"
            return [self._swap("data.train_files", str(data / EPISODE_FILES[0]), why),
                    self._swap("data.val_files", str(data / EPISODE_FILES[1]), why)]
        return [self._swap("data.train_files", str(data / ("train_skills.parquet" if self.student_skills
                                                          else "train.parquet")), "the shipped MATH rows"),
                self._swap("data.val_files", str(data / "val.parquet"), "the shipped MATH rows")]

    # ------------------------------------------------------------------ running it
    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.model_dir is None:
            self.model_dir = build_run_model(self.workdir / "tiny_qwen3")
        self.data_dir = self.data_dir or self.workdir / "data"
        batch = int(self.script_value("data.train_batch_size", "16")) * self.ranks // self.gpus
        top_k = int(self.script_value("sgsd.top_k", "8"))
        if self.episodes:
            write_episode_data(self.data_dir, max(64, 4 * batch), max(batch, 4))
            return
        write_run_data(self.data_dir, max(64, 4 * batch), max(batch, 4), student_skills=self.student_skills,
                       top_k=top_k)

    def command(self) -> list[str]:
        return [sys.executable, "-m", ENTRY, *self.overrides()]

    def environment(self) -> dict[str, str]:
        env = cpu_env(pythonpath=str(ROOT))
        env["VERL_FILE_LOGGER_PATH"] = str(self.metrics_file)
        env.update(self.env)
        return env



def compose(overrides: list[str]):
    """The config ``overrides`` compose to (recipe/sgsd/config/sgsd_trainer.yaml), prepared."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from recipe.sgsd.main_sgsd import prepare_config

    with initialize_config_dir(config_dir=str(ROOT / "recipe" / "sgsd" / "config"), version_base=None):
        return prepare_config(hydra_compose(config_name="sgsd_trainer", overrides=overrides))


def geometry_of(config):
    """main_sgsd's start-up geometry check of ``config`` (verl's own need-reference/critic rules)."""
    import warnings

    from recipe.sgsd.main_sgsd import check_geometry

    level = os.environ.get("VERL_LOGGING_LEVEL")
    os.environ["VERL_LOGGING_LEVEL"] = "ERROR"  # verl's import-time notes about absent engines and GPUs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from verl.trainer.ppo.utils import need_critic, need_reference_policy

            return check_geometry(config, need_reference_policy(config), need_critic(config))
    finally:
        if level is None:
            os.environ.pop("VERL_LOGGING_LEVEL")
        else:
            os.environ["VERL_LOGGING_LEVEL"] = level


def compare_geometries(gpu, cpu) -> list[str]:
    """Passes whose per-rank count differs between the GPU run and the simulation."""
    gpu_passes = {p.name: p.per_rank for p in gpu.passes}
    cpu_passes = {p.name: p.per_rank for p in cpu.passes}
    return [f"{name}: {gpu_passes.get(name)} per GPU, {cpu_passes.get(name)} per CPU rank"
            for name in sorted(set(gpu_passes) | set(cpu_passes)) if gpu_passes.get(name) != cpu_passes.get(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", help="a GPU launch script, e.g. scripts/run_sgsd_qwen3_8b.sh")
    parser.add_argument("--ranks", type=int, default=2, help="CPU ranks standing in for the script's GPUs (2)")
    parser.add_argument("--workdir", default=None, help="run folder (default outputs/simulate/<script>-<time>)")
    parser.add_argument("--model-dir", default=None, help="a tiny model folder to reuse (default: built)")
    parser.add_argument("--data-dir", default=None, help="a data folder to reuse (default: written)")
    parser.add_argument("--max-response-length", type=int, default=CPU_RESPONSE_CAP,
                        help=f"cap on data.max_response_length ({CPU_RESPONSE_CAP})")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides handed to the script (they win there)")
    args = parser.parse_intermixed_args(argv)  # options before or after the script's overrides
    script = Path(args.script)
    if not script.is_file():
        parser.error(f"no such script: {script}")
    if args.ranks < 1:
        parser.error("--ranks must be >= 1")
    workdir = Path(args.workdir or f"outputs/simulate/{script.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (workdir / "metrics.jsonl").exists():
        print(f"[simulate] {workdir} already holds a simulated run; pass another --workdir", file=sys.stderr)
        return 2
    try:
        recorded = record_script(script, args.overrides)
        sim = Simulation(recorded, workdir, ranks=args.ranks,
                         model_dir=Path(args.model_dir).resolve() if args.model_dir else None,
                         data_dir=Path(args.data_dir).resolve() if args.data_dir else None,
                         max_response_length=args.max_response_length)
        check = os.environ.get(GEOMETRY_ENV, "1") != "0"
        gpu_geometry = geometry_of(compose(recorded)) if check else None
        sim.prepare()
        overrides = sim.overrides()
        cpu_geometry = geometry_of(compose(overrides)) if check else None
    except (SimulationError, ValueError) as exc:
        print(f"[simulate] {exc}", file=sys.stderr)
        return 2
    print(f"[simulate] {script}: one step of its config on {sim.ranks} CPU ranks for its {sim.gpus} GPUs")
    for change in sim.scaled:
        print(f"[simulate] scaled  {change.line()}")
    for change in sim.swapped:
        print(f"[simulate] swapped {change.line()}")
    if gpu_geometry is not None and cpu_geometry is not None:
        print(f"[simulate] geometry on the GPUs:  {gpu_geometry.summary()}")
        print(f"[simulate] geometry on CPU ranks: {cpu_geometry.summary()}")
        differ = compare_geometries(gpu_geometry, cpu_geometry)
        if differ:
            print("[simulate] the simulation would not hold the GPU run's per-rank counts: " + "; ".join(differ),
                  file=sys.stderr)
            return 2
    elif not check:
        print(f"[simulate] {GEOMETRY_ENV}=0: geometry not checked; verl asserts on its own")
    log_path = sim.workdir / "train.log"
    print(f"[simulate] verl's trainer starts; its full output goes to {log_path}", flush=True)
    env = sim.environment()
    if not check:
        env[GEOMETRY_ENV] = "0"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(sim.command(), cwd=sim.workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        returncode = follow(sim, process)
    if returncode != 0:
        print("\n".join(log_path.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
        print(f"[simulate] training failed with exit code {returncode}; the whole log: {log_path}", file=sys.stderr)
        return returncode
    print(f"[simulate] done: metrics {sim.metrics_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
