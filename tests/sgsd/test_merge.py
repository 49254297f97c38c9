"""Hierarchical merge (paper Alg. 3) on the shipped raw candidates, with a scripted skill writer.

No real LLM can produce well-formed merges on this machine, so :class:`MergeDouble`
answers each merge prompt itself: it reads the group back out of the prompt and replies
like a real model would, in one of several ways chosen per group (a good merge wrapped in
a thinking block with unescaped LaTeX, garbage, thinking only, a truncated list, a failed
request, a grown list, a wrong key).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence

import pytest

from sgsd import merge as merge_mod
from sgsd.bank import SkillBank
from sgsd.checks import SettingError
from sgsd.cli import main
from sgsd.datasets import bank_path, shipped_path
from sgsd.llm.base import Completion, GenerationSettings, LLMClient, LLMStats
from sgsd.merge import LAYER_KEYS, MergeConfig, hierarchical_merge, merge_bank
from sgsd.skill_prompts import COLLECTION_FIELDS

RAW_PATH = shipped_path("skill_banks", "qwen3_1.7b_raw_candidates.json")
LATEX = " (e.g. \\frac{a}{b} \\neq \\boxed{c}, \\text{so} x \\to \\infty)"
THINK = "<think>\nMerging. Note \\boxed{} and {a, {b}} and {\"general_skills\": [\"draft\"]}.\n</think>\n\n"


def _items_of(prompt: str) -> tuple[str, list[dict]]:
    kind = "general_skills" if "General skills to merge:" in prompt else "common_mistakes"
    start = prompt.index("to merge:\n\n") + len("to merge:\n\n")
    return kind, json.loads(prompt[start:prompt.index("\n\nReturn ONLY valid JSON")])


def _model_json(kind: str, items: list[dict]) -> str:
    # What a model writes: LaTeX with single backslashes, i.e. not valid JSON escapes.
    return json.dumps({kind: items}, indent=2, ensure_ascii=False).replace("\\\\", "\\")


def merged_half(kind: str, items: list[dict]) -> list[dict]:
    """The good merge of the double: the first half of the group, LaTeX added to the first item."""
    keep = [dict(item) for item in items[: math.ceil(len(items) / 2)]]
    field = COLLECTION_FIELDS[kind][1]
    if not keep[0][field].endswith(LATEX):
        keep[0][field] += LATEX
    return keep


def _reply(mode: str, kind: str, items: list[dict]) -> Completion:
    if mode == "fail":
        return Completion(None, error="timeout")
    half = merged_half(kind, items)
    if mode == "merge":
        return Completion(THINK + "Here is the merged bank:\n```json\n" + _model_json(kind, half) + "\n```\n")
    if mode == "garbage":
        return Completion("I am not sure what you mean by {merge}. [1, 2, {oops")
    if mode == "thinking":  # ran out of tokens while still thinking
        return Completion("<think>\nDraft:\n" + _model_json(kind, half) + "\nHmm, but maybe")
    if mode == "truncated":  # stopped inside the last item of the half
        text = _model_json(kind, half)
        return Completion(THINK + text[: text.rindex('": "') + 6])
    if mode == "grow":
        extra = {name: "An invented extra item " + name for name in COLLECTION_FIELDS[kind]}
        return Completion(_model_json(kind, items + [extra]))
    if mode == "wrongkey":
        return Completion(_model_json("skills", half))
    if mode == "collapse":  # one item for the whole group
        return Completion(_model_json(kind, half[:1]))
    if mode == "nested":  # ~1,000 nested lists (was a RecursionError)
        return Completion("[" * 1000)
    raise AssertionError(mode)


def expected_outcome(mode: str, kind: str, items: list[dict]) -> list[dict]:
    if mode == "merge":
        return merged_half(kind, items)
    if mode == "truncated" and len(merged_half(kind, items)) > 1:
        return merged_half(kind, items)[:-1]
    return items  # every failure keeps the group


class MergeDouble:
    """A test double of :class:`LLMClient`: ``mode_of(index_in_batch, items)`` picks each reply."""

    name = "merge-double"

    def __init__(self, mode_of: Callable[[int, list[dict]], str]):
        self.mode_of = mode_of
        self.stats = LLMStats()
        self.batches: list[int] = []
        self.log: list[tuple[str, str, list[dict]]] = []

    def generate(self, prompts: Sequence[str], settings: GenerationSettings | None = None) -> list[Completion]:
        self.batches.append(len(prompts))
        out = []
        for index, prompt in enumerate(prompts):
            kind, items = _items_of(prompt)
            mode = self.mode_of(index, items)
            self.log.append((mode, kind, items))
            self.stats.requests += 1
            out.append(_reply(mode, kind, items))
        return out


def by_content(weights: dict[str, int]) -> Callable[[int, list[dict]], str]:
    """A mode chosen from the group's first item, so a stagnant layer repeats its replies."""
    table = [mode for mode, w in weights.items() for _ in range(w)]

    def mode_of(_index: int, items: list[dict]) -> str:
        return table[zlib.crc32(json.dumps(items[0], sort_keys=True).encode()) % len(table)]

    return mode_of


def _texts(items, kind):
    return [{name: getattr(item, name) for name in COLLECTION_FIELDS[kind]} for item in items]


@pytest.fixture(scope="module")
def raw() -> SkillBank:
    return SkillBank.load(RAW_PATH)


def _check_layers(layers: list[dict], input_items: int, patience: int, max_layers: int = 64) -> None:
    assert [layer["layer_index"] for layer in layers] == list(range(len(layers)))
    assert all(tuple(layer) == LAYER_KEYS for layer in layers)
    assert layers[0]["input_items"] == input_items
    stagnant = 0
    for i, layer in enumerate(layers):
        if i:
            assert layer["input_items"] == layers[i - 1]["output_items"]
        assert layer["output_items"] <= layer["input_items"]  # the growth guard bounds every layer
        assert layer["num_groups"] == math.ceil(layer["input_items"] / 32)
        stagnant = 0 if layer["output_items"] < layer["input_items"] else stagnant + 1
        assert layer["stagnant_layers"] == stagnant
        last = i == len(layers) - 1
        assert (layer["stopped_reason"] is not None) == last
    reason = layers[-1]["stopped_reason"]
    if layers[-1]["num_groups"] == 1:
        assert reason == "root_group_reached"
    elif stagnant >= patience:
        assert reason == "stagnation_patience_reached"
    else:
        assert reason == "max_layers_reached" and len(layers) == max_layers
    assert all(layer["num_groups"] > 1 and layer["stagnant_layers"] < patience for layer in layers[:-1])


def test_one_layer_each_group_is_merged_or_kept_exactly(raw):
    modes = ["merge", "garbage", "thinking", "truncated", "fail", "grow", "wrongkey", "merge", "truncated",
             "merge", "garbage"]
    client = MergeDouble(lambda index, _items: modes[index])
    result = hierarchical_merge(raw.general_skills, "general_skills", client, max_layers=1, progress=False)
    groups = [_texts(raw.general_skills[i:i + 32], "general_skills") for i in range(0, 350, 32)]
    assert len(groups) == 11 and client.batches == [11]  # ONE batched call for the layer
    expected = [item for mode, group in zip(modes, groups) for item in expected_outcome(mode, "general_skills", group)]
    assert _texts(result.items, "general_skills") == expected
    assert "\\frac{a}{b} \\neq \\boxed{c}, \\text{so} x \\to \\infty" in result.items[0].principle
    assert result.layers == [{"layer_index": 0, "input_items": 350, "num_groups": 11, "output_items": len(expected),
                              "stagnant_layers": 0, "stopped_reason": "max_layers_reached"}]
    assert (result.parse_failures, result.request_failures, result.growth_rejections) == (4, 1, 1)
    assert result.layer_details[0]["merged_groups"] == 5 and result.layer_details[0]["kept_groups"] == 6
    assert [item.skill_id for item in result.items] == [f"gen_{i:03d}" for i in range(1, len(expected) + 1)]


def test_shipped_raw_candidates_merge_to_a_valid_bank(raw, tmp_path):
    client = MergeDouble(by_content({"merge": 6, "garbage": 1, "thinking": 1, "truncated": 1, "fail": 1, "grow": 1}))
    bank = merge_bank(raw, client, progress=False)
    meta = bank.metadata
    shipped = SkillBank.load(bank_path("qwen3_1.7b")).metadata
    assert set(shipped) - {"batch_size"} <= set(meta)  # the shipped banks' metadata keys
    assert (meta["input_general_skills"], meta["input_common_mistakes"]) == (350, 110)
    for kind, key, prefix in [("general_skills", "general_merge_layers", "gen"),
                              ("common_mistakes", "common_mistake_merge_layers", "err")]:
        layers = meta[key]
        assert all(tuple(layer) == tuple(shipped[key][0]) for layer in layers)  # exactly the shipped shape
        _check_layers(layers, len(raw.items(kind)), patience=3)
        items = bank.items(kind)
        assert len(items) == meta[f"output_{kind}"] == layers[-1]["output_items"]  # no exact duplicates here
        assert [item.item_id for item in items] == [f"{prefix}_{i:03d}" for i in range(1, len(items) + 1)]
        assert all(item.origin == "static" for item in items)
    assert meta["output_general_skills"] < 350  # parsed groups shrank the collection
    # With this (deterministic) mix, skills shrink to the root; mistakes stall on failing groups.
    assert meta["general_merge_layers"][-1]["stopped_reason"] == "root_group_reached"
    assert meta["common_mistake_merge_layers"][-1]["stopped_reason"] == "stagnation_patience_reached"
    diag = meta["merge_diagnostics"]["general_skills"]
    assert diag["parse_failures"] > 0 and diag["request_failures"] > 0 and diag["growth_rejections"] > 0
    assert sum(client.batches) == diag["requests"] + meta["merge_diagnostics"]["common_mistakes"]["requests"]
    path = bank.save(tmp_path / "merged.json")
    again = SkillBank.load(path, require_nonempty=True)
    assert again.general_skills == bank.general_skills and again.common_mistakes == bank.common_mistakes
    assert again.metadata == json.loads(json.dumps(meta))


def test_root_group_reached_when_every_merge_succeeds(raw):
    client = MergeDouble(lambda _i, _items: "merge")
    result = hierarchical_merge(raw.general_skills, "general_skills", client, progress=False)
    _check_layers(result.layers, 350, patience=3)
    assert [(layer["input_items"], layer["num_groups"]) for layer in result.layers] == [
        (350, 11), (175, 6), (88, 3), (44, 2), (22, 1)]
    assert result.stopped_reason == "root_group_reached" and len(result.items) == 11
    assert client.batches == [11, 6, 3, 2, 1]


def test_patience_reached_when_every_reply_is_garbage_and_items_are_kept(raw):
    client = MergeDouble(by_content({"garbage": 1, "thinking": 1, "fail": 1, "wrongkey": 1}))
    result = hierarchical_merge(raw.common_mistakes, "common_mistakes", client, patience=3, progress=False)
    assert [(layer["output_items"], layer["stagnant_layers"], layer["stopped_reason"]) for layer in result.layers] == [
        (110, 1, None), (110, 2, None), (110, 3, "stagnation_patience_reached")]
    assert _texts(result.items, "common_mistakes") == _texts(raw.common_mistakes, "common_mistakes")
    assert [m.mistake_id for m in result.items] == [f"err_{i:03d}" for i in range(1, 111)]
    assert client.batches == [4, 4, 4]


def test_exact_duplicates_are_removed_after_normalisation():
    a = {"title": "Check Parity", "principle": "Look at  parity.", "when_to_apply": "Integers."}
    dup = {"title": "check parity ", "principle": "look at parity.", "when_to_apply": "INTEGERS."}
    b = {**a, "title": "Other"}
    result = hierarchical_merge([a, dup, b], "general_skills", MergeDouble(lambda *_: "garbage"),
                                patience=1, progress=False)
    assert result.duplicates_removed == 1
    assert [s.title for s in result.items] == ["Check Parity", "Other"]


def test_growth_is_rejected_and_zero_item_replies_keep_the_group():
    items = [{"description": f"d{i}", "why_it_happens": "w", "how_to_avoid": "h"} for i in range(3)]
    result = hierarchical_merge(items, "common_mistakes", MergeDouble(lambda *_: "grow"), progress=False)
    assert result.growth_rejections == 1 and [m.description for m in result.items] == ["d0", "d1", "d2"]
    assert result.stopped_reason == "root_group_reached"

    class EmptyList(MergeDouble):
        def generate(self, prompts, settings=None):
            return [Completion('{"common_mistakes": [{"description": ""}]}') for _ in prompts]

    result = hierarchical_merge(items, "common_mistakes", EmptyList(lambda *_: ""), progress=False)
    assert result.parse_failures == 1 and len(result.items) == 3


def test_a_client_returning_the_wrong_number_of_replies_changes_nothing():
    class Short(MergeDouble):
        def generate(self, prompts, settings=None):
            return super().generate(prompts, settings)[:-1]

    items = [{"title": f"t{i}", "principle": "p", "when_to_apply": "w"} for i in range(5)]
    result = hierarchical_merge(items, "general_skills", Short(lambda *_: "merge"), group_size=2,
                                patience=1, progress=False)
    assert result.request_failures == 2 and [s.title for s in result.items] == [f"t{i}" for i in range(5)]


def test_empty_and_single_item_collections_need_no_request():
    client = MergeDouble(lambda *_: "merge")
    assert isinstance(client, LLMClient)
    empty = hierarchical_merge([], "general_skills", client, progress=False)
    assert empty.items == [] and empty.layers == []
    one = hierarchical_merge([{"title": "t", "principle": "p", "when_to_apply": "w"}], "general_skills",
                             client, progress=False)
    assert one.layers == [{"layer_index": 0, "input_items": 1, "num_groups": 1, "output_items": 1,
                           "stagnant_layers": 1, "stopped_reason": "root_group_reached"}]
    assert client.batches == [] and one.items[0].skill_id == "gen_001"


@pytest.mark.parametrize("kwargs, message", [
    ({"group_size": 1}, "group_size must be >= 2"),
    ({"patience": 0}, "patience must be >= 1"),
    ({"max_layers": 0}, "max_layers must be >= 1"),
    ({"group_size": 2.5}, "group_size must be an integer, got 2.5"),
])
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(SettingError) as info:
        MergeConfig(**kwargs)
    assert str(info.value).startswith(message)
    with pytest.raises(ValueError, match=re.escape(message)):  # the merge functions check through MergeConfig
        hierarchical_merge([], "general_skills", MergeDouble(lambda *_: "merge"), **kwargs)
    with pytest.raises(ValueError, match="unknown collection"):
        hierarchical_merge([], "skills", MergeDouble(lambda *_: "merge"))
    with pytest.raises(ValueError, match="item 0: field 'principle'"):
        hierarchical_merge([{"title": "t", "principle": 3, "when_to_apply": "w"}], "general_skills",
                           MergeDouble(lambda *_: "merge"), progress=False)


def test_cli_bank_merge_writes_a_valid_bank(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_resolve(spec):
        seen["spec"] = spec
        return MergeDouble(by_content({"merge": 3, "garbage": 1}))

    monkeypatch.setattr(merge_mod, "resolve_client", fake_resolve)
    out = tmp_path / "sub" / "merged.json"
    assert main(["bank", "merge", str(RAW_PATH), "--llm", "vllm:Qwen/Qwen3-1.7B", "-o", str(out),
                 "--group-size", "16", "--patience", "2", "--temperature", "0.3", "--max-new-tokens", "512"]) == 0
    captured = capsys.readouterr()
    assert seen["spec"] == "vllm:Qwen/Qwen3-1.7B"
    assert "merge general_skills" in captured.err  # the progress bar over layers
    bank = SkillBank.load(out, require_nonempty=True)
    meta = bank.metadata
    merged = sum(meta["merge_diagnostics"][k]["merged_groups"] for k in ("general_skills", "common_mistakes"))
    assert captured.out.strip() == (f"{out}: general_skills 350 -> {meta['output_general_skills']}, "
                                    f"common_mistakes 110 -> {meta['output_common_mistakes']} ({merged} groups merged)")
    assert meta["merge_group_size"] == 16 and meta["merge_stagnation_patience"] == 2
    assert meta["source"] == f"hierarchical merge from {RAW_PATH} using merge-double"
    assert meta["merge_diagnostics"]["settings"]["temperature"] == 0.3
    assert meta["merge_diagnostics"]["settings"]["max_new_tokens"] == 512
    assert not list(out.parent.glob(".*.tmp"))  # atomic save left no temp file


@pytest.mark.parametrize("args, message", [
    (["MISSING", "-o", "OUT"], "skill bank file not found"),
    ([str(RAW_PATH), "-o", "OUT", "--group-size", "1"], "--group-size must be >= 2"),
    ([str(RAW_PATH), "-o", "OUT", "--patience", "0"], "--patience must be >= 1"),
    ([str(RAW_PATH), "-o", "OUT", "--temperature", "-1"], "--temperature must be >= 0"),
    ([str(RAW_PATH), "-o", "OUT"], "cannot create the LLM client 'bad:spec': unknown backend"),
    ([str(RAW_PATH), "-o", "OUT", "--max-layers", "0"], "--max-layers must be >= 1, got 0"),
    ([str(RAW_PATH), "-o", "OUT", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    ([str(RAW_PATH), "-o", "OUT", "--timeout", "0"], "--timeout must be a finite number of seconds > 0, got 0.0"),
    ([str(RAW_PATH), "-o", "OUT", "--timeout", "inf"], "--timeout must be a finite number of seconds > 0, got inf"),
    ([str(RAW_PATH), "-o", "OUT", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["MISSING", "-o", "OUT", "--group-size", "1"], "--group-size must be >= 2, got 1"),  # refused before loading
])
def test_cli_bank_merge_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    def bad_resolve(spec):
        raise ValueError("unknown backend")

    monkeypatch.setattr(merge_mod, "resolve_client", bad_resolve)
    args = [str(tmp_path / a) if a in ("MISSING", "OUT") else a for a in args]
    assert main(["bank", "merge", *args, "--llm", "bad:spec"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "OUT").exists()


# ----------------------------------------------------------------------------- failing writers
def _run_cli(tmp_path, monkeypatch, double, *extra):
    monkeypatch.setattr(merge_mod, "resolve_client", lambda spec: double)
    out = tmp_path / "merged.json"
    code = main(["bank", "merge", str(RAW_PATH), "--llm", "openai:http://127.0.0.1:9/v1#m", "-o", str(out),
                 "--quiet", *extra])
    return code, out


def test_a_writer_that_fails_every_request_merges_nothing_and_says_so(tmp_path, monkeypatch, capsys):
    """Connection refused / HTTP 500 on every request: was exit 0 and 'general_skills 575 -> 575'."""
    code, out = _run_cli(tmp_path, monkeypatch, MergeDouble(lambda *_: "fail"))
    captured = capsys.readouterr()
    assert code == 1 and not out.exists() and captured.out == ""
    assert "sgsd: error: nothing was merged: 45 of 45 requests failed (timeout)" in captured.err
    assert f"{out} not written" in captured.err


@pytest.mark.parametrize("mode", ["garbage", "nested", "collapse"])
def test_a_writer_whose_every_reply_is_unusable_merges_nothing(tmp_path, monkeypatch, capsys, mode):
    code, out = _run_cli(tmp_path, monkeypatch, MergeDouble(lambda *_: mode))
    err = capsys.readouterr().err
    assert code == 1 and not out.exists() and "nothing was merged" in err
    # 15 groups (11 skill, 4 mistake), asked again in each of the 3 stagnant layers (patience)
    unusable = "45 lost most of their group" if mode == "collapse" else "45 replies unparseable"
    assert unusable in err


def test_a_reply_keeping_one_item_of_a_large_group_is_rejected_not_a_collapse(raw):
    """A writer answering every group with a one-item list collapsed 575 skills into 1."""
    result = hierarchical_merge(raw.general_skills, "general_skills", MergeDouble(lambda *_: "collapse"),
                                progress=False)
    assert len(result.items) == len(raw.general_skills) and result.collapse_rejections == result.requests
    assert result.merged_groups == 0
    # small groups may merge to one item: 4 items -> 1 keeps more than 1/8
    small = hierarchical_merge(raw.general_skills[:4], "general_skills", MergeDouble(lambda *_: "collapse"),
                               progress=False)
    assert len(small.items) == 1 and small.merged_groups == 1


def test_some_failed_requests_make_a_partial_merge_labelled_as_such(tmp_path, monkeypatch, capsys):
    code, out = _run_cli(tmp_path, monkeypatch, MergeDouble(by_content({"merge": 2, "fail": 1})))
    captured = capsys.readouterr()
    assert code == 1 and out.exists()
    assert "sgsd: warning: partial merge:" in captured.err and "requests failed (timeout)" in captured.err
    assert "rerun the same command to retry the failed requests" in captured.err
    assert "(partial:" in SkillBank.load(out).metadata["source"]


def test_a_rerun_reuses_every_saved_reply_and_asks_only_for_the_failed_ones(tmp_path, monkeypatch, capsys):
    first = MergeDouble(by_content({"merge": 2, "fail": 1}))
    assert _run_cli(tmp_path, monkeypatch, first)[0] == 1
    asked_first = len(first.log)
    saved = (tmp_path / "merged.merge" / "merge_replies.jsonl").read_text().splitlines()
    assert len(saved) == sum(1 for mode, _, _ in first.log if mode != "fail")  # failures are not saved
    capsys.readouterr()
    second = MergeDouble(lambda *_: "merge")  # the writer is back
    code, out = _run_cli(tmp_path, monkeypatch, second)
    assert code == 0
    meta = SkillBank.load(out).metadata
    reused = sum(meta["merge_diagnostics"][k]["reused_replies"] for k in ("general_skills", "common_mistakes"))
    assert reused > 0 and "(partial:" not in meta["source"]
    answered = [items for mode, _, items in first.log if mode != "fail"]
    assert not any(items in answered for _, _, items in second.log)  # no saved reply asked for again
    assert len(second.log) < asked_first


def test_ctrl_c_exits_130_and_keeps_every_reply_received(tmp_path, monkeypatch, capsys):
    class Interrupting(MergeDouble):
        def generate(self, prompts, settings=None):
            if len(self.batches) == 2:
                raise KeyboardInterrupt
            return super().generate(prompts, settings)

    double = Interrupting(lambda *_: "merge")
    code, out = _run_cli(tmp_path, monkeypatch, double, "--batch-size", "4")
    err = capsys.readouterr().err
    assert code == 130 and not out.exists()
    assert "sgsd: interrupted; 8 replies are saved in" in err and "Traceback" not in err
    again = MergeDouble(lambda *_: "merge")
    assert _run_cli(tmp_path, monkeypatch, again)[0] == 0
    assert not any(items in [i for _, _, i in again.log] for _, _, items in double.log)  # none asked twice


def test_the_timeout_reaches_the_writer_and_another_writer_is_refused_in_the_same_run_dir(tmp_path, monkeypatch,
                                                                                         capsys):
    seen = []

    class Recording(MergeDouble):
        def generate(self, prompts, settings=None):
            seen.append(settings.timeout_s)
            return super().generate(prompts, settings)

    assert _run_cli(tmp_path, monkeypatch, Recording(lambda *_: "merge"), "--timeout", "12.5")[0] == 0
    assert set(seen) == {12.5}
    monkeypatch.setattr(merge_mod, "resolve_client", lambda spec: MergeDouble(lambda *_: "merge"))
    assert main(["bank", "merge", str(RAW_PATH), "--llm", "openai:http://other:8000/v1#m2", "-o",
                 str(tmp_path / "merged.json"), "--quiet"]) == 2
    assert "holds another bank merge (writer" in capsys.readouterr().err


def test_merge_modules_import_without_heavy_libraries():
    code = ("import sys, sgsd.merge, sgsd.parsing, sgsd.skill_prompts; "
            "print([m for m in ('verl', 'ray', 'vllm', 'torch', 'transformers') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
