"""Every method trained on the rulebook through verl's real trainer on CPU, side by side.

The rulebook (``sgsd/rulebook.py``) is a synthetic task where guidance genuinely helps, and its
pretrained model (``sgsd/data/models/rulebook_qwen3``, ``sgsd/task_model.py``) knows it partly:
~30% right unguided, far better with the right rule in its prompt, worse with a misleading one.
This trains each method from that model on the SAME problems per step for the same number of
steps (``recipe.sgsd.cpu.run``'s rulebook scale: 16 problems a step, the validation problems
sampled at the training temperature before training and every 2 steps), over several seeds
(the rollout sampling's seed; ``--problem-seed`` draws the problems), and writes

* ``OUT/results.md``: validation accuracy at step 0 and at the end (mean ± sample standard
  deviation over seeds), the gain, rollouts and tokens generated, training time;
* ``OUT/pictures/learning.png``: accuracy against step and against training time, one colour
  per method (mean over seeds, min-max band), drawn by ``sgsd plot`` (:mod:`sgsd.learning`).

Every method keeps its documented defaults (``recipe/sgsd/variants.py``); what the scale forces
is the same for all and stated once, in ``OUT/results.md``. A run already finished in ``OUT`` is
read, not retrained, so an interrupted benchmark resumes::

    bash scripts/bench_learning.sh                                  # 9 methods x 3 seeds (~1.5 h on 2 cores)
    bash scripts/bench_learning.sh --methods grpo,sgsd --seeds 0 1  # a subset
    bash scripts/bench_learning.sh --steps 20 --problem-seed 1 --out outputs/bench_p1
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))


@dataclass(frozen=True)
class Method:
    key: str  # --methods name (the variant's, recipe/sgsd/variants.py)
    label: str  # table and legend
    rollouts: int  # per problem: 1 for SGSD's single-rollout methods, a GRPO group of 4 otherwise


METHODS = (
    Method("grpo", "GRPO", 4),
    Method("sgsd", "SGSD", 1),
    Method("frozen_teacher", "SGSD (frozen teacher)", 1),
    Method("opsd", "OPSD", 1),
    Method("grpo_opsd", "GRPO+OPSD", 4),
    Method("skill_sd", "Skill-SD", 4),
    Method("sdar", "SDAR", 4),
    Method("rlsd", "RLSD", 4),
    Method("grpo_skill", "GRPO+Skill", 4),
)
BY_KEY = {m.key: m for m in METHODS}


def scale_note(steps: int, batch: int, train_rows: int) -> str:
    from recipe.sgsd.cpu.run import RULEBOOK_VAL_ROWS

    return (f"Scale, the same for every method: {batch} problems a step from a pool of {train_rows} training "
            f"problems (each seen {steps * batch / train_rows:g} times over {steps} steps, in the same order for "
            f"every method), a GRPO group of 4 rollouts per problem for the GRPO-family methods and 1 for SGSD and "
            f"OPSD (the papers' n = 8 and n = 1 at this scale), 48-token responses, sampling at temperature 1.1 / "
            f"top-p 0.95, full fine-tuning at lr 1e-3 (constant), one PPO mini-batch a step, K = 4 teachers for "
            f"SGSD; validation: {RULEBOOK_VAL_ROWS} held-out problems, one sample each at the training temperature, "
            f"before training and every 2 steps. Everything else: each method's documented defaults.")


def run_for(method: Method, seed: int, out: Path, data_dir: Path, steps: int, batch: int, train_rows: int):
    from recipe.sgsd.cpu.run import rulebook_method_run

    return rulebook_method_run(out / "runs" / method.key / f"seed{seed}", method.key, method.rollouts, seed, data_dir,
                               steps=steps, batch_size=batch, train_rows=train_rows)


def main(argv: list[str] | None = None) -> int:
    from recipe.sgsd.cpu.run import BENCH_TRAIN_ROWS, RULEBOOK_RUN, RULEBOOK_VAL_ROWS, write_rulebook_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(m.key for m in METHODS),
                        help=f"comma-separated (default: all of {', '.join(BY_KEY)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="rollout seeds (default 0 1 2)")
    parser.add_argument("--problem-seed", type=int, default=0, help="draws the problems (default 0)")
    parser.add_argument("--steps", type=int, default=RULEBOOK_RUN["steps"])
    parser.add_argument("--batch-size", type=int, default=RULEBOOK_RUN["batch_size"], help="problems a step")
    parser.add_argument("--train-rows", type=int, default=BENCH_TRAIN_ROWS,
                        help="the training pool (default %(default)s: each problem comes back every 6 steps, so "
                             "Skill-SD's same-problem summaries have a problem to return to)")
    parser.add_argument("--out", type=Path, default=_REPO_ROOT / "outputs" / "bench_learning")
    args = parser.parse_args(argv)
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in BY_KEY]
    if unknown or not chosen:
        parser.error(f"unknown methods {unknown or chosen}: choose from {', '.join(BY_KEY)}")
    if args.steps < 2 or args.batch_size < 1 or args.train_rows < args.batch_size:
        parser.error("--steps must be >= 2, --batch-size >= 1, --train-rows >= --batch-size")
    out = args.out.resolve()
    data_dir = out / f"data_p{args.problem_seed}"
    write_rulebook_data(data_dir, args.train_rows, RULEBOOK_VAL_ROWS, student_skills=True, seed=args.problem_seed)

    from recipe.sgsd.cpu.run import settle_previous_run
    from sgsd.learning import markdown_table, summarise
    from sgsd.run_metrics import load_run

    summaries, runs_by_method, failed = [], {}, []
    for key in chosen:
        method = BY_KEY[key]
        for seed in args.seeds:
            run = run_for(method, seed, out, data_dir, args.steps, args.batch_size, args.train_rows)
            if run.checkpointed_step() >= args.steps:
                print(f"[bench] {method.label}, seed {seed}: finished earlier, read from {run.workdir}", flush=True)
            else:
                start = time.perf_counter()
                settle_previous_run(run)  # an interrupted run's metrics, no checkpoint: moved aside, not mixed in
                print(f"[bench] {method.label}, seed {seed}: training {args.steps} steps ({run.workdir})", flush=True)
                run.workdir.mkdir(parents=True, exist_ok=True)
                with open(run.workdir / "train.log", "ab") as log:
                    code = run.start(log).wait()
                if code != 0:  # reported, and the other runs go on
                    failed.append(f"{method.label}, seed {seed}: exit {code} ({run.workdir / 'train.log'})")
                    print(f"[bench] {failed[-1]}", file=sys.stderr, flush=True)
                    continue
                print(f"[bench]   done in {time.perf_counter() - start:.0f} s", flush=True)
            runs_by_method.setdefault(method.label, []).append(load_run(run.workdir, name=method.label))
        if method.label in runs_by_method:
            per_step = args.batch_size * method.rollouts
            summaries.append(summarise(method.label, runs_by_method[method.label], per_step))
            print(markdown_table(summaries[-1:]).splitlines()[-1], flush=True)
    if not summaries:
        print("[bench] no run finished", file=sys.stderr)
        return 1

    from sgsd import plot

    rendered = plot.render([r for runs in runs_by_method.values() for r in runs], out / "pictures")
    table = markdown_table(summaries)
    (out / "results.md").write_text(
        f"# Learning on the rulebook: {len(chosen)} methods x {len(args.seeds)} seeds\n\n"
        f"Seeds {', '.join(map(str, args.seeds))} (rollout sampling), problem seed {args.problem_seed}; "
        f"{args.steps} steps.\n\n{scale_note(args.steps, args.batch_size, args.train_rows)}\n\n{table}\n"
        + "".join(f"- failed: {line}\n" for line in failed)
        + f"\nPictures: {', '.join(str(p.relative_to(out)) for p in rendered.files)}\n")
    print(table)
    print(f"[bench] wrote {out / 'results.md'} and {', '.join(map(str, rendered.files))}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
