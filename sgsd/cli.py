"""``sgsd`` command line: inspect banks, retrieve teachers, grade answers.

    sgsd bank inspect PATH [--json] [--by-utility]
    sgsd bank merge RAW.json --llm SPEC -o OUT.json [--group-size 32] [--patience 3]
    sgsd bank build --model SPEC --data DATA -o DIR [-n 256] [--seed 0]   (exit 1: nothing extracted)
    sgsd retrieve --bank PATH --problems FILE.jsonl [--top-k 8] [--encoder NAME_OR_PATH] [--json]
    sgsd grade --answer GOLD --response TEXT [--json]
    sgsd eval --model PATH_OR_ID [--lora DIR | --verl-checkpoint DIR] --datasets aime24,aime25 -o OUT
        (exit 1: failed requests left, rerun to retry)
    sgsd eval compare OUT... [--name NAME ...] [--metric avg] [-o table.md]
    sgsd plot RUN [RUN ...] -o OUT_DIR [--name NAME ...] [--bank-dir DIR ...]

``--bank`` and ``--problems`` also take the names of the shipped files
(``qwen3_1.7b``, ``qwen3_4b``; ``aime24``, ``aime25``, ``hmmt25``, ``amc2023``, ``math500``).
Bad input exits with status 2 and one line on stderr that names the problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sgsd import datasets
from sgsd.bank import BankError, SkillBank

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _resolve(value: str, shipped: Sequence[str], locate) -> Path:
    path = Path(value)
    if not path.exists() and value in shipped:
        return locate(value)
    return path


def cmd_bank_inspect(args: argparse.Namespace) -> int:
    from sgsd.item_utility import CATEGORIES, PRIOR_WEIGHT, UTILITY_KEY, utility_of, utility_score

    bank = SkillBank.load(_resolve(args.path, datasets.SKILL_BANKS, datasets.bank_path))
    counts = bank.counts()
    by_utility = getattr(args, "by_utility", False)
    # Per-item utility is listed when the bank carries any (or when asked to rank by it).
    listed = by_utility or any(UTILITY_KEY in it.extra for c in counts for it in bank.items(c))
    rows: dict[str, list] = {}
    for collection in counts if listed else ():
        items = list(bank.items(collection))
        if by_utility:
            items.sort(key=utility_score, reverse=True)  # best first; the sort is stable: ties keep bank order
        rows[collection] = [(it, utility_score(it), utility_of(it)) for it in items]
    if args.json:
        report = {"path": bank.source, "valid": True, **counts}
        if listed:
            report["items"] = {c: [{"id": it.item_id, "origin": it.origin, "score": round(score, 6), **u}
                                   for it, score, u in r] for c, r in rows.items()}
        print(json.dumps(report))
        return 0
    print(f"{bank.source}: valid skill bank")
    for collection, c in counts.items():
        print(f"  {collection:16s} {c['total']:5d}  (static {c['static']}, dynamic {c['dynamic']})")
    source = bank.metadata.get("source")
    if source:
        print(f"  source: {source}")
    if rows:
        print("  utility: alpha-weighted teacher categories; score = (helpful + warning - over_suppressive"
              f" - misleading) / (total weight + {PRIOR_WEIGHT:g})")
    for collection, r in rows.items():
        print(f"  {collection}{', best first' if by_utility else ''}:")
        width = max([len(it.item_id) for it, _, _ in r] + [2])
        print(f"    {'id':{width}s} {'origin':7s} {'uses':>6s} {'score':>7s} "
              + " ".join(f"{c[:10]:>10s}" for c in CATEGORIES) + "  text")
        for it, score, u in r:
            head = " ".join(getattr(it, it.TEXT_FIELDS[0]).split())
            head = head if len(head) <= 60 else head[:57] + "..."
            print(f"    {it.item_id:{width}s} {it.origin:7s} {int(u['uses']):6d} {score:+7.3f} "
                  + " ".join(f"{u[c]:10.3f}" for c in CATEGORIES) + f"  {head}")
    return 0


def cmd_bank_merge(args: argparse.Namespace) -> int:
    import dataclasses

    from sgsd import merge

    checks = [(args.group_size >= 2, f"--group-size must be >= 2, got {args.group_size}"),
              (args.patience >= 1, f"--patience must be >= 1, got {args.patience}"),
              (args.max_layers >= 1, f"--max-layers must be >= 1, got {args.max_layers}"),
              (args.max_new_tokens is None or args.max_new_tokens >= 1,
               f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"),
              (args.temperature is None or args.temperature >= 0,
               f"--temperature must be >= 0, got {args.temperature}")]
    for ok, message in checks:
        if not ok:
            raise CLIError(message)
    raw = SkillBank.load(_resolve(args.raw, datasets.SKILL_BANKS, datasets.bank_path))
    overrides = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    settings = dataclasses.replace(merge.DEFAULT_MERGE_SETTINGS, enable_thinking=args.thinking,
                                   **{k: v for k, v in overrides.items() if v is not None})
    try:
        client = merge.resolve_client(args.llm)  # looked up on the module: tests replace it
    except (ImportError, ValueError, OSError) as exc:
        raise CLIError(f"cannot create the LLM client {args.llm!r}: {exc}") from exc
    bank = merge.merge_bank(raw, client, group_size=args.group_size, patience=args.patience,
                            max_layers=args.max_layers, settings=settings, progress=not args.quiet)
    try:
        bank.save(args.output)
    except OSError as exc:
        raise CLIError(f"cannot write {args.output}: {exc}") from exc
    meta = bank.metadata
    print(f"{args.output}: general_skills {meta['input_general_skills']} -> {meta['output_general_skills']}, "
          f"common_mistakes {meta['input_common_mistakes']} -> {meta['output_common_mistakes']}")
    return 0


def cmd_bank_build(args: argparse.Namespace) -> int:
    """The cold-start build (paper Alg. 2, :mod:`sgsd.build`); 0: bank written, 1: nothing extracted."""
    import dataclasses

    from sgsd import build

    def settings(base, max_new_tokens, temperature):
        return dataclasses.replace(base, **{k: v for k, v in (("max_new_tokens", max_new_tokens),
                                                              ("temperature", temperature)) if v is not None})

    try:
        config = build.BuildConfig(
            num_problems=args.num_problems, seed=args.seed, batch_size=args.batch_size,
            skills_per_success=args.skills_per_success, mistakes_per_failure=args.mistakes_per_failure,
            group_size=args.group_size, patience=args.patience,
            generation=settings(build.DEFAULT_GENERATION_SETTINGS, args.max_new_tokens, args.temperature),
            extraction=settings(build.DEFAULT_EXTRACTION_SETTINGS, args.extract_max_new_tokens,
                                args.writer_temperature),
            merge=settings(build.DEFAULT_MERGE_SETTINGS, args.merge_max_new_tokens, args.writer_temperature))
        result = build.build_bank(args.output, args.data, args.model, config=config, progress=not args.quiet)
    except build.BuildError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot write {args.output}: {exc}") from None
    except KeyboardInterrupt:
        print(f"sgsd: interrupted; finished requests are saved in {args.output}: "
              "rerun the same command to continue", file=sys.stderr)
        return 130
    c = result.metadata["counts"]
    retry = c["pending_generations"] + c["pending_extractions"]
    note = f"; {retry} failed requests: rerun the same command to retry them" if retry else ""
    if result.bank is None:
        what = (f"no skill or mistake could be extracted from {c['generated']} memories "
                f"({c['extraction_parse_failures']} unparseable replies)" if c["generated"] else
                "no solution could be generated")
        print(f"sgsd: error: {what}{note}; memories and build.json are in {args.output}", file=sys.stderr)
        return 1
    done = "already complete, nothing to do: " if result.already_complete else ""
    print(f"{done}{Path(args.output) / build.FILES['bank']}: {len(result.bank.general_skills)} general skills, "
          f"{len(result.bank.common_mistakes)} common mistakes from {c['problems']} problems "
          f"({c['successes']} solved, {c['failures']} failed){note}")
    empty = [k for k in ("general_skills", "common_mistakes") if not result.bank.items(k)]
    if empty:
        print(f"sgsd: warning: the bank has no {' and no '.join(empty)}; SGSD needs at least one skill and one "
              "mistake to form a teacher", file=sys.stderr)
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from sgsd.retrieval import SentenceTransformerEncoder, SkillRetriever

    hf_logging.disable_progress_bar()  # a "Loading weights" bar is noise in a CLI's output

    if args.top_k < 1:
        raise CLIError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.temperature > 0:
        raise CLIError(f"--temperature must be > 0, got {args.temperature}")
    bank = SkillBank.load(_resolve(args.bank, datasets.SKILL_BANKS, datasets.bank_path), require_nonempty=True)
    problems = datasets.load_problems(_resolve(args.problems, datasets.BENCHMARKS, datasets.benchmark_path))
    try:
        encoder = SentenceTransformerEncoder(args.encoder, device=args.device)
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot load encoder {args.encoder!r}: {exc}") from exc
    retriever = SkillRetriever(encoder, bank, top_k=args.top_k, temperature=args.temperature)
    results = retriever.retrieve([p.problem for p in problems])
    for index, (problem, result) in enumerate(zip(problems, results)):
        if args.json:
            print(json.dumps({"index": index, "teachers": [t.to_dict() for t in result.teachers]}))
            continue
        head = " ".join(problem.problem.split())
        print(f"[{index}] {head[:100]}{'...' if len(head) > 100 else ''}")
        for t in result.teachers:
            print(f"    k={t.rank + 1}  alpha={t.alpha:.3f}  {t.skill.skill_id} ({t.skill_score:.3f}) "
                  f"{t.skill.title[:40]!r}  +  {t.mistake.mistake_id} ({t.mistake_score:.3f})")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from sgsd.verifier import grade

    result = grade(args.response, args.answer)
    if args.json:
        print(json.dumps({"correct": result.correct, "extracted": result.extracted}))
    else:
        verdict = "correct" if result.correct else "wrong"
        print(f"{verdict} (extracted: {result.extracted!r}, by {result.method})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Sample, grade and score (:mod:`sgsd.eval`); 0: complete, 1: failed requests left to retry."""
    from sgsd import eval as evaluation
    from sgsd.eval.models import ModelError, ModelSource

    if not args.datasets:
        raise CLIError("--datasets is required, e.g. --datasets aime24,aime25,hmmt25")
    if not args.output:
        raise CLIError("-o/--output is required (the run folder; rerun the same command to resume)")
    try:
        source = ModelSource(model=args.model, lora=args.lora, verl_checkpoint=args.verl_checkpoint)
        config = evaluation.EvalConfig(
            samples=args.samples, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            max_new_tokens=args.max_new_tokens, enable_thinking=args.thinking, seed=args.seed, k=args.k,
            batch_size=args.batch_size, limit=args.limit, skills=args.skills, encoder=args.encoder,
            skills_top_k=args.skills_top_k)
        result = evaluation.evaluate(args.output, source, [d for d in args.datasets.split(",") if d.strip()],
                                     config, backend=args.backend, backend_options=args.backend_options,
                                     keep_merged=args.keep_merged, progress=not args.quiet)
    except (evaluation.EvalError, ModelError) as exc:
        raise CLIError(str(exc)) from None
    except KeyboardInterrupt:
        print(f"sgsd: interrupted; finished samples are saved in {args.output}: "
              "rerun the same command to continue", file=sys.stderr)
        return 130
    print((Path(args.output) / "summary.md").read_text(encoding="utf-8"), end="")
    print(f"{Path(args.output) / 'summary.json'}: {result.generated} samples generated by this run")
    if not result.complete:
        print(f"sgsd: {result.failed} requests failed; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def cmd_eval_compare(args: argparse.Namespace) -> int:
    """The paper's Tab. 3 layout over run folders (:mod:`sgsd.eval.report`): markdown and PNG."""
    from sgsd.atomic import atomic_write_text
    from sgsd.eval.report import ReportError, compare_runs, write_png

    try:
        table = compare_runs(args.runs, args.name or (), args.metric,
                             [d for d in (args.datasets or "").split(",") if d.strip()])
    except ReportError as exc:
        raise CLIError(str(exc)) from None
    text = table.markdown()
    print(text, end="")
    if args.table:
        try:
            atomic_write_text(args.table, text)
            png = write_png(table, Path(args.table).with_suffix(".png"))
        except OSError as exc:
            raise CLIError(f"cannot write {args.table}: {exc}") from None
        except ReportError as exc:
            raise CLIError(f"{args.table} written, but {exc}") from None
        print(f"{args.table}, {png}: written")
    return 0


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a model: avg@k with the paper's protocol (and `compare`)")
    ev.add_argument("--model", help="Hugging Face model folder or hub id")
    ev.add_argument("--lora", help="peft LoRA adapter folder, merged into --model")
    ev.add_argument("--verl-checkpoint", help="verl FSDP checkpoint (global_step_N/actor), merged by verl's merger")
    ev.add_argument("--datasets", help="comma-separated: aime24, aime25, hmmt25, amc2023 (amc23), math500 or "
                                       "JSONL/parquet files of problem/answer")
    ev.add_argument("-o", "--output", help="run folder (rerun the same command to resume)")
    ev.add_argument("--samples", type=int, default=12, help="samples per problem, n (default 12)")
    ev.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    ev.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    ev.add_argument("--top-k", type=int, default=-1, help="top-k truncation, -1 off (default)")
    ev.add_argument("--max-new-tokens", type=int, default=38912, help="per sample (default 38912)")
    ev.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=True,
                    help="chat template thinking mode (default on)")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ev.add_argument("--k", type=int, default=None, help="k of pass@k and maj@k (default: --samples)")
    ev.add_argument("--backend", default="auto", help="auto (vllm on a GPU, else transformers), vllm, transformers")
    ev.add_argument("--backend-options", default="",
                    help="client arguments as KEY=VALUE&KEY=VALUE, e.g. 'tensor_parallel_size=2&max_model_len=40960'")
    ev.add_argument("--skills", help="Base+Skill: show the student skills retrieved from this bank (path or name)")
    ev.add_argument("--skills-top-k", type=int, default=8, help="skill-mistake pairs shown (default 8)")
    ev.add_argument("--encoder", default=None, help="retrieval encoder (default: packaged all-MiniLM-L6-v2)")
    ev.add_argument("--limit", type=int, default=None, help="only the first N problems of each dataset")
    ev.add_argument("--batch-size", type=int, default=256, help="samples per generate call and per save")
    ev.add_argument("--keep-merged", action="store_true", help="keep OUT/merged_model after completing")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)
    ev_sub = ev.add_subparsers(dest="eval_command")
    compare = ev_sub.add_parser("compare", help="a Tab.-3 table (markdown + PNG) across evaluation runs")
    compare.add_argument("runs", nargs="+", help="`sgsd eval` output folders, one table row each")
    compare.add_argument("--name", action="append", help="row name per run, in order (default: folder name)")
    compare.add_argument("--metric", default="avg", help="avg (default), pass, maj or format_rate")
    compare.add_argument("--datasets", default=None, help="comma-separated columns (default: every dataset)")
    compare.add_argument("-o", "--table", default=None, help="markdown file to write; the PNG goes beside it")
    compare.set_defaults(func=cmd_eval_compare)


def cmd_plot(args: argparse.Namespace) -> int:
    """Pictures of training runs side by side (:mod:`sgsd.plot`): one PNG per panel group."""
    from sgsd import plot
    from sgsd.run_metrics import RunMetricsError, load_run

    count = len(args.runs)
    for flag, given in (("--name", args.name), ("--bank-dir", args.bank_dir)):
        if given and len(given) != count:
            raise CLIError(f"{flag} given {len(given)} times for {count} runs: give it once per run, in order")
    names = args.name or [None] * count
    bank_dirs = [None if d == "-" else d for d in args.bank_dir] if args.bank_dir else [None] * count
    try:
        runs = [load_run(r, name=n, bank_dir=b) for r, n, b in zip(args.runs, names, bank_dirs)]
        rendered = plot.render(runs, args.output)
    except (RunMetricsError, plot.PlotError) as exc:
        raise CLIError(str(exc)) from None
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "matplotlib":
            raise
        raise CLIError("sgsd plot needs matplotlib: pip install 'sgsd-verl[plot]'") from None
    except OSError as exc:
        raise CLIError(f"cannot write {args.output}: {exc}") from None
    for note in rendered.notes:
        print(f"sgsd: note: {note}", file=sys.stderr)
    for path in rendered.files:
        print(path)
    return 0


def _add_plot_parser(sub: argparse._SubParsersAction) -> None:
    plot = sub.add_parser("plot", help="draw a run's metrics and bank as PNGs (several runs side by side)")
    plot.add_argument("runs", nargs="+", metavar="RUN",
                      help="a run directory (metrics.jsonl, checkpoints/sgsd_bank) or a verl file-logger JSONL")
    plot.add_argument("-o", "--output", required=True, help="folder for training.png, polarity.png, ... (created)")
    plot.add_argument("--name", action="append", help="legend name of each run, once per RUN (default: its folder)")
    plot.add_argument("--bank-dir", action="append",
                      help="bank folder (bank.json, bank.step_*.json) of each run, once per RUN; '-' keeps the "
                           "default: RUN/checkpoints/sgsd_bank, or checkpoints/<project>/<experiment>/sgsd_bank "
                           "for a <project>/<experiment>.jsonl")
    plot.set_defaults(func=cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgsd", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    bank = sub.add_parser("bank", help="skill bank tools")
    bank_sub = bank.add_subparsers(dest="bank_command", required=True)
    inspect = bank_sub.add_parser("inspect", help="validate a bank and count its items")
    inspect.add_argument("path", help="bank JSON file (or a shipped bank name)")
    inspect.add_argument("--json", action="store_true", help="one JSON object on stdout")
    inspect.add_argument("--by-utility", action="store_true",
                         help="list every item with its training utility, best first (sgsd.item_utility)")
    inspect.set_defaults(func=cmd_bank_inspect)
    merge = bank_sub.add_parser("merge", help="hierarchically merge raw candidates into a bank (paper Alg. 3)")
    merge.add_argument("raw", help="raw candidate bank JSON (same layout as a bank)")
    merge.add_argument("--llm", required=True, help="skill-writer spec, resolved by sgsd.llm.factory.make_client")
    merge.add_argument("-o", "--output", required=True, help="merged bank JSON to write (atomically)")
    merge.add_argument("--group-size", type=int, default=32, help="items per merge call, H (default 32)")
    merge.add_argument("--patience", type=int, default=3, help="stagnant layers before stopping, P (default 3)")
    merge.add_argument("--max-layers", type=int, default=64, help="safety cap on layers (default 64)")
    merge.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0.6)")
    merge.add_argument("--max-new-tokens", type=int, default=None, help="tokens per reply (default 4096)")
    merge.add_argument("--thinking", action="store_true", help="let the model think first (raise --max-new-tokens)")
    merge.add_argument("--quiet", action="store_true", help="no progress bar")
    merge.set_defaults(func=cmd_bank_merge)
    build = bank_sub.add_parser("build", help="build a cold-start bank from a model's own solutions (paper Alg. 2)")
    build.add_argument("--model", required=True,
                       help="model spec for sgsd.llm.factory.make_client, or a local model directory")
    build.add_argument("--data", required=True, help="training problems: math_train, gsm8k or a JSONL/parquet path")
    build.add_argument("-o", "--output", required=True, help="output directory (rerun the same command to resume)")
    build.add_argument("-n", "--num-problems", type=int, default=256, help="problems to sample (default 256)")
    build.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    build.add_argument("--batch-size", type=int, default=32, help="requests per call and per saved batch")
    build.add_argument("--max-new-tokens", type=int, default=None, help="tokens per solution (default 4096)")
    build.add_argument("--temperature", type=float, default=None, help="solution temperature (default 1.0)")
    build.add_argument("--extract-max-new-tokens", type=int, default=None, help="tokens per extraction (default 2048)")
    build.add_argument("--merge-max-new-tokens", type=int, default=None, help="tokens per merge reply (default 4096)")
    build.add_argument("--writer-temperature", type=float, default=None,
                       help="extraction and merge temperature (default 0.6)")
    build.add_argument("--skills-per-success", type=int, default=3, help="general skills kept per success (3)")
    build.add_argument("--mistakes-per-failure", type=int, default=3, help="common mistakes kept per failure (3)")
    build.add_argument("--group-size", type=int, default=32, help="items per merge call, H (default 32)")
    build.add_argument("--patience", type=int, default=3, help="stagnant merge layers before stopping, P (3)")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=cmd_bank_build)

    retrieve = sub.add_parser("retrieve", help="retrieve the teacher pairs of each problem")
    retrieve.add_argument("--bank", required=True, help="bank JSON file (or a shipped bank name)")
    retrieve.add_argument("--problems", required=True, help="JSONL of {problem, ...} (or a shipped benchmark)")
    retrieve.add_argument("--top-k", type=int, default=8, help="teachers per problem, K (default 8)")
    retrieve.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of alpha")
    retrieve.add_argument("--encoder", default=None,
                          help="sentence-transformers name or path (default: packaged all-MiniLM-L6-v2)")
    retrieve.add_argument("--device", default="cpu", help="encoder device (default cpu)")
    retrieve.add_argument("--json", action="store_true", help="one JSON object per problem per line")
    retrieve.set_defaults(func=cmd_retrieve)

    grade = sub.add_parser("grade", help="grade a response against a reference answer")
    grade.add_argument("--answer", required=True, help="reference answer (LaTeX)")
    grade.add_argument("--response", required=True, help="model response containing \\boxed{...}")
    grade.add_argument("--json", action="store_true", help='print {"correct": bool, "extracted": str}')
    grade.set_defaults(func=cmd_grade)
    _add_eval_parser(sub)
    _add_plot_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except (BankError, datasets.ProblemFileError, CLIError) as exc:
        print(f"sgsd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `sgsd retrieve ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
