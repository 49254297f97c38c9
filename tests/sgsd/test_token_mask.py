"""The token mask m_t built from a real (locally trained) Qwen-style tokenizer."""

from __future__ import annotations

import torch

from sgsd.token_mask import TokenMaskBuilder, TokenMaskConfig

RESPONSE = "<think>\nLet me see.\n</think>\n\nSo $x = 2$.\n\nThe answer is \\boxed{2}.<|im_end|>"


def _ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def _kept_text(tok, ids, mask):
    return [tok.decode([i]) for i, m in zip(ids, mask.tolist()) if m]


def test_default_mask_removes_each_class_and_keeps_reasoning(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = _ids(tok, RESPONSE)
    pad = tok.pad_token_id
    batch = torch.tensor([ids + [pad, pad]])
    response_mask = torch.tensor([[1] * len(ids) + [0, 0]])
    mask = TokenMaskBuilder(tok)(batch, response_mask)
    assert mask.dtype == torch.bool and mask.shape == batch.shape
    dropped = {tok.decode([i]) for i, m in zip(batch[0].tolist(), mask[0].tolist()) if not m}
    assert {"<think>", "</think>", "<|im_end|>"} <= dropped
    assert all(not t.strip() for t in dropped - {"<think>", "</think>", "<|im_end|>", tok.pad_token})
    kept = "".join(_kept_text(tok, batch[0].tolist(), mask[0]))
    assert "Let me see." in kept and "\\boxed{2}" in kept
    assert not mask[0, -2:].any()  # padding never counts
    # nothing but the excluded classes was removed: kept + dropped tokens rebuild the response
    newline_ids = {i for i in ids if tok.decode([i]).strip() == "" and "\n" in tok.decode([i])}
    assert newline_ids and not any(mask[0, j] for j, i in enumerate(ids) if i in newline_ids)


def test_each_class_is_switchable(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = torch.tensor([_ids(tok, RESPONSE)])
    think = {tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")

    def kept_ids(**switches):
        m = TokenMaskBuilder(tok, TokenMaskConfig(**switches))(ids)
        return {i for i, k in zip(ids[0].tolist(), m[0].tolist()) if k}

    assert think <= kept_ids(think=False) and not think & kept_ids()
    # <|im_end|> is both special and a chat-template token: it returns only when both are off
    assert im_end not in kept_ids(special=False)
    assert im_end not in kept_ids(chat_template=False)
    assert im_end in kept_ids(special=False, chat_template=False)
    newline = {i for i in ids[0].tolist() if "\n" in tok.decode([i]) and not tok.decode([i]).strip()}
    assert newline  # the response has "\n" and "\n\n" tokens
    assert newline <= kept_ids(newline=False) and not newline & kept_ids()
    everything = TokenMaskBuilder(tok, TokenMaskConfig(False, False, False, False))(ids)
    assert everything.all()


def test_ids_beyond_the_tokenizer_are_ordinary(tiny_tokenizer):
    """Qwen3's model vocab (151,936) is larger than its tokenizer: padded rows are kept."""
    builder = TokenMaskBuilder(tiny_tokenizer)
    beyond = torch.tensor([[len(tiny_tokenizer) + 5, 151_935, tiny_tokenizer.pad_token_id]])
    assert builder(beyond).tolist() == [[True, True, False]]


def test_excluded_set_reflects_the_config(tiny_tokenizer):
    builder = TokenMaskBuilder(tiny_tokenizer)
    classes = builder.excluded_ids
    no_newline = TokenMaskBuilder(tiny_tokenizer, TokenMaskConfig(newline=False)).excluded
    others = classes["special"] | classes["chat_template"] | classes["think"]
    assert builder.excluded == others | classes["newline"]
    assert builder.excluded - no_newline == classes["newline"] - others
    assert classes["newline"] and classes["think"] and classes["chat_template"]


def test_the_newline_rule_switches_between_whitespace_tokens_and_the_releases_newline_runs(tiny_model_dir):
    """Mixed whitespace tokens (" \\n", "\\r\\n", "\\t\\n", as Qwen's table has them) are newline
    tokens under the default rule and ordinary tokens under the release's."""
    import pytest
    from transformers import AutoTokenizer

    from sgsd.checks import SettingError

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens([" \n", "\r\n", "\t\n"])  # a real tokenizer, with the spellings Qwen's table has
    mixed = {tok.convert_tokens_to_ids(t) for t in (" \n", "\r\n", "\t\n")}
    runs = {i for i in range(len(tok)) if tok.decode([i]) in ("\n", "\n\n")}
    default = TokenMaskBuilder(tok).excluded
    release = TokenMaskBuilder(tok, TokenMaskConfig(newline_rule="newlines_only")).excluded
    assert runs and runs <= default and runs <= release
    assert mixed <= default and not mixed & release
    assert default - release == mixed
    with pytest.raises(SettingError, match="newline_rule must be one of whitespace, newlines_only"):
        TokenMaskConfig(newline_rule="spaces")
