"""The models an evaluation samples from (:mod:`sgsd.eval.models`): a peft LoRA adapter
merged like peft computes it, and a real verl checkpoint merged by verl's merger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgsd.cli import main
from sgsd.eval.models import ModelError, ModelSource, prepare_model
from sgsd.eval.runner import EvalConfig, evaluate


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, tiny_model_dir) -> Path:
    """A peft LoRA adapter for the tiny model with random (non-zero) A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)  # B starts at zero in training; a trained one is not
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path)
    return path


def test_lora_adapter_is_merged_like_peft_computes_it(tmp_path, tiny_model_dir, lora_adapter, monkeypatch):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    source = ModelSource(model=str(tiny_model_dir), lora=str(lora_adapter)).resolved()
    merged_dir = Path(prepare_model(source, tmp_path / "work"))
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)(ids).logits
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                              str(lora_adapter))(ids).logits
    assert (merged - base).abs().max() > 1e-2
    torch.testing.assert_close(merged, reference, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr("sgsd.eval.models.merge_lora", lambda *a, **k: pytest.fail("merged twice"))
    assert prepare_model(source, tmp_path / "work") == str(merged_dir)  # stamped: reused on resume
    # a whole evaluation from base + adapter; the merged copy goes once the run completes
    monkeypatch.undo()
    out = tmp_path / "out"
    result = evaluate(out, ModelSource(model=str(tiny_model_dir), lora=str(lora_adapter)), ["aime24"],
                      EvalConfig(samples=1, limit=1, max_new_tokens=3), backend="transformers", progress=False)
    assert result.complete and result.summary["model"]["lora"] == str(lora_adapter.resolve())
    assert not (out / "merged_model").exists()


def test_a_zero_lora_scale_is_refused(tmp_path, tiny_model_dir, lora_adapter):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 0}))
    with pytest.raises(ModelError, match="alpha 0"):
        prepare_model(ModelSource(model=str(tiny_model_dir), lora=str(adapter)), tmp_path / "work")


@pytest.mark.slow
def test_a_verl_lora_checkpoint_is_merged_and_evaluated(tmp_path, frozen_lora_run):
    """The session's LoRA run through verl's trainer on CPU (tests/launches.py: its checkpoint
    keeps no hf_model copy, as a real run's), then `sgsd eval --verl-checkpoint`: verl's
    merger writes the base weights and lora_adapter/, which is merged on top; the result
    must equal W + (alpha / r) B A from the raw shard."""
    import torch
    from safetensors.torch import load_file

    actor = frozen_lora_run.checkpoint_dir / "global_step_2" / "actor"
    assert not (actor / "huggingface" / "model.safetensors").exists()
    out = tmp_path / "eval"
    assert main(["eval", "--verl-checkpoint", str(actor.parent), "--datasets", "aime24", "--limit", "1",
                 "--samples", "1", "--max-new-tokens", "4", "--backend", "transformers", "--keep-merged",
                 "--quiet", "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["model"]["verl_checkpoint"] == str(actor.resolve())
    shard = torch.load(actor / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).float() for k, v in shard.items()}
    prefix = "base_model.model.model.layers.0.self_attn.q_proj."
    a, b = full[prefix + "lora_A.default.weight"], full[prefix + "lora_B.default.weight"]
    base = full[prefix + "base_layer.weight"]
    expected = base + (16 / 8) * b @ a  # W + (alpha / r) B A
    merged = load_file(out / "merged_model" / "model" / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert (merged.float() - base).abs().max() > 3e-2  # two steps (lr 5e-2) moved B off its zero init
    torch.testing.assert_close(merged.float(), expected, atol=1e-2, rtol=0)  # verl's merger rounds to bf16
