"""``sgsd plot``: training runs side by side as PNGs (:mod:`sgsd.plot`, metrics read by
:mod:`sgsd.run_metrics`)."""

from __future__ import annotations

import argparse
import sys

from sgsd.cli import CLIError


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


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
