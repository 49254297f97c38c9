"""The recipe yaml composes with verl's ppo_trainer, validates, and switches with one key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sgsd.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "recipe" / "sgsd" / "config"


def compose_sgsd(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="sgsd_trainer", overrides=overrides)


def test_composes_verl_ppo_trainer_with_the_sgsd_section():
    cfg = compose_sgsd([])
    assert cfg.algorithm.adv_estimator == "sgsd" and cfg.actor_rollout_ref.rollout.n == 1
    assert cfg.sgsd.top_k == 8 and cfg.sgsd.ablation.loss_type == "gated"
    assert "actor" in cfg.actor_rollout_ref and cfg.trainer.use_v1 is True  # verl's own defaults came in


def test_every_sgsd_key_is_commented_in_the_yaml():
    lines = (CONFIG_DIR / "sgsd_trainer.yaml").read_text().splitlines()
    start = lines.index("sgsd:")
    for i, line in enumerate(lines[start + 1:], start + 1):
        if line.strip() and not line.strip().startswith("#") and ":" in line:
            previous = lines[i - 1].strip()
            assert previous.startswith("#"), f"sgsd key without a comment above it: {line.strip()}"


def test_prepare_wires_sgsd_and_leaves_grpo_alone():
    from recipe.sgsd.main_sgsd import prepare_config

    sgsd = prepare_config(compose_sgsd(["sgsd.student_thinking=false"]))
    assert sgsd.trainer.v1.trainer_mode == "sgsd"
    assert sgsd.reward.reward_manager.name == "sgsd"
    assert sgsd.reward.custom_reward_function.path == "pkg://sgsd.verifier"
    assert sgsd.data.apply_chat_template_kwargs.enable_thinking is False
    grpo = prepare_config(compose_sgsd(["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=8"]))
    # verl's own sync trainer, registered as sgsd_sync: it keeps a resumed run's metrics (sync_trainer.py)
    assert grpo.trainer.v1.trainer_mode == "sgsd_sync" and grpo.reward.reward_manager.name == "naive"
    assert grpo.reward.custom_reward_function.path is None


def test_frozen_teacher_without_lora_gets_a_reference_model_with_zero_kl():
    from recipe.sgsd.main_sgsd import prepare_config

    cfg = prepare_config(compose_sgsd(["sgsd.teacher=frozen"]))
    assert cfg.actor_rollout_ref.actor.use_kl_loss is True and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.0
    lora = prepare_config(compose_sgsd(["sgsd.teacher=frozen", "actor_rollout_ref.model.lora_rank=8"]))
    assert lora.actor_rollout_ref.actor.use_kl_loss is False  # the LoRA-disabled actor is the base


@pytest.mark.parametrize("override, message", [
    ("sgsd.top_k=0", "sgsd.top_k=0 is out of range"),
    ("sgsd.teacher=swa", "sgsd.teacher='swa' is not one of live, frozen, ema, periodic"),
    ("sgsd.teacher_ema_decay=1.5", "sgsd.teacher_ema_decay=1.5 is out of range: must be in"),
    ("sgsd.teacher_period=0", "sgsd.teacher_period=0 is out of range: must be >= 1"),
    ("sgsd.ablation.loss_type=kl", "sgsd.ablation.loss_type"),
])
def test_bad_values_fail_at_start_naming_the_key(override, message):
    from recipe.sgsd.main_sgsd import prepare_config

    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        prepare_config(compose_sgsd([override]))


TOPK = ("sgsd.ablation.loss_type=fkl", "sgsd.teacher_topk=16")


@pytest.mark.parametrize("override, message", [
    ("actor_rollout_ref.model.use_fused_kernels=true", "use_fused_kernels=true never materialises"),
    ("actor_rollout_ref.actor.ulysses_sequence_parallel_size=2",
     "actor_rollout_ref.actor.ulysses_sequence_parallel_size must be 1"),
    ("actor_rollout_ref.ref.ulysses_sequence_parallel_size=2",
     "actor_rollout_ref.ref.ulysses_sequence_parallel_size must be 1"),
    ("actor_rollout_ref.actor.pad_to_length=true", "actor_rollout_ref.actor.pad_to_length=true misaligns"),
])
def test_the_teacher_top_k_is_refused_where_verls_logits_hook_cannot_serve_it(override, message):
    from recipe.sgsd.main_sgsd import prepare_config

    prepare_config(compose_sgsd(list(TOPK)))  # the same run without the setting starts
    with pytest.raises(ConfigError, match=re.escape("sgsd.teacher_topk=16") + ".*" + re.escape(message)):
        prepare_config(compose_sgsd([*TOPK, override]))


def test_unknown_sgsd_key_is_rejected():
    from recipe.sgsd.main_sgsd import prepare_config

    with pytest.raises(ConfigError, match=r"unknown key sgsd\.topk"):
        prepare_config(compose_sgsd(["+sgsd.topk=3"]))


def test_plugin_registers_in_a_fresh_process_after_import_verl(tmp_path):
    code = (
        "import verl\n"
        "from verl.trainer.ppo import core_algos\n"
        "from verl.trainer.ppo.v1.trainer_base import get_trainer_cls\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
        "print(core_algos.get_adv_estimator_fn('sgsd').__module__, get_trainer_cls('sgsd').__name__,"
        " get_reward_manager_cls('sgsd').__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={k: v for k, v in __import__("os").environ.items() if k != "VERL_USE_EXTERNAL_MODULES"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["recipe.sgsd.plugin", "SGSDTrainer", "SGSDRewardManager"]


def test_every_sgsd_key_is_documented_in_docs_configuration():
    """docs/configuration.md lists every key SGSDConfig accepts (a new key must be documented)."""
    from dataclasses import fields, is_dataclass
    from pathlib import Path
    from typing import get_type_hints

    from sgsd.config import SGSDConfig

    def keys(cls, prefix):
        hints = get_type_hints(cls)
        for f in fields(cls):
            if is_dataclass(hints[f.name]):
                yield from keys(hints[f.name], f"{prefix}.{f.name}")
            else:
                yield f"{prefix}.{f.name}"

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [k for k in keys(SGSDConfig, "sgsd") if f"`{k}`" not in doc]
    assert not missing, f"undocumented sgsd keys: {missing}"


@pytest.mark.parametrize(("writer", "refused"), [
    ("vllm:Qwen/Qwen3-8B", True),
    ("transformers:/ckpt/m?device=cuda", True),
    ("transformers:/ckpt/m?device=cuda:1", True),
    ("transformers:/ckpt/m", False),  # the CPU: slow, but out of the GPUs' way
    ("openai:http://writer:8000/v1#Qwen/Qwen3-8B", False),
    ("policy", False),
])
def test_a_skill_writer_on_the_trainers_gpus_is_refused_at_start(writer, refused):
    from recipe.sgsd.main_sgsd import prepare_config

    cfg = compose_sgsd([f'sgsd.update.writer="{writer}"'])
    if refused:
        with pytest.raises(ConfigError, match="sgsd.update.writer=.*use sgsd.update.writer=policy.*openai:"):
            prepare_config(cfg)
    else:
        assert prepare_config(cfg).sgsd["update"].writer == writer  # (DictConfig.update is a method)
    # a run without online updates builds no writer at all
    prepare_config(compose_sgsd([f'sgsd.update.writer="{writer}"', "sgsd.update.enable=false"]))


# ----------------------------------------------------------------------------- inputs checked at start
def _bank_variants(tmp_path, shipped_bank):
    truncated = tmp_path / "truncated.json"
    truncated.write_text(shipped_bank.to_dict().__repr__()[:200])
    no_mistakes = tmp_path / "no_mistakes.json"
    shipped_bank.with_items(common_mistakes=()).save(no_mistakes)
    return {"missing": (tmp_path / "nope.json", "skill bank file not found"),
            "truncated": (truncated, "invalid JSON"),
            "no_mistakes": (no_mistakes, "")}


def test_the_empty_bank_starts_only_a_run_whose_bank_grows():
    from recipe.sgsd.main_sgsd import prepare_config

    assert prepare_config(compose_sgsd(["sgsd.bank_path=empty"])).sgsd.bank_path == "empty"
    with pytest.raises(ConfigError, match=r"sgsd\.bank_path='empty': .*cold start only"):
        prepare_config(compose_sgsd(["sgsd.bank_path=empty", "sgsd.update.enable=false"]))


@pytest.mark.parametrize("which", ["missing", "truncated", "no_mistakes"])
def test_a_bank_that_cannot_serve_is_refused_before_any_worker(tmp_path, shipped_bank, which):
    """Failed after 98 s on CPU, once Ray and the workers had started."""
    from recipe.sgsd.main_sgsd import prepare_config

    path, message = _bank_variants(tmp_path, shipped_bank)[which]
    with pytest.raises(ConfigError, match=rf"sgsd\.bank_path='{path}': .*{message}"):
        prepare_config(compose_sgsd([f"sgsd.bank_path={path}"]))


@pytest.mark.parametrize("override, message", [
    ("sgsd.update.writer=bogus:spec", r"sgsd\.update\.writer='bogus:spec': .*bogus"),
    ("sgsd.encoder=/nonexistent/encoder", r"sgsd\.encoder='/nonexistent/encoder': no such local model folder"),
])
def test_a_writer_spec_or_encoder_path_that_cannot_load_is_refused_at_start(override, message):
    from recipe.sgsd.main_sgsd import prepare_config

    with pytest.raises(ConfigError, match=message):
        prepare_config(compose_sgsd([override]))


def test_a_teacher_budget_below_the_longest_student_prompt_is_refused_at_start(run_model_dir, run_data_dir):
    """max_teacher_prompt_length=16 failed after 443 s, in the first teacher pass."""
    from recipe.sgsd.main_sgsd import prepare_config

    common = [f"actor_rollout_ref.model.path={run_model_dir}", f"data.train_files={run_data_dir / 'train.parquet'}"]
    with pytest.raises(ConfigError, match=r"sgsd\.max_teacher_prompt_length=16 cannot hold the teacher prompt .* "
                                          r"\(works: sgsd\.max_teacher_prompt_length=\d+\)"):
        prepare_config(compose_sgsd([*common, "sgsd.max_teacher_prompt_length=16"]))
    assert prepare_config(compose_sgsd([*common, "sgsd.max_teacher_prompt_length=768"])).sgsd.top_k == 8


def test_the_entry_point_prints_one_line_and_exits_2_on_a_config_error(tmp_path):
    env = {**__import__("os").environ, "SGSD_DRY_RUN": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "recipe.sgsd.main_sgsd", "sgsd.top_k=0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("sgsd: error:")]
    assert len(lines) == 1 and "sgsd.top_k=0 is out of range" in lines[0]


def test_opsd_skill_data_must_come_from_this_runs_bank_encoder_and_k(tmp_path, run_model_dir):
    """The teacher sees the student's pairs (their ids are in the rows): data prepared with another
    bank, encoder or K is refused at start, naming both; data without a record too."""
    from recipe.sgsd.cpu.run import write_run_data
    from recipe.sgsd.main_sgsd import prepare_config
    from sgsd.datasets import load_problems, resolve
    from sgsd.verl_data import to_verl_rows, write_parquet

    data = write_run_data(tmp_path / "data", 8, 4, student_skills=True, top_k=4)
    common = ["sgsd.teacher_context=answer_skills", f"data.train_files={data / 'train_skills.parquet'}",
              f"actor_rollout_ref.model.path={run_model_dir}", "sgsd.max_teacher_prompt_length=2048"]
    assert prepare_config(compose_sgsd([*common, "sgsd.top_k=4"])).sgsd.top_k == 4
    for override, message in (("sgsd.top_k=8", r"sgsd\.top_k: the data's 4 \(prepared\), this run's 8"),
                              ("sgsd.encoder=Qwen/Qwen3-Embedding-0.6B",
                               r"sgsd\.encoder: the data's 'all-MiniLM-L6-v2' \(prepared\), this run's "
                               r"'Qwen/Qwen3-Embedding-0\.6B'"),
                              ("sgsd.bank_path=qwen3_4b", r"sgsd\.bank_path: the data's '.*qwen3_1\.7b\.json'")):
        with pytest.raises(ConfigError, match=message):
            prepare_config(compose_sgsd([*common, "sgsd.top_k=4", override]))
    plain = tmp_path / "plain.parquet"
    write_parquet(to_verl_rows(load_problems(resolve("math_train", "train"))[:4], "math", "train"), plain)
    with pytest.raises(ConfigError, match="records no skill pairs shown to the student"):
        prepare_config(compose_sgsd([*common[:1], f"data.train_files={plain}", "sgsd.top_k=4"]))
