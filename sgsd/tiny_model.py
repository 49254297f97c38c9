"""Build a tiny, randomly initialised Qwen3-style model and tokenizer locally.

Tests and CPU smoke runs need a real ``transformers`` checkpoint directory that
behaves like Qwen3 (chat template, ``<think>`` tags, ``<|im_end|>`` as eos) but
cannot download anything from the model hub. This module trains a small
byte-level BPE on math text and pairs it with a few-hundred-thousand-parameter
``Qwen3ForCausalLM``; the result loads with ``AutoTokenizer`` /
``AutoModelForCausalLM.from_pretrained`` like any hub checkpoint.

Heavy libraries (``tokenizers``, ``transformers``, ``torch``) are imported inside
the functions so that ``import sgsd`` stays cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "BOS_TOKEN",
    "CHAT_TEMPLATE",
    "DEFAULT_TRAIN_FILE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "THINK_TOKENS",
    "build_tiny_model",
    "build_tokenizer",
    "default_training_texts",
]

# Qwen's control tokens. ``<|endoftext|>`` doubles as pad (as in Qwen3), and
# ``<|im_end|>`` ends every chat turn, so it is the eos for chat generation.
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
BOS_TOKEN: str | None = None  # Qwen3 has no bos token
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, EOS_TOKEN)
# Real Qwen3 registers the think tags as added tokens but *not* special ones, so
# ``decode(..., skip_special_tokens=True)`` keeps them. We mirror that.
THINK_TOKENS: tuple[str, ...] = ("<think>", "</think>")

DEFAULT_TRAIN_FILE = Path(__file__).resolve().parent / "data" / "train" / "math_train.jsonl"

# Pre-tokenisation split, written in the spirit of GPT-4/Qwen-style patterns:
# contractions, letter runs with one optional leading non-letter, single digits
# (so numbers are tokenised digit by digit, which keeps arithmetic regular),
# punctuation runs, and - importantly - runs of newlines kept together so that
# "\n" and "\n\n" each become tokens of their own.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

# Small Qwen3-like chat template (system/user/assistant only, no tools).
# * Each message is rendered verbatim as "<|im_start|>{role}\n{content}<|im_end|>\n".
# * ``add_generation_prompt`` opens an assistant turn.
# * ``enable_thinking=False`` pre-fills an empty think block, exactly like Qwen3's
#   non-thinking mode; left undefined or true, the model is free to think.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('Unsupported role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and not enable_thinking -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# Cap on training characters: BPE on a few MB of text is already only a couple
# of seconds, but callers may pass huge iterables; beyond this the merges barely
# change for a 2k vocabulary.
_MAX_TRAIN_CHARS = 4_000_000


def default_training_texts(path: str | Path = DEFAULT_TRAIN_FILE) -> list[str]:
    """Return the ``problem`` and ``solution`` strings of the shipped MATH subset."""
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("problem", "solution"):
                value = row.get(key)
                if isinstance(value, str) and value:
                    texts.append(value)
    return texts


def _capped(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Yield texts until ``max_chars`` characters have been produced (keeps builds fast)."""
    total = 0
    for text in texts:
        if total >= max_chars:
            return
        total += len(text)
        yield text


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    *,
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with Qwen3-style special tokens and chat template.

    ``vocab_size`` is the total size, special and think tokens included; they get
    the last ids (as in Qwen, where control tokens follow the BPE vocabulary).
    It is an upper bound: a corpus too small to supply enough merges (pairs must
    occur at least twice) yields a smaller tokenizer.
    Byte-level with no normaliser, so every string round-trips exactly.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    n_added = len(SPECIAL_TOKENS) + len(THINK_TOKENS)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + n_added:
        raise ValueError(f"vocab_size must be at least {len(alphabet) + n_added}, got {vocab_size}")

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # No normaliser on purpose: NFC (what Qwen uses) would alter decomposed
    # unicode, breaking exact encode/decode round-trips.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added,
        min_frequency=2,
        show_progress=False,
        # Seed all 256 byte symbols so text never seen in training still encodes.
        initial_alphabet=alphabet,
        special_tokens=[],
    )
    tok.train_from_iterator(_capped(texts, _MAX_TRAIN_CHARS), trainer=trainer)

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        # Qwen lists its chat control tokens as extra specials too, so that
        # ``all_special_tokens`` (used e.g. for masking) contains <|im_start|>.
        extra_special_tokens=[IM_START, EOS_TOKEN],
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    output_dir: str | Path,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    texts: Iterable[str] | None = None,
    pad_vocab_to: int | None = None,
    initializer_range: float = 0.02,
) -> Path:
    """Write a random-weight Qwen3 checkpoint plus tokenizer to ``output_dir``.

    ``pad_vocab_to`` enlarges the model's embedding / lm_head beyond the
    tokenizer's vocabulary (real Qwen3 has 151936 rows for ~151.7k tokens),
    e.g. to benchmark memory with realistic logits. Identical arguments give
    byte-identical weights and an identical tokenizer. Without ``pad_vocab_to``
    the model's vocabulary is exactly ``len(tokenizer)``. A larger
    ``initializer_range`` (e.g. 0.5) gives a random model whose next-token
    distribution depends visibly on its context — what end-to-end tests of
    context-conditioned teachers need; 0.02 (Qwen3's) is nearly uniform.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    if hidden_size % num_heads:
        raise ValueError("hidden_size must be divisible by num_heads")
    if num_heads % num_kv_heads:
        raise ValueError("num_heads must be divisible by num_kv_heads")

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(
        default_training_texts() if texts is None else texts,
        vocab_size=vocab_size,
        model_max_length=max_position_embeddings,
    )
    n_tokens = len(tokenizer)
    model_vocab = n_tokens if pad_vocab_to is None else pad_vocab_to
    if model_vocab < n_tokens:
        raise ValueError(f"pad_vocab_to={pad_vocab_to} is smaller than the tokenizer ({n_tokens})")

    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)

    config = Qwen3Config(
        vocab_size=model_vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        max_window_layers=num_layers,
        # Qwen3's rope base; irrelevant for quality here but keeps shapes/paths realistic.
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        initializer_range=initializer_range,
        # Like Qwen3's config: <|endoftext|> is bos/pad, <|im_end|> the eos.
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    # Fork the RNG so seeding does not leak into the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model = model.to(torch.float32).eval()

    # Chat generation should stop at either turn end or document end, as Qwen3's does.
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id,
        eos_token_id=[eos_id, pad_id],
        pad_token_id=pad_id,
    )

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _make_world_readable(out.glob("*.safetensors"))
    return out


def _make_world_readable(paths: Iterable[Path]) -> None:
    """Give weight files the usual umask-based mode.

    Recent ``safetensors`` writes through a private temp file, leaving 0600
    weights next to 0644 configs; other users/containers sharing the checkpoint
    (e.g. ray workers under a different uid) then cannot read them.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        path.chmod(0o666 & ~umask)
