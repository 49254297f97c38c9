"""Benchmark the teacher pass inside verl's real trainer on CPU; prints ratios from runs.

1. Throughput: teacher-pass tokens/s divided by the SAME run's old-log-prob tokens/s
   (``perf/total_num_tokens / timing_s/old_log_prob``), for the whole pass (retrieval,
   prompt building, TransferQueue I/O, scoring) and for the scoring call alone.
   Target >= 0.9: scoring K x B teacher sequences should run at the actor's own speed.
2. Memory: the teacher pass's peak extra RSS in the actor worker at K=8 divided by K=1,
   with a model whose vocabulary is Qwen3's (151,936 rows): scoring streams micro-batches,
   so nothing allocates K x B x T x V logits. Target <= 1.3.

    .venv/bin/python scripts/bench_teacher_pass.py [--steps 3] [--token-budget 1024] [--workdir DIR]
    .venv/bin/python scripts/bench_teacher_pass.py --compare-batching   # 3. instead of 1 and 2

3. Batching (``--compare-batching``): the same K=8 run twice, once with verl's dynamic batch
   sizing (``--token-budget`` tokens per micro-batch, for actor, rollout and ref together) and
   once with fixed micro-batches of ``--micro-batch`` sequences; prints each run's seconds per
   step for the teacher scoring call, the old log-prob pass and the actor update, and their
   ratios fixed / dynamic (> 1: dynamic is faster). The GPU scripts' choice rests on it.

4. Top-k (``--compare-topk 100``): the same K=8 run with the sampled-token objective and with
   the forward KL of each teacher's top-100 distribution (``sgsd.teacher_topk``, verl's logits
   hook on both sides): teacher scoring throughput, the teacher pass's peak extra memory and the
   actor update's seconds per step, and their ratios top-k / sampled, at Qwen3's vocabulary.

Each run is a real ``recipe.sgsd.main_sgsd`` run (CPU backend, hf rollout); figures are the
median over the steps after the first (which includes warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere

from recipe.sgsd.cpu.run import CPURun  # noqa: E402
from sgsd.tiny_model import build_tiny_model  # noqa: E402

QWEN3_VOCAB = 151_936


def _median(steps: list[dict], key: str) -> float:
    values = [s["data"][key] for s in steps[1:] or steps if key in s["data"]]
    return statistics.median(values) if values else float("nan")


def budget_overrides(tokens: int) -> list[str]:
    """verl's dynamic batch sizing: micro-batches hold ``tokens`` tokens, whoever's sequences
    they are, so a long teacher sequence costs what the same number of student tokens does."""
    if tokens <= 0:
        return []
    return ["actor_rollout_ref.actor.use_dynamic_bsz=true",
            "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
            "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
            f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={tokens}",
            f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={tokens}",
            f"actor_rollout_ref.ref.log_prob_max_token_len_per_gpu={tokens}"]


def micro_batch_overrides(sequences: int) -> list[str]:
    """Fixed micro-batches of ``sequences`` sequences in every pass (verl's default mode)."""
    return [f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={sequences}",
            f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={sequences}",
            f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={sequences}"]


def run_once(workdir: Path, model_dir: Path, top_k: int, steps: int, token_budget: int,
             micro_batch: int | None = None, extra: tuple[str, ...] = ()) -> dict:
    batching = budget_overrides(token_budget) if micro_batch is None else micro_batch_overrides(micro_batch)
    run = CPURun(workdir, steps=steps, top_k=top_k, model_dir=model_dir, env={"SGSD_PROBE_MEMORY": "1"},
                 extra=["trainer.save_freq=-1", *batching, *extra])
    done = run.run(capture=True)
    if done.returncode != 0:
        raise SystemExit(f"training run K={top_k} failed:\n{done.stderr[-4000:]}")
    metrics = run.metrics()
    old_tps = _median(metrics, "perf/total_num_tokens") / _median(metrics, "timing_s/old_log_prob")
    tokens = _median(metrics, "sgsd/teacher_tokens")
    return {
        "K": top_k,
        "teacher_tokens": tokens,
        "teacher_pass_tps": tokens / _median(metrics, "sgsd/teacher_pass_time"),
        "teacher_scoring_tps": tokens / _median(metrics, "sgsd/teacher_scoring_time"),
        "old_log_prob_tps": old_tps,
        # steady state, like the throughput: step 1 also pays the allocator's first growth
        "teacher_peak_extra_mb": _median(metrics, "sgsd/teacher_pass_peak_extra_mb"),
        "retrieval_s": _median(metrics, "sgsd/retrieval_time"),
        "scoring_s": _median(metrics, "sgsd/teacher_scoring_time"),
        "old_log_prob_s": _median(metrics, "timing_s/old_log_prob"),
        "update_actor_s": _median(metrics, "timing_s/update_actor"),
    }


def compare_batching(root: Path, model_dir: Path, steps: int, token_budget: int, micro_batch: int) -> None:
    dynamic = run_once(root / "k8_dynamic", model_dir, 8, steps, token_budget)
    fixed = run_once(root / f"k8_micro{micro_batch}", model_dir, 8, steps, token_budget, micro_batch=micro_batch)
    print(f"Batching of verl's passes on CPU (tiny Qwen3, vocab {QWEN3_VOCAB:,}, B=4, K=8), seconds per step:")
    for name, key in (("teacher scoring", "scoring_s"), ("old log-prob", "old_log_prob_s"),
                      ("actor update", "update_actor_s")):
        print(f"  {name:16s} dynamic ({token_budget} tokens) {dynamic[key]:6.2f}   fixed ({micro_batch} sequences) "
              f"{fixed[key]:6.2f}   fixed / dynamic {fixed[key] / dynamic[key]:.2f}")


def compare_topk(root: Path, model_dir: Path, steps: int, token_budget: int, ids: int) -> None:
    sampled = run_once(root / "k8", model_dir, 8, steps, token_budget)
    topk = run_once(root / f"k8_top{ids}", model_dir, 8, steps, token_budget,
                    extra=("sgsd.ablation.loss_type=fkl", f"sgsd.teacher_topk={ids}"))
    print(f"Teacher top-{ids} distribution vs sampled token, verl's trainer on CPU (tiny Qwen3, vocab "
          f"{QWEN3_VOCAB:,}, B=4, K=8, {token_budget} tokens per micro-batch):")
    rows = (("teacher scoring tok/s", "teacher_scoring_tps"), ("whole teacher pass tok/s", "teacher_pass_tps"),
            ("teacher pass peak extra MB", "teacher_peak_extra_mb"), ("actor update s/step", "update_actor_s"))
    for name, key in rows:
        print(f"  {name:27s} sampled {sampled[key]:9.1f}   top-{ids} {topk[key]:9.1f}   "
              f"top-{ids} / sampled {topk[key] / sampled[key]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workdir", default="outputs/bench_teacher_pass")
    parser.add_argument("--token-budget", type=int, default=1024,
                        help="tokens per log-prob micro-batch (verl dynamic bsz); 0: 4 sequences per micro-batch")
    parser.add_argument("--compare-batching", action="store_true",
                        help="time dynamic batch sizing against fixed micro-batches (3. above)")
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per fixed micro-batch (3. above)")
    parser.add_argument("--compare-topk", type=int, default=0, metavar="K_IDS",
                        help="time and measure the teacher's top-K_IDS distribution pass (sgsd.teacher_topk, the "
                             "fkl loss) against the sampled-token pass (4. above)")
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    model_dir = root / "tiny_qwen3_vocab151936"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir, pad_vocab_to=QWEN3_VOCAB, initializer_range=0.3)
    if args.compare_batching:
        compare_batching(root, model_dir, args.steps, args.token_budget or 1024, args.micro_batch)
        return
    if args.compare_topk:
        compare_topk(root, model_dir, args.steps, args.token_budget or 1024, args.compare_topk)
        return
    k8 = run_once(root / "k8", model_dir, 8, args.steps, args.token_budget)
    k1 = run_once(root / "k1", model_dir, 1, args.steps, args.token_budget)
    batching = f"{args.token_budget} tokens per micro-batch" if args.token_budget > 0 else "micro-batch 4"
    print(f"Teacher pass in verl's trainer on CPU (tiny Qwen3, vocab {QWEN3_VOCAB:,}, B=4, {batching})")
    for r in (k8, k1):
        print(f"  K={r['K']}: teacher tokens/step {r['teacher_tokens']:.0f}  pass {r['teacher_pass_tps']:.0f} tok/s  "
              f"scoring {r['teacher_scoring_tps']:.0f} tok/s  old-log-prob {r['old_log_prob_tps']:.0f} tok/s  "
              f"peak extra {r['teacher_peak_extra_mb']:.0f} MB  retrieval {r['retrieval_s']:.2f} s")
    print(f"throughput ratio (K=8 run), whole teacher pass / old log-prob: "
          f"{k8['teacher_pass_tps'] / k8['old_log_prob_tps']:.2f}   (target >= 0.9)")
    print(f"throughput ratio (K=8 run), scoring call / old log-prob:      "
          f"{k8['teacher_scoring_tps'] / k8['old_log_prob_tps']:.2f}")
    print(f"peak memory ratio, teacher pass K=8 / K=1:                   "
          f"{k8['teacher_peak_extra_mb'] / k1['teacher_peak_extra_mb']:.2f}   (target <= 1.3)")


if __name__ == "__main__":
    main()
