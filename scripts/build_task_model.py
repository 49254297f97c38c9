"""Pretrain the rulebook task model on CPU and save it only if it has the guidance gap.

A Qwen3-style tiny model (the tiny model's tokenizer conventions and chat template,
``sgsd/tiny_model.py``) trained from a seed on a corpus of the rulebook task
(``sgsd/rulebook.py``, ``sgsd/task_model.py``) in every prompt format the recipe's teachers
render. The build then samples held-out validation problems at the CPU runs' training
temperature (1.1, top-p 0.95) and refuses to save a model whose unguided accuracy is outside
[0.15, 0.60], whose accuracy with the right guidance in SGSD's teacher prompt is not 20 points
higher, or whose accuracy with misleading guidance is not lower than unguided (exit 1, nothing
written). The figures go to ``OUTPUT/task_model.json``.

Exact command (from the repository root; about 7 minutes on 2 cores); the shipped copy is
``sgsd/data/models/rulebook_qwen3``::

    python scripts/build_task_model.py --output sgsd/data/models/rulebook_qwen3

``--write-guidance`` also rewrites the shipped rulebook bank and skill file
(``sgsd/data/skill_banks/rulebook.json``, ``sgsd/data/skills/rulebook.json``) from the generator.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # run as a file: this checkout's sgsd wins
    sys.path.insert(0, str(_REPO_ROOT))

from sgsd.task_model import GuidanceGapError, PretrainConfig, build_task_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="directory to write the model to")
    defaults = PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name), help="(default %(default)s)")
    parser.add_argument("--eval-problems", type=int, default=300, help="validation problems measured (default 300)")
    parser.add_argument("--write-guidance", action="store_true",
                        help="also rewrite the shipped rulebook bank and skill file under sgsd/data")
    args = parser.parse_args(argv)
    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    import torch

    torch.set_num_threads(2)  # the figures in task_model.json were measured on 2 cores: same arithmetic
    try:
        record = build_task_model(args.output, config, eval_problems=args.eval_problems)
    except GuidanceGapError as exc:
        print(f"build_task_model.py: {exc}", file=sys.stderr)
        return 1
    if args.write_guidance:
        from sgsd.rulebook import write_guidance_files

        for path in write_guidance_files(_REPO_ROOT / "sgsd" / "data"):
            print(f"wrote {path}")
    print(f"wrote {args.output} in {record['seconds']:.0f} s: unguided {record['figures']['plain']:.3f}, right "
          f"guidance {record['figures']['right']:.3f}, misleading {record['figures']['misleading']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
