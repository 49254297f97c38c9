"""Tests for the offline tiny Qwen3 builder (``sgsd.tiny_model``).

One default model is built per module (it takes a few seconds); the
determinism and vocab-padding checks use builds on a tiny corpus, which are
much cheaper because BPE training is the slow part.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

# Nothing may be fetched from the hub: every load below must be local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sgsd.tiny_model import build_tiny_model, build_tokenizer  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "Reason step by step."},
    {"role": "user", "content": "What is $1+1$?"},
]
PROMPT_PREFIX = (
    "<|im_start|>system\nReason step by step.<|im_end|>\n"
    "<|im_start|>user\nWhat is $1+1$?<|im_end|>\n"
)
SMALL_CORPUS = [
    "Let $x = \\frac{1}{2}$. Then $2x = 1$, so the answer is $\\boxed{1}$.\n\nDone.",
    "We have $a^2 + b^2 = c^2$.\n\nTherefore $c = 5$ and the answer is $\\boxed{5}$.",
] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return transformers.AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_saved_dir_loads_with_auto_classes(model_dir: Path, tokenizer, model) -> None:
    assert (model_dir / "config.json").is_file()
    assert os.access(model_dir / "model.safetensors", os.R_OK)
    assert (model_dir / "model.safetensors").stat().st_mode & 0o044  # readable beyond the owner
    assert isinstance(model, transformers.Qwen3ForCausalLM)
    assert model.dtype == torch.float32
    assert len(tokenizer) == 2048
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert tokenizer.model_max_length == 4096
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert model.config.eos_token_id == eos_id
    assert model.config.pad_token_id == pad_id
    assert model.generation_config.pad_token_id == pad_id
    assert eos_id in model.generation_config.eos_token_id


def test_chat_template_thinking_off(tokenizer) -> None:
    text = tokenizer.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text == PROMPT_PREFIX + "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": True}])
def test_chat_template_thinking_on(tokenizer, kwargs: dict) -> None:
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True, **kwargs)
    assert text == PROMPT_PREFIX + "<|im_start|>assistant\n"


def test_chat_template_without_generation_prompt(tokenizer) -> None:
    convo = [*MESSAGES, {"role": "assistant", "content": "<think>\neasy\n</think>\n\n$\\boxed{2}$"}]
    text = tokenizer.apply_chat_template(convo, tokenize=False, enable_thinking=False)
    assert text == PROMPT_PREFIX + "<|im_start|>assistant\n<think>\neasy\n</think>\n\n$\\boxed{2}$<|im_end|>\n"


def test_chat_template_rejects_unknown_role(tokenizer) -> None:
    with pytest.raises(Exception, match="Unsupported role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize("token", ["<think>", "</think>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"])
def test_control_tokens_are_single_ids(tokenizer, token: str) -> None:
    ids = tokenizer.encode(token, add_special_tokens=False)
    assert len(ids) == 1
    assert tokenizer.convert_ids_to_tokens(ids[0]) == token
    # Also when glued to surrounding text, as in real prompts.
    glued = tokenizer.encode(f"a{token}\nb", add_special_tokens=False)
    assert ids[0] in glued


def test_special_flags_mirror_qwen3(tokenizer) -> None:
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|><think>\nx</think>", add_special_tokens=False)
    # <|...|> tokens are special (dropped), think tags are plain added tokens (kept).
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi<think>\nx</think>"
    assert "<|im_start|>" in tokenizer.all_special_tokens
    assert "<think>" not in tokenizer.all_special_tokens


def test_newline_tokens_exist(tokenizer) -> None:
    n_ids = tokenizer.encode("\n", add_special_tokens=False)
    nn_ids = tokenizer.encode("\n\n", add_special_tokens=False)
    assert len(n_ids) == 1 and len(nn_ids) == 1 and n_ids != nn_ids
    # Between words, newline runs stay together (Qwen-style split), so a blank
    # line is the single "\n\n" token rather than two "\n" tokens.
    assert nn_ids[0] in tokenizer.encode("First step\n\nSecond step", add_special_tokens=False)
    assert n_ids[0] in tokenizer.encode("First step\nSecond step", add_special_tokens=False)


@pytest.mark.parametrize(
    "text",
    [
        "$\\boxed{\\frac{a}{b}}$",
        "Since $\\sqrt{x^2} = |x|$, we get \\[\\sum_{k=1}^{n} k = \\dfrac{n(n+1)}{2}.\\]\n\n",
        "π ≈ 3.14159, ∀ε>0 ∃δ; café, naïve, 日本語, 😀 and e\u0301 (decomposed)",
        "  leading spaces\ttabs\r\nand\n\n\nnewlines  ",
        "",
    ],
)
def test_roundtrip(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_latex_is_compressed(tokenizer) -> None:
    # Trained on MATH text, common LaTeX should need far fewer tokens than bytes.
    text = "Therefore, the answer is $\\boxed{\\frac{1}{2}}$."
    assert len(tokenizer.encode(text, add_special_tokens=False)) < len(text.encode()) / 2


def test_forward_and_generate(tokenizer, model) -> None:
    enc = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, enable_thinking=False, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model(**enc)
        assert out.logits.shape == (1, enc["input_ids"].shape[1], len(tokenizer))
        assert torch.isfinite(out.logits).all()
        gen = model.generate(**enc, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert gen.shape == (1, enc["input_ids"].shape[1] + 5)
    assert torch.equal(gen[:, : enc["input_ids"].shape[1]], enc["input_ids"])


def test_batched_padding(tokenizer, model) -> None:
    batch = tokenizer(["short", "a somewhat longer prompt"], padding=True, return_tensors="pt")
    assert (batch["input_ids"][0] == tokenizer.pad_token_id).any()
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.logits).all()


def test_same_seed_is_deterministic(tmp_path: Path) -> None:
    kw = {"texts": SMALL_CORPUS, "vocab_size": 320, "seed": 3}
    a = build_tiny_model(tmp_path / "a", **kw)
    b = build_tiny_model(tmp_path / "b", **kw)
    c = build_tiny_model(tmp_path / "c", **{**kw, "seed": 4})
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha256(a / name) == _sha256(b / name), name
    sd_a = transformers.AutoModelForCausalLM.from_pretrained(a).state_dict()
    sd_b = transformers.AutoModelForCausalLM.from_pretrained(b).state_dict()
    sd_c = transformers.AutoModelForCausalLM.from_pretrained(c).state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not all(torch.equal(sd_a[k], sd_c[k]) for k in sd_a)


def test_build_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tokenizer(SMALL_CORPUS, vocab_size=300)  # tokenizer only; model path covered below
    assert torch.equal(torch.rand(3), expected)


def test_model_build_does_not_touch_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", texts=SMALL_CORPUS, vocab_size=300)
    assert torch.equal(torch.rand(3), expected)


def test_pad_vocab_to(tmp_path: Path) -> None:
    out = build_tiny_model(tmp_path / "padded", texts=SMALL_CORPUS, vocab_size=320, pad_vocab_to=151936)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    # The tiny corpus runs out of merges before 320; the tokenizer is just smaller.
    assert len(tok) <= 320
    assert model.config.vocab_size == 151936
    assert model.lm_head.weight.shape == (151936, 64)
    assert model.get_input_embeddings().weight.shape == (151936, 64)
    ids = tok("\\boxed{1}", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape[-1] == 151936


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_tiny_model(tmp_path / "x", texts=SMALL_CORPUS, vocab_size=320, pad_vocab_to=100)
    with pytest.raises(ValueError):
        build_tokenizer(SMALL_CORPUS, vocab_size=100)
