"""``sgsd retrieve`` (the teacher pairs of each problem, :mod:`sgsd.retrieval`) and
``sgsd grade`` (one response against a reference answer, :mod:`sgsd.verifier`)."""

from __future__ import annotations

import argparse
import json

from sgsd.bank import SkillBank
from sgsd.cli import CLIError, flag_errors
from sgsd.datasets import load_problems, resolve


def cmd_retrieve(args: argparse.Namespace) -> int:
    from sgsd.retrieval import RetrievalConfig, SentenceTransformerEncoder, SkillRetriever

    with flag_errors():  # before the bank and the encoder load
        config = RetrievalConfig(top_k=args.top_k, temperature=args.temperature)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar is noise in a CLI's output
    bank = SkillBank.load(resolve(args.bank, "bank"), require_nonempty=True)
    problems = load_problems(resolve(args.problems, "benchmark"))
    try:
        encoder = SentenceTransformerEncoder(args.encoder, device=args.device)
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot load encoder {args.encoder!r}: {exc}") from exc
    retriever = SkillRetriever(encoder, bank, top_k=config.top_k, temperature=config.temperature)
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

    if not args.answer.strip():  # every response would be graded 'wrong' against nothing
        raise CLIError("--answer is empty: give the reference answer to grade against")
    result = grade(args.response, args.answer)
    if args.json:
        print(json.dumps({"correct": result.correct, "extracted": result.extracted}))
    else:
        verdict = "correct" if result.correct else "wrong"
        print(f"{verdict} (extracted: {result.extracted!r}, by {result.method})")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
