"""``sgsd bank inspect|merge|build``: validate and list a bank, merge raw candidates
(:mod:`sgsd.merge`), build a cold-start bank (:mod:`sgsd.build`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from sgsd.bank import SkillBank
from sgsd.checks import raising
from sgsd.cli import CLIError, flag_errors
from sgsd.datasets import resolve


def cmd_bank_inspect(args: argparse.Namespace) -> int:
    from sgsd.item_utility import CATEGORIES, PRIOR_WEIGHT, UTILITY_KEY, utility_of, utility_score

    bank = SkillBank.load(resolve(args.path, "bank"))
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
    empty = [k for k in ("general_skills", "common_mistakes") if not counts[k]["total"]]
    if empty:  # valid as a file, but SGSD pairs a skill with a mistake for every teacher
        print(f"sgsd: warning: {bank.source} has no {' and no '.join(empty)}: SGSD cannot form a teacher "
              "(skill, mistake) pair from it", file=sys.stderr)
    if args.json:
        report = {"path": bank.source, "valid": True, "can_pair": not empty, **counts}
        if listed:
            report["items"] = {c: [{"id": it.item_id, "origin": it.origin, "score": round(score, 6), **u}
                                   for it, score, u in r] for c, r in rows.items()}
        print(json.dumps(report, allow_nan=False))  # strict JSON: a NaN would be refused here, not printed
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


def _with(settings, **overrides):
    """``settings`` with the flags that were given (None: keep the default)."""
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def cmd_bank_merge(args: argparse.Namespace) -> int:
    """Alg. 3 on raw candidates. 0: merged; 1: nothing merged (no output written) or some
    requests failed (output written, their groups unmerged: rerun to retry them); 130:
    interrupted, every reply so far kept in the run folder."""
    import hashlib

    from sgsd import merge
    from sgsd.build import model_identity
    from sgsd.run_dir import RunDir, RunDirError

    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        raise CLIError(f"--timeout must be a finite number of seconds > 0, got {args.timeout}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    with flag_errors():  # before anything is loaded
        config = merge.MergeConfig(group_size=args.group_size, patience=args.patience, max_layers=args.max_layers)
        settings = _with(merge.DEFAULT_MERGE_SETTINGS, enable_thinking=args.thinking,
                         max_new_tokens=args.max_new_tokens, temperature=args.temperature, timeout_s=args.timeout)
    raw_path = resolve(args.raw, "bank")
    raw = SkillBank.load(raw_path)
    try:
        client = merge.resolve_client(args.llm)  # looked up on the module: tests replace it
    except (ImportError, ValueError, OSError) as exc:
        raise CLIError(f"cannot create the LLM client {args.llm!r}: {exc}") from exc
    run_dir = Path(args.run_dir) if args.run_dir else Path(args.output).with_suffix(".merge")
    identity = {"job": "bank merge", "raw_sha256": hashlib.sha256(Path(raw_path).read_bytes()).hexdigest(),
                "writer": model_identity(args.llm)}
    try:
        run = RunDir(run_dir, "merge.json", what="bank merge")
        cache = merge.ReplyCache(run)
        if not run.check_identity(identity, has_records=bool(cache.replies)):
            run.save_identity(identity)
    except RunDirError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot write {run_dir}: {exc}") from None
    try:
        bank = merge.merge_bank(raw, client, **dataclasses.asdict(config), settings=settings,
                                progress=not args.quiet, cache=cache, batch_size=args.batch_size)
    except KeyboardInterrupt:
        print(f"sgsd: interrupted; {len(cache.replies)} replies are saved in {run_dir}: rerun the same command "
              "to continue", file=sys.stderr)
        return 130
    meta = bank.metadata
    diag = [meta["merge_diagnostics"][kind] for kind in ("general_skills", "common_mistakes")]
    total = {key: sum(d[key] for d in diag) for key in ("requests", "request_failures", "parse_failures",
                                                          "growth_rejections", "collapse_rejections", "merged_groups",
                                                          "reused_replies")}
    error = next((d["first_error"] for d in diag if d["first_error"]), None)
    failed = total["request_failures"]
    asked = total["requests"] + total["reused_replies"]
    why = (f"{failed} of {asked} requests failed" + (f" ({error})" if error else "")
           + f", {total['parse_failures']} replies unparseable, {total['collapse_rejections']} lost most of their "
           f"group, {total['growth_rejections']} grew it")
    if asked and not total["merged_groups"]:
        print(f"sgsd: error: nothing was merged: {why}; {args.output} not written (the items would not be a "
              f"merge); the writer's replies are saved in {run_dir}", file=sys.stderr)
        return 1
    try:
        bank.save(args.output)
    except OSError as exc:
        raise CLIError(f"cannot write {args.output}: {exc}") from exc
    print(f"{args.output}: general_skills {meta['input_general_skills']} -> {meta['output_general_skills']}, "
          f"common_mistakes {meta['input_common_mistakes']} -> {meta['output_common_mistakes']}"
          f" ({total['merged_groups']} groups merged)")
    if failed:
        print(f"sgsd: warning: partial merge: {why}; their groups were kept unmerged; rerun the same command to "
              "retry the failed requests", file=sys.stderr)
        return 1
    if total["parse_failures"] or total["collapse_rejections"] or total["growth_rejections"]:
        print(f"sgsd: warning: {why}; those groups were kept unmerged", file=sys.stderr)
    return 0


def cmd_bank_build(args: argparse.Namespace) -> int:
    """The cold-start build (paper Alg. 2, :mod:`sgsd.build`); 0: bank written, 1: nothing extracted."""
    from sgsd import build

    def settings(name, base, max_new_tokens, temperature, thinking):  # refusals name the field: generation.temperature
        with raising(CLIError, lambda exc: exc.named(f"{name}.{exc.name}")):
            return _with(base, max_new_tokens=max_new_tokens, temperature=temperature, enable_thinking=thinking)

    try:
        config = build.BuildConfig(
            num_problems=args.num_problems, seed=args.seed, batch_size=args.batch_size,
            skills_per_success=args.skills_per_success, mistakes_per_failure=args.mistakes_per_failure,
            group_size=args.group_size, patience=args.patience,
            generation=settings("generation", build.DEFAULT_GENERATION_SETTINGS, args.max_new_tokens,
                                args.temperature, args.thinking),
            extraction=settings("extraction", build.DEFAULT_EXTRACTION_SETTINGS, args.extract_max_new_tokens,
                                args.writer_temperature, args.writer_thinking),
            merge=settings("merge", build.DEFAULT_MERGE_SETTINGS, args.merge_max_new_tokens,
                           args.writer_temperature, args.writer_thinking))
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
    merge_failed = result.metadata["this_run"]["request_failures"].get("merge", 0)
    retry = c["pending_generations"] + c["pending_extractions"] + merge_failed
    note = f"; {retry} failed requests: rerun the same command to retry them" if retry else ""
    if result.bank is None:
        if sum(c["candidates"].values()):
            what = (f"nothing was merged ({merge_failed} of {c['merge_requests']} merge requests failed, "
                    f"{c['merge_parse_failures']} replies unparseable); the unmerged candidates are "
                    f"{build.FILES['raw']}")
        elif c["generated"]:
            what = (f"no skill or mistake could be extracted from {c['generated']} memories "
                    f"({c['extraction_parse_failures']} unparseable replies)")
        else:
            what = "no solution could be generated"
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
    if retry:
        print(f"sgsd: warning: partial build: {retry} requests failed ({merge_failed} of them merge requests, "
              "whose groups were kept unmerged); rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    merge.add_argument("--timeout", type=float, default=None,
                       help="seconds per request attempt before it counts as failed (default 300)")
    merge.add_argument("--batch-size", type=int, default=8,
                       help="merge requests per writer call; each call's replies are saved before the next (8)")
    merge.add_argument("--run-dir", default=None,
                       help="folder of saved replies, so a rerun continues (default: OUTPUT without .json + .merge)")
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
    build.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                       help="chat-template thinking for the solutions (default off; scripts/build_bank.sh: on)")
    build.add_argument("--writer-thinking", action=argparse.BooleanOptionalAction, default=None,
                       help="thinking for extraction and merge replies (default off; scripts/build_bank.sh: on)")
    build.add_argument("--skills-per-success", type=int, default=3, help="general skills kept per success (3)")
    build.add_argument("--mistakes-per-failure", type=int, default=3, help="common mistakes kept per failure (3)")
    build.add_argument("--group-size", type=int, default=32, help="items per merge call, H (default 32)")
    build.add_argument("--patience", type=int, default=3, help="stagnant merge layers before stopping, P (3)")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=cmd_bank_build)
