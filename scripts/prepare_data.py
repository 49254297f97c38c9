#!/usr/bin/env python3
r"""Write a problem set as verl RL parquet (the files the run scripts' TRAIN_FILE/VAL_FILE read).

Each row's prompt is SGSD's student prompt (``sgsd.prompts.student_prompt``) as ONE user
message; ``extra_info.problem`` keeps the plain statement for the teacher pass. Layout:
``sgsd/verl_data.py``. Run this file directly (verl's wheel installs a top-level ``scripts``
package, so ``python -m scripts.prepare_data`` would find the wrong one)::

    python3 scripts/prepare_data.py --dataset math_train     # -> ~/data/sgsd/math_train.parquet (train)
    python3 scripts/prepare_data.py --dataset aime24         # -> ~/data/sgsd/aime24.parquet (test)
    python3 scripts/prepare_data.py --dataset dapo-math-17k  # the paper's training set, from the Hub
    python3 scripts/prepare_data.py --dataset dapo-math-17k --input dapo-math-17k.parquet  # a local copy
    python3 scripts/prepare_data.py --input my.jsonl --output ~/data/sgsd/my.parquet --split train
    python3 scripts/prepare_data.py --dataset math500 --shuffle --seed 1 --limit 100

    # the rulebook (sgsd/rulebook.py): a synthetic task the CPU runs learn; disjoint splits
    python3 scripts/prepare_data.py --dataset rulebook   # -> ~/data/sgsd/rulebook_{train,val,test}.parquet
    python3 scripts/prepare_data.py --dataset rulebook --train-count 4000 --seed 1 --output-dir DIR

    # Sokoban episodes (multi-turn, sgsd/envs): seeded levels, test seeds disjoint from train's
    python3 scripts/prepare_data.py --dataset sokoban    # -> ~/data/sgsd/sokoban_{train,test}.parquet
    python3 scripts/prepare_data.py --dataset sokoban --size 7x7 --boxes 2 --max-turns 40 \
        --train-count 1000 --test-count 100 --seed 1 --output-dir ~/data/sgsd/sokoban_7x7

    # GRPO+Skill / OPSD+Skill: the top-3 pairs per problem in the STUDENT prompt, retrieved with
    # the GPU scripts' Qwen3-Embedding-0.6B (the defaults come from scripts/lib/retrieval.sh)
    python3 scripts/prepare_data.py --dataset dapo-math-17k --student-skills qwen3_1.7b \
        --output ~/data/sgsd/dapo-math-17k_skills.parquet

Shipped sets: math_train, gsm8k (split train); aime24, aime25, hmmt25, amc2023, math500
(split test). ``--input`` takes JSONL/JSON/parquet of ``problem``/``answer`` rows (+ optional
``solution``). DAPO-Math-17k is de-duplicated, stripped of its own answer-format
instruction and, by default, reduced to its English problems (``--language all`` keeps all).
``--dataset rulebook`` writes three files (train, val, test) of the synthetic rulebook task, whose
problems' splits are disjoint by construction; ``--seed`` draws the problems. ``--dataset sokoban``
writes two files of episode rows (``sgsd/envs/data.py``; TextArena's
level generator, ``pip install 'sgsd-verl[agents]'``) and prints the scripted solver's check
of every level and the random-policy floor on the test levels.
Bad input exits 2 with one line naming the file, the line and the field.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

# Run as a file: put this checkout first so its `sgsd` wins over any installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgsd.datasets import ProblemFileError, load_problems  # noqa: E402
from sgsd.verl_data import (  # noqa: E402
    DAPO_HUB_ID,
    DAPO_NAME,
    SHIPPED_SETS,
    TRAIN_SETS,
    DatasetUnavailableError,
    dapo_problems,
    iter_dapo_hub_rows,
    iter_parquet_rows,
    shipped_set_path,
    to_verl_rows,
    write_parquet,
)

DEFAULT_DIR = Path("~/data/sgsd")
SOKOBAN = "sokoban"
# --dataset sokoban's defaults: 6x6 rooms, one box, 20 turns (sgsd eval's built-in levels are
# its first 100 test levels); 3200 train levels = one pass of the GPU scripts' 200 steps x 16
SOKOBAN_DEFAULTS = {"size": "6x6", "boxes": 1, "max_turns": 20, "train_count": 3200, "test_count": 100}
RULEBOOK = "rulebook"
# --dataset rulebook's defaults: the counts per split (the splits hold ~12.7k / 1.8k / 3.6k problems)
RULEBOOK_DEFAULTS = {"train_count": 2000, "val_count": 300, "test_count": 600}
RETRIEVAL_SH = Path(__file__).resolve().parent / "lib" / "retrieval.sh"


def gpu_retrieval_defaults(path: Path = RETRIEVAL_SH) -> dict[str, str]:
    """The ``NAME=value`` lines of ``scripts/lib/retrieval.sh``, which the GPU scripts source: the
    encoder and the student-prompt K of the +Skill data, kept in one place for both."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return {m[1]: m[2] for m in (re.match(r"([A-Z_]+)=(\S+)", line) for line in lines) if m}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    gpu = gpu_retrieval_defaults()
    parser = argparse.ArgumentParser(prog="prepare_data.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=[*SHIPPED_SETS, DAPO_NAME, RULEBOOK, SOKOBAN],
                        help="a shipped set, dapo-math-17k, rulebook (the synthetic task), or sokoban (seeded "
                             "episode levels)")
    parser.add_argument("--input", type=Path, help="JSONL/JSON/parquet of problem/answer rows (with "
                        "--dataset dapo-math-17k: a local copy of DAPO's parquet)")
    parser.add_argument("--output", type=Path, help="parquet to write (default ~/data/sgsd/<data source>.parquet)")
    parser.add_argument("--split", choices=["train", "test"],
                        help="extra_info.split; train rows must have answers (default: train, test for benchmarks)")
    parser.add_argument("--data-source", help="data_source column (default: the dataset name or the input's stem)")
    parser.add_argument("--limit", type=int, help="keep the first N problems (after --shuffle)")
    parser.add_argument("--shuffle", action="store_true", help="shuffle before --limit")
    parser.add_argument("--seed", type=int, help="shuffle seed (default 0; needs --shuffle); with --dataset "
                        "sokoban: the level family, with rulebook: the problems drawn (default 0)")
    parser.add_argument("--language", choices=["en", "all"], default="en",
                        help="DAPO-Math-17k only: en = the English subset the paper trains on (default)")
    parser.add_argument("--student-skills", metavar="BANK",
                        help="GRPO+Skill / OPSD+Skill baselines: show each problem's retrieved skills and "
                             "mistakes in the STUDENT prompt (a bank path or shipped name; training data only)")
    parser.add_argument("--student-skills-top-k", type=int, default=int(gpu["STUDENT_SKILLS_TOP_K"]),
                        help="skill-mistake pairs shown (default %(default)s: the release's GRPO+Skill / OPSD+Skill, "
                             "and the K the GPU scripts give OPSD+Skill's teacher)")
    parser.add_argument("--encoder", default=gpu["SKILL_ENCODER"],
                        help="retrieval encoder for --student-skills (default %(default)s: the GPU scripts' "
                             "sgsd.encoder; all-MiniLM-L6-v2 is the packaged one, no model hub)")
    sokoban = parser.add_argument_group("--dataset sokoban")
    sokoban.add_argument("--size", metavar="HxW", help="room height x width, outer walls included, each 5..12 "
                         f"(default {SOKOBAN_DEFAULTS['size']})")
    sokoban.add_argument("--boxes", type=int, help=f"boxes per level, 1..6 (default {SOKOBAN_DEFAULTS['boxes']})")
    sokoban.add_argument("--max-turns", type=int,
                         help=f"replies per episode, 1..200 (default {SOKOBAN_DEFAULTS['max_turns']})")
    counts = parser.add_argument_group("--dataset sokoban | rulebook")
    counts.add_argument("--train-count", type=int, help=f"training levels (default {SOKOBAN_DEFAULTS['train_count']}) "
                        f"or problems ({RULEBOOK_DEFAULTS['train_count']})")
    counts.add_argument("--test-count", type=int, help=f"test levels (default {SOKOBAN_DEFAULTS['test_count']}) or "
                        f"problems ({RULEBOOK_DEFAULTS['test_count']})")
    counts.add_argument("--val-count", type=int, help=f"rulebook only: validation problems "
                        f"(default {RULEBOOK_DEFAULTS['val_count']})")
    counts.add_argument("--output-dir", type=Path,
                        help="folder of <data source>_<split>.parquet (default ~/data/sgsd)")
    args = parser.parse_args(argv)
    if args.dataset == RULEBOOK:
        given = [f"--{name.replace('_', '-')}" for name in ("input", "output", "split", "limit", "size", "boxes",
                                                            "max_turns") if getattr(args, name) is not None]
        if given or args.shuffle:
            parser.error(f"--dataset {RULEBOOK} writes its own train, val and test files; it takes no "
                         f"{', '.join(given + ['--shuffle'] * args.shuffle)}")
        for name, default in RULEBOOK_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1")
        return args
    if args.val_count is not None:
        parser.error(f"--val-count goes with --dataset {RULEBOOK} only")
    if args.dataset == SOKOBAN:
        given = [f"--{name.replace('_', '-')}" for name in ("input", "output", "split", "limit", "student_skills")
                 if getattr(args, name) is not None] + ["--shuffle"] * args.shuffle
        if given:
            parser.error(f"--dataset {SOKOBAN} writes its own train and test files; it takes no {', '.join(given)}")
        for name, default in SOKOBAN_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
        match = re.fullmatch(r"(\d+)x(\d+)", args.size.strip().lower())
        if not match:
            parser.error(f"--size must be HxW, e.g. 6x6, got {args.size!r}")
        args.size = (int(match[1]), int(match[2]))
        for name in ("train_count", "test_count"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1")
        return args
    given = [f"--{name.replace('_', '-')}" for name in (*SOKOBAN_DEFAULTS, "output_dir")
             if getattr(args, name) is not None]
    if given:
        parser.error(f"{', '.join(given)} go with --dataset {SOKOBAN} (or {RULEBOOK}) only")
    if args.dataset is None and args.input is None:
        parser.error("give --dataset or --input")
    if args.dataset is not None and args.dataset != DAPO_NAME and args.input is not None:
        parser.error(f"--input goes with --dataset {DAPO_NAME} only (a shipped set has its own file)")
    if args.seed is not None and not args.shuffle:
        parser.error("--seed has no effect without --shuffle")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    return args


def load(args: argparse.Namespace):
    """The problems, the data_source name and the default split for ``args``."""
    if args.dataset == DAPO_NAME:
        rows = iter_parquet_rows(args.input) if args.input else iter_dapo_hub_rows()
        problems, counts = dapo_problems(rows, language=args.language, source=str(args.input or DAPO_HUB_ID))
        print(f"{DAPO_NAME}: {counts['rows']} rows, {counts['duplicates']} duplicates and "
              f"{counts['non_english']} non-English problems dropped", file=sys.stderr)
        return problems, DAPO_NAME, "train"
    if args.dataset is not None:
        split = "train" if args.dataset in TRAIN_SETS else "test"
        path, name = shipped_set_path(args.dataset), args.dataset
    else:
        split, path, name = "train", args.input, args.input.stem
    # Training rows without an answer are an error, reported with the file and line.
    problems = load_problems(path, require_answer=(args.split or split) == "train")
    return problems, name, split


def student_guidance(problems, bank: str, top_k: int, encoder: str):
    """Retrieved (skills, mistakes) per problem for the student prompt."""
    from sgsd.bank import SkillBank
    from sgsd.checks import raising
    from sgsd.datasets import resolve
    from sgsd.retrieval import RetrievalConfig, SentenceTransformerEncoder, SkillRetriever
    from sgsd.verl_data import retrieve_student_guidance

    with raising(ValueError, lambda exc: exc.named("--student-skills-top-k")):  # before the encoder loads
        RetrievalConfig(top_k=top_k)
    from sgsd.verl_data import guidance_source

    path = resolve(bank, "bank")
    skills = SkillBank.load(path, require_nonempty=True)
    retriever = SkillRetriever(SentenceTransformerEncoder(encoder), skills, top_k=top_k)
    return retrieve_student_guidance(problems, retriever), guidance_source(path, encoder, top_k)


def write_sokoban(args: argparse.Namespace) -> None:
    """The train and test episode files, then the solver's check and the random-policy floor."""
    from sgsd.envs.data import episode_rows
    from sgsd.envs.sokoban import generate, levels, render
    from sgsd.envs.sokoban_solver import random_policy, solve

    data_source = args.data_source or SOKOBAN
    folder = (args.output_dir or DEFAULT_DIR).expanduser()
    written, rows = {}, {}
    for split, count in (("train", args.train_count), ("test", args.test_count)):
        written[split] = levels(split, count, size=args.size, boxes=args.boxes, max_turns=args.max_turns,
                                seed=0 if args.seed is None else args.seed)
        rows[split] = episode_rows(written[split], split, data_source)  # both generated before either is written
    for split in rows:
        output = write_parquet(rows[split], folder / f"{data_source}_{split}.parquet")
        print(f"wrote {len(rows[split])} rows ({data_source}, split {split}) to {output}")
    everything = written["train"] + written["test"]
    lengths = [len(moves) for moves in map(solve, everything) if moves is not None]
    unsolved = len(everything) - len(lengths)
    print(f"solver: {len(lengths)}/{len(everything)} levels solved" + (
        f" (shortest solutions {min(lengths)}-{max(lengths)} moves, mean {sum(lengths) / len(lengths):.1f})"
        if lengths else ""))
    if unsolved:
        print(f"prepare_data.py: warning: {unsolved} levels not solved within the solver's state budget "
              "(they are solvable by construction; larger rooms and more boxes need more states)", file=sys.stderr)
    floor = random_policy(written["test"], seed=0)
    print(f"random policy on the {floor['episodes']} test levels: success {floor['success_rate']:.3f}, boxes on "
          f"targets {floor['boxes_on_target']:.3f}, invalid rate {floor['invalid_rate']:.3f}, mean turns "
          f"{floor['turns']:.1f} (the floor a trained policy must beat)")
    # Disjoint seeds, not always disjoint boards: small rooms have few layouts.
    train_boards = {render(generate(level)) for level in written["train"]}
    shared = sum(render(generate(level)) in train_boards for level in written["test"])
    print(f"test levels whose start board is also a train level's: {shared}/{len(written['test'])}")


def write_rulebook(args: argparse.Namespace) -> None:
    """The train, val and test files of the rulebook task (with ``--student-skills``, also the
    train problems with their pairs in the student prompt)."""
    from sgsd import rulebook

    data_source = args.data_source or RULEBOOK
    folder = (args.output_dir or DEFAULT_DIR).expanduser()
    seed = 0 if args.seed is None else args.seed
    drawn = {split: rulebook.problems(split, getattr(args, f"{split}_count"), seed=seed) for split in rulebook.SPLITS}
    files = {split: to_verl_rows(problems, data_source, "train" if split == "train" else "test")
             for split, problems in drawn.items()}
    if args.student_skills:
        guidance, source = student_guidance(drawn["train"], args.student_skills, args.student_skills_top_k,
                                            args.encoder)
        files["train_skills"] = to_verl_rows(drawn["train"], data_source, "train", student_guidance=guidance,
                                             guidance_source=source)
    for name, rows in files.items():  # every file built before any is written
        output = write_parquet(rows, folder / f"{data_source}_{name}.parquet")
        print(f"wrote {len(rows)} rows ({data_source}, {name}) to {output}")
    per_family = {f.name: sum(p.extra["family"] == f.name for p in drawn["train"]) for f in rulebook.FAMILIES}
    print(f"operations: {', '.join(f'{name} {n}' for name, n in per_family.items())} training problems; the splits "
          f"share no problem (sgsd.rulebook.split_of)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    generated = {RULEBOOK: write_rulebook, SOKOBAN: write_sokoban}.get(args.dataset)
    if generated is not None:  # the generated sets write their own split files
        try:
            generated(args)
        except (ImportError, ValueError, OSError) as exc:
            print(f"prepare_data.py: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
        return 0
    try:
        problems, name, split = load(args)
        split = args.split or split
        data_source = args.data_source or name
        if args.shuffle:
            random.Random(0 if args.seed is None else args.seed).shuffle(problems)
        if args.limit is not None:
            problems = problems[:args.limit]
        guidance = source = None
        if args.student_skills:
            guidance, source = student_guidance(problems, args.student_skills, args.student_skills_top_k,
                                                args.encoder)
        rows = to_verl_rows(problems, data_source, split, student_guidance=guidance, guidance_source=source)
        output = (args.output or DEFAULT_DIR / f"{data_source}.parquet").expanduser()
        write_parquet(rows, output)
    except (ProblemFileError, DatasetUnavailableError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception held
        print(f"prepare_data.py: error: {message}", file=sys.stderr)
        return 2
    print(f"wrote {len(rows)} rows ({data_source}, split {split}) to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
