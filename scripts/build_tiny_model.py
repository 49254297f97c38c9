"""Build a tiny random-weight Qwen3 checkpoint + byte-level BPE tokenizer, offline.

The output directory loads with ``AutoTokenizer.from_pretrained`` and
``AutoModelForCausalLM.from_pretrained`` and has a Qwen3-style chat template
(``<|im_start|>``/``<|im_end|>``, ``enable_thinking``). No model hub access needed;
the tokenizer is trained on the shipped MATH subset (``sgsd/data/train``).

Exact command (from the repository root)::

    python scripts/build_tiny_model.py --output /tmp/tiny_qwen3

Add ``--pad-vocab-to 151936`` for a model with Qwen3's real embedding size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run as a plain file: make the repo root importable without relying on a
# ``scripts`` package (verl's wheel installs an unrelated top-level ``scripts``).
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from sgsd.tiny_model import build_tiny_model  # noqa: E402


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="directory to write the checkpoint to")
    parser.add_argument("--vocab-size", type=int, default=2048, help="tokenizer size incl. special tokens")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate-size", type=int, default=128)
    parser.add_argument("--max-position-embeddings", type=int, default=4096)
    parser.add_argument("--pad-vocab-to", type=int, default=None, help="model vocab rows (>= tokenizer size)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    start = time.perf_counter()
    out = build_tiny_model(
        args.output,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=args.max_position_embeddings,
        seed=args.seed,
        pad_vocab_to=args.pad_vocab_to,
    )
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
