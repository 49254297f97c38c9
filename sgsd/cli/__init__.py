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

One module per command group registers its subcommands (``add_parsers``):
:mod:`sgsd.cli.bank` (``bank inspect|merge|build``), :mod:`sgsd.cli.tools` (``retrieve``,
``grade``), :mod:`sgsd.cli.eval` (``eval``, ``eval compare``), :mod:`sgsd.cli.plot`. They
hold no range check of their own: the library's config objects refuse bad values
(:mod:`sgsd.checks`) and :func:`flag_errors` words the refusal with the flag. Heavy
libraries are imported inside the commands, so ``sgsd --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sgsd.bank import BankError
from sgsd.checks import raising
from sgsd.datasets import ProblemFileError

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "CLIError", "build_parser", "flag_errors", "main"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def flag_errors():
    """Inside, a config object's refusal of a value becomes a CLIError naming its flag
    (``group_size`` -> ``--group-size must be >= 2, got 1``)."""
    return raising(CLIError, lambda exc: exc.named("--" + exc.name.replace("_", "-")))


def build_parser() -> argparse.ArgumentParser:
    from sgsd.cli import bank, eval, plot, tools

    parser = argparse.ArgumentParser(prog="sgsd", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (bank, tools, eval, plot):
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except (BankError, ProblemFileError, CLIError) as exc:
        print(f"sgsd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `sgsd retrieve ... | head`
        return 0
    except KeyboardInterrupt:  # commands with saved work say what is kept themselves
        print("sgsd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
